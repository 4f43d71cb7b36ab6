"""Which rooms one session is in, and what it may do there: join, leave, the frames a
join owes (``joined``, a resume replay), and grants that change while it is connected.

:class:`Memberships` is a base class of :class:`~securechat.server.dispatch.FrameDispatch`
(and so of the Session), run on the session's owning loop thread only. It declares what
it uses of the session so it never imports the session module.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from .. import protocol
from ..grants import Grants
from ..rooms.base import RoomSnapshot
from ..rooms.memory import InProcessRoom
from .limits import spread_retry
from .logs import ConnectionLog, log_event
from .replay import CatchUp, Replay, resume_outcome
from .state import State
from .tokens import TokenStore, effective_grants

if TYPE_CHECKING:
    from ..io.loop import IOLoop
    from .host import SessionHost

__all__ = ["Memberships"]

logger = logging.getLogger("securechat.server")


class Memberships:
    """The session's rooms (name -> room, in join order) and grants."""

    # Provided by the session (which is the room Member).
    host: SessionHost
    user: str
    user_json: str
    client_id: str | None
    token_id: str
    log: ConnectionLog
    loop: IOLoop
    state: State
    replay: CatchUp | None

    #: Rooms the session is in, and those of them it may send to.
    rooms: dict[str, InProcessRoom]
    writable: set[str]
    grants: Grants
    #: The token store the grants were read from (a new one means: read them again).
    tokens_seen: TokenStore | None
    #: During auth: frames of rooms joined before the welcome is out (see _greet_room).
    joining: list[bytes] | None

    def deliver(self, frame: bytes) -> None:
        raise NotImplementedError

    def deliver_ack(self, frame: bytes) -> None:
        raise NotImplementedError

    def _begin_close(self, reason: str, *, linger: float = ...,
                     final: bytes | None = None) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ a log reset
    def reset(self, room: str) -> None:
        """A room's log started over (Redis lost it): see :meth:`_on_reset`. Called by the
        room from any I/O thread, under its lock."""
        self.loop.call_soon(functools.partial(self._on_reset, room))

    def _on_reset(self, room: str) -> None:
        """Say ``bye`` (``store_reset``, a short spread ``retry_after``): the client comes
        back and resumes, and learns the new epoch with ``reset``. Frames already
        queued, the new log's first message among them, still go out first."""
        if self.state is State.ACTIVE or self.state is State.AUTH:
            log_event(logger, logging.WARNING, "store_reset", room=room, **self.log.fields)
            self._begin_close("store_reset", final=protocol.encode(
                protocol.Bye("store_reset", spread_retry(0.1, 1.0))))

    def _send(self, frame: bytes) -> None:
        raise NotImplementedError

    def _queue_out(self, chunk: bytes) -> None:
        raise NotImplementedError

    def _error(self, code: str, message: str, mid: protocol.MessageId = None,
               retry_after: float | None = None, *, counts: bool = True,
               room: str | None = None) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ joining
    def _join_problem(self, name: str) -> tuple[str, str] | None:
        """Why the session may not join ``name`` (code, message), or None."""
        if name in self.rooms:
            return "already_joined", f"already in room {name}"
        if self.grants.mode(name) is None:
            return "forbidden", f"this token may not enter room {name}"
        limit = self.host.config.max_rooms_per_session
        if len(self.rooms) >= limit:
            return "too_many_rooms", (f"already in {limit} rooms "
                                      "(--max-rooms-per-session)")
        return None

    def _join(self, name: str, resume: protocol.Resume | None) -> str | None:
        """Join ``name``; None on success, else the refusal's error code (sent here)."""
        problem = self._join_problem(name)
        if problem is not None:
            code, message = problem
            self._refuse_room(code, message, name)
            return code
        greet = functools.partial(self._greet_room, resume)
        registry = self.host.rooms
        joined = registry.join(name, self, greet)
        if isinstance(joined, str):
            cfg = self.host.config
            message = (f"room {name} holds {cfg.max_room_members} sessions "
                       "(--max-room-members)" if joined == "room_full" else
                       f"the server holds {cfg.max_rooms} rooms (--max-rooms)")
            self._refuse_room(joined, message, name)
            return joined
        self.rooms[name] = joined
        if self.grants.mode(name) == "rw":
            self.writable.add(name)
        log_event(logger, logging.INFO, "join", room=name, **self.log.fields)
        return None

    def _refuse_room(self, code: str, message: str, room: str) -> None:
        if self.joining is None:
            self._error(code, message, counts=False, room=room)
            return
        # Auth: in the order of the list, after what earlier entries owe.
        frame = protocol.encode_error(code, message, room=room)
        if self.replay is not None:
            self.replay.add_frame(room, frame)
        else:
            self.joining.append(frame)

    def _greet_room(self, resume: protocol.Resume | None, snapshot: RoomSnapshot) -> bytes:
        """What a join owes the client: ``joined``, and for a resume either
        ``caught_up`` at once or a replay. Called by the room under its lock, on this
        session's loop thread, before any live frame of the room reaches it."""
        name = snapshot.room
        frames = protocol.encode(protocol.Joined(name, snapshot.members, snapshot.seq,
                                                 snapshot.epoch))
        room = self.host.rooms.in_memory(name)
        assert room is not None  # the registry holds it while subscribing
        replay: Replay | None = None
        if resume is not None:
            outcome = resume_outcome(resume, snapshot.epoch, snapshot.seq, name)
            if outcome is None:
                replay = Replay(resume.seq, snapshot.seq)
            else:
                frames += protocol.encode(outcome)
        return self._owe(room, frames, replay)

    def _owe(self, room: InProcessRoom, frames: bytes, replay: Replay | None) -> bytes:
        """Send ``frames`` (then ``replay``) before anything of ``room`` that comes later,
        and after everything sent before: queued behind a catch-up in progress, or behind
        the welcome during auth; else returned, for the room to deliver through the
        inbox behind what is already there (a ``left`` of an earlier membership)."""
        if replay is not None or self.replay is not None:
            if self.replay is None:
                self.replay = CatchUp()
            self.replay.add(room, frames, replay)
        elif self.joining is not None:
            self.joining.append(frames)
        else:
            return frames
        return b""

    # ------------------------------------------------------------------ leaving
    def _leave(self, name: str, reason: str) -> bool:
        """Leave ``name`` (presence ``leave`` with ``reason`` for the others); False if
        the session was not in it. Acks of its messages still being stored still come."""
        room = self.rooms.pop(name, None)
        if room is None:
            return False
        self.writable.discard(name)
        if self.replay is not None:
            self.replay.stop(name)
        self.host.rooms.leave(room, self, reason)
        log_event(logger, logging.INFO, "leave", room=name, reason=reason, **self.log.fields)
        return True

    def _leave_all(self, reason: str) -> None:
        for name in list(self.rooms):
            self._leave(name, reason)

    # ------------------------------------------------------------------ grants
    def _check_grants(self, tokens: TokenStore) -> None:
        """The tokens file changed: apply this token's new grants. A room no longer
        granted is left (``error forbidden`` + ``left``); the others stay."""
        self.tokens_seen = tokens
        record = tokens.get(self.token_id)
        if record is None:
            return  # revoked: the caller closes the session
        grants = effective_grants(record, self.host.config.room)
        if grants == self.grants:
            return
        self.grants = grants
        for name in list(self.rooms):
            mode = grants.mode(name)
            if mode is None:
                self._leave(name, "forbidden")
                self._send(protocol.encode_error(
                    "forbidden", f"your grant for room {name} was removed", room=name))
                self._send(protocol.encode(protocol.Left(name, "forbidden")))
            elif mode == "rw":
                self.writable.add(name)
            else:
                self.writable.discard(name)
        self._send(protocol.encode(protocol.Grants(grants.items)))
        log_event(logger, logging.INFO, "grants_changed", rooms=len(self.rooms),
                  **self.log.fields)
