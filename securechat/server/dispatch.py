"""What a server session does with each frame it reads: auth, join and leave,
messages, history, heartbeats and bye (the session's transport is
:mod:`securechat.server.session`, its rooms :mod:`securechat.server.memberships`).

:class:`FrameDispatch` is a base class of :class:`~securechat.server.session.Session`;
it declares what it uses of the session (state, budgets, ``_send``/``_error``/``_fail``)
so this module never imports the session module (tests/test_architecture.py).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .. import protocol
from ..errors import RemoteProtocolError
from ..rooms.base import RoomSnapshot
from ..rooms.resends import PENDING
from ..store.base import StoreUnavailable
from .limits import OrderGate, TokenBucket, spread_retry
from .logs import log_event
from .memberships import Memberships
from .replay import Replay, resume_outcome
from .state import State
from .tokens import effective_grants

if TYPE_CHECKING:
    from .host import SessionHost

__all__ = ["FrameDispatch"]

logger = logging.getLogger("securechat.server")

#: Joins and leaves a session may send while a catch-up is going out (they wait for it).
MAX_DEFERRED = 256

_PONG = protocol.encode(protocol.Pong())
_BYE = protocol.encode(protocol.Bye())


class FrameDispatch(Memberships):
    """Frame handling for one session, run on its owning loop thread."""

    # Provided by the session.
    host: SessionHost
    state: State
    ip_key: str
    conn_id: int
    peer: str
    user_counted: bool
    decoder: protocol.FrameDecoder
    bucket: TokenBucket | None
    frame_bucket: TokenBucket | None
    error_bucket: TokenBucket | None
    order_gate: OrderGate
    resume: protocol.Resume | None
    deferred: list[protocol.JoinRoom | protocol.LeaveRoom]

    submitted: int

    def _fail(self, code: str, message: str, mid: protocol.MessageId = None,
              retry_after: float | None = None) -> None:
        raise NotImplementedError

    def _begin_close(self, reason: str, *, linger: float = 1.0,
                     final: bytes | None = None) -> None:
        raise NotImplementedError

    def _schedule_flush(self) -> None:
        raise NotImplementedError

    def _on_line(self, line: bytes) -> None:
        if not line or line.isspace():
            return  # blank lines are allowed as keepalive filler
        try:
            frame = protocol.decode_client_frame(line)
        except RemoteProtocolError as exc:
            if self.state is State.AUTH:
                self._fail(exc.code, exc.message)  # before auth every error closes
                return
            frames = self.frame_bucket
            if frames is not None and not frames.take(now := time.monotonic()):
                self._error("rate_limited", "frame dropped: too many frames",
                            retry_after=round(frames.retry_after(now), 3))
            else:
                self._error(exc.code, exc.message, exc.message_id)
            return
        if self.state is State.ACTIVE:
            if type(frame) is protocol.SendMessage:
                self._on_message(frame)
                return
            frames = self.frame_bucket
            if frames is not None and not frames.take(now := time.monotonic()):
                self._error("rate_limited", "frame dropped: too many frames",
                            retry_after=round(frames.retry_after(now), 3))
                return
            if type(frame) is protocol.Ping:
                self._send(_PONG)
            elif type(frame) is protocol.JoinRoom or type(frame) is protocol.LeaveRoom:
                if self.replay is None:
                    self._on_membership(frame)
                elif len(self.deferred) < MAX_DEFERRED:
                    # Answered once the catch-up is out, so every room's frames keep
                    # their order (a joined never overtakes an earlier left).
                    self.deferred.append(frame)
                else:
                    self._error("rate_limited", "too many joins and leaves while catching "
                                "up", retry_after=1.0, room=frame.room)
            elif type(frame) is protocol.History:
                self._on_history(frame)
            elif type(frame) is protocol.Pong:
                pass  # last_rx already moved
            elif type(frame) is protocol.Bye:
                self._begin_close("bye", final=_BYE)
            else:
                self._error("already_authenticated", "this session is already authenticated")
        elif type(frame) is protocol.Auth:
            self._authenticate(frame)
        else:
            self._fail("not_authenticated", "the first frame must be auth")

    def _on_membership(self, frame: protocol.JoinRoom | protocol.LeaveRoom) -> None:
        if type(frame) is protocol.JoinRoom:
            self._join(frame.room, frame.resume)
        elif self._leave(frame.room, "left"):
            self._send(protocol.encode(protocol.Left(frame.room, "left")))
        else:
            self._error("not_joined", f"not in room {frame.room}", counts=False,
                        room=frame.room)

    def _run_deferred(self) -> None:
        """The catch-up is out: answer the joins and leaves that waited for it, in order
        (a join with resume may start another catch-up; the rest wait for that one)."""
        deferred = self.deferred
        while deferred and self.replay is None and self.state is State.ACTIVE:
            self._on_membership(deferred.pop(0))

    def _authenticate(self, auth: protocol.Auth) -> None:
        token = auth.token
        host = self.host
        now = time.monotonic()
        wait = host.auth_retry_after(self.ip_key, now)
        if wait > 0:
            self._fail("auth_throttled", "too many failed logins from your address",
                       retry_after=round(wait, 1))
            return
        try:
            record = host.tokens.verify(token)
        except (UnicodeError, ValueError):
            record = None  # e.g. a lone surrogate that slipped past frame validation
        if record is None:
            self.log(logging.WARNING, "auth_failed")
            self._fail("auth_failed", "unknown or revoked token")  # counts the failure
            return
        cfg = host.config
        grants = effective_grants(record, cfg.room)
        if auth.rooms is None and grants.mode(cfg.room) is None:
            # A protocol 1/2 login can only be put in the default room.
            self._fail("forbidden", f"this token may not enter the default room {cfg.room}; "
                       "name the rooms to join in auth (protocol 3)")
            return
        self.user = record.name
        self.user_json = protocol.json_string(record.name)
        self.token_id = record.id
        self.grants = grants
        self.tokens_seen = host.tokens
        self.client_id = auth.client
        self.resume = auth.resume
        self.log.identify(record.name, {"conn": self.conn_id, "peer": self.peer,
                                        "user": record.name, "token": record.id})
        refused = host.on_authenticated(self.conn_id, record.name)
        self.user_counted = refused is None
        if refused == "too_many_sessions":
            self._fail(refused, f"{record.name} already holds "
                       f"{cfg.max_sessions_per_user} sessions (--max-sessions-per-user)")
            return
        if refused is not None:
            self._fail(refused, "too many connections waiting to log in; try again later",
                       retry_after=spread_retry(1.0, self.host.config.retry_spread))
            return
        self.state = State.ACTIVE
        self.decoder.max_frame = cfg.max_frame
        self.bucket = TokenBucket(cfg.msg_rate, cfg.msg_burst, now)
        self.frame_bucket = TokenBucket(cfg.frame_rate, cfg.frame_burst, now)
        self.error_bucket = TokenBucket(cfg.max_errors / 60.0, cfg.max_errors, now)
        log_event(logger, logging.INFO, "auth", **self.log.fields)
        if auth.rooms is None:
            self._join_default()
            return
        # Protocol 3: the welcome names the rooms joined, so the joins come first and
        # what they owe waits in ``joining`` until the welcome is out.
        self.joining = []
        for entry in auth.rooms:
            self._join(entry.room, entry.resume)
        owed, self.joining = self.joining, None
        # Straight to the send buffer: live frames of the rooms may be in the inbox.
        self._queue_out(self._encode_welcome(None) + b"".join(owed))
        self._schedule_flush()

    def _encode_welcome(self, snapshot: RoomSnapshot | None) -> bytes:
        cfg = self.host.config
        members: tuple[str, ...]
        if snapshot is None:
            room, members, seq, epoch, rooms = "", (), 0, "", tuple(self.rooms)
        else:
            room, members, seq, epoch = (snapshot.room, snapshot.members, snapshot.seq,
                                         snapshot.epoch)
            rooms = (room,)
        return protocol.encode(protocol.Welcome(
            user=self.user, room=room, members=members, heartbeat=cfg.heartbeat, seq=seq,
            max_frame=cfg.max_frame, session=f"{self.host.session_prefix}-{self.conn_id}",
            epoch=epoch, rooms=rooms, grants=self.grants.items))

    def _join_default(self) -> None:
        """A protocol 1/2 login: into the default room, with the welcome describing it.
        The default room always exists, and the member cap applies to joins by name."""
        room = self.host.rooms.default_room
        room.subscribe(self, self._welcome)
        self.rooms[room.name] = room
        if self.grants.mode(room.name) == "rw":
            self.writable.add(room.name)
        log_event(logger, logging.INFO, "join", room=room.name, **self.log.fields)

    def _welcome(self, snapshot: RoomSnapshot) -> bytes:
        """The welcome, and for a resume either ``caught_up`` at once or the start of a
        replay (called by the room under its lock, on this session's loop thread)."""
        welcome = self._encode_welcome(snapshot)
        resume = self.resume
        if resume is None:
            return welcome
        outcome = resume_outcome(resume, snapshot.epoch, snapshot.seq, snapshot.room)
        if outcome is not None:
            return welcome + protocol.encode(outcome)
        # Welcome now; the replay's pages and then the held live frames follow it.
        return self._owe(self.host.rooms.default_room, welcome,
                         Replay(resume.seq, snapshot.seq))

    def _on_history(self, frame: protocol.History) -> None:
        name = frame.room or self.host.config.room
        mid = frame.id
        if self.grants.mode(name) is None:
            self._error("forbidden", f"this token may not read room {name}", mid,
                        counts=False, room=name)
            return
        room = self.rooms.get(name)
        if room is None:  # not a member: read it, then let it go again
            room = self.host.rooms.get(name)
            if room is None:  # no such room: nothing stored
                self._send(protocol.encode(protocol.HistoryEnd(mid, 0, False, None, 0, name)))
                return
            self.host.rooms.release(room)  # the object stays usable for this one read
        try:
            page = room.history_page(before=frame.before, after=frame.after,
                                     limit=frame.limit)
        except StoreUnavailable as exc:
            self._error("store_unavailable", f"history not readable: {exc.reason}", frame.id,
                        retry_after=round(exc.retry_after, 3), counts=False, room=name)
            return
        room_json = room.room_json
        parts = [protocol.encode_history_message(mid, protocol.json_string(m.sender), m.body,
                                                 m.seq, m.ts, room_json)
                 for m in page.messages]
        parts.append(protocol.encode(protocol.HistoryEnd(
            mid, len(page.messages), page.more, page.oldest, page.latest, name)))
        self._send(b"".join(parts))

    def _on_message(self, frame: protocol.SendMessage) -> None:
        bucket = self.bucket
        if bucket is not None and bucket.rate > 0:
            now = time.monotonic()
            gate = self.order_gate
            if gate.blocks(frame.id, now) or not bucket.take(now):
                gate.refused(frame.id, now)
                self._error("rate_limited", "message dropped: too many messages",
                            frame.id, retry_after=round(bucket.retry_after(now), 3),
                            counts=False)  # msg has its own budget and a resend rule
                return
        # After the rate check, so refused messages cost the sender its budget too.
        name = frame.room or self.host.config.room
        room = self.rooms.get(name)
        if room is None or name not in self.writable:
            if room is None:
                self._error("not_joined", f"not in room {name}; message not delivered",
                            frame.id, counts=False, room=name)
            else:
                self._error("forbidden", f"read-only in room {name}; message not delivered",
                            frame.id, counts=False, room=name)
            return
        self.submitted += 1  # the room answers each publish once, with deliver_ack
        if room.publish(self, frame.body, frame.id) == PENDING:
            self.submitted -= 1  # a resend of one still being stored: no second answer
