"""What a server session does with each frame it reads: auth, messages, history,
heartbeats and bye (the session's transport is :mod:`securechat.server.session`).

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
from .logs import ConnectionLog, log_event
from .replay import Replay, resume_outcome
from .state import State

if TYPE_CHECKING:
    from .host import SessionHost

__all__ = ["FrameDispatch"]

logger = logging.getLogger("securechat.server")

_PONG = protocol.encode(protocol.Pong())
_BYE = protocol.encode(protocol.Bye())


class FrameDispatch:
    """Frame handling for one session, run on its owning loop thread."""

    # Provided by the session.
    host: SessionHost
    state: State
    ip_key: str
    conn_id: int
    peer: str
    user: str
    user_json: str
    token_id: str
    joined: bool
    user_counted: bool
    decoder: protocol.FrameDecoder
    bucket: TokenBucket | None
    frame_bucket: TokenBucket | None
    error_bucket: TokenBucket | None
    order_gate: OrderGate
    log: ConnectionLog
    client_id: str | None
    resume: protocol.Resume | None
    replay: Replay | None

    submitted: int

    def deliver(self, frame: bytes) -> None:
        raise NotImplementedError

    def deliver_ack(self, frame: bytes) -> None:
        raise NotImplementedError

    def _send(self, frame: bytes) -> None:
        raise NotImplementedError

    def _error(self, code: str, message: str, mid: protocol.MessageId = None,
               retry_after: float | None = None, *, counts: bool = True) -> None:
        raise NotImplementedError

    def _fail(self, code: str, message: str, mid: protocol.MessageId = None,
              retry_after: float | None = None) -> None:
        raise NotImplementedError

    def _begin_close(self, reason: str, *, linger: float = 1.0,
                     final: bytes | None = None) -> None:
        raise NotImplementedError

    def _queue_out(self, chunk: bytes) -> None:
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
        self.user = record.name
        self.user_json = protocol.json_string(record.name)
        self.token_id = record.id
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
        host.room.subscribe(self, self._welcome)
        self.joined = True
        log_event(logger, logging.INFO, "join", room=host.room.name, **self.log.fields)

    def _welcome(self, snapshot: RoomSnapshot) -> bytes:
        """The welcome, and for a resume either ``caught_up`` at once or the start of a
        replay (called by the room under its lock, on this session's loop thread)."""
        cfg = self.host.config
        room = self.host.room
        welcome = protocol.encode(protocol.Welcome(
            user=self.user, room=snapshot.room, members=snapshot.members,
            heartbeat=cfg.heartbeat, seq=snapshot.seq, max_frame=cfg.max_frame,
            session=f"{self.host.session_prefix}-{self.conn_id}",
            epoch=room.epoch,
        ))
        resume = self.resume
        if resume is None:
            return welcome
        outcome = resume_outcome(resume, room.epoch, snapshot.seq)
        if outcome is not None:
            return welcome + protocol.encode(outcome)
        # Welcome now; the replay's pages and then the held live frames follow it.
        self.replay = Replay(resume.seq, snapshot.seq)
        self._queue_out(welcome)
        return b""

    def _on_history(self, frame: protocol.History) -> None:
        room = self.host.room
        try:
            page = room.history_page(before=frame.before, after=frame.after,
                                     limit=frame.limit)
        except StoreUnavailable as exc:
            self._error("store_unavailable", f"history not readable: {exc.reason}", frame.id,
                        retry_after=round(exc.retry_after, 3), counts=False)
            return
        mid = frame.id
        parts = [protocol.encode_history_message(mid, protocol.json_string(m.sender), m.body,
                                                 m.seq, m.ts) for m in page.messages]
        parts.append(protocol.encode(protocol.HistoryEnd(
            mid, len(page.messages), page.more, page.oldest, page.latest)))
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
        self.submitted += 1  # the room answers each publish once, with deliver_ack
        if self.host.room.publish(self, frame.body, frame.id) == PENDING:
            self.submitted -= 1  # a resend of one still being stored: no second answer
