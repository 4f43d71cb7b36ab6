"""Several real nodes on one real Redis, clients over real TLS: one order everywhere,
acks in that order, resends recognised and resumes served by any node."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.redis.conftest import Nodes
from tests.redis_support import user_everywhere
from tests.support import RunningServer, WireClient, publish, read_replay

pytestmark = pytest.mark.timeout(30)

SKIP = ("ping", "join", "leave")


def burst(wire: WireClient, prefix: str, count: int) -> None:
    """``count`` messages in one write, ids 0..count-1."""
    wire.send(b"".join(json.dumps({"type": "msg", "body": f"{prefix}{i}", "id": i}).encode()
                       + b"\n" for i in range(count)))


def room_frames(wire: WireClient, count: int, kinds: tuple[str, ...] = ("msg",)
                ) -> list[dict[str, Any]]:
    """The next ``count`` frames of those kinds (pings answered, presence passed over)."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        frame = wire.recv()
        kind = frame.get("type")
        if kind == "ping":
            wire.send({"type": "pong"})
        elif kind in kinds:
            out.append(frame)
        else:
            assert kind in SKIP, f"unexpected frame {frame}"
    return out


def four_users(nodes: list[RunningServer]) -> list[str]:
    return [user_everywhere(nodes, name) for name in ("alice", "bob", "carol", "dave")]


def test_members_on_different_nodes_see_one_order(nodes: Nodes) -> None:
    """Concurrent senders on two nodes: watchers on both nodes see the same seqs."""
    a, b = nodes(2)
    ta, tb, tc, td = four_users([a, b])
    carol, _ = a.login(tc)
    dave, _ = b.login(td)
    alice, welcome = a.login(ta)
    bob, _ = b.login(tb)
    start = welcome["seq"]
    burst(alice, "a", 60)
    burst(bob, "b", 60)
    on_a = [(m["seq"], m["from"], m["body"]) for m in room_frames(carol, 120)]
    on_b = [(m["seq"], m["from"], m["body"]) for m in room_frames(dave, 120)]
    assert on_a == on_b
    assert [seq for seq, _, _ in on_a] == list(range(start + 1, start + 121))
    assert [body for _, who, body in on_a if who == "alice"] == [f"a{i}" for i in range(60)]
    assert [body for _, who, body in on_a if who == "bob"] == [f"b{i}" for i in range(60)]


def test_the_sender_gets_ack_n_before_message_n_plus_1(nodes: Nodes) -> None:
    """What each sender receives (its acks, the other node's messages) is in seq order
    with no gap: the ack comes from the same ordered channel as everyone's messages."""
    a, b = nodes(2)
    ta, tb, _, _ = four_users([a, b])
    alice, welcome = a.login(ta)
    bob, _ = b.login(tb)
    burst(alice, "a", 50)
    burst(bob, "b", 50)
    for wire in (alice, bob):
        frames = room_frames(wire, 100, ("msg", "ack"))
        seqs = [f["seq"] for f in frames]
        assert seqs == list(range(welcome["seq"] + 1, welcome["seq"] + 101))
        acks = [f["id"] for f in frames if f["type"] == "ack"]
        assert acks == list(range(50))


def test_a_resend_to_another_node_is_recognised(nodes: Nodes) -> None:
    """id X sent to node A, resent to node B by the same client: duplicate ack with the
    original seq, and the message is delivered once."""
    a, b = nodes(2)
    ta, _, _, td = four_users([a, b])
    dave, _ = b.login(td)
    alice, _ = a.login(ta, client_id="phone-1")
    first = publish(alice, ["only once"], ["x1"])[0]
    again, _ = b.login(ta, client_id="phone-1")
    second = publish(again, ["only once"], ["x1"])[0]
    assert second["seq"] == first["seq"]
    assert second.get("duplicate") is True
    assert "duplicate" not in first
    marker = publish(alice, ["after"], ["x2"])[0]
    got = room_frames(dave, 2)
    assert [(m["body"], m["seq"]) for m in got] == [("only once", first["seq"]),
                                                   ("after", marker["seq"])]


def test_a_member_resumes_on_another_node_with_no_gap(nodes: Nodes) -> None:
    """Dropped from A, back on B with resume: exactly the messages it missed."""
    a, b = nodes(2)
    ta, tb, _, _ = four_users([a, b])
    alice, _ = a.login(ta)
    bob, welcome = a.login(tb)
    seen = publish(alice, ["before"])[0]["seq"]
    assert room_frames(bob, 1)[0]["seq"] == seen
    bob.close()
    missed = publish(alice, [f"m{i}" for i in range(5)])
    back, again = b.login(tb, resume=(welcome["epoch"], seen))
    assert again["epoch"] == welcome["epoch"]
    replayed, caught_up = read_replay(back)
    assert [m["seq"] for m in replayed] == [ack["seq"] for ack in missed]
    assert [m["body"] for m in replayed] == [f"m{i}" for i in range(5)]
    assert caught_up["replayed"] == 5
    assert "reset" not in caught_up


def test_history_on_a_node_started_later_reads_the_stream(nodes: Nodes) -> None:
    """Messages sent on node A are history on node B (started afterwards: no cache)."""
    (a,) = nodes(1)
    ta = a.add_user("alice")
    alice, _ = a.login(ta)
    acks = publish(alice, [f"h{i}" for i in range(12)])
    (b,) = nodes(1)
    tb = user_everywhere([a, b], "bob")
    bob, welcome = b.login(tb)
    assert welcome["seq"] == acks[-1]["seq"]
    bob.send({"type": "history", "id": "h", "before": acks[-1]["seq"], "limit": 5})
    page = [bob.expect("history_msg") for _ in range(5)]
    end = bob.expect("history_end")
    assert [m["body"] for m in page] == [f"h{i}" for i in range(6, 11)]
    assert end["count"] == 5 and end["more"] is True
    assert end["oldest"] == acks[0]["seq"] and end["latest"] == acks[-1]["seq"]
    resumed, _ = b.login(tb, resume=(welcome["epoch"], acks[3]["seq"]))
    replayed, caught_up = read_replay(resumed)
    assert [m["body"] for m in replayed] == [f"h{i}" for i in range(4, 12)]
    assert caught_up["replayed"] == 8


def test_three_nodes_agree_and_pipeline_their_publishes(nodes: Nodes) -> None:
    """Three nodes, a burst from each: one order on all three, and fewer Redis round
    trips than messages (the broker pipelines)."""
    servers = nodes(3, msg_rate=0)
    tokens = [user_everywhere(servers, name) for name in ("u0", "u1", "u2", "w0", "w1", "w2")]
    watchers = [node.login(tokens[3 + i])[0] for i, node in enumerate(servers)]
    senders = [node.login(tokens[i])[0] for i, node in enumerate(servers)]
    for i, wire in enumerate(senders):
        burst(wire, f"s{i}-", 200)
    seen = [[(m["seq"], m["body"]) for m in room_frames(w, 600)] for w in watchers]
    assert seen[0] == seen[1] == seen[2]
    for wire in senders:
        frames = room_frames(wire, 600, ("ack", "msg"))
        assert sum(f["type"] == "ack" for f in frames) == 200
    for node in servers:
        broker = node.server.rooms.log.broker  # type: ignore[attr-defined]
        assert broker.published == 200
        assert broker.round_trips / broker.published < 1
