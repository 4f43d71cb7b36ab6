"""A resume in progress: what one returning session still has to be sent, room after
room, and the live frames it must not see before that.

The session joins the room at once (so no live message slips between the replay and
the live stream), and the room's snapshot seq ``upto`` fixes the replay's end. Live
frames that arrive meanwhile are held here, in order, and bounded by the session's
``--max-pending`` budget like any queue. Replay pages are read only as the socket
drains (``LOW_WATER``), so a client that missed a million messages never makes the
server buffer them. Loop-owned: only the session's I/O thread touches it.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from .. import protocol
from ..rooms.base import Room

__all__ = ["LOW_WATER", "PAGE_BYTES", "CatchUp", "Replay", "resume_outcome"]

#: The next page is read once the session's unsent bytes fall below this.
LOW_WATER: Final = 64 * 1024
#: About this many bytes of frames per page.
PAGE_BYTES: Final = 128 * 1024


def resume_outcome(resume: protocol.Resume, epoch: str, upto: int,
                   room: str = "") -> protocol.CaughtUp | None:
    """The ``caught_up`` to send at once when there is nothing to replay (position
    current, or not in this log at all), else None: a replay is needed."""
    if resume.epoch != epoch or resume.seq > upto:
        # Another log (reset, deleted data dir, another server), or a position this log
        # never reached: the client's position means nothing here.
        return protocol.CaughtUp(upto, 0, reset=True, room=room)
    if resume.seq == upto:
        return protocol.CaughtUp(upto, 0, room=room)
    return None


class Replay:
    """Replays ``(cursor, upto]`` page by page, then hands back what it held."""

    __slots__ = ("cursor", "held", "held_bytes", "missing_after", "missing_before",
                 "replayed", "upto")

    def __init__(self, cursor: int, upto: int) -> None:
        self.cursor = cursor
        self.upto = upto
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.replayed = 0
        self.missing_after: int | None = None
        self.missing_before: int | None = None

    def hold(self, frame: bytes) -> None:
        self.held.append(frame)
        self.held_bytes += len(frame)

    @property
    def done(self) -> bool:
        return self.cursor >= self.upto

    def next_page(self, room: Room) -> bytes:
        """The next page of stored frames (may be empty when messages are gone)."""
        frames, first = room.frames_after(self.cursor, self.upto, PAGE_BYTES)
        if first is None or not frames:
            self._missing(self.cursor, self.upto + 1)
            self.cursor = self.upto
            return b""
        if first > self.cursor + 1:
            self._missing(self.cursor, first)
        self.cursor = first + len(frames) - 1
        self.replayed += len(frames)
        return b"".join(frames)

    def _missing(self, after: int, before: int) -> None:
        # Only the oldest hole is reported: the log loses its oldest messages first
        # (retention); a hole further on needs --durability memory and a failed write.
        if before - after > 1 and self.missing_after is None:
            self.missing_after, self.missing_before = after, before

    def caught_up(self, room: str = "") -> bytes:
        return protocol.encode(protocol.CaughtUp(
            self.upto, self.replayed, self.missing_after, self.missing_before, room=room))

    def finish(self) -> bytes:
        """``caught_up`` followed by every live frame held meanwhile."""
        held, self.held, self.held_bytes = self.held, [], 0
        return b"".join([self.caught_up(), *held])


class _Owed:
    """One entry of a catch-up: a room's ``joined`` (or welcome) and then its replay, or
    a frame that must keep its place among them (an auth entry's refusal)."""

    __slots__ = ("name", "prelude", "replay", "room")

    def __init__(self, name: str, prelude: bytes, room: Room | None,
                 replay: Replay | None) -> None:
        self.name = name
        self.prelude = prelude
        self.room = room
        self.replay = replay if room is not None else None


class CatchUp:
    """What a session still owes its client before live frames, in order: for each room
    joined with a resume, its ``joined`` frame, its replay and its ``caught_up``; for a
    room joined meanwhile without one, its ``joined``. Every live frame of every room
    is held until the last is out, so each room's frames stay in seq order."""

    __slots__ = ("held", "held_bytes", "owed")

    def __init__(self) -> None:
        self.owed: deque[_Owed] = deque()
        self.held: list[bytes] = []
        self.held_bytes = 0

    def add(self, room: Room, prelude: bytes, replay: Replay | None = None) -> None:
        self.owed.append(_Owed(room.name, prelude, room, replay))

    def add_frame(self, room: str, frame: bytes) -> None:
        """A frame about ``room`` that must come after what is owed so far."""
        self.owed.append(_Owed(room, frame, None, None))

    def hold(self, frame: bytes) -> None:
        self.held.append(frame)
        self.held_bytes += len(frame)

    def stop(self, room: str) -> None:
        """The session was made to leave ``room`` (its grant was removed): no more of its
        replay is sent, and no ``caught_up``; a ``joined`` not yet sent still is, so the
        client never hears of a room it was not told it joined."""
        kept: deque[_Owed] = deque()
        for owed in self.owed:
            if owed.name == room and owed.room is not None:
                owed.replay = None
                if not owed.prelude:
                    continue  # already announced: nothing more of it
            kept.append(owed)
        self.owed = kept

    @property
    def done(self) -> bool:
        return not self.owed

    def step(self) -> tuple[bytes, Replay | None, str]:
        """The next bytes owed: a prelude, a page, or a ``caught_up``; with the room's
        finished replay and name once its ``caught_up`` is in them (for the log)."""
        owed = self.owed[0]
        if owed.prelude:
            prelude, owed.prelude = owed.prelude, b""
            if owed.replay is None:
                self.owed.popleft()
            return prelude, None, owed.name
        replay, room = owed.replay, owed.room
        if replay is None or room is None:
            self.owed.popleft()
            return b"", None, owed.name
        if not replay.done:
            return replay.next_page(room), None, owed.name
        self.owed.popleft()
        return replay.caught_up(owed.name), replay, owed.name

    def release(self) -> bytes:
        """Every live frame held meanwhile (once nothing is owed)."""
        held, self.held, self.held_bytes = self.held, [], 0
        return b"".join(held)
