"""``/metrics``: a Prometheus collector over the server's plain counters.

The only module that imports prometheus_client (the ``securechat[metrics]`` extra),
and only once ``--admin-listen`` is used. Nothing here runs per message: at scrape
time :class:`ServerCollector` reads the ints and bucket arrays the server's threads
keep (:mod:`securechat.metering`, the rooms' ledger, the store writer), sums them
and yields metric families. It uses a private registry, never the global one, so
two servers in one process (the tests) do not collide.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from time import monotonic

from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ...metering import Histogram
from .view import ServerView

__all__ = ["CONTENT_TYPE_LATEST", "ServerCollector", "make_registry", "render"]

#: Session states shown (closed ones have left their loop already).
STATES = ("handshake", "auth", "active", "closing")


def make_registry(view: ServerView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(view))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory...
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(name: str, doc: str, label: str, values: Iterable[tuple[str, float]],
              kind: type[CounterMetricFamily] | type[GaugeMetricFamily] = CounterMetricFamily
              ) -> Metric:
    family = kind(name, doc, labels=[label])
    for key, value in sorted(values):
        family.add_metric([key], value)
    return family


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], buckets=hist.cumulative(), sum_value=hist.total)
    return family


def _sum_counters(parts: Iterable[Counter[str]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for part in parts:
        total.update(dict(part))  # dict(): one C-level copy, safe beside its writer
    return total


class ServerCollector(Collector):
    """Reads one server's counters at scrape time (in the admin thread)."""

    def __init__(self, view: ServerView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        view = self.view
        stats = [loop.stats for loop in view.loops]
        yield GaugeMetricFamily("securechat_uptime_seconds", "Seconds since the server "
                                "started.", value=monotonic() - view.started)
        states: Counter[str] = Counter()
        for loop in view.loops:
            for endpoint in list(loop.endpoints):  # list(): one step under the GIL
                state = getattr(endpoint, "state", None)
                if state is not None:
                    states[state.value] += 1
        yield _labelled("securechat_connections", "Connections by session state.", "state",
                        ((s, states[s]) for s in STATES), GaugeMetricFamily)
        admitted = view.admission.stats()
        yield _counter("securechat_auth_ok_total", "Successful logins.",
                       admitted.get("authenticated", 0))
        yield _labelled("securechat_auth_failures_total", "Logins refused, by the error code "
                        "the client got (auth_failed, auth_throttled, auth_timeout, "
                        "bad_frame...).", "reason",
                        _sum_counters(s.auth_failures for s in stats).items())
        yield _labelled("securechat_connections_refused_total", "Connections refused or "
                        "pushed out by admission, by reason.", "reason",
                        ((k.removeprefix("refused_"), v) for k, v in admitted.items()
                         if k.startswith(("refused_", "evicted_"))))
        published, delivered, refused, ack_latency = view.ledger.totals()
        yield _counter("securechat_messages_in_total", "Messages taken by a room (resends "
                       "of a stored message not counted).", published)
        yield _counter("securechat_deliveries_total", "Messages handed to members for "
                       "sending (one per recipient).", delivered)
        yield _counter("securechat_bytes_in_total", "TLS payload bytes read from clients.",
                       sum(s.bytes_in for s in stats))
        yield _counter("securechat_bytes_out_total", "TLS payload bytes written to "
                       "clients.", sum(s.bytes_out for s in stats))
        errors = _sum_counters(s.errors for s in stats)
        yield _labelled("securechat_errors_sent_total", "Error frames sent by the session, "
                        "by code.", "code", errors.items())
        yield _counter("securechat_slow_consumer_cuts_total", "Sessions cut off as slow "
                       "consumers.", errors.get("slow_consumer", 0))
        yield GaugeMetricFamily("securechat_queued_bytes", "Bytes queued for all clients.",
                                value=admitted.get("queued_bytes", 0))
        yield GaugeMetricFamily("securechat_rooms", "Rooms that exist (in memory or "
                                "with stored messages).", value=len(view.rooms))
        yield _histogram("securechat_handshake_seconds", "The I/O loop taking a "
                         "connection to its TLS handshake done.",
                         Histogram.merged([s.handshakes for s in stats]))
        yield _histogram("securechat_publish_ack_seconds", "A room taking a message to "
                         "its ack being queued, store commit included (1 in 64 sampled).",
                         ack_latency)
        yield _counter("securechat_store_refusals_total", "Publishes refused because the "
                       "store could not take them (store_unavailable).", refused)
        writer = view.writer
        yield _counter("securechat_store_errors_total", "Store write transactions that "
                       "failed.", writer.failed_total if writer is not None else 0)
        yield _histogram("securechat_store_write_seconds", "Duration of each store write "
                         "transaction (one batch of messages).",
                         Histogram.merged([writer.write_latency] if writer else []))
        if view.redis is not None:
            redis = view.redis()
            yield _counter("securechat_redis_round_trips_total", "Pipelines the broker "
                           "sent to Redis (many publishes share one).", redis["round_trips"])
            yield _counter("securechat_redis_published_total", "Publishes Redis answered.",
                           redis["published"])
            yield _counter("securechat_redis_gap_filled_total", "Messages read from the "
                           "streams to fill a gap on the subscription.", redis["filled"])
            yield _counter("securechat_redis_subscriptions_total", "Times the subscription "
                           "was made (1 + the times it was lost).", redis["subscriptions"])
            yield _counter("securechat_redis_presence_refreshes_total", "Presence refreshes "
                           "written and read back (every --presence-ttl/3).",
                           redis["presence_refreshes"])
        yield GaugeMetricFamily("securechat_ready", "1 if /readyz would answer 200.",
                                value=0 if view.readiness.problems() else 1)
