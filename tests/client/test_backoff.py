"""The reconnect schedule and the retryable/fatal classifier: pure, no sockets, no sleeps."""

from __future__ import annotations

import random

import pytest

from securechat.client.backoff import Backoff, BackoffPolicy, is_fatal, is_fatal_code
from securechat.errors import (
    AuthRefused,
    ConfigError,
    GaveUp,
    QueueFull,
    RemoteProtocolError,
    TLSVerificationFailed,
)


class Extreme:
    """An rng that always returns one end of the range, and records the ranges asked."""

    def __init__(self, top: bool) -> None:
        self.top = top
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return b if self.top else a


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(policy: BackoffPolicy | None = None, *, top: bool = True,
         clock: Clock | None = None) -> tuple[Backoff, Extreme, Clock]:
    rng = Extreme(top)
    clock = clock or Clock()
    return Backoff(policy, rng=rng, clock=clock), rng, clock  # type: ignore[arg-type]


def test_ceiling_doubles_from_base_up_to_cap() -> None:
    """Attempt n may wait up to min(cap, base * 2**n): 0.5, 1, 2, ... 16, 30, 30."""
    backoff, rng, _ = make()
    delays = [backoff.next_delay() for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert all(low == 0.0 for low, _ in rng.ranges)


def test_first_attempt_is_jittered_too() -> None:
    """Full jitter from the very first attempt: it can be 0, and it is drawn from [0, base]."""
    backoff, rng, _ = make(top=False)
    assert backoff.next_delay() == 0.0
    assert rng.ranges[0] == (0.0, 0.5)


def test_real_random_stays_in_bounds_and_spreads() -> None:
    """With a real rng every delay is within [0, ceiling] and 1000 clients do not agree."""
    policy = BackoffPolicy(base=0.5, cap=30.0)
    firsts: list[float] = []
    for seed in range(1000):
        backoff = Backoff(policy, rng=random.Random(seed))
        for attempt in range(12):
            delay = backoff.next_delay()
            assert delay is not None
            assert 0.0 <= delay <= policy.ceiling(attempt)
        first = Backoff(policy, rng=random.Random(seed)).next_delay()
        assert first is not None
        firsts.append(first)
    assert len(set(firsts)) > 990
    assert max(firsts) <= 0.5


def test_huge_attempt_numbers_do_not_overflow() -> None:
    """Attempt 5000 gives the cap, not an OverflowError from 2**n."""
    policy = BackoffPolicy(base=0.5, cap=30.0)
    assert policy.ceiling(5000) == 30.0
    assert policy.ceiling(61) == 30.0


def test_retry_after_is_a_floor_with_jitter_on_top() -> None:
    """A server hint is honoured: the wait is at least retry_after, at most hint + ceiling."""
    backoff, _, _ = make(top=True)
    assert backoff.next_delay(retry_after=7.0) == 7.5
    low, _, _ = make(top=False)
    assert low.next_delay(retry_after=7.0) == 7.0
    assert low.next_delay(retry_after=0) == 0.0


def test_counter_resets_only_after_a_healthy_period() -> None:
    """Reset needs reset_after seconds of authenticated, frame-receiving life."""
    backoff, _, clock = make(BackoffPolicy(reset_after=30.0))
    for _ in range(4):
        backoff.next_delay()
    assert backoff.attempt == 4
    backoff.connected()
    clock.now += 29.9
    backoff.alive()
    assert backoff.attempt == 4, "not yet healthy long enough"
    clock.now += 0.1
    backoff.alive()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 0.5, "the next failure starts from the base again"


def test_short_lived_connections_keep_growing_the_wait() -> None:
    """A server that accepts then drops everyone must not reset the schedule each time."""
    backoff, _, clock = make(BackoffPolicy(reset_after=30.0))
    delays = []
    for _ in range(6):
        delays.append(backoff.next_delay())
        backoff.connected()
        clock.now += 5.0
        backoff.alive()
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_a_link_that_never_proved_healthy_does_not_reset() -> None:
    """Connected long ago but no frame since (it hung): the failure does not reset."""
    backoff, _, clock = make(BackoffPolicy(reset_after=30.0))
    backoff.next_delay()
    backoff.next_delay()
    backoff.connected()
    clock.now += 120.0
    assert backoff.next_delay() == 2.0


def test_max_retries_gives_up_and_none_retries_forever() -> None:
    """max_retries=N allows N retries then gives up; None never gives up."""
    forever, _, _ = make(BackoffPolicy(max_retries=None))
    assert all(forever.next_delay() is not None for _ in range(500))
    never, _, _ = make(BackoffPolicy(max_retries=0))
    assert never.next_delay() is None
    three, _, clock = make(BackoffPolicy(max_retries=3, reset_after=10.0))
    assert [three.next_delay() is not None for _ in range(4)] == [True, True, True, False]
    three.connected()
    clock.now += 10.0
    three.alive()
    assert three.next_delay() is not None, "a healthy period gives the retries back"


@pytest.mark.parametrize("kwargs", [
    {"base": 0}, {"base": -1}, {"cap": 0.1, "base": 0.5}, {"reset_after": -1},
    {"max_retries": -1},
])
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    """A zero or negative base, a cap below base, negative counts: ConfigError."""
    with pytest.raises(ConfigError):
        BackoffPolicy(**kwargs)  # type: ignore[arg-type]


def test_classifier_fatal_and_retryable() -> None:
    """Token refused, certificate untrusted, bad configuration: fatal. The rest: retry."""
    assert is_fatal(AuthRefused("auth_failed", "unknown token"))
    assert is_fatal(AuthRefused("revoked", "revoked"))
    assert is_fatal(TLSVerificationFailed("unknown CA"))
    assert is_fatal(ConfigError("bad CA file"))
    for exc in (ConnectionRefusedError(), ConnectionResetError(), TimeoutError(), EOFError(),
                GaveUp("x"), QueueFull("x"), RemoteProtocolError("bad_frame", "x")):
        assert not is_fatal(exc), exc
    assert is_fatal_code("auth_failed")
    assert is_fatal_code("revoked")
    for code in ("server_full", "auth_throttled", "slow_consumer", "idle_timeout",
                 "frame_too_large", "rate_limited", "internal_error", "auth_timeout"):
        assert not is_fatal_code(code), code
