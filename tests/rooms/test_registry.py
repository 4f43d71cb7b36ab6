"""rooms/registry.py without sockets: rooms made on join and dropped when empty, the
limits, rooms that exist only by their stored messages, and a writer batch of several
rooms handed to each room in order."""

from __future__ import annotations

import json

from securechat.rooms.memory import CacheBudget
from securechat.rooms.registry import RoomRegistry
from securechat.store.base import Pending
from securechat.store.memory import MemoryLog


class Member:
    def __init__(self, user: str) -> None:
        self.user = user
        self.user_json = json.dumps(user)
        self.client_id: str | None = None
        self.frames: list[dict[str, object]] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.extend(json.loads(line) for line in frame.splitlines())

    def deliver_ack(self, frame: bytes) -> None:
        self.deliver(frame)

    def reset(self, room: str) -> None:
        raise AssertionError(f"no log reset expected ({room})")


def greet(snapshot: object) -> bytes:
    return b""


def test_a_room_is_made_on_join_and_dropped_when_its_last_member_leaves() -> None:
    registry = RoomRegistry(MemoryLog(), default="lobby")
    assert len(registry) == 1 and registry.default_room.name == "lobby"
    alice, bob = Member("alice"), Member("bob")
    room = registry.join("ops", alice, greet)
    assert not isinstance(room, str)
    assert registry.join("ops", bob, greet) is room
    assert len(registry) == 2
    registry.leave(room, alice, "left")
    assert registry.in_memory("ops") is room  # bob is still in it
    registry.leave(room, bob, "left")
    assert registry.in_memory("ops") is None and len(registry) == 1
    registry.leave(registry.default_room, alice, "left")  # never dropped
    assert registry.in_memory("lobby") is registry.default_room


def test_a_room_with_stored_messages_outlives_its_members_and_keeps_its_seq() -> None:
    log = MemoryLog()
    registry = RoomRegistry(log, default="lobby")
    alice = Member("alice")
    room = registry.join("ops", alice, greet)
    assert not isinstance(room, str)
    assert room.publish(alice, "one") == 1
    registry.leave(room, alice, "left")
    assert registry.in_memory("ops") is None
    assert len(registry) == 2  # still exists: it holds a message
    assert registry.get("nowhere") is None  # get never makes a room
    again = registry.get("ops")
    assert again is not None and again is not room and again.seq == 1
    assert again.publish(alice, "two") == 2
    # A new registry over the same log finds it too (a restart).
    assert len(RoomRegistry(log, default="lobby")) == 2


def test_limits_refuse_with_their_error_codes() -> None:
    registry = RoomRegistry(MemoryLog(), default="lobby", max_rooms=2, max_members=1)
    a, b = Member("a"), Member("b")
    assert not isinstance(registry.join("one", a, greet), str)
    assert registry.join("one", b, greet) == "room_full"
    assert registry.join("two", b, greet) == "too_many_rooms"  # lobby + one
    # The default room is never refused for the member cap by join_default's path,
    # but a join by name is.
    assert not isinstance(registry.join("lobby", a, greet), str)
    assert registry.join("lobby", b, greet) == "room_full"


def test_a_writer_batch_of_several_rooms_reaches_each_room_in_order() -> None:
    registry = RoomRegistry(MemoryLog(), default="lobby")
    alice, bob, carol = Member("alice"), Member("bob"), Member("carol")
    ops = registry.join("ops", bob, greet)
    dev = registry.join("dev", carol, greet)
    assert not isinstance(ops, str) and not isinstance(dev, str)
    batch = [Pending("ops", "alice", None, i, f"o{i}", alice, seq=i + 1, ts="t")
             for i in range(2)]
    batch.insert(1, Pending("dev", "alice", None, 9, "d", alice, seq=1, ts="t"))
    batch.append(Pending("gone", "alice", None, 7, "g", alice, seq=1, ts="t"))
    registry.on_stored(batch)
    assert [(f["room"], f["body"], f["seq"]) for f in bob.frames] == [
        ("ops", "o0", 1), ("ops", "o1", 2)]
    assert [(f["room"], f["body"]) for f in carol.frames] == [("dev", "d")]
    # The sender gets one ack per message of a room it reaches, with the room.
    assert [(f["room"], f["seq"]) for f in alice.frames] == [
        ("ops", 1), ("dev", 1), ("ops", 2)]


def test_the_cache_budget_is_shared_by_all_rooms() -> None:
    budget = CacheBudget(limit=4096)
    registry = RoomRegistry(MemoryLog(history_max=0), default="lobby", budget=budget)
    alice = Member("alice")
    rooms = [registry.join(f"r{i}", alice, greet) for i in range(20)]
    for room in rooms:
        assert not isinstance(room, str)
        for _ in range(20):
            room.publish(alice, "x" * 100)
    assert budget.used <= 4096 + 200  # at most about one frame over, never 20 rooms' worth
    for room in rooms:
        assert not isinstance(room, str)
        registry.leave(room, alice, "left")
    assert budget.used == 0  # dropped rooms give their bytes back
