"""securechat.server.limits: the token bucket and the bounded per-key buckets (pure, no clock)."""

from __future__ import annotations

import pytest

from securechat.server.limits import KeyedBuckets, OrderGate, TokenBucket


def test_token_bucket_burst_then_rate() -> None:
    """A burst is allowed at once, then tokens come back at the rate, capped at the burst."""
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) is True
    assert bucket.take(0.5) is False
    assert bucket.take(100.0) and bucket.take(100.0) and bucket.take(100.0)
    assert not bucket.take(100.0)  # refill is capped at the burst


def test_token_bucket_zero_rate_is_unlimited() -> None:
    """Rate 0 turns the limit off."""
    bucket = TokenBucket(rate=0, burst=1, now=0.0)
    assert all(bucket.take(0.0) for _ in range(1000))


def test_keyed_buckets_forget_least_recently_used() -> None:
    """Past max_keys the least recently used key is forgotten (bounded memory)."""
    buckets = KeyedBuckets(rate=1.0, burst=1, max_keys=2)
    assert buckets.take("a", 0.0)
    assert not buckets.allowed("a", 0.0)
    buckets.take("b", 0.0)
    buckets.take("c", 0.0)  # evicts "a"
    assert len(buckets) == 2
    assert buckets.allowed("a", 0.0)


def test_order_gate_holds_later_messages_until_the_refused_one_returns() -> None:
    """After a refusal, later ids are blocked until the refused id comes back."""
    gate = OrderGate(timeout=5.0)
    assert not gate.blocks(1, 0.0)
    gate.refused(2, 0.0)
    assert gate.blocks(3, 0.1)  # would overtake 2
    assert gate.blocks("2", 0.1)  # another id that only looks the same
    assert not gate.blocks(2, 0.2)  # the refused one itself: the gate opens
    assert not gate.blocks(3, 0.2)


def test_order_gate_opens_after_its_timeout_and_ignores_messages_without_id() -> None:
    """A client that never resends cannot block the session for longer than the timeout."""
    gate = OrderGate(timeout=5.0)
    gate.refused(None, 0.0)  # no id: nothing to wait for
    assert not gate.blocks(7, 0.1)
    gate.refused(7, 1.0)
    gate.refused(8, 1.1)  # the first refusal is the one that must come back
    assert gate.blocks(8, 5.9)
    assert not gate.blocks(8, 6.0)
