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
from tests.support import (
    MakeServer,
    RunningServer,
    WireClient,
    error_codes,
    seconds,
    wait_for,
)

RW = "rw"
ALL = {"*": RW}
#: Frames a test passes over while waiting for a specific one.
NOISE = ("ping", "join", "leave")


# --------------------------------------------------------------------------- helpers
def line(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame).encode() + b"\n"


def send_to(wire: WireClient, room: str, bodies: list[str], prefix: str = "") -> list[
        dict[str, Any]]:
    """Send ``bodies`` to ``room`` (pipelined, 500 at a time) and return their acks."""
    acks: list[dict[str, Any]] = []
    for start in range(0, len(bodies), 500):
        part = range(start, min(start + 500, len(bodies)))
        wire.send(b"".join(line({"type": "msg", "room": room, "body": bodies[i],
                                 "id": f"{prefix or room}-{i}"}) for i in part))
        acks.extend(wire.expect("ack", 10, skip=(*NOISE, "msg")) for _ in part)
    assert [a["id"] for a in acks] == [f"{prefix or room}-{i}" for i in range(len(bodies))]
    assert {a["room"] for a in acks} <= {room}
    return acks


def joined(wire: WireClient, room: str) -> dict[str, Any]:
    wire.send({"type": "join", "room": room})
    frame = wire.expect("joined", skip=NOISE)
    assert frame["room"] == room
    return frame


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
