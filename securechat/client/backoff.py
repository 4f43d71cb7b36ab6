"""When to reconnect, and whether to: the client's retry policy as pure code.

No sockets, no threads, no sleeping: the caller passes the clock and the random
source, so every rule here is unit-tested without waiting (tests/test_backoff.py).

Why full jitter on *every* attempt, the first included: when a server restarts,
all its clients lose the link in the same millisecond. A fixed first wait (or
jitter only from the second attempt on) makes them all come back in lock-step
and the restarted server takes the whole herd at once; shared/design-notes.md s5
measured the difference on a 1,000-client storm.

The schedule::

    delay(n) = floor + uniform(0, min(cap, base * 2**n))

``n`` counts reconnect attempts since the link was last healthy (0 for the
first). ``floor`` is the server's ``retry_after`` hint when it gave one (``bye``
with reason ``shutdown``, ``error server_full`` / ``auth_throttled``), else 0:
the server already spreads its hints, the jitter on top keeps clients that got
the same hint apart. A hint is clamped to ``[0, cap]`` first
(:meth:`BackoffPolicy.clamp_hint`): a server, or anything posing as one, must not
make a client wait forever or crash it with ``inf``, ``nan`` or ``1e300``.
``n`` goes back to 0 only after a connection stayed
authenticated and healthy for ``reset_after`` seconds, so a server that accepts
and then drops every client at once still sees the waits grow.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import AuthRefused, ConfigError, LocalProtocolError, TLSVerificationFailed

__all__ = [
    "FATAL_CODES",
    "Backoff",
    "BackoffPolicy",
    "is_fatal",
    "is_fatal_code",
]

#: Server error codes that retrying cannot fix: the token is bad or was revoked.
FATAL_CODES = frozenset({"auth_failed", "revoked"})


def is_fatal_code(code: str) -> bool:
    """Whether a closing server error ``code`` must end the client instead of reconnecting."""
    return code in FATAL_CODES


def is_fatal(exc: BaseException) -> bool:
    """Whether a failure must not be retried.

    Fatal: the server refused the token, the certificate did not verify, or our own
    configuration/usage is wrong (retrying would fail the same way forever).
    Everything else (refused, reset, EOF, timeouts, heartbeat death, server
    shutdown, ``server_full``, ``auth_throttled``, ``slow_consumer``...) is transient.
    The I/O layer maps ``ssl.SSLCertVerificationError`` to
    :class:`TLSVerificationFailed` before asking, so this module needs no ``ssl``.
    """
    return isinstance(exc, AuthRefused | TLSVerificationFailed | ConfigError | LocalProtocolError)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffPolicy:
    """Reconnect settings; times in seconds.

    ``max_retries=None`` retries forever; ``0`` gives up after the first failure.
    """

    base: float = 0.5
    cap: float = 30.0
    reset_after: float = 30.0
    max_retries: int | None = None

    def __post_init__(self) -> None:
        if self.base <= 0:
            raise ConfigError("backoff base must be greater than 0")
        if self.cap < self.base:
            raise ConfigError("backoff cap must be at least the base")
        if self.reset_after < 0:
            raise ConfigError("backoff reset_after must not be negative")
        if self.max_retries is not None and self.max_retries < 0:
            raise ConfigError("max_retries must not be negative")

    def ceiling(self, attempt: int) -> float:
        """The largest jitter for reconnect attempt ``attempt`` (0-based)."""
        # 2**n overflows a float near n=1024; the cap is reached long before.
        if attempt >= 62:
            return self.cap
        return min(self.cap, self.base * (1 << attempt))

    def clamp_hint(self, retry_after: float | None) -> float | None:
        """A server's ``retry_after`` made safe to wait on: within ``[0, cap]``.

        None and NaN mean "no hint"; a negative hint is 0 and a huge or infinite
        one is the cap (``time.monotonic() + 1e300`` would overflow ``select``).
        """
        if retry_after is None or math.isnan(retry_after):
            return None
        return min(max(retry_after, 0.0), self.cap)


class Backoff:
    """The reconnect schedule of one client.

    Usage from the I/O layer::

        delay = backoff.next_delay(retry_after)   # after a failure; None = give up
        ...wait delay, connect...
        backoff.connected()                       # authenticated
        backoff.alive()                           # whenever a frame arrives

    ``rng`` is anything with ``uniform(a, b)`` (a :class:`random.Random`); ``clock``
    returns monotonic seconds. Not thread-safe: it belongs to the I/O thread.
    """

    __slots__ = ("_clock", "_connected_at", "_rng", "attempt", "policy")

    def __init__(self, policy: BackoffPolicy | None = None, *,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or BackoffPolicy()
        self._rng = rng or random.Random()
        self._clock = clock
        #: Reconnect attempts since the link was last healthy for ``reset_after``.
        self.attempt = 0
        self._connected_at: float | None = None

    def connected(self) -> None:
        """The client authenticated: start timing the healthy period."""
        self._connected_at = self._clock()
        self._check_reset()

    def alive(self) -> None:
        """A frame arrived on an authenticated link: evidence that it is healthy.

        The counter is reset here, while the link is known good, rather than when
        it fails: a link that hangs for three heartbeats before it is declared dead
        was not healthy during those seconds.
        """
        self._check_reset()

    def _check_reset(self) -> None:
        if (self._connected_at is not None and self.attempt
                and self._clock() - self._connected_at >= self.policy.reset_after):
            self.attempt = 0

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None when retries are exhausted.

        Call once per failure (of a connection attempt, or of a live link); each call
        counts one attempt. ``retry_after`` is clamped (:meth:`BackoffPolicy.clamp_hint`),
        so the delay is at most twice the cap.
        """
        self._connected_at = None
        policy = self.policy
        if policy.max_retries is not None and self.attempt >= policy.max_retries:
            return None
        jitter = self._rng.uniform(0.0, policy.ceiling(self.attempt))
        self.attempt += 1
        floor = policy.clamp_hint(retry_after) or 0.0
        return floor + jitter
