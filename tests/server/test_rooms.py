"""Many rooms over real TLS: joining and leaving by name, per-room seq, presence, history
and resume, grants (forbidden, read-only, removed while connected), the limits, and a
protocol 1/2 client that never names a room."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.server.rooms_support import NOISE, RW, joined, received, send_to
from tests.support import (
    MakeServer,
    RunningServer,
    publish,
    read_replay,
    seconds,
    stop_server,
)


def test_v3_login_into_two_rooms_and_exact_delivery_per_room(server: RunningServer) -> None:
    """Each member gets exactly its rooms' messages, each seq numbered per room."""
    grants = {"general": RW, "ops": RW}
    alice, welcome = server.user("alice", rooms=["general", "ops"], grants=grants)
    assert welcome["rooms"] == ["general", "ops"] and welcome["grants"] == grants
    assert "room" not in welcome and welcome["protocol"] == 3
    first, second = alice.expect("joined"), alice.expect("joined")
    assert (first["room"], first["members"], first["seq"]) == ("general", ["alice"], 0)
    assert (second["room"], second["members"], second["seq"]) == ("ops", ["alice"], 0)
    assert first["epoch"] == second["epoch"] == server.server.room.epoch
    bob, _ = server.user("bob", rooms=["general"], grants=grants)
    assert bob.expect("joined")["members"] == ["alice", "bob"]
    carol, _ = server.user("carol", rooms=["ops"], grants=grants)
    carol.expect("joined")

    general = send_to(alice, "general", ["g1", "g2", "g3"])
    ops = send_to(alice, "ops", ["o1", "o2"])
    assert [a["seq"] for a in general] == [1, 2, 3]  # seq is per room
    assert [a["seq"] for a in ops] == [1, 2]
    send_to(alice, "general", ["end"], "mark")
    send_to(alice, "ops", ["end"], "mark")

    bob_got = received(bob, "end", "general")
    assert [(m["room"], m["body"], m["seq"]) for m in bob_got] == [
        ("general", "g1", 1), ("general", "g2", 2), ("general", "g3", 3), ("general", "end", 4)]
    carol_got = received(carol, "end", "ops")
    assert [(m["room"], m["body"], m["seq"]) for m in carol_got] == [
        ("ops", "o1", 1), ("ops", "o2", 2), ("ops", "end", 3)]
    assert all(m["from"] == "alice" for m in bob_got + carol_got)


def test_join_and_leave_by_name_with_presence_per_room(server: RunningServer) -> None:
    grants = {"general": RW, "ops": RW}
    alice, _ = server.user("alice", rooms=["general", "ops"], grants=grants)
    alice.expect("joined"), alice.expect("joined")
    bob, _ = server.user("bob", rooms=["general"], grants=grants)
    bob.expect("joined")
    assert alice.expect("join") == {"type": "join", "room": "general", "user": "bob"}

    ops = joined(bob, "ops")
    assert ops["members"] == ["alice", "bob"]
    assert alice.expect("join") == {"type": "join", "room": "ops", "user": "bob"}
    send_to(alice, "ops", ["while bob is in"])
    assert bob.expect("msg")["body"] == "while bob is in"

    bob.send({"type": "leave", "room": "ops"})
    assert bob.expect("left") == {"type": "left", "room": "ops", "reason": "left"}
    assert alice.expect("leave") == {"type": "leave", "room": "ops", "user": "bob",
                                     "reason": "left"}
    send_to(alice, "ops", ["after bob left"])
    send_to(alice, "general", ["marker"])
    # Bob still gets general, and nothing of ops any more.
    assert [(m["room"], m["body"]) for m in received(bob, "marker", "general")] == [
        ("general", "marker")]

    bob.send({"type": "leave", "room": "ops"})
    error = bob.expect("error")
    assert (error["code"], error["room"]) == ("not_joined", "ops")
    bob.send({"type": "join", "room": "general"})
    error = bob.expect("error")
    assert (error["code"], error["room"]) == ("already_joined", "general")
    bob.send({"type": "msg", "room": "ops", "body": "not in it", "id": 9})
    error = bob.expect("error")
    assert (error["code"], error["room"], error["id"]) == ("not_joined", "ops", 9)


def test_a_forbidden_room_is_refused_and_the_others_joined(server: RunningServer) -> None:
    alice, welcome = server.user("alice", rooms=["general", "secret", "ops"],
                                 grants={"general": RW, "ops": RW})
    assert welcome["rooms"] == ["general", "ops"]
    assert alice.expect("joined")["room"] == "general"  # in the order of the list
    error = alice.expect("error")
    assert (error["code"], error["room"]) == ("forbidden", "secret")
    assert alice.expect("joined")["room"] == "ops"
    alice.send({"type": "join", "room": "secret"})
    error = alice.expect("error")
    assert (error["code"], error["room"]) == ("forbidden", "secret")
    alice.send({"type": "history", "room": "secret", "id": "h"})
    error = alice.expect("error")
    assert (error["code"], error["room"], error["id"]) == ("forbidden", "secret", "h")
    alice.send({"type": "ping"})
    assert alice.expect("pong") == {"type": "pong"}  # the session goes on


@pytest.mark.parametrize("name, rule", [
    ("Ops", "lower case"), ("a b", "lower-case letters"), ("-ops", "starting with"),
    ("x" * 65, "longer than 64"), ("", "non-empty"), ("caf\u00e9", "lower-case letters"),
    ("../etc", "lower-case letters"), (7, "non-empty string"),
])
def test_an_invalid_room_name_is_bad_frame_and_the_session_goes_on(
        server: RunningServer, name: Any, rule: str) -> None:
    alice, _ = server.user("alice", rooms=[], grants={"*": RW})
    for frame in ({"type": "join", "room": name}, {"type": "leave", "room": name},
                  {"type": "msg", "room": name, "body": "x", "id": 1}):
        alice.send(frame)
        error = alice.expect("error")
        assert error["code"] == "bad_frame" and rule in error["message"], error
    alice.send({"type": "ping"})
    assert alice.expect("pong") == {"type": "pong"}


def test_an_invalid_room_name_in_auth_is_a_malformed_login(server: RunningServer) -> None:
    token = server.add_user("alice", {"*": RW})
    for rooms in (["Ops"], "general", [{"room": "general", "resume": 3}], ["a", "a"],
                  [f"r{i}" for i in range(65)]):
        wire = server.tls_connect()
        wire.send({"type": "auth", "token": token, "rooms": rooms})
        frames = wire.expect_closed()
        assert [f["code"] for f in frames] == ["bad_frame"], (rooms, frames)


def test_a_read_only_token_reads_but_every_send_is_forbidden(server: RunningServer) -> None:
    alice, _ = server.user("alice", rooms=["general"], grants={"general": RW})
    alice.expect("joined")
    watcher, welcome = server.user("watcher", rooms=["general"], grants={"*": "ro"})
    assert welcome["grants"] == {"*": "ro"}
    watcher.expect("joined")
    send_to(alice, "general", ["hello"])
    assert watcher.expect("msg")["body"] == "hello"
    watcher.send({"type": "msg", "room": "general", "body": "bot says", "id": "w1"})
    error = watcher.expect("error")
    assert (error["code"], error["room"], error["id"]) == ("forbidden", "general", "w1")
    watcher.send({"type": "history", "room": "general", "id": "h"})
    assert watcher.expect("history_msg")["body"] == "hello"
    assert watcher.expect("history_end")["count"] == 1
    alice.send({"type": "ping"})
    assert alice.expect("pong") == {"type": "pong"}  # no msg of the bot came before it
    send_to(alice, "general", ["marker"])
    assert watcher.expect("msg")["body"] == "marker"
    assert server.server.rooms.in_memory("general").seq == 2  # type: ignore[union-attr]


def test_a_grant_removed_while_connected_ends_that_membership_only(
        server: RunningServer) -> None:
    grants = {"general": RW, "ops": RW}
    alice, _ = server.user("alice", rooms=["general", "ops"], grants=grants)
    alice.expect("joined"), alice.expect("joined")
    bob, _ = server.user("bob", rooms=["general", "ops"], grants=grants)
    bob.expect("joined"), bob.expect("joined")

    started = time.monotonic()
    server.set_grants("alice", {"general": RW})
    error = alice.expect("error", skip=NOISE)
    assert (error["code"], error["room"]) == ("forbidden", "ops")
    assert alice.expect("left") == {"type": "left", "room": "ops", "reason": "forbidden"}
    assert alice.expect("grants") == {"type": "grants", "grants": {"general": RW}}
    assert time.monotonic() - started < seconds(2)
    assert bob.expect("leave", skip=("ping", "join")) == {
        "type": "leave", "room": "ops", "user": "alice", "reason": "forbidden"}

    send_to(bob, "ops", ["ops only"])
    send_to(bob, "general", ["still here"])
    assert [(m["room"], m["body"]) for m in received(alice, "still here", "general")] == [
        ("general", "still here")]
    send_to(alice, "general", ["and I can talk"])
    alice.send({"type": "join", "room": "ops"})
    assert alice.expect("error")["code"] == "forbidden"

    # Read-only now: still in the room, refused when sending.
    server.set_grants("alice", {"general": "ro"})
    assert alice.expect("grants", skip=("ping", "msg")) == {
        "type": "grants", "grants": {"general": "ro"}}
    alice.send({"type": "msg", "room": "general", "body": "x", "id": 5})
    assert alice.expect("error", skip=("ping", "msg"))["code"] == "forbidden"


def test_resume_of_two_rooms_after_a_restart(make_server: MakeServer, tmp_path: Any) -> None:
    data = tmp_path / "kept"
    grants = {"general": RW, "ops": RW}
    first = make_server(msg_rate=0, data_dir=data)
    alice, _ = first.user("alice", rooms=["general", "ops"], grants=grants)
    alice.expect("joined"), alice.expect("joined")
    bob, _ = first.user("bob", rooms=["general", "ops"], grants=grants)
    general, ops = bob.expect("joined"), bob.expect("joined")
    send_to(alice, "general", ["g1"])
    send_to(alice, "ops", ["o1", "o2"])
    seen = received(bob, "o2", "ops")
    assert len(seen) == 3
    positions = {"general": (general["epoch"], 1), "ops": (ops["epoch"], 2)}
    bob.close()
    send_to(alice, "general", ["g2", "g3"], "later")
    send_to(alice, "ops", ["o3"], "later")
    stop_server(first)

    second = make_server(msg_rate=0, data_dir=data)
    token = second.add_user("bob", grants)
    bob, welcome = second.login(token, rooms=[
        {"room": r, "resume": {"epoch": e, "seq": s}} for r, (e, s) in positions.items()])
    assert welcome["rooms"] == ["general", "ops"]
    got_general = bob.expect("joined")
    assert (got_general["room"], got_general["seq"]) == ("general", 3)
    msgs, caught_up = read_replay(bob)
    assert [(m["room"], m["body"], m["seq"]) for m in msgs] == [
        ("general", "g2", 2), ("general", "g3", 3)]
    assert caught_up == {"type": "caught_up", "room": "general", "seq": 3, "replayed": 2}
    got_ops = bob.expect("joined")
    assert (got_ops["room"], got_ops["seq"]) == ("ops", 3)
    msgs, caught_up = read_replay(bob)
    assert [(m["room"], m["body"], m["seq"]) for m in msgs] == [("ops", "o3", 3)]
    assert caught_up == {"type": "caught_up", "room": "ops", "seq": 3, "replayed": 1}
    carol, _ = second.user("carol", rooms=["ops"], grants=grants)
    carol.expect("joined")
    send_to(carol, "ops", ["live"])
    live = bob.expect("msg", skip=NOISE)
    assert (live["room"], live["seq"], live["body"]) == ("ops", 4, "live")


def test_a_join_with_resume_mid_session_replays_that_room(server: RunningServer) -> None:
    grants = {"general": RW, "ops": RW}
    alice, _ = server.user("alice", rooms=["general", "ops"], grants=grants)
    alice.expect("joined"), alice.expect("joined")
    send_to(alice, "ops", [f"o{i}" for i in range(5)])
    bob, _ = server.user("bob", rooms=["general"], grants=grants)
    bob.expect("joined")
    bob.send({"type": "join", "room": "ops", "resume": {
        "epoch": server.server.room.epoch, "seq": 2}})
    assert bob.expect("joined")["seq"] == 5
    msgs, caught_up = read_replay(bob)
    assert [m["body"] for m in msgs] == ["o2", "o3", "o4"]
    assert caught_up == {"type": "caught_up", "room": "ops", "seq": 5, "replayed": 3}


def test_a_v1_client_that_never_names_a_room_works_as_before(server: RunningServer) -> None:
    """Protocol 1: no rooms, no client id, no room fields sent; it shares the default
    room with protocol 3 clients and never sees another room."""
    old, welcome = server.user("old")
    assert (welcome["room"], welcome["members"], welcome["seq"]) == ("lobby", ["old"], 0)
    assert welcome["rooms"] == ["lobby"]
    new, _ = server.user("new", rooms=["lobby", "ops"], grants={"lobby": RW, "ops": RW})
    assert [new.expect("joined")["room"] for _ in range(2)] == ["lobby", "ops"]
    assert old.expect("join")["user"] == "new"
    (ack,) = publish(old, ["from v1"], ["m1"])
    assert (ack["seq"], ack["id"]) == (1, "m1")
    assert new.expect("msg", skip=NOISE)["body"] == "from v1"
    send_to(new, "ops", ["elsewhere"])
    send_to(new, "lobby", ["to everyone in lobby"])
    got = old.expect("msg", skip=NOISE)
    assert (got["body"], got["from"], got["seq"]) == ("to everyone in lobby", "new", 2)
    old.send({"type": "history", "id": "h", "limit": 10})
    assert [old.expect("history_msg")["body"] for _ in range(2)] == [
        "from v1", "to everyone in lobby"]
    assert old.expect("history_end")["count"] == 2


def test_a_v1_login_without_a_grant_for_the_default_room_is_forbidden(
        server: RunningServer) -> None:
    token = server.add_user("opsbot", {"ops": RW})
    wire = server.tls_connect()
    wire.send({"type": "auth", "token": token})
    frames = wire.expect_closed()
    assert [f["code"] for f in frames] == ["forbidden"]
    assert "name the rooms" in frames[0]["message"]


def test_history_is_per_room_and_an_unknown_room_has_none(server: RunningServer) -> None:
    alice, _ = server.user("alice", rooms=["general", "ops"], grants={"*": RW})
    alice.expect("joined"), alice.expect("joined")
    send_to(alice, "general", ["g1", "g2"])
    send_to(alice, "ops", ["o1"])
    bob, _ = server.user("bob", rooms=[], grants={"*": "ro"})
    bob.send({"type": "history", "room": "ops", "id": 1})
    msg = bob.expect("history_msg")
    assert (msg["room"], msg["body"], msg["seq"]) == ("ops", "o1", 1)
    assert bob.expect("history_end") == {"type": "history_end", "room": "ops", "id": 1,
                                         "count": 1, "more": False, "oldest": 1, "latest": 1}
    bob.send({"type": "history", "room": "nowhere", "id": 2})
    assert bob.expect("history_end") == {"type": "history_end", "room": "nowhere", "id": 2,
                                         "count": 0, "more": False, "oldest": None,
                                         "latest": 0}


def test_room_limits(make_server: MakeServer) -> None:
    running = make_server(store="memory", max_rooms=3, max_room_members=2,
                          max_rooms_per_session=2)
    grants = {"*": RW}
    alice, _ = running.user("alice", rooms=["a", "b"], grants=grants)
    alice.expect("joined"), alice.expect("joined")
    alice.send({"type": "join", "room": "c"})
    error = alice.expect("error")
    assert (error["code"], error["room"]) == ("too_many_rooms", "c")
    assert "--max-rooms-per-session" in error["message"]
    bob, _ = running.user("bob", rooms=["a"], grants=grants)
    bob.expect("joined")
    carol, _ = running.user("carol", rooms=["a"], grants=grants)
    error = carol.expect("error")
    assert (error["code"], error["room"]) == ("room_full", "a")
    # lobby + a + b exist: a fourth room would be one too many.
    carol.send({"type": "join", "room": "d"})
    error = carol.expect("error")
    assert (error["code"], error["room"]) == ("too_many_rooms", "d")
    assert "--max-rooms" in error["message"]
    # An empty room with no stored messages is gone, and makes way for another.
    alice.send({"type": "leave", "room": "b"})
    alice.expect("left", skip=NOISE)
    assert len(running.server.rooms) == 2
    assert joined(carol, "d")["members"] == ["carol"]


def test_a_room_with_stored_messages_exists_after_its_members_left(
        make_server: MakeServer) -> None:
    running = make_server(max_rooms=3)
    alice, _ = running.user("alice", rooms=["a"], grants={"*": RW})
    alice.expect("joined")
    send_to(alice, "a", ["kept"])
    alice.send({"type": "leave", "room": "a"})
    alice.expect("left", skip=NOISE)
    assert running.server.rooms.in_memory("a") is None
    assert len(running.server.rooms) == 2  # lobby, and a (stored)
    again = joined(alice, "a")
    assert again["seq"] == 1  # seq goes on where it was
    send_to(alice, "a", ["next"])
