"""Rooms against a hostile peer: leaves, rejoins and grant changes in the middle of a
resume replay, join/leave churn, the per-session and per-auth limits, presence of one
user's several sessions, slow consumers, invalid names, and races across I/O threads.
Each test asserts the documented behaviour and that everyone else keeps being served."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from securechat.server.replay import LOW_WATER
from securechat.server.session import Session, State
from tests.server.rooms_support import ALL, NOISE, RW, joined, line, send_to
from tests.support import (
    MakeServer,
    RunningServer,
    WireClient,
    error_codes,
    seconds,
    wait_for,
)

# --------------------------------------------------------------------------- helpers






def collect(wire: WireClient, done: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every frame (pings answered and left out) up to and including the first for which
    ``done(frame)`` is true."""
    frames: list[dict[str, Any]] = []
    while True:
        frame = wire.recv(timeout)
        if frame.get("type") == "ping":
            wire.send({"type": "pong"})
            continue
        frames.append(frame)
        if done(frame):
            return frames


def is_pong(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "pong"


def backlog(body_size: int) -> int:
    """Messages of ``body_size`` that outgrow the kernel buffers of a client with a 4 KiB
    receive buffer plus the replay's read ahead (as in test_resume.py)."""
    try:
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        wmem_max = 4 * 1024 * 1024
    return (wmem_max + 64 * 1024 + 256 * 1024) // body_size + 500


#: No server ping during a replay test: a catch-up that stops must fail the test, not be
#: woken by the next heartbeat (which once hid a lost wake-up behind a 20 s pause).
NO_HEARTBEAT = 600.0


def stalled(session: Session) -> bool:
    """The session's catch-up waits on its client: socket full, read ahead queued."""
    return (session.write_blocked and session.replay is not None
            and not session.replay.done and session.out.size >= LOW_WATER)


def session_of(running: RunningServer, user: str) -> Session:
    session = running.session_of(user)
    assert session is not None
    return session


def assert_serving(running: RunningServer, room: str = "lobby") -> None:
    """A fresh client can still log in, join ``room`` and get an answer."""
    probe, _ = running.user(f"probe{random.randrange(10**9)}", rooms=[room], grants=ALL)
    assert probe.expect("joined", skip=NOISE)["room"] == room
    probe.send({"type": "ping"})
    assert probe.expect("pong", skip=(*NOISE, "msg")) == {"type": "pong"}


def room_frames(frames: list[dict[str, Any]], room: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("room") == room]


def per_room_seqs(frames: list[dict[str, Any]], room: str) -> list[int]:
    return [f["seq"] for f in frames if f.get("type") == "msg" and f.get("room") == room]


# --------------------------------------------------------------------------- order of a rejoin
def test_leave_then_join_pipelined_answers_left_before_joined(server: RunningServer) -> None:
    """leave x and join x in one TCP write: the answers come in the order asked (left,
    then joined), and no frame of the old membership follows the new joined."""
    alice, _ = server.user("alice", rooms=["x"], grants=ALL)
    alice.expect("joined")
    bob, _ = server.user("bob", rooms=["x"], grants=ALL)
    bob.expect("joined")
    alice.expect("join")
    send_to(bob, "x", ["before"])
    alice.send(line({"type": "leave", "room": "x"}) + line({"type": "join", "room": "x"})
               + line({"type": "ping"}))
    frames = collect(alice, is_pong)
    kinds = [(f["type"], f.get("room")) for f in frames]
    assert kinds.index(("left", "x")) < kinds.index(("joined", "x")), kinds
    rejoin = next(f for f in frames if f["type"] == "joined")
    after = frames[frames.index(rejoin) + 1:]
    assert not [f for f in after if f.get("type") == "msg"], after  # seq 1 was before it
    send_to(bob, "x", ["after"])
    got = alice.expect("msg", skip=NOISE)
    assert (got["room"], got["seq"], got["body"]) == ("x", rejoin["seq"] + 1, "after")


# --------------------------------------------------------------------------- during a replay
def fill(running: RunningServer, room: str, body_size: int = 1000) -> tuple[WireClient, int]:
    """A writer in ``room`` (and ``other``) stores enough messages there that a client with
    a 4 KiB receive buffer resuming from 0 stalls its replay; the writer and the count."""
    writer, _ = running.user("writer", rooms=[room, "other"], grants=ALL)
    writer.expect("joined"), writer.expect("joined")
    count = backlog(body_size)
    send_to(writer, room, ["b" * body_size] * count, "fill")
    return writer, count


def resume_entry(running: RunningServer, room: str, seq: int = 0) -> dict[str, Any]:
    return {"room": room, "resume": {"epoch": running.server.room.epoch, "seq": seq}}


def test_a_leave_during_its_rooms_replay_takes_effect_once_the_catch_up_is_out(
        make_server: MakeServer) -> None:
    """bob resumes "big" (a replay far larger than his socket) and is in "other"; while
    the replay waits on him he leaves big. The leave waits for the catch-up: he gets
    big's joined, its whole replay, caught_up and the live messages of big with no gap,
    then left, and nothing of big after it; every message of other exactly once, in
    order; the writer is unaffected."""
    running = make_server(msg_rate=0, heartbeat=NO_HEARTBEAT)
    writer, _count = fill(running, "big")
    bob, welcome = running.user("bob", rooms=[resume_entry(running, "big"), "other"],
                                grants=ALL)
    assert welcome["rooms"] == ["big", "other"]
    session = session_of(running, "bob")
    wait_for(lambda: stalled(session), what="bob's replay to stall")
    send_to(writer, "other", [f"o{i}" for i in range(50)], "o1")
    send_to(writer, "big", ["live big"] * 20, "lb1")
    bob.send({"type": "leave", "room": "big"})
    wait_for(lambda: bool(session.deferred), what="the leave to wait for the catch-up")
    assert "big" in session.rooms
    frames = collect(bob, lambda f: f["type"] == "left", timeout=30)
    assert frames[-1] == {"type": "left", "room": "big", "reason": "left"}
    big = room_frames(frames, "big")
    assert big[0]["type"] == "joined"
    seqs = per_room_seqs(frames, "big")
    assert seqs == list(range(1, len(seqs) + 1))  # the replay, then live: no gap
    assert [f.get("body") for f in big if f["type"] == "msg"][-20:] == ["live big"] * 20
    assert [f["type"] for f in big].count("caught_up") == 1
    send_to(writer, "big", ["after leave"] * 20, "lb2")
    send_to(writer, "other", [f"p{i}" for i in range(50)], "o2")
    bob.send({"type": "ping"})
    rest = collect(bob, is_pong, timeout=30)
    assert not room_frames(rest, "big"), room_frames(rest, "big")[:3]
    assert per_room_seqs(frames + rest, "other") == list(range(1, 101))
    assert next(f["type"] for f in frames if f.get("room") == "other") == "joined"
    assert session.state is State.ACTIVE
    send_to(writer, "other", ["still live"], "o3")
    assert bob.expect("msg", skip=NOISE)["body"] == "still live"
    assert_serving(running, "other")


def test_a_grant_removed_during_that_rooms_replay_ends_only_that_room(
        make_server: MakeServer) -> None:
    """bob's grant for "big" goes while big's replay waits on him: he gets error
    forbidden and left (forbidden) for big, the grants frame, nothing more of big, and
    every message of "other" exactly once in order."""
    running = make_server(msg_rate=0, heartbeat=NO_HEARTBEAT)
    writer, _count = fill(running, "big")
    bob, _ = running.user("bob", rooms=[resume_entry(running, "big"), "other"],
                          grants={"big": RW, "other": RW})
    session = session_of(running, "bob")
    wait_for(lambda: stalled(session), what="bob's replay to stall")
    send_to(writer, "other", [f"o{i}" for i in range(30)], "o1")
    running.set_grants("bob", {"other": RW})
    wait_for(lambda: "big" not in session.rooms, what="bob's grant check")
    send_to(writer, "big", ["after ungrant"] * 10, "lb")
    send_to(writer, "other", [f"p{i}" for i in range(30)], "o2")
    bob.send({"type": "ping"})
    frames = collect(bob, is_pong, timeout=30)
    errors = [f for f in frames if f["type"] == "error"]
    assert [(e["code"], e["room"]) for e in errors] == [("forbidden", "big")]
    left = next(i for i, f in enumerate(frames) if f["type"] == "left")
    assert frames[left] == {"type": "left", "room": "big", "reason": "forbidden"}
    assert frames.index(errors[0]) < left
    assert not room_frames(frames[left + 1:], "big")
    assert {"type": "grants", "grants": {"other": RW}} in frames
    assert per_room_seqs(frames, "other") == list(range(1, 61))
    assert session.state is State.ACTIVE
    assert_serving(running, "other")


def test_all_grants_removed_leaves_every_room_and_keeps_the_session(
        server: RunningServer) -> None:
    """Grants emptied: forbidden + left for each room, in join order, then grants {}; the
    session stays up (ping) and may join nothing; the others in the rooms see leave."""
    alice, _ = server.user("alice", rooms=["a", "b", "c"], grants=ALL)
    for _ in range(3):
        alice.expect("joined")
    bob, _ = server.user("bob", rooms=["a", "b"], grants=ALL)
    bob.expect("joined"), bob.expect("joined")
    server.set_grants("alice", {})
    alice.send({"type": "ping"})
    frames = collect(alice, lambda f: f["type"] == "grants")
    frames = [f for f in frames if f["type"] not in ("join", "pong")]
    assert [(f["type"], f.get("room"), f.get("code") or f.get("reason")) for f in frames] == [
        ("error", "a", "forbidden"), ("left", "a", "forbidden"),
        ("error", "b", "forbidden"), ("left", "b", "forbidden"),
        ("error", "c", "forbidden"), ("left", "c", "forbidden"),
        ("grants", None, None)]
    assert frames[-1]["grants"] == {}
    leaves = {(f["room"], f["user"], f["reason"])
              for f in (bob.expect("leave", skip=("ping", "join")) for _ in range(2))}
    assert leaves == {("a", "alice", "forbidden"), ("b", "alice", "forbidden")}
    alice.send({"type": "join", "room": "a"})
    assert alice.expect("error", skip=NOISE)["code"] == "forbidden"
    alice.send({"type": "msg", "body": "x", "id": 1})
    error = alice.expect("error", skip=NOISE)
    assert (error["code"], error["room"]) == ("not_joined", "lobby")
    alice.send({"type": "ping"})
    assert alice.expect("pong", skip=NOISE) == {"type": "pong"}
    wait_for(lambda: len(server.server.rooms) == 3, what="c dropped (a, b and lobby left)")
    send_to(bob, "a", ["bob goes on"])


def test_grants_flipping_rw_ro_rw_while_sending(server: RunningServer) -> None:
    """Messages sent while the grant is ro are refused forbidden (with id, not stored);
    every message sent while it is rw is acked, with seqs 1..n and no hole."""
    alice, _ = server.user("alice", rooms=["ops"], grants={"ops": RW})
    alice.expect("joined")
    bob, _ = server.user("bob", rooms=["ops"], grants={"ops": RW})
    bob.expect("joined"), alice.expect("join")
    acked: list[int] = []
    for round_ in range(3):
        acked += [a["seq"] for a in send_to(alice, "ops", ["rw"] * 5, f"rw{round_}")]
        server.set_grants("alice", {"ops": "ro"})
        assert alice.expect("grants", skip=NOISE)["grants"] == {"ops": "ro"}
        alice.send(b"".join(line({"type": "msg", "room": "ops", "body": "ro", "id": f"ro{i}"})
                            for i in range(5)))
        errors = [alice.expect("error", skip=NOISE) for _ in range(5)]
        assert [(e["code"], e["id"], e["room"]) for e in errors] == [
            ("forbidden", f"ro{i}", "ops") for i in range(5)]
        server.set_grants("alice", {"ops": RW})
        assert alice.expect("grants", skip=NOISE)["grants"] == {"ops": RW}
    assert acked == list(range(1, 16))
    got = [bob.expect("msg", skip=NOISE) for _ in range(15)]
    assert {m["body"] for m in got} == {"rw"} and [m["seq"] for m in got] == acked
    bob.send({"type": "history", "room": "ops", "id": "h", "limit": 100})
    assert bob.expect("history_end", skip=("ping", "msg", "history_msg"))["count"] == 15


def membership_events(frames: list[dict[str, Any]], room: str) -> list[str]:
    """The joined/left frames of ``room``, in the order they arrived."""
    return [f["type"] for f in frames if f.get("room") == room
            and f["type"] in ("joined", "left")]


def stalled_in_big_and_x(make_server: MakeServer) -> tuple[WireClient, WireClient, Session]:
    """bob logs in to "big" (resumed from 0: a replay that stalls on his socket), then
    "x", where the writer is too: the writer, bob, and bob's session once stalled."""
    running = make_server(msg_rate=0, heartbeat=NO_HEARTBEAT)
    writer, _count = fill(running, "big")
    writer.send({"type": "join", "room": "x"})
    writer.expect("joined", skip=NOISE)
    bob, welcome = running.user("bob", rooms=[resume_entry(running, "big"), "x"], grants=ALL)
    assert welcome["rooms"] == ["big", "x"]
    session = session_of(running, "bob")
    wait_for(lambda: stalled(session), what="bob's replay to stall")
    return writer, bob, session


def test_leave_and_rejoin_during_another_rooms_replay_keeps_their_order(
        make_server: MakeServer) -> None:
    """bob logs in to "big" (a stalled replay) and "x"; he leaves and rejoins x before the
    replay is out. Both wait for the catch-up, then are answered in order: for x he sees
    joined (from the login), left, joined, and is in x afterwards."""
    writer, bob, session = stalled_in_big_and_x(make_server)
    send_to(writer, "x", ["x before"], "xb")
    bob.send(line({"type": "leave", "room": "x"}) + line({"type": "join", "room": "x"}))
    wait_for(lambda: len(session.deferred) == 2, what="both to wait for the catch-up")
    frames: list[dict[str, Any]] = []
    for _ in range(3):  # the login's joined, then left, then the new joined
        frames += collect(bob, lambda f: f["type"] in ("joined", "left") and f["room"] == "x",
                          timeout=30)
    assert membership_events(frames, "x") == ["joined", "left", "joined"]
    assert [f["type"] for f in room_frames(frames, "x")] == ["joined", "msg", "left", "joined"]
    send_to(writer, "x", ["x live"], "xl")
    got = bob.expect("msg", skip=NOISE)
    assert (got["room"], got["body"]) == ("x", "x live")
    assert session.state is State.ACTIVE


def test_a_room_left_before_its_joined_was_sent_still_gets_joined_first(
        make_server: MakeServer) -> None:
    """bob's login names "big" (a stalled replay) then "x": x's joined waits behind big's
    replay. He asks to leave x before it was sent: he still gets x's joined first (the
    welcome named x), then what x sent meanwhile, then left."""
    writer, bob, session = stalled_in_big_and_x(make_server)
    send_to(writer, "x", ["x while replaying"], "xr")
    bob.send({"type": "leave", "room": "x"})
    wait_for(lambda: bool(session.deferred), what="the leave to wait for the catch-up")
    frames = collect(bob, lambda f: f["type"] == "left", timeout=30)
    x_frames = [f["type"] for f in frames if f.get("room") == "x"]
    assert x_frames == ["joined", "msg", "left"], x_frames
    assert "x" not in session.rooms
    assert session.state is State.ACTIVE


def test_auth_answers_each_room_entry_in_the_order_of_the_list(server: RunningServer) -> None:
    """auth rooms [big with resume, secret (forbidden), ops]: after the welcome come big's
    joined, replay and caught_up, then secret's error, then ops's joined (protocol.md,
    Login (version 3), step 2: "for each entry, in the order of the list")."""
    writer, _ = server.user("writer", rooms=["big"], grants=ALL)
    writer.expect("joined")
    send_to(writer, "big", ["m1", "m2", "m3"])
    token = server.add_user("bob", {"big": RW, "ops": RW})
    bob, welcome = server.login(token, rooms=[resume_entry(server, "big"), "secret", "ops"])
    assert welcome["rooms"] == ["big", "ops"]
    frames = collect(bob, lambda f: f["type"] == "joined" and f["room"] == "ops")
    assert [(f["type"], f.get("room")) for f in frames] == [
        ("joined", "big"), ("msg", "big"), ("msg", "big"), ("msg", "big"),
        ("caught_up", "big"), ("error", "secret"), ("joined", "ops")], frames


# --------------------------------------------------------------------------- churn and limits
@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_join_leave_churn_of_many_names_leaks_no_room(make_server: MakeServer,
                                                      store: str) -> None:
    """300 distinct names joined and left (pipelined, 100 at a time) by two sessions:
    len(rooms) returns to the baseline; rooms that got a message stay counted (and come
    back with their seq), the others are gone."""
    running = make_server(store=store, msg_rate=0, frame_rate=10_000, frame_burst=10_000)
    baseline = len(running.server.rooms)
    alice, _ = running.user("alice", rooms=[], grants=ALL)
    bob, _ = running.user("bob", rooms=[], grants=ALL)
    for batch in range(3):
        names = [f"churn-{batch}-{i}" for i in range(100)]
        for wire in (alice, bob):
            wire.send(b"".join(line({"type": "join", "room": n}) for n in names))
        for wire in (alice, bob):
            got = [wire.expect("joined", skip=NOISE)["room"] for _ in names]
            assert got == names
        send_to(alice, names[7], ["kept"], f"k{batch}")
        for wire in (alice, bob):
            wire.send(b"".join(line({"type": "leave", "room": n}) for n in names))
        for wire in (alice, bob):
            got = [wire.expect("left", skip=(*NOISE, "msg"))["room"] for _ in names]
            assert got == names
    wait_for(lambda: len(running.server.rooms) == baseline + 3,
             what=f"rooms back to {baseline} + 3 with messages ({len(running.server.rooms)})")
    assert running.server.rooms.in_memory("churn-0-0") is None
    assert running.server.rooms.in_memory("churn-0-7") is None
    again = joined(alice, "churn-1-7")
    assert again["seq"] == 1
    alice.send({"type": "history", "room": "churn-2-7", "id": "h"})
    assert alice.expect("history_msg", skip=NOISE)["body"] == "kept"
    alice.expect("history_end")
    wait_for(lambda: len(running.server.rooms) == baseline + 3, what="history released")
    assert_serving(running)


def test_100_rooms_per_session_then_too_many_rooms(make_server: MakeServer) -> None:
    """A session joins 100 rooms (--max-rooms-per-session); the 101st is too_many_rooms
    and the session goes on; after one leave a join succeeds again."""
    running = make_server(frame_rate=10_000, frame_burst=10_000)
    alice, _ = running.user("alice", rooms=[], grants=ALL)
    names = [f"r{i}" for i in range(101)]
    alice.send(b"".join(line({"type": "join", "room": n}) for n in names))
    for name in names[:100]:
        assert alice.expect("joined", skip=NOISE)["room"] == name
    error = alice.expect("error", skip=NOISE)
    assert (error["code"], error["room"]) == ("too_many_rooms", "r100")
    assert len(session_of(running, "alice").rooms) == 100
    alice.send({"type": "leave", "room": "r0"})
    assert alice.expect("left", skip=NOISE)["room"] == "r0"
    assert joined(alice, "r100")["members"] == ["alice"]
    bob, _ = running.user("bob", rooms=["r99", "r100"], grants=ALL)
    assert [bob.expect("joined")["room"] for _ in range(2)] == ["r99", "r100"]
    send_to(bob, "r100", ["hi"])
    assert alice.expect("msg", skip=NOISE)["body"] == "hi"


def test_auth_with_64_resume_entries_then_65_is_a_malformed_login(
        server: RunningServer) -> None:
    """64 entries, each with a resume, fit in the 4 KiB pre-auth frame: all are joined and
    each gets its caught_up, in the order of the list. 65 names: bad_frame and close.
    The others on the server notice nothing."""
    other, _ = server.user("other", rooms=["r0"], grants=ALL)
    other.expect("joined")
    send_to(other, "r0", ["one"])
    token = server.add_user("alice", ALL)
    epoch = server.server.room.epoch
    entries = [{"room": f"r{i}", "resume": {"epoch": epoch, "seq": 0}} for i in range(64)]
    frame = line({"type": "auth", "token": token, "rooms": entries})
    assert len(frame) <= 4096, len(frame)
    wire = server.tls_connect()
    wire.send(frame)
    welcome = wire.expect("welcome")
    assert welcome["rooms"] == [f"r{i}" for i in range(64)]
    got = collect(wire, lambda f: f["type"] == "caught_up" and f["room"] == "r63")
    kinds = [(f["type"], f["room"]) for f in got]
    expected: list[tuple[str, str]] = []
    for i in range(64):
        expected.append(("joined", f"r{i}"))
        if i == 0:
            expected.append(("msg", "r0"))
        expected.append(("caught_up", f"r{i}"))
    assert kinds == expected
    too_many = server.tls_connect()
    too_many.send({"type": "auth", "token": token,
                   "rooms": [f"r{i}" for i in range(65)]})
    assert error_codes(too_many.expect_closed()) == ["bad_frame"]
    send_to(other, "r0", ["two"])
    assert wire.expect("msg", skip=NOISE)["body"] == "two"


def test_an_auth_frame_at_the_4_kib_limit_is_read_one_byte_more_closes(
        server: RunningServer) -> None:
    """An auth frame of exactly 4096 bytes (newline excluded) padded with room names logs
    in; 4097 bytes is frame_too_large and close."""
    token = server.add_user("alice", ALL)

    def auth_of(size: int) -> bytes:
        """A compact auth frame naming 40 rooms, padded to ``size`` bytes with blanks
        (JSON whitespace) before its closing brace."""
        frame = line({"type": "auth", "token": token,
                      "rooms": [f"pad-{i:02d}" + "x" * 40 for i in range(40)]})[:-2]
        frame += b" " * (size - len(frame) - 1) + b"}"
        assert len(frame) == size
        json.loads(frame)
        return frame + b"\n"

    wire = server.tls_connect()
    wire.send(auth_of(4096))
    welcome = wire.expect("welcome")
    assert len(welcome["rooms"]) == 40
    late = server.tls_connect()
    late.send(auth_of(4097))
    assert error_codes(late.expect_closed()) == ["frame_too_large"]
    wire.send({"type": "ping"})
    assert wire.expect("pong", skip=(*NOISE, "joined")) == {"type": "pong"}


# --------------------------------------------------------------------------- presence
def test_two_sessions_of_one_user_are_one_presence_per_room(server: RunningServer) -> None:
    """alice's phone is in a and b, her laptop in b and c. Bob (in a, b, c) sees join
    once per room for her first session there and leave only when her last one there
    goes: leaving b from the phone is silent, leaving b from the laptop too is not."""
    bob, _ = server.user("bob", rooms=["a", "b", "c"], grants=ALL)
    for _ in range(3):
        bob.expect("joined")
    phone, _ = server.user("alice", rooms=["a", "b"], grants=ALL)
    phone.expect("joined"), phone.expect("joined")
    laptop, _ = server.user("alice", rooms=["b", "c"], grants=ALL)
    first, second = laptop.expect("joined"), laptop.expect("joined")
    assert first["members"] == ["alice", "bob"] and second["members"] == ["alice", "bob"]
    bob.send({"type": "ping"})
    seen = collect(bob, is_pong)
    assert [(f["type"], f.get("room"), f.get("user")) for f in seen] == [
        ("join", "a", "alice"), ("join", "b", "alice"), ("join", "c", "alice"),
        ("pong", None, None)]
    phone.send({"type": "leave", "room": "b"})
    phone.expect("left")
    bob.send({"type": "ping"})
    assert collect(bob, is_pong) == [{"type": "pong"}]  # laptop still holds b
    laptop.send({"type": "leave", "room": "b"})
    laptop.expect("left")
    assert bob.expect("leave") == {"type": "leave", "room": "b", "user": "alice",
                                   "reason": "left"}
    phone.close()
    assert bob.expect("leave")["room"] == "a"  # her only session in a; c is the laptop's
    bob.send({"type": "ping"})
    assert collect(bob, is_pong) == [{"type": "pong"}]
    laptop.send({"type": "join", "room": "a"})
    assert laptop.expect("joined", skip=NOISE)["members"] == ["alice", "bob"]
    assert bob.expect("join") == {"type": "join", "room": "a", "user": "alice"}


# --------------------------------------------------------------------------- slow consumers
def test_a_slow_consumer_in_one_room_is_cut_and_both_rooms_go_on(
        make_server: MakeServer) -> None:
    """carol (in a, 4 KiB receive buffer) never reads; she is cut with slow_consumer.
    bob in a and b, and dave in b, get every message of their rooms in order, and see
    carol's leave in a."""
    running = make_server(msg_rate=0, max_pending=256 * 1024)
    alice, _ = running.user("alice", rooms=["a", "b"], grants=ALL)
    alice.expect("joined"), alice.expect("joined")
    bob, _ = running.user("bob", rooms=["a", "b"], grants=ALL)
    bob.expect("joined"), bob.expect("joined")
    dave, _ = running.user("dave", rooms=["b"], grants=ALL)
    dave.expect("joined")
    token = running.add_user("carol", ALL)
    carol, _ = running.login(token, rooms=["a"], rcvbuf=4096)
    session = session_of(running, "carol")
    sent_a = sent_b = 0
    bob_got: list[dict[str, Any]] = []
    dave_got: list[dict[str, Any]] = []
    while session.state is State.ACTIVE and sent_a < 20_000:
        send_to(alice, "a", ["x" * 1000] * 50, f"a{sent_a}")
        send_to(alice, "b", ["y" * 100] * 10, f"b{sent_b}")
        sent_a, sent_b = sent_a + 50, sent_b + 10
        for wire, seen in ((bob, bob_got), (dave, dave_got)):  # they keep reading
            seen.extend(collect(wire, lambda f, n=sent_b: f["type"] == "msg" and f["room"] == "b"
                                and f["seq"] == n, timeout=30))
    wait_for(lambda: session.state is State.CLOSED, what="carol cut")
    assert sent_a < 20_000
    send_to(alice, "a", ["after"], "after")
    bob_got += collect(bob, lambda f: f.get("body") == "after")
    assert per_room_seqs(bob_got, "a") == list(range(1, sent_a + 2))
    assert per_room_seqs(bob_got, "b") == list(range(1, sent_b + 1))
    assert [f for f in bob_got if f["type"] == "leave"] == [
        {"type": "leave", "room": "a", "user": "carol", "reason": "slow_consumer"}]
    assert per_room_seqs(dave_got, "b") == list(range(1, sent_b + 1))
    assert not room_frames(dave_got, "a")
    carol.close()
    assert_serving(running, "a")


# --------------------------------------------------------------------------- not a member
def test_a_v3_message_without_room_outside_the_default_room_is_not_joined(
        server: RunningServer) -> None:
    """A v3 session in ops only sends msg and history with no room: the msg gets
    not_joined for the default room (with its id; not stored, not acked); history of the
    default room needs only the grant."""
    alice, _ = server.user("alice", rooms=["ops"], grants=ALL)
    alice.expect("joined")
    lobby, _ = server.user("lobby-user")
    alice.send({"type": "msg", "body": "where does this go", "id": 41})
    error = alice.expect("error")
    assert (error["code"], error["room"], error["id"]) == ("not_joined", "lobby", 41)
    alice.send({"type": "history", "id": "h"})
    assert alice.expect("history_end")["room"] == "lobby"
    lobby.send({"type": "history", "id": "h"})
    assert lobby.expect("history_end", skip=NOISE)["count"] == 0
    assert server.server.room.seq == 0
    alice.send({"type": "msg", "room": "ops", "body": "here", "id": 42})
    assert alice.expect("ack")["seq"] == 1


def test_history_of_a_room_with_no_members_is_released_again(make_server: MakeServer) -> None:
    """bob reads (ro) a room whose only member left long ago, 30 times: the room is made
    in memory for each read and dropped again: len(rooms) stays at the baseline and it
    is never left in memory; a join afterwards continues its seq."""
    running = make_server()
    alice, _ = running.user("alice", rooms=["old"], grants=ALL)
    alice.expect("joined")
    send_to(alice, "old", ["m1", "m2"])
    alice.send({"type": "leave", "room": "old"})
    alice.expect("left")
    wait_for(lambda: running.server.rooms.in_memory("old") is None, what="old dropped")
    baseline = len(running.server.rooms)
    bob, _ = running.user("bob", rooms=[], grants={"*": "ro"})
    for i in range(30):
        bob.send({"type": "history", "room": "old", "id": i, "after": 0})
        assert [bob.expect("history_msg")["body"] for _ in range(2)] == ["m1", "m2"]
        assert bob.expect("history_end")["latest"] == 2
        assert running.server.rooms.in_memory("old") is None
        assert len(running.server.rooms) == baseline
    bob.send({"type": "history", "room": "never-made", "id": "n"})
    assert bob.expect("history_end")["count"] == 0
    assert len(running.server.rooms) == baseline
    bob.send({"type": "msg", "room": "old", "body": "ro", "id": 1})
    assert bob.expect("error")["code"] == "not_joined"
    assert joined(alice, "old")["seq"] == 2


# --------------------------------------------------------------------------- two I/O threads
def sessions_on_two_loops(running: RunningServer, users: list[str], room: str
                          ) -> list[WireClient]:
    wires = []
    for user in users:
        wire, _ = running.user(user, rooms=[room], grants=ALL)
        wire.expect("joined")
        wires.append(wire)
    loops = {session_of(running, u).loop for u in users}
    assert len(loops) == 2, "the sessions should be spread over both loops"
    return wires


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_members_on_two_loops_see_one_order(make_server: MakeServer, store: str) -> None:
    """Two publishers on different loops send 300 messages each at once; two readers on
    different loops get the same 600 frames in the same order, seq 1..600; each
    publisher's acks and received messages together are 1..600 too."""
    running = make_server(io_threads=2, msg_rate=0, store=store)
    alice, bob, carol, dave = sessions_on_two_loops(
        running, ["alice", "bob", "carol", "dave"], "r")
    results: dict[str, list[dict[str, Any]]] = {}

    def publish_as(name: str, wire: WireClient) -> None:
        results[name] = send_to(wire, "r", [f"{name}-{i}" for i in range(300)], name)

    threads = [threading.Thread(target=publish_as, args=(n, w), name=f"test-pub-{n}")
               for n, w in (("alice", alice), ("bob", bob))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds(30))
    assert not any(t.is_alive() for t in threads)
    assert set(results) == {"alice", "bob"}
    views = [[(m["seq"], m["from"], m["body"]) for m in
              collect(w, lambda f: f["type"] == "msg" and f["seq"] == 600) if m["type"] == "msg"]
             for w in (carol, dave)]
    assert views[0] == views[1]
    assert [s for s, _, _ in views[0]] == list(range(1, 601))
    for name, other in (("alice", "bob"), ("bob", "alice")):
        mine = {a["seq"] for a in results[name]}
        theirs = {s for s, sender, _ in views[0] if sender == other}
        assert mine | theirs == set(range(1, 601)) and not mine & theirs


def test_a_join_racing_the_last_leave_never_loses_the_joiner(make_server: MakeServer) -> None:
    """alice (loop 1) is the only member of z and leaves it while bob (loop 2) joins it,
    200 times: bob is always joined to the room the registry holds, and gets alice's
    next message there."""
    running = make_server(io_threads=2, msg_rate=0, frame_rate=10_000, frame_burst=10_000)
    alice, bob = sessions_on_two_loops(running, ["alice", "bob"], "lobby")
    bob_session = session_of(running, "bob")
    registry = running.server.rooms
    go = threading.Barrier(2, timeout=seconds(10))

    def leave_at_once() -> None:
        go.wait()
        alice.send({"type": "leave", "room": "z"})

    for i in range(200):
        joined(alice, "z")
        leaver = threading.Thread(target=leave_at_once, name="test-leaver")
        leaver.start()
        go.wait()
        bob.send({"type": "join", "room": "z"})
        leaver.join(seconds(10))
        assert not leaver.is_alive()
        assert bob.expect("joined", skip=NOISE)["room"] == "z"
        assert alice.expect("left", skip=NOISE)["room"] == "z"
        wait_for(lambda: "z" in bob_session.rooms, what="bob in z")
        assert bob_session.rooms["z"] is registry.in_memory("z"), f"round {i}: orphaned"
        joined(alice, "z")
        send_to(alice, "z", [f"round {i}"], f"z{i}")
        got = bob.expect("msg", skip=NOISE)
        assert (got["room"], got["body"]) == ("z", f"round {i}")
        for wire in (alice, bob):
            wire.send({"type": "leave", "room": "z"})
            assert wire.expect("left", skip=NOISE)["room"] == "z"
    wait_for(lambda: registry.in_memory("z") is None, what="z dropped at the end")


# --------------------------------------------------------------------------- invalid names
def invalid_names(rng: random.Random, count: int) -> list[Any]:
    """Room values that are never valid names: wrong types, empty, too long, upper case,
    a bad first character, characters outside [a-z0-9_.-] (random Unicode included)."""
    fixed: list[Any] = [
        "", "x" * 65, "a" * 1000, "Ops", "OPS", "-a", "_a", ".a", "#ops", "a b", "a/b",
        "a\u0000b", "a\nb", "caf\u00e9", "\u0131", "\u212a", "ops\u200b", "\U0001f600",
        "a\ud800", 0, 1.5, True, [], ["ops"], {}, {"room": 5}]
    out = list(fixed)
    alphabet = "abcXYZ09-_.#/ \t\u00e9\u0130\u4e2d\U0001f600\ud800"
    while len(out) < count:
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
        if not (len(name) <= 64 and all(c in "abc09-_." for c in name) and name[0] in "abc09"):
            out.append(name)
    return out


def test_invalid_room_names_everywhere_are_bad_frame_and_nobody_else_notices(
        make_server: MakeServer) -> None:
    """A fuzzed room value in join, leave, msg and history is always bad_frame (never
    internal_error, never a room made), the msg's id is echoed; in auth it is bad_frame
    and close. bob, in the same rooms, keeps chatting with carol throughout."""
    running = make_server(max_errors=100_000, frame_rate=100_000, frame_burst=100_000,
                          auth_failures=100_000, msg_rate=0)
    baseline = len(running.server.rooms)
    rng = random.Random(20240601)
    names = invalid_names(rng, 150)
    bob, _ = running.user("bob", rooms=["lobby"], grants=ALL)
    carol, _ = running.user("carol", rooms=["lobby"], grants=ALL)
    bob.expect("joined"), carol.expect("joined"), bob.expect("join")
    token = running.add_user("mallory", ALL)
    mallory, _ = running.login(token, rooms=[])
    for n, name in enumerate(names):
        frames = [{"type": "join", "room": name}, {"type": "leave", "room": name},
                  {"type": "join", "room": name, "resume": {"epoch": "e", "seq": 0}},
                  {"type": "msg", "room": name, "body": "x", "id": f"m{n}"},
                  {"type": "history", "room": name, "id": f"h{n}"}]
        mallory.send(b"".join(json.dumps(f).encode() + b"\n" for f in frames))
        errors = [mallory.expect("error") for _ in frames]
        assert [e["code"] for e in errors] == ["bad_frame"] * 5, (name, errors)
        assert errors[3].get("id") == f"m{n}" and errors[4].get("id") == f"h{n}"
        if n % 25 == 0:
            send_to(bob, "lobby", [f"still {n}"], f"s{n}")
            assert carol.expect("msg", skip=NOISE)["body"] == f"still {n}"
    for name in names[:40]:
        for rooms in ([name], ["ok", name], [{"room": name}],
                      [{"room": name, "resume": {"epoch": "e", "seq": 1}}]):
            wire = running.tls_connect()
            wire.send(json.dumps({"type": "auth", "token": token, "rooms": rooms}).encode()
                      + b"\n")
            assert error_codes(wire.expect_closed()) == ["bad_frame"], (rooms,)
            wire.close()
    mallory.send({"type": "ping"})
    assert mallory.expect("pong") == {"type": "pong"}
    assert len(running.server.rooms) == baseline
    assert session_of(running, "mallory").state is State.ACTIVE
    send_to(bob, "lobby", ["the end"], "end")
    assert carol.expect("msg", skip=NOISE)["body"] == "the end"


# --------------------------------------------------------------------------- budgets
def test_messages_to_a_room_not_joined_are_rate_limited_like_any_message(
        make_server: MakeServer) -> None:
    """--msg-rate and --frame-rate are per session across all rooms (protocol.md, Rooms):
    300 msg frames at rooms the session is not in, far over a burst of 5, must not all
    be answered one by one as not_joined: past the budget they are rate_limited (or the
    session is cut for too many errors). Meanwhile bob is served normally."""
    running = make_server(msg_rate=1, msg_burst=5, frame_rate=1, frame_burst=5)
    bob, _ = running.user("bob", rooms=["lobby"], grants=ALL)
    bob.expect("joined")
    mallory, _ = running.user("mallory", rooms=[], grants={"*": "ro"})
    mallory.send(b"".join(line({"type": "msg", "room": f"r{i % 7}", "body": "spam",
                                "id": i}) for i in range(300)))
    mallory.send({"type": "ping"})
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["type"] != "pong":
        raw = mallory.recv_line(10)
        if raw is None:  # closed: then it was cut off for its errors
            assert "too_many_errors" in error_codes(frames), error_codes(frames)[-3:]
            break
        frames.append(json.loads(raw))
    assert len(frames) > 5
    assert error_codes(frames).count("not_joined") <= 10, error_codes(frames)[:20]
    send_to(bob, "lobby", ["fine"])


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_resend_after_the_room_was_dropped_is_still_recognised(
        make_server: MakeServer, store: str) -> None:
    """alice (client id set) is alone in solo, sends m1, leaves (the room is dropped from
    memory), rejoins and resends m1: ack with the original seq and duplicate, not stored
    twice; a new id gets the next seq."""
    running = make_server(store=store, msg_rate=0)
    alice, _ = running.login(running.add_user("alice", ALL), client_id="phone", rooms=["solo"])
    alice.expect("joined")
    (ack,) = send_to(alice, "solo", ["once"], "m")
    assert ack["seq"] == 1
    alice.send({"type": "leave", "room": "solo"})
    alice.expect("left")
    wait_for(lambda: running.server.rooms.in_memory("solo") is None, what="solo dropped")
    assert joined(alice, "solo")["seq"] == 1
    alice.send({"type": "msg", "room": "solo", "body": "once", "id": "m-0"})
    again = alice.expect("ack")
    assert (again["seq"], again.get("duplicate")) == (1, True)
    (fresh,) = send_to(alice, "solo", ["twice"], "n")
    assert fresh["seq"] == 2
