"""Plain counters for the admin endpoint's ``/metrics``, cheap enough for the hot path.

Each object here has one writer thread (an I/O loop, the store writer), which adds to
plain ``int`` attributes and list slots; the scrape thread only reads them. A read of
an int is atomic in CPython and a counter only grows, so a scrape sees a value that
is at most one increment behind; nothing takes a lock and nothing calls into
prometheus_client per message (``Counter.inc`` costs about as much as a delivery).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence

__all__ = ["LATENCY_BUCKETS", "Histogram", "LoopStats"]

#: Upper bounds in seconds: 100 us to 10 s, roughly 1-2.5-5 per decade.
LATENCY_BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                      0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts per bucket plus a sum, written by one thread; ``merged`` adds several up
    at scrape time. The last slot counts what is above every bound (+Inf)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: Histogram) -> None:
        """Fold ``other`` in (same bounds); for totals kept after their owner is gone."""
        for i, count in enumerate(list(other.counts)):
            self.counts[i] += count
        self.total += other.total

    @classmethod
    def merged(cls, parts: Sequence[Histogram], bounds: Sequence[float] = LATENCY_BUCKETS
               ) -> Histogram:
        out = cls(bounds)
        for part in parts:
            out.add(part)
        return out

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, count of values <= it), +Inf last."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


class LoopStats:
    """What the sessions of one I/O loop did, counted by that loop's thread only."""

    __slots__ = ("auth_failures", "bytes_in", "bytes_out", "errors", "handshakes")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        #: Error frames sent, by code; closing ones sent before auth also go to
        #: ``auth_failures`` (wrong token, throttled, timeout, malformed first frame...).
        self.errors: Counter[str] = Counter()
        self.auth_failures: Counter[str] = Counter()
        #: The loop adopting a connection to its TLS handshake done.
        self.handshakes = Histogram()

    def error(self, code: str, *, before_auth: bool = False) -> None:
        self.errors[code] += 1
        if before_auth:
            self.auth_failures[code] += 1
