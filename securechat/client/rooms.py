"""The rooms of one client: which it wants to be in, and per room its position in the
room's log, its resume replay and its gap tracking (pure: no I/O, no clock).

Seq, epoch, resume and the replay are per room (protocol v3, docs/protocol.md
"Rooms"), so each :class:`Room` has its own :class:`~securechat.client.parts.SeqTracker`.
:class:`RoomBook` is the ordered set of rooms the client wants to be in: every
(re)connect asks for all of them, each resumed from its own ``(epoch, seq)``, in the
``auth`` frame as far as it fits (:data:`~securechat.protocol.MAX_AUTH_ROOMS` entries
and :data:`~securechat.protocol.PRE_AUTH_MAX_FRAME` bytes) and in ``join`` frames
right after the welcome for the rest.

A client made without ``rooms`` logs in the version 1/2 way (no ``rooms`` in auth):
the server puts it in its default room, whose name only the welcome tells. That
room is the *legacy* room, named ``""`` until then; frames without ``room`` (a
version 2 server) are about it. Once such a client is in any other room, its next
login is a version 3 one naming every room (the default one by its name).

Rosters are kept by the public client (:mod:`securechat.client.api`), under its lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Final

from .. import protocol
from ..errors import ConfigError
from ..protocol import Ack, CaughtUp, ErrorFrame, JoinRoom, Left, Message, Resume, Welcome
from .events import Gap
from .parts import SeqTracker, validate_position

__all__ = ["CAUGHT_UP_WAIT", "JOIN_REFUSALS", "Room", "RoomBook", "dropped_room",
           "validate_room"]

#: After a resumed welcome or ``joined``, seconds without a replayed message or
#: ``caught_up`` after which the server is taken as one that ignores ``resume`` (the
#: missed messages are then a Gap, as from a protocol-1 server).
CAUGHT_UP_WAIT: Final = 3.0
#: Room errors (with ``room``, without ``id``) that refuse a join: the room is no
#: longer one the client tries to be in (join it again to retry).
JOIN_REFUSALS: Final = frozenset({"forbidden", "room_full", "too_many_rooms"})

# A room's state on the current link.
IDLE: Final = 0  # not asked for on this link
JOINING: Final = 1  # asked for (auth entry or join frame), no joined/welcome yet
JOINED: Final = 2


def validate_room(name: str) -> str:
    """Reject a room name the server would refuse, in the caller's thread."""
    problem = protocol.room_problem(name)
    if problem is not None:
        raise ConfigError(f"bad room name {name!r}: {problem}")
    return name


def dropped_room(event: object) -> str | None:
    """The room ``event`` takes out of the rooms a client wants to be in, or None: a
    ``left`` for a removed grant, or an error refusing a join."""
    if isinstance(event, Left):
        return event.room if event.reason == "forbidden" else None
    if (isinstance(event, ErrorFrame) and event.id is None and event.room
            and event.code in JOIN_REFUSALS):
        return event.room
    return None


class Room:
    """One room the client is in or wants to be in: its log position and replay."""

    __slots__ = ("asked_resume", "name", "replay_deadline", "state", "tracker")

    def __init__(self, name: str, position: tuple[str, int] | None = None) -> None:
        self.name = name
        self.tracker = SeqTracker()
        if position is not None:
            self.tracker.start_at(*position)
        self.state = IDLE
        #: The current link asked to resume this room (so a caught_up will end a replay).
        self.asked_resume = False
        #: 0.0: not waiting for this room's caught_up.
        self.replay_deadline = 0.0

    def entry(self) -> JoinRoom:
        """Ask for this room on the current link: its auth entry or join frame."""
        position = self.tracker.position()
        self.asked_resume = position is not None
        self.state = JOINING
        self.replay_deadline = 0.0
        return JoinRoom(self.name, None if position is None else Resume(*position))

    def tagged(self, gap: Gap | None) -> Gap | None:
        return gap if gap is None or gap.room == self.name else replace(gap, room=self.name)

    def entered(self, seq: int, epoch: str, version: int, now: float) -> Gap | None:
        """The server put the session in the room (welcome or ``joined``) at ``seq``."""
        self.state = JOINED
        self.replay_deadline = 0.0
        if self.asked_resume and version >= 2:
            # The server replays what we missed, then says caught_up: judge holes then.
            if self.tracker.resume(seq, epoch):
                self.replay_deadline = now + CAUGHT_UP_WAIT
            return None
        return self.tagged(self.tracker.welcome(seq, epoch))


class RoomBook:
    """The rooms one client wants to be in, in order (the first is the default send
    room), and how to ask for them at login. Belongs to the core that owns it."""

    __slots__ = ("_leaving", "_legacy", "_rooms", "_saved", "v3")

    def __init__(self, rooms: Iterable[str] | None = None, *,
                 resume: tuple[str, int] | None = None,
                 resumes: Mapping[str, tuple[str, int]] | None = None) -> None:
        saved = {validate_room(name): validate_position(pos)
                 for name, pos in (resumes or {}).items()}
        first = None if resume is None else validate_position(resume)
        #: A version 3 login (``rooms`` in auth); sticky once chosen.
        self.v3 = rooms is not None
        self._rooms: dict[str, Room] = {}
        self._legacy: Room | None = None
        if rooms is None:
            self._legacy = self._rooms[""] = Room("", first)
        else:
            for name in rooms:
                if validate_room(name) not in self._rooms:
                    pos = saved.pop(name, None) or (first if not self._rooms else None)
                    self._rooms[name] = Room(name, pos)
        #: Positions for rooms joined later by name.
        self._saved = saved
        #: Rooms left while logging in (asked for in auth): left after the welcome.
        self._leaving: list[str] = []

    def __len__(self) -> int:
        return len(self._rooms)

    def __contains__(self, name: str) -> bool:
        return name in self._rooms

    def names(self) -> tuple[str, ...]:
        """The rooms wanted, in order (the legacy room once the welcome named it)."""
        return tuple(name for name in self._rooms if name)

    def first(self) -> Room | None:
        """The default send room (the legacy one for an old-style client)."""
        return next(iter(self._rooms.values()), None)

    def lookup(self, name: str) -> Room | None:
        """The room a server frame is about: ``""`` (a version 2 frame) is the legacy one."""
        room = self._rooms.get(name)
        if room is None and not name:
            return self._legacy
        return room

    def positions(self) -> dict[str, tuple[str, int]]:
        out = {}
        for name, room in self._rooms.items():
            if name and (position := room.tracker.position()) is not None:
                out[name] = position
        return out

    # ------------------------------------------------------------------ login
    def login(self, token: str, client_id: str | None) -> bytes:
        """A new link: the auth frame. Rooms that do not fit in it are asked for with
        ``join`` frames after the welcome (:meth:`unasked`)."""
        legacy = self._legacy
        self._leaving = []
        for room in self._rooms.values():
            room.state, room.replay_deadline, room.asked_resume = IDLE, 0.0, False
        if not self.v3 and legacy is not None and (
                not legacy.name or list(self._rooms) == [legacy.name]):
            resume = legacy.entry().resume
            return protocol.encode(protocol.Auth(token, client_id, resume))
        self.v3 = True
        entries: list[JoinRoom] = []
        frame = protocol.encode(protocol.Auth(token, client_id, None, ()))
        for room in self._rooms.values():
            if len(entries) == protocol.MAX_AUTH_ROOMS:
                break
            entry = room.entry()
            longer = protocol.encode(protocol.Auth(token, client_id, None, (*entries, entry)))
            if len(longer) > protocol.PRE_AUTH_MAX_FRAME:
                room.state = IDLE
                break
            entries.append(entry)
            frame = longer
        return frame

    def unasked(self) -> list[bytes]:
        """After a welcome: ``join`` frames (with resume) for every room not asked for
        yet (those that did not fit in auth, or were joined while logging in)."""
        leaves = [protocol.encode(protocol.LeaveRoom(name)) for name in self._leaving]
        self._leaving = []
        return leaves + [protocol.encode(room.entry()) for room in self._rooms.values()
                         if room.state == IDLE and room.name]

    # ------------------------------------------------------------------ user requests
    def join(self, name: str, active: bool) -> bytes | None:
        """Want ``name`` too; returns the ``join`` frame to send now (active link)."""
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = Room(name, self._saved.pop(name, None))
        if active and room.state == IDLE:
            return protocol.encode(room.entry())
        return None

    def leave(self, name: str, active: bool) -> bytes | None:
        """Want ``name`` no more; returns the ``leave`` frame to send now (active link)."""
        room = self._rooms.pop(name, None)
        if room is None:
            return None
        if room is self._legacy:
            self._legacy = None
        self._saved.pop(name, None)
        if room.state == IDLE or not room.name:
            return None
        if not active:
            self._leaving.append(name)  # asked for in this login: leave once welcomed
            return None
        return protocol.encode(protocol.LeaveRoom(name))

    def drop(self, name: str) -> None:
        """The server will not have us in ``name`` (join refused, grant removed)."""
        room = self._rooms.pop(name, None)
        if room is not None and room is self._legacy:
            self._legacy = None

    # ------------------------------------------------------------------ server frames
    def welcome(self, welcome: Welcome, now: float) -> Gap | None:
        """A welcome; an old-style one names and describes the room it put us in."""
        if not welcome.room:
            return None
        legacy = self._legacy
        if legacy is not None and not legacy.name:
            legacy.name = welcome.room
            others = {k: r for k, r in self._rooms.items() if k and k != welcome.room}
            self._rooms = {welcome.room: legacy, **others}
        room = self._rooms.get(welcome.room)
        if room is None:
            return None
        return room.entered(welcome.seq, welcome.epoch, welcome.protocol, now)

    def joined(self, frame: protocol.Joined, now: float) -> Gap | None:
        room = self._rooms.get(frame.room)
        if room is None:
            return None  # left again before the answer came
        return room.entered(frame.seq, frame.epoch, protocol.PROTOCOL_VERSION, now)

    def message(self, message: Message, now: float) -> Message | None:
        """``message`` as the user sees it (flagged when replayed), or None when it was
        seen already (a replay can repeat what came live)."""
        room = self.lookup(message.room)
        if room is None:
            return message
        tracker = room.tracker
        if not tracker.is_new(message.seq):
            return None
        if tracker.replaying and message.seq <= tracker.live_from:
            message = replace(message, replayed=True)
            if room.replay_deadline:
                room.replay_deadline = now + CAUGHT_UP_WAIT
        tracker.seen(message.seq)
        return message

    def ack(self, ack: Ack) -> None:
        if (room := self.lookup(ack.room)) is not None:
            room.tracker.seen(ack.seq)

    def caught_up(self, frame: CaughtUp) -> Gap | None:
        room = self.lookup(frame.room)
        if room is None:
            return None
        room.replay_deadline = 0.0
        return room.tagged(room.tracker.caught_up(frame))

    def settle(self, name: str | None = None) -> list[Gap]:
        """Nothing of ours is in flight: holes in room ``name`` (None: every room) are lost."""
        if name is not None:
            room = self.lookup(name)
            gap = room.tagged(room.tracker.settle()) if room is not None else None
            return [gap] if gap is not None else []
        gaps = (room.tagged(room.tracker.settle()) for room in self._rooms.values())
        return [gap for gap in gaps if gap is not None]

    def replay_deadline(self) -> float:
        """The earliest caught_up wait that runs out (0.0: none)."""
        waits = [r.replay_deadline for r in self._rooms.values() if r.replay_deadline]
        return min(waits) if waits else 0.0

    def expired(self, now: float) -> list[tuple[Room, Gap | None]]:
        """Rooms whose caught_up did not come in time: their replay ends (and its Gap)."""
        out = []
        for room in self._rooms.values():
            if room.replay_deadline and now >= room.replay_deadline:
                room.replay_deadline = 0.0
                out.append((room, room.tagged(room.tracker.end_replay())))
        return out
