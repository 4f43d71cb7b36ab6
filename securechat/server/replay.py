"""A resume in progress: what one returning session still has to be sent, and the live
frames it must not see before that.

The session joins the room at once (so no live message slips between the replay and
the live stream), and the room's snapshot seq ``upto`` fixes the replay's end. Live
frames that arrive meanwhile are held here, in order, and bounded by the session's
``--max-pending`` budget like any queue. Replay pages are read only as the socket
drains (``LOW_WATER``), so a client that missed a million messages never makes the
server buffer them. Loop-owned: only the session's I/O thread touches it.
"""

from __future__ import annotations

from typing import Final

from .. import protocol
from ..rooms.base import Room

__all__ = ["LOW_WATER", "PAGE_BYTES", "Replay", "resume_outcome"]

#: The next page is read once the session's unsent bytes fall below this.
LOW_WATER: Final = 64 * 1024
#: About this many bytes of frames per page.
PAGE_BYTES: Final = 128 * 1024


def resume_outcome(resume: protocol.Resume, epoch: str, upto: int) -> protocol.CaughtUp | None:
    """The ``caught_up`` to send at once when there is nothing to replay (position
    current, or not in this log at all), else None: a replay is needed."""
    if resume.epoch != epoch or resume.seq > upto:
        # Another log (reset, deleted data dir, another server), or a position this log
        # never reached: the client's position means nothing here.
        return protocol.CaughtUp(upto, 0, reset=True)
    if resume.seq == upto:
        return protocol.CaughtUp(upto, 0)
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

    def finish(self) -> bytes:
        """``caught_up`` followed by every live frame held meanwhile."""
        caught_up = protocol.encode(protocol.CaughtUp(
            self.upto, self.replayed, self.missing_after, self.missing_before))
        held, self.held, self.held_bytes = self.held, [], 0
        return b"".join([caught_up, *held])
