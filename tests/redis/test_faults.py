"""What a node does when Redis goes away, comes back empty or with its AOF, or drops
the node's subscription: real redis-server processes killed and restarted."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from securechat.store.base import Pending
from securechat.store.redis_log import RedisLog
from securechat.store.redis_script import channel, encode_tail, meta_key, stream_key
from tests.redis.conftest import Nodes
from tests.redis.test_nodes import room_frames
from tests.redis_support import RedisServer, user_everywhere
from tests.support import RunningServer, WireClient, publish, read_replay, seconds, wait_for

pytestmark = pytest.mark.timeout(30)


def log_of(node: RunningServer) -> RedisLog:
    log = node.server.rooms.log
    assert isinstance(log, RedisLog)
    return log


def answer(wire: WireClient) -> dict[str, Any]:
    """The next ack or error (pings answered, room traffic passed over)."""
    while True:
        frame = wire.recv()
        if frame["type"] == "ping":
            wire.send({"type": "pong"})
        elif frame["type"] in ("ack", "error"):
            return frame


def publish_until_acked(wire: WireClient, body: str, ids: list[int],
                        timeout: float = 10.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send ``body`` (the next id each try) until acknowledged, as a client honouring
    store_unavailable would; the ack and the refusals on the way."""
    deadline = time.monotonic() + seconds(timeout)
    refusals: list[dict[str, Any]] = []
    pause = threading.Event()  # never set: a bounded wait for retry_after
    for msg_id in ids:
        wire.send({"type": "msg", "body": body, "id": msg_id})
        frame = answer(wire)
        if frame["type"] == "ack":
            return frame, refusals
        assert frame["code"] == "store_unavailable", frame
        refusals.append(frame)
        if time.monotonic() > deadline:
            break
        # Honour retry_after (capped: the test's Redis is back within moments).
        pause.wait(min(float(frame.get("retry_after") or 0.1), 0.5))
    raise AssertionError(f"{body!r} was not acknowledged within {timeout} s")


def test_redis_unreachable_refuses_then_recovers(nodes: Nodes, redis: RedisServer) -> None:
    """Redis killed: a publish gets store_unavailable with retry_after, the client stays
    connected, health() says why; Redis back: publishing works, health() is None."""
    (a,) = nodes(1)
    alice, _ = a.login(a.add_user("alice"))
    publish(alice, ["before"])
    log = log_of(a)
    assert log.health() is None and a.server.store_health() is None
    redis.kill()
    alice.send({"type": "msg", "body": "lost?", "id": 100})
    refusal = answer(alice)
    assert refusal["type"] == "error" and refusal["code"] == "store_unavailable"
    assert refusal["id"] == 100 and refusal["retry_after"] > 0
    wait_for(lambda: log.health() is not None, what="health() to report the failure")
    assert "Redis" in (a.server.store_health() or "")
    redis.start()
    ack, _ = publish_until_acked(alice, "after", list(range(101, 200)))
    assert ack["seq"] >= 1
    wait_for(lambda: log.health() is None, what="health() to clear")


@pytest.mark.parametrize("redis", [False], indirect=True)
def test_a_redis_that_lost_its_data_gives_a_new_epoch(nodes: Nodes,
                                                      redis: RedisServer) -> None:
    """Redis restarted without persistence: the room's epoch is new, seq goes on above
    the last one the nodes saw (members still connected never see it go back), members
    connected then are told to come back (bye store_reset), and a client resuming from
    the old epoch is told (reset)."""
    a, b = nodes(2)
    ta = user_everywhere([a, b], "alice")
    tb = user_everywhere([a, b], "bob")
    tc = user_everywhere([a, b], "carol")
    alice, welcome = a.login(ta)
    carol, _ = b.login(tc)
    acks = publish(alice, ["one", "two", "three"])
    assert [m["body"] for m in room_frames(carol, 3)] == ["one", "two", "three"]
    redis.restart()
    ack, _ = publish_until_acked(alice, "fresh", list(range(10, 100)))
    assert ack["seq"] == acks[-1]["seq"] + 1
    # carol, connected all along: the new log's first message, then bye store_reset
    # (her position in the old epoch means nothing now), then the end of the stream.
    (fresh,) = room_frames(carol, 1)
    assert (fresh["body"], fresh["seq"]) == ("fresh", ack["seq"])
    bye = carol.expect("bye", skip=("ping", "join", "leave"))
    assert bye["reason"] == "store_reset" and 0 < bye["retry_after"] <= 1.0
    assert [f["type"] for f in carol.expect_closed()] == []
    for node in (a, b):
        room = node.server.room
        wait_for(lambda: room.epoch not in ("", welcome["epoch"])  # noqa: B023
                 and room.seq == ack["seq"], what="the room to take the new epoch")  # noqa: B023
    bob, again = b.login(tb, resume=(welcome["epoch"], acks[-1]["seq"]))
    assert again["epoch"] != welcome["epoch"] and again["seq"] == ack["seq"]
    replayed, caught_up = read_replay(bob)
    assert replayed == [] and caught_up.get("reset") is True


@pytest.mark.parametrize("redis", [True], indirect=True)
def test_redis_restarted_with_its_aof_keeps_epoch_and_seq(nodes: Nodes,
                                                          redis: RedisServer) -> None:
    """Redis killed and restarted with appendonly: the same epoch, seq goes on, and a
    resume gets exactly what it missed."""
    (a,) = nodes(1)
    tb = user_everywhere([a], "bob")
    alice, welcome = a.login(a.add_user("alice"))
    acks = publish(alice, ["one", "two"])
    redis.restart()
    ack, _ = publish_until_acked(alice, "three", list(range(10, 100)))
    assert ack["seq"] == acks[-1]["seq"] + 1
    assert a.server.room.epoch == welcome["epoch"]
    bob, again = a.login(tb, resume=(welcome["epoch"], acks[0]["seq"]))
    assert again["epoch"] == welcome["epoch"]
    replayed, caught_up = read_replay(bob)
    assert [m["body"] for m in replayed] == ["two", "three"]
    assert "reset" not in caught_up


def test_a_lost_subscription_is_made_again_and_the_gap_filled(nodes: Nodes,
                                                              redis: RedisServer) -> None:
    """CLIENT KILL TYPE pubsub while messages flow: the nodes resubscribe and their
    members get every message once, in order; the senders all their acks."""
    a, b = nodes(2, msg_rate=0)
    ta, tw = user_everywhere([a, b], "alice"), user_everywhere([a, b], "watcher")
    watcher, welcome = b.login(tw)
    alice, _ = a.login(ta)
    control = redis.client()
    for node in (a, b):  # a pause long enough that the 40 messages go out meanwhile
        log_of(node).subscriber.first_pause = seconds(0.5)
    try:
        killed = control.client_kill_filter(_type="pubsub")
        assert killed == 2
        publish(alice, [f"m{i}" for i in range(40)])
        got = room_frames(watcher, 40)
        assert [m["seq"] for m in got] == list(range(welcome["seq"] + 1, welcome["seq"] + 41))
        assert [m["body"] for m in got] == [f"m{i}" for i in range(40)]
        for node in (a, b):
            sub = log_of(node).subscriber
            wait_for(lambda: sub.subscriptions >= 2 and sub.subscribed.is_set(),  # noqa: B023
                     what="the subscription to be made again")
            assert sub.filled == 40
        last = publish(alice, ["after"])[0]
        assert room_frames(watcher, 1)[0]["seq"] == last["seq"]
    finally:
        control.close()


def test_a_seq_that_jumps_on_the_channel_is_filled_from_the_stream(
        nodes: Nodes, redis: RedisServer) -> None:
    """A message that never reached the channel (here: written to the stream by hand,
    only the next one published) is read from the stream before the next is handed on."""
    (a,) = nodes(1)
    alice, _ = a.login(a.add_user("alice"))
    first = publish(alice, ["one"])[0]["seq"]
    control = redis.client()
    try:
        epoch = control.hget(meta_key("lobby"), "epoch")
        at = control.hget(meta_key("lobby"), "at")
        tails = [encode_tail(Pending("lobby", "ghost", None, None, body), f"elsewhere:{i}")
                 for i, body in enumerate(("two", "three"))]
        for offset, tail in enumerate(tails, start=1):
            control.xadd(stream_key("lobby"), {"t": at, "m": tail}, id=f"{first + offset}-0")
        control.hset(meta_key("lobby"), "seq", first + 2)
        control.publish(channel("lobby"), f"{first + 2}|{at}|{epoch}|{tails[1]}")
    finally:
        control.close()
    got = room_frames(alice, 2)
    assert [(m["seq"], m["from"], m["body"]) for m in got] == [
        (first + 1, "ghost", "two"), (first + 2, "ghost", "three")]
    assert log_of(a).subscriber.filled == 1
    assert publish(alice, ["four"])[0]["seq"] == first + 3
