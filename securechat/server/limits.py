"""Rate limits as pure arithmetic: the caller passes the clock, so tests need no sleeps."""

from __future__ import annotations

import random
from collections import OrderedDict

__all__ = ["KeyedBuckets", "OrderGate", "QueueMeter", "TokenBucket", "spread_retry"]


class TokenBucket:
    """``rate`` events per second on average, bursts of up to ``burst``.

    A rate of 0 means unlimited.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._tokens = self.burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one token; False (and nothing spent) when the bucket is empty."""
        if self.rate <= 0:
            return True
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def peek(self, now: float) -> bool:
        """Whether :meth:`take` would succeed, without spending."""
        if self.rate <= 0:
            return True
        self._refill(now)
        return self._tokens >= 1.0

    def retry_after(self, now: float) -> float:
        """Seconds until one token is available again."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.rate)


class KeyedBuckets:
    """One :class:`TokenBucket` per key (e.g. per client IP), at most ``max_keys`` kept.

    The least recently used key is forgotten first, so a flood of distinct
    addresses costs bounded memory. Not thread-safe: callers hold their own lock.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def take(self, key: str, now: float) -> bool:
        return self._bucket(key, now).take(now)

    def allowed(self, key: str, now: float) -> bool:
        """Whether ``key`` has a token left, without spending it."""
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(key)
        return bucket is None or bucket.peek(now)

    def retry_after(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.retry_after(now)

    def __len__(self) -> int:
        return len(self._buckets)


class QueueMeter:
    """Bytes queued for output by the sessions of one I/O loop.

    Written only by that loop's thread (``+=`` on a shared int from several threads
    would lose updates); the server sums the meters to check its global bound.
    """

    __slots__ = ("scan_after", "size")

    def __init__(self) -> None:
        self.size = 0
        #: Monotonic time before which the loop does not look for queues to cut again.
        self.scan_after = 0.0


class OrderGate:
    """Keeps a sender's order across ``rate_limited``: once a message with an id is
    refused, every later message is refused too until that id is sent again (or
    ``timeout`` passes). Without it, a message already in flight behind the refused one
    could be accepted first when a token refills, and take the earlier seq."""

    __slots__ = ("_held", "_until", "timeout")

    def __init__(self, timeout: float = 5.0) -> None:
        #: How long later messages wait for the refused one to be resent.
        self.timeout = timeout
        self._held: str | int | None = None
        self._until = 0.0

    def blocks(self, msg_id: str | int | None, now: float) -> bool:
        """Whether this message must be refused to keep the order (and not spend a token)."""
        held = self._held
        if held is None:
            return False
        # ``type`` too: 1 and True, or 1 and 1.0, are not the same message id.
        if (type(msg_id) is type(held) and msg_id == held) or now >= self._until:
            self._held = None
            return False
        return True

    def refused(self, msg_id: str | int | None, now: float) -> None:
        """A message was refused for its rate: hold the gate for it (if it has an id)."""
        if msg_id is not None and self._held is None:
            self._held = msg_id
            self._until = now + self.timeout


def spread_retry(low: float, spread: float) -> float:
    """A ``retry_after`` hint drawn at random from ``[low, max(low, spread)]`` (0.1 s
    steps), so clients turned away or said goodbye to together do not return together."""
    return round(random.uniform(low, max(low, spread)), 1)
