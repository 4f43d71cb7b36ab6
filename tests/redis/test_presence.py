"""Presence across nodes on one real Redis, clients over real TLS: the member list and
join/leave are the room's, a node killed without a word has its members leave within
the presence ttl, and a grant removed in the shared tokens file reaches every node."""

from __future__ import annotations

import time
from typing import Any

import pytest

from securechat.store.redis_presence import presence_key
from tests.redis.conftest import Nodes
from tests.redis.test_faults import log_of
from tests.redis_support import RedisServer, user_everywhere
from tests.support import ServerProcesses, WireClient, seconds, wait_for

pytestmark = pytest.mark.timeout(40)

RW = "rw"


def presence(wire: WireClient, timeout: float = 5.0) -> dict[str, Any]:
    """The next join or leave (pings answered); anything else fails the test."""
    while True:
        frame = wire.recv(timeout)
        if frame.get("type") == "ping":
            wire.send({"type": "pong"})
            continue
        assert frame.get("type") in ("join", "leave"), f"expected presence, got {frame}"
        break
    return {k: frame[k] for k in ("type", "user", "reason") if k in frame}


def in_presence_set(redis: RedisServer, room: str, user: str) -> bool:
    """Whether some node has written ``user`` into ``room``'s presence set."""
    client = redis.client()
    try:
        return any(str(m).partition(" ")[2] == user
                   for m in client.zrange(presence_key(room), 0, -1))
    finally:
        client.close()


def test_members_and_join_leave_are_the_rooms_not_a_nodes(nodes: Nodes) -> None:
    """Presence is eventually consistent: each step waits until the other node has
    heard of the last one (a few ms), as a person joining a moment later would."""
    a, b = nodes(2)
    ta, tb, tc = (user_everywhere([a, b], name) for name in ("alice", "bob", "carol"))
    alice, _ = a.login(ta)
    wait_for(lambda: b.server.rooms.default_room.members() == ("alice",),
             what="node b to hear that alice joined on node a")
    bob, welcome = b.login(tb)
    assert welcome["members"] == ["alice", "bob"]  # alice is on the other node
    assert presence(alice) == {"type": "join", "user": "bob"}

    # alice's second device, on bob's node: she is no new person for anyone.
    alice2, welcome2 = b.login(ta)
    assert welcome2["members"] == ["alice", "bob"]
    carol, welcome3 = a.login(tc)
    assert welcome3["members"] == ["alice", "bob", "carol"]
    assert presence(bob) == {"type": "join", "user": "carol"}  # not a join of alice
    assert presence(alice) == {"type": "join", "user": "carol"}

    alice2.send({"type": "bye"})
    alice2.expect_closed()
    bob.send({"type": "bye"})
    bob.expect_closed()
    # alice still has a session (on a): only bob's leave reaches carol.
    assert presence(carol) == {"type": "leave", "user": "bob", "reason": "bye"}
    assert presence(alice) == {"type": "leave", "user": "bob", "reason": "bye"}
    wait_for(lambda: b.server.rooms.default_room.members() == ("alice", "carol"),
             what="node b to see bob gone and alice still in (on node a)")
    alice.send({"type": "bye"})
    alice.expect_closed()
    assert presence(carol) == {"type": "leave", "user": "alice", "reason": "bye"}
    wait_for(lambda: b.server.rooms.default_room.members() == ("carol",),
             what="node b to see alice gone")


def test_rooms_joined_by_name_share_presence_too(nodes: Nodes, redis: RedisServer) -> None:
    a, b = nodes(2)
    grants = {"ops": RW}
    ta = a.add_user("alice", grants)
    wait_for(lambda: b.server.tokens.ids() == a.server.tokens.ids(), what="b to load alice")
    tb = a.add_user("bob", grants)
    wait_for(lambda: b.server.tokens.ids() == a.server.tokens.ids(), what="b to load bob")
    alice, _ = a.login(ta, rooms=["ops"])
    assert alice.expect("joined")["members"] == ["alice"]
    wait_for(lambda: in_presence_set(redis, "ops", "alice"), what="alice's presence written")
    bob, _ = b.login(tb, rooms=["ops"])
    assert bob.expect("joined")["members"] == ["alice", "bob"]
    frame = alice.expect("join")
    assert (frame["room"], frame["user"]) == ("ops", "bob")
    bob.send({"type": "leave", "room": "ops"})
    assert bob.expect("left")["room"] == "ops"
    frame = alice.expect("leave")
    assert (frame["room"], frame["user"], frame["reason"]) == ("ops", "bob", "left")


def test_a_killed_nodes_members_leave_within_the_presence_ttl(
        procs: ServerProcesses, redis: RedisServer) -> None:
    ttl = 1.5
    one = procs.start("--store", redis.url, "--presence-ttl", str(ttl))
    two = procs.start("--store", redis.url, "--presence-ttl", str(ttl))
    alice, _ = procs.login(one, procs.token("alice"))
    bob, welcome = procs.login(two, procs.token("bob"))
    if welcome["members"] != ["alice", "bob"]:  # alice's join was still on its way
        assert welcome["members"] == ["bob"]
        assert presence(bob) == {"type": "join", "user": "alice"}
    assert presence(alice) == {"type": "join", "user": "bob"}

    two.kill()  # SIGKILL: no leave is ever published
    killed = time.monotonic()
    assert presence(alice, timeout=ttl * 4) == {"type": "leave", "user": "bob",
                                                "reason": "disconnected"}
    took = time.monotonic() - killed
    assert took <= seconds(ttl * 4 / 3 + 1.0), f"bob left after {took:.2f} s"
    _carol, welcome = procs.login(one, procs.token("carol"))
    assert welcome["members"] == ["alice", "carol"]


def test_a_grant_removed_in_the_shared_file_reaches_every_node_within_2_s(
        nodes: Nodes) -> None:
    a, b = nodes(2)
    grants = {"lobby": RW, "ops": RW}
    token = a.add_user("alice", grants)
    wait_for(lambda: b.server.tokens.ids() == a.server.tokens.ids(), what="b to load it")
    alice, _ = b.login(token, rooms=["lobby", "ops"])  # on the node that did not write
    alice.expect("joined"), alice.expect("joined")

    started = time.monotonic()
    a.set_grants("alice", {"lobby": RW})
    error = alice.expect("error", timeout=3)
    assert (error["code"], error["room"]) == ("forbidden", "ops")
    assert alice.expect("left") == {"type": "left", "room": "ops", "reason": "forbidden"}
    took = time.monotonic() - started
    assert took <= seconds(2.0), f"node b applied the change after {took:.2f} s"
    assert alice.expect("grants") == {"type": "grants", "grants": {"lobby": RW}}


def test_a_join_missed_while_the_subscription_was_lost_is_healed_at_once(
        nodes: Nodes, redis: RedisServer) -> None:
    """Node a's subscription is killed; bob joins on node b while a has none. As soon as
    a subscribes again it reads the roster: alice hears of bob then, not a refresh
    interval (10 s) later."""
    a, b = nodes(2)
    ta, tb = user_everywhere([a, b], "alice"), user_everywhere([a, b], "bob")
    alice, _ = a.login(ta)
    wait_for(lambda: b.server.rooms.default_room.members() == ("alice",),
             what="node b to hear that alice joined on node a")
    sub = log_of(a).subscriber
    sub.first_pause = seconds(1.5)
    control = redis.client()
    try:
        before = sub.subscriptions
        assert control.client_kill_filter(_type="pubsub") == 2  # both nodes'
        wait_for(lambda: not sub.subscribed.is_set(), what="node a to see it lost")
        _bob, welcome = b.login(tb)
        assert welcome["members"] == ["alice", "bob"]
        assert not sub.subscribed.is_set(), "node a subscribed again too soon to miss it"
        wait_for(lambda: sub.subscriptions > before and sub.subscribed.is_set(),
                 timeout=5, what="node a to subscribe again")
        made_again = time.monotonic()
        assert presence(alice, timeout=5) == {"type": "join", "user": "bob"}
        assert time.monotonic() - made_again < seconds(2.0)
    finally:
        control.close()


def test_a_node_that_shuts_down_says_its_members_left_at_once(nodes: Nodes) -> None:
    """A graceful stop (SIGTERM's path) writes its sessions' leaves before it closes the
    log: the other node announces them now, with reason shutdown, not after the ttl."""
    a, b = nodes(2)
    ta, tb = user_everywhere([a, b], "alice"), user_everywhere([a, b], "bob")
    alice, _ = a.login(ta)
    wait_for(lambda: b.server.rooms.default_room.members() == ("alice",),
             what="node b to hear that alice joined on node a")
    bob, _ = b.login(tb)
    assert presence(alice) == {"type": "join", "user": "bob"}
    started = time.monotonic()
    assert b.server.shutdown()
    bye = bob.expect("bye", skip=("ping", "join", "leave"))
    assert bye["reason"] == "shutdown"
    assert presence(alice) == {"type": "leave", "user": "bob", "reason": "shutdown"}
    assert time.monotonic() - started < seconds(5.0)  # the ttl is 30 s
