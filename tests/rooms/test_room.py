"""securechat.rooms.memory: numbering, presence, duplicate ids and ordering (pure, no sockets)."""

from __future__ import annotations

import json

from securechat import protocol
from securechat.rooms import InProcessRoom, RoomSnapshot


class FakeMember:
    """A room member that records frames (a test double of the session, not of the room)."""

    def __init__(self, user: str, client_id: str | None = None) -> None:
        self.user = user
        self.client_id = client_id
        self.user_json = protocol.json_string(user)
        self.frames: list[dict[str, object]] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(json.loads(frame))

    def deliver_ack(self, frame: bytes) -> None:
        self.frames.append(json.loads(frame))

    def reset(self, room: str) -> None:
        raise AssertionError(f"no log reset expected ({room})")


def _greet(snapshot: RoomSnapshot) -> bytes:
    return json.dumps({"type": "hello", "seq": snapshot.seq}).encode()


def test_room_numbers_messages_and_skips_sender() -> None:
    """Messages get consecutive seqs, reach everyone but the sender, the cache is bounded."""
    room = InProcessRoom("r", cache=2)
    alice, bob = FakeMember("alice"), FakeMember("bob")
    room.subscribe(alice, _greet)
    room.subscribe(bob, _greet)
    assert [room.publish(alice, f"m{i}") for i in range(3)] == [1, 2, 3]
    assert [f["seq"] for f in bob.frames if f["type"] == "msg"] == [1, 2, 3]
    assert not [f for f in alice.frames if f["type"] == "msg"]
    assert [e.seq for e in room.history()] == [2, 3]  # bounded
    assert [e.seq for e in room.history(after_seq=2)] == [3]


def test_room_presence_is_per_user() -> None:
    """A second session of the same user is not announced; the last one leaving is."""
    room = InProcessRoom()
    watcher, a1, a2 = FakeMember("w"), FakeMember("alice"), FakeMember("alice")
    room.subscribe(watcher, _greet)
    room.subscribe(a1, _greet)
    room.subscribe(a2, _greet)
    room.unsubscribe(a1, "bye")
    assert room.members() == ("alice", "w")
    room.unsubscribe(a2, "disconnected")
    room.unsubscribe(a2, "disconnected")  # twice is harmless
    kinds = [(f["type"], f.get("user")) for f in watcher.frames]
    assert kinds == [("hello", None), ("join", "alice"), ("leave", "alice")]
    assert room.members() == ("w",)


def test_room_recognises_resends_per_user_and_client() -> None:
    """A resend with the same (user, client, id) gets the original seq with duplicate and
    is not delivered twice; another client of the same user, or a session without a
    client id, is never taken for a resend."""
    room = InProcessRoom()
    phone, laptop = FakeMember("alice", "phone"), FakeMember("alice", "laptop")
    anon, bob = FakeMember("alice"), FakeMember("bob", "phone")
    for member in (phone, laptop, anon, bob):
        room.subscribe(member, _greet)
    assert room.publish(phone, "hi", "c-1") == 1
    assert room.publish(phone, "hi again?", "c-1") == 1
    assert room.publish(laptop, "other body", "c-1") == 2  # another device, same id
    assert room.publish(bob, "hi", "c-1") == 3  # another user, same client name
    assert room.publish(anon, "x", "c-1") == 4
    assert room.publish(anon, "x", "c-1") == 5  # no client id: never a duplicate
    bodies = [f["body"] for f in bob.frames if f["type"] == "msg"]
    assert bodies == ["hi", "other body", "x", "x"]
    acks = [f for f in phone.frames if f["type"] == "ack"]
    assert acks == [{"type": "ack", "room": "lobby", "id": "c-1", "seq": 1},
                    {"type": "ack", "room": "lobby", "id": "c-1", "seq": 1, "duplicate": True}]


def test_resends_expire_after_the_window() -> None:
    """Past the resend window the same id is a new message."""
    now = [1000.0]
    room = InProcessRoom(resend_window=300, clock=lambda: now[0])
    phone = FakeMember("alice", "phone")
    room.subscribe(phone, _greet)
    assert room.publish(phone, "a", 1) == 1
    now[0] += 299
    assert room.publish(phone, "a", 1) == 1
    now[0] += 2
    assert room.publish(phone, "a", 1) == 2


def test_sender_sees_its_ack_before_later_messages() -> None:
    """The room acknowledges under its lock: the sender's stream is in seq order."""
    room = InProcessRoom()
    alice, bob = FakeMember("alice"), FakeMember("bob")
    room.subscribe(alice, _greet)
    room.subscribe(bob, _greet)
    room.publish(alice, "a")
    room.publish(bob, "b")
    room.publish(alice, "c", 7)
    seqs = [(f["type"], f["seq"]) for f in alice.frames if f["type"] in ("ack", "msg")]
    assert seqs == [("ack", 1), ("msg", 2), ("ack", 3)]


def test_welcome_snapshot_precedes_later_messages() -> None:
    """A joiner's snapshot comes before any message numbered after it."""
    room = InProcessRoom()
    alice = FakeMember("alice")
    room.subscribe(alice, _greet)
    room.publish(alice, "before")
    bob = FakeMember("bob")
    snap = room.subscribe(bob, _greet)
    room.publish(alice, "after")
    assert snap.seq == 1
    assert bob.frames[0] == {"type": "hello", "seq": 1}
    assert bob.frames[1]["seq"] == 2
