"""server/replay.py without sockets: ``resume_outcome`` decides between an immediate
caught_up and a replay, and ``Replay`` pages an InProcessRoom over a MemoryLog (from
the room's frame cache, from the log, or both), reports what retention took, and
hands back what it held only after caught_up."""

from __future__ import annotations

import json
from typing import Any

import pytest

from securechat import protocol
from securechat.rooms.memory import InProcessRoom
from securechat.server.replay import PAGE_BYTES, Replay, resume_outcome
from securechat.store.memory import MemoryLog


class Member:
    """A room member that keeps what it is given (a session's ``deliver``)."""

    def __init__(self, user: str, client_id: str | None = None) -> None:
        self.user = user
        self.user_json = json.dumps(user)
        self.client_id = client_id
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)

    def deliver_ack(self, frame: bytes) -> None:
        self.frames.append(frame)

    def reset(self, room: str) -> None:
        raise AssertionError(f"no log reset expected ({room})")


def room_with(count: int, *, cache: int = 10_000, history_max: int = 0,
              body: str = "b") -> tuple[InProcessRoom, Member]:
    """A room of ``count`` messages by alice; a member who saw them all live."""
    room = InProcessRoom(log=MemoryLog(history_max=history_max), cache=cache)
    watcher = Member("watcher")
    room.subscribe(watcher, lambda snapshot: b"")
    alice = Member("alice", "a1")
    for i in range(count):
        room.publish(alice, f"{body}{i}", i)
    return room, watcher


def frames(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines()]


def run(replay: Replay, room: InProcessRoom, max_pages: int = 10_000) -> list[bytes]:
    """Every page until done (bounded)."""
    pages: list[bytes] = []
    for _ in range(max_pages):
        if replay.done:
            return pages
        pages.append(replay.next_page(room))
    raise AssertionError("the replay never finished")


# --------------------------------------------------------------------------- resume_outcome
@pytest.mark.parametrize(("epoch", "seq", "upto", "expected"), [
    ("e1", 10, 10, protocol.CaughtUp(10, 0)),
    ("e1", 0, 0, protocol.CaughtUp(0, 0)),
    ("e1", 11, 10, protocol.CaughtUp(10, 0, reset=True)),
    ("e2", 3, 10, protocol.CaughtUp(10, 0, reset=True)),
    ("e2", 10, 10, protocol.CaughtUp(10, 0, reset=True)),
    ("e1", 9, 10, None),
    ("e1", 0, 10, None),
])
def test_resume_outcome(epoch: str, seq: int, upto: int,
                        expected: protocol.CaughtUp | None) -> None:
    assert resume_outcome(protocol.Resume(epoch, seq), "e1", upto) == expected


# --------------------------------------------------------------------------- paging
@pytest.mark.parametrize("cache", [10_000, 0, 300], ids=["cache", "log", "both"])
def test_a_replay_pages_every_missed_message_in_order(cache: int) -> None:
    """From the cache, from the log, or the log then the cache: the same frames the
    members got live, in order, in pages of about PAGE_BYTES and at most 500."""
    room, watcher = room_with(2000, cache=cache, body="x" * 150)
    replay = Replay(0, room.seq)
    pages = run(replay, room)
    replayed = [f for page in pages for f in frames(page)]
    assert [f["seq"] for f in replayed] == list(range(1, 2001))
    assert b"".join(pages) == b"".join(watcher.frames)  # original seq, ts and bytes
    assert replay.replayed == 2000 and len(pages) > 1
    for page in pages:
        lines = page.splitlines(keepends=True)
        assert len(lines) <= 500
        assert len(page) - len(lines[-1]) < PAGE_BYTES
    assert frames(replay.finish()) == [{"type": "caught_up", "seq": 2000, "replayed": 2000}]


def test_a_replay_starts_after_the_cursor_and_stops_at_upto() -> None:
    room, _ = room_with(50)
    replay = Replay(10, 20)  # the room has moved on to 50 since the snapshot
    got = [f["seq"] for page in run(replay, room) for f in frames(page)]
    assert got == list(range(11, 21))
    assert frames(replay.finish()) == [{"type": "caught_up", "seq": 20, "replayed": 10}]


def test_a_replay_with_nothing_to_do_is_done_at_once() -> None:
    room, _ = room_with(5)
    replay = Replay(5, 5)
    assert replay.done and run(replay, room) == []
    assert frames(replay.finish()) == [{"type": "caught_up", "seq": 5, "replayed": 0}]


def test_live_frames_held_during_a_replay_follow_caught_up_in_order() -> None:
    room, _ = room_with(3)
    replay = Replay(0, 3)
    replay.hold(b'{"type":"join","user":"carol"}\n')
    replay.hold(b'{"type":"msg","from":"carol","body":"hi","seq":4,"ts":"t"}\n')
    assert replay.held_bytes == sum(len(f) for f in replay.held)
    run(replay, room)
    out = frames(replay.finish())
    assert [f["type"] for f in out] == ["caught_up", "join", "msg"]
    assert (replay.held, replay.held_bytes) == ([], 0)


# --------------------------------------------------------------------------- retention
def test_messages_pruned_from_the_log_are_reported_missing() -> None:
    room, _ = room_with(30, cache=0, history_max=10)
    replay = Replay(5, 30)
    got = [f["seq"] for page in run(replay, room) for f in frames(page)]
    assert got == list(range(21, 31))
    assert frames(replay.finish()) == [{"type": "caught_up", "seq": 30, "replayed": 10,
                                        "missing_after": 5, "missing_before": 21}]


def test_a_range_wholly_pruned_is_reported_missing_with_nothing_replayed() -> None:
    room, _ = room_with(30, cache=0, history_max=10)
    replay = Replay(5, 15)  # everything in (5, 15] is gone; newer ones are held
    assert b"".join(run(replay, room)) == b""
    assert frames(replay.finish()) == [{"type": "caught_up", "seq": 15, "replayed": 0,
                                        "missing_after": 5, "missing_before": 16}]


def test_the_room_cache_does_not_replay_what_retention_pruned() -> None:
    """The log holds 21..30 (--history-max 10); history says oldest 21. A replay from 5
    must agree: 6..20 are missing, not served from the room's frame cache."""
    room, _ = room_with(30, history_max=10)  # the default cache (10,000 frames)
    assert room.log.oldest_seq("lobby") == 21
    replay = Replay(5, 30)
    got = [f["seq"] for page in run(replay, room) for f in frames(page)]
    assert got == list(range(21, 31)), f"replayed {got[:3]}..., pruned from the log"
    assert (replay.missing_after, replay.missing_before) == (5, 21)
