"""Helpers for the rooms tests over real TLS (tests/server/test_rooms*.py)."""

from __future__ import annotations

import json
from typing import Any

from tests.support import WireClient

RW = "rw"
ALL = {"*": RW}
#: Frames a test passes over while waiting for a specific one.
NOISE = ("ping", "join", "leave")


def line(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":")).encode() + b"\n"


def send_to(wire: WireClient, room: str, bodies: list[str], prefix: str = "") -> list[
        dict[str, Any]]:
    """Send ``bodies`` to ``room`` (pipelined, 500 at a time) and return their acks, in
    order; each ack names ``room``."""
    acks: list[dict[str, Any]] = []
    for start in range(0, len(bodies), 500):
        part = range(start, min(start + 500, len(bodies)))
        wire.send(b"".join(line({"type": "msg", "room": room, "body": bodies[i],
                                 "id": f"{prefix or room}-{i}"}) for i in part))
        acks.extend(wire.expect("ack", 10, skip=(*NOISE, "msg")) for _ in part)
    assert [a["id"] for a in acks] == [f"{prefix or room}-{i}" for i in range(len(bodies))]
    assert {a["room"] for a in acks} <= {room}
    return acks


def received(wire: WireClient, until_body: str, room: str) -> list[dict[str, Any]]:
    """Every msg until the one in ``room`` with ``until_body`` (a marker), answering pings."""
    got: list[dict[str, Any]] = []
    while True:
        frame = wire.expect("msg", skip=NOISE)
        got.append(frame)
        if frame["body"] == until_body and frame["room"] == room:
            return got


def joined(wire: WireClient, room: str) -> dict[str, Any]:
    """Join ``room`` and return its ``joined`` frame."""
    wire.send({"type": "join", "room": room})
    frame = wire.expect("joined", skip=NOISE)
    assert frame["room"] == room
    return frame
