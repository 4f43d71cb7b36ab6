"""The Redis log's publishing thread: many script calls per round trip, never on an I/O loop.

Whatever is queued when the thread wakes goes out as one pipeline of EVALSHAs (up to
``max_batch``), so a burst costs one round trip, not one per message
(:attr:`Broker.round_trips` / :attr:`Broker.published` measure it). A reply is not an
ack: the publisher's node sends the ack when the message comes back on the live
channel, in the order every node sees. A script Redis does not know (restarted, or
``SCRIPT FLUSH``) is loaded again and those calls are sent once more: NOSCRIPT means
it did not run.

The queue is bounded: past ``max_items`` a publish is refused at once with
StoreUnavailable (nothing queued, nothing acknowledged). After a failed round trip
every publish is refused for ``retry_after`` seconds; the next batch is the probe.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .base import Pending, StoreUnavailable
from .worker import Worker

__all__ = ["Broker", "Job", "OnReply"]

logger = logging.getLogger("securechat.store")


@dataclass(slots=True)
class Job:
    """One script call: the message, the script's keys and arguments, its origin."""

    item: Pending
    keys: Sequence[str]
    args: Sequence[str | int]
    origin: str = ""


#: Called on the broker thread with each job and the script's reply (a list), or the
#: StoreUnavailable that refuses it.
OnReply = Callable[[Job, "list[Any] | StoreUnavailable"], None]


class Broker(Worker):
    """Owns one Redis connection (through ``client``) and the publish queue."""

    def __init__(self, client: Any, script: str, *, errors: Any, on_reply: OnReply,
                 max_items: int = 10_000, max_batch: int = 500, retry_after: float = 1.0,
                 on_thread_died: Callable[[BaseException], None] | None = None) -> None:
        super().__init__("securechat-redis-broker")
        self._client = client
        self._script = script
        self._sha = ""
        self._errors = errors  # the redis.exceptions module
        self._on_reply = on_reply
        self._max_items = max_items
        self._max_batch = max_batch
        self._retry_after = retry_after
        self._on_thread_died = on_thread_died
        self._queue: deque[Job] = deque()
        self._retry_at = 0.0
        #: Why publishing fails now, or None while it works (read by health()).
        self.failure: str | None = None
        self.round_trips = 0
        self.published = 0

    def start(self) -> None:
        self._start_thread()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closing:
                raise StoreUnavailable("the message log is closed", self._retry_after)
            if self._retry_at:
                wait = self._retry_at - time.monotonic()
                if wait > 0:
                    raise StoreUnavailable(self.failure or "Redis unreachable", wait)
            if len(self._queue) >= self._max_items:
                raise StoreUnavailable(
                    f"the Redis publish queue is full ({len(self._queue)} messages)",
                    self._retry_after)
            self._queue.append(job)
            if len(self._queue) == 1:
                self._cond.notify()

    def close(self) -> None:
        """Refuse new jobs, send what is queued (or refuse it), join the thread."""
        self._stop_thread()

    # -- the broker thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    count = min(len(self._queue), self._max_batch)
                    batch = [self._queue.popleft() for _ in range(count)]
                self._send(batch)
        except BaseException as exc:
            logger.critical("Redis broker thread died", exc_info=exc)
            with self._cond:
                self._closing = True
                waiting = list(self._queue)
                self._queue.clear()
            for job in waiting:
                self._on_reply(job, StoreUnavailable(f"the Redis broker died: {exc!r}"))
            if self._on_thread_died is not None:
                self._on_thread_died(exc)

    def _send(self, batch: list[Job]) -> None:
        if self._retry_at and time.monotonic() < self._retry_at:
            error = StoreUnavailable(self.failure or "Redis unreachable",
                                     max(self._retry_at - time.monotonic(), 0.05))
            for job in batch:
                self._on_reply(job, error)
            return
        errors = self._errors
        try:
            if not self._sha:
                self._sha = self._client.script_load(self._script)
            replies = self._round_trip(batch)
            again = [i for i, r in enumerate(replies) if isinstance(r, errors.NoScriptError)]
            if again:
                self._sha = self._client.script_load(self._script)
                for i, reply in zip(again, self._round_trip([batch[i] for i in again]),
                                    strict=True):
                    replies[i] = reply
        except (errors.ConnectionError, errors.TimeoutError, OSError) as exc:
            self._failed(f"Redis unreachable: {exc}")
            error = StoreUnavailable(self.failure or "Redis unreachable", self._retry_after)
            for job in batch:
                self._on_reply(job, error)
            return
        except errors.RedisError as exc:  # e.g. NOPERM for SCRIPT LOAD: misconfigured
            self._sha = ""
            self._failed(f"Redis refused the script: {exc}")
            error = StoreUnavailable(self.failure or "Redis unreachable", self._retry_after)
            for job in batch:
                self._on_reply(job, error)
            return
        if self.failure is not None:
            logger.info("Redis: publishing works again")
            self.failure = None
            self._retry_at = 0.0
        self.published += len(batch)
        for job, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                # e.g. OOM (maxmemory) or a key that is not ours: this message only.
                self._on_reply(job, StoreUnavailable(f"Redis refused it: {reply}",
                                                     self._retry_after))
            else:
                self._on_reply(job, list(reply))

    def _round_trip(self, batch: list[Job]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for job in batch:
            pipe.evalsha(self._sha, len(job.keys), *job.keys, *job.args)
        self.round_trips += 1
        return list(pipe.execute(raise_on_error=False))

    def _failed(self, reason: str) -> None:
        if self.failure is None:
            logger.warning("Redis: publishing fails: %s; publishes are refused "
                           "(store_unavailable) until it works again", reason)
        self.failure = reason
        self._retry_at = time.monotonic() + self._retry_after
