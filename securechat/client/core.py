"""The client's protocol logic as a sans-I/O state machine for ONE link (pure).

No sockets, no TLS, no threads, no clock: an I/O driver (:mod:`securechat.client.loop`)
feeds :class:`ClientCore` what happened and carries out what it asks for::

    core.start(now)                  # -> Connect action (open TLS to the server)
    core.connection_made(now)        # TLS is up       -> bytes to send (auth)
    core.receive_data(data, now)     # plaintext read  -> events, bytes (pong...)
    core.connection_lost(reason, now, error=...)       # EOF, reset, TLS error
    core.data_sent(now, all_sent=...)                  # what the socket took
    core.send(message) / core.close(now)               # from the user
    core.tick(now) at core.next_deadline()             # heartbeats, timeouts, backoff

    core.data_to_send() -> bytes     # append to the socket's send buffer
    core.outputs()      -> [...]     # user events and actions, in order

Actions (:mod:`~securechat.client.phases`) are :class:`Connect` ("open a connection
now") and :class:`CloseLink` ("close the socket now; drop what is unsent"). "Reconnect
after X s" is the ``Reconnecting`` event plus the core's deadline (the driver calls
:meth:`ClientCore.tick` when it passes); "give up" is ``Closed``.

What it covers: auth and welcome, the ack window and the resend queue (ids, resend in order
until acked, ``rate_limited`` / ``store_unavailable`` pauses: the rules of
:class:`securechat.client.sendqueue.SendQueue`), the rooms to be in and, per room, seq/epoch
tracking and resume (:class:`securechat.client.rooms.RoomBook`), ``history`` requests,
heartbeat deadlines (ping after one idle interval, dead after :data:`DEAD_AFTER_INTERVALS`),
the reconnect schedule (:class:`securechat.client.backoff.Backoff`, clock = the ``now``
passed in) and the retryable/fatal classification. All phase changes go through
:meth:`ClientCore._goto` and :data:`TRANSITIONS`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Final

from .. import protocol
from ..errors import (
    AuthRefused,
    ClientClosed,
    ClientError,
    ConfigError,
    GaveUp,
    LocalProtocolError,
    RemoteProtocolError,
)
from .backoff import Backoff, BackoffPolicy, is_fatal, is_fatal_code
from .events import (
    Closed,
    Connected,
    Connecting,
    Disconnected,
    Gap,
    Reconnecting,
    SecureChatClientFailure,
    SendFailed,
)
from .parts import (
    HistoryRequest,
    LinkFailure,
    Outgoing,
    SeqTracker,
    bye_reason,
    decoder_limit,
    interned,
    too_long,
    validate_client_id,
    validate_token,
)
from .phases import LINKED, READING, TRANSITIONS, CloseLink, Connect, Output, Phase
from .rooms import CAUGHT_UP_WAIT, RoomBook, dropped_room
from .sendqueue import DEFAULT_RATE_PAUSE, SEND_WINDOW, HistoryQueue, SendQueue

__all__ = [
    "CAUGHT_UP_WAIT", "DEAD_AFTER_INTERVALS", "DEFAULT_RATE_PAUSE", "SEND_WINDOW",
    "TRANSITIONS", "ClientCore", "CloseLink", "Connect", "HistoryRequest", "Outgoing",
    "Output", "Phase", "SeqTracker", "decoder_limit", "validate_token",
]

logger = logging.getLogger("securechat.client")

#: Heartbeat intervals without any frame after which the link is declared dead.
DEAD_AFTER_INTERVALS: Final = 3
#: Errors that mean "this message was dropped; send it again after retry_after".
_RETRY_CODES: Final = frozenset({"rate_limited", "store_unavailable"})

_PING = protocol.encode(protocol.Ping())
_PONG = protocol.encode(protocol.Pong())
_BYE = protocol.encode(protocol.Bye())


# --------------------------------------------------------------------------- the core
class ClientCore:
    """The protocol state of one reconnecting client link. See the module docstring.

    Not thread-safe: it belongs to the one thread that drives it. ``now`` values are
    monotonic seconds; ``rng`` is the jitter source (a :class:`random.Random`).
    """

    __slots__ = (
        "_attempt_deadline", "_backlog", "_close_deadline", "_decoder",
        "_ever_connected", "_heartbeat", "_heartbeat_override", "_history", "_last_rx",
        "_last_tx", "_linked", "_next_attempt_at", "_now", "_out", "_outputs", "_queue",
        "_token", "address", "backoff", "client_id", "close_requested", "close_timeout",
        "connect_timeout", "error", "max_frame", "phase", "rooms", "stage", "stats", "welcome",
    )

    def __init__(self, *, token: str, address: str = "", backoff: BackoffPolicy | None = None,
                 rng: random.Random | None = None, connect_timeout: float = 10.0,
                 close_timeout: float = 2.0, heartbeat: float | None = None,
                 client_id: str | None = None,
                 resume: tuple[str, int] | None = None, rooms: Sequence[str] | None = None,
                 resumes: Mapping[str, tuple[str, int]] | None = None) -> None:
        if connect_timeout <= 0 or close_timeout < 0:
            raise ConfigError("connect_timeout must be > 0 and close_timeout >= 0")
        if heartbeat is not None and heartbeat <= 0:
            raise ConfigError("heartbeat must be greater than 0")
        self.address = address
        self._token = validate_token(token)
        #: Sent in every auth: resends are recognised per (user, client, id).
        self.client_id = None if client_id is None else validate_client_id(client_id)
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self._heartbeat_override = heartbeat
        self._now = 0.0
        # Its clock is the ``now`` last passed in (a partial: half a lambda's memory).
        self.backoff = Backoff(backoff, rng=rng, clock=partial(getattr, self, "_now"))
        self.phase = Phase.IDLE
        #: What the driver is doing in CONNECTING, for timeout messages.
        self.stage = "connecting"
        self.close_requested = False
        self.welcome: protocol.Welcome | None = None
        #: Why the core stopped on its own (None after a plain close).
        self.error: ClientError | None = None
        self.max_frame = protocol.DEFAULT_MAX_FRAME
        self.stats = {"attempts": 0, "connects": 0, "sent": 0, "acked": 0, "resent": 0,
                      "rate_limited": 0, "store_unavailable": 0, "replayed": 0}
        self._out: list[bytes] = []
        self._outputs: list[Output] = []
        self._decoder = protocol.FrameDecoder(decoder_limit(protocol.DEFAULT_MAX_FRAME))
        self._queue = SendQueue.EMPTY  # a queue of its own on the first send
        self._heartbeat = 0.0
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._backlog = False  # the driver holds bytes the socket has not taken
        self._attempt_deadline = 0.0
        self._next_attempt_at = 0.0
        self._close_deadline = 0.0
        self._ever_connected = False
        self._linked = False  # a Connect was asked for and no CloseLink since
        #: The rooms to be in, each with its own log position (:mod:`.rooms`).
        self.rooms = RoomBook(rooms, resume=resume, resumes=resumes)
        self._history = HistoryQueue.EMPTY  # one of its own on the first request

    @property
    def tracker(self) -> SeqTracker:
        """The default room's position and gap tracking."""
        room = self.rooms.first()
        return room.tracker if room is not None else SeqTracker()

    # ================================================================== outputs
    def data_to_send(self) -> bytes:
        """Bytes to append to the socket's send buffer (empty if none)."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def outputs(self) -> list[Output]:
        """User events and driver actions produced since the last call, in order."""
        out, self._outputs = self._outputs, []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must be called next (monotonic seconds), or None."""
        phase = self.phase
        if phase is Phase.WAITING:
            return self._next_attempt_at
        if phase is Phase.CONNECTING or phase is Phase.AUTH:
            return self._attempt_deadline
        if phase is Phase.CLOSING:
            return self._close_deadline
        if phase is not Phase.ACTIVE:
            return None
        replay = self.rooms.replay_deadline()
        deadlines = [replay] if replay else []
        if (paused := self._queue.pause_deadline()) is not None:
            deadlines.append(paused)
        interval = self._heartbeat
        if interval > 0:
            deadlines.append(self._last_rx + DEAD_AFTER_INTERVALS * interval)
            if not self._backlog and not self._out:
                # A ping due while bytes wait for a blocked socket is not a deadline:
                # the socket taking them is (data_sent), else a past ping time spins.
                deadlines.append(self._last_tx + interval)
        return min(deadlines) if deadlines else None

    @property
    def queued(self) -> int:
        """Messages held by the core: waiting to be sent, or sent and not acked."""
        return len(self._queue)

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    # ================================================================== inputs
    def start(self, now: float) -> None:
        """Begin the first attempt at once (no delay: only reconnects wait)."""
        self._now = now
        if self.phase is not Phase.IDLE:
            return
        if self.close_requested:
            self._finish(None, "closed")
            return
        self._start_attempt("start")

    def connection_made(self, now: float) -> None:
        """The TLS handshake completed: authenticate."""
        self._now = now
        self._goto("connection_made")
        self._decoder = protocol.FrameDecoder(decoder_limit(protocol.DEFAULT_MAX_FRAME))
        self._backlog = False
        self._out.append(self.rooms.login(self._token, self.client_id))

    def connection_lost(self, reason: str, now: float, *,
                        error: ClientError | None = None) -> None:
        """The attempt or the link failed (refused, reset, EOF, TLS error...). ``error``
        is set for failures that may be fatal (certificate not trusted)."""
        self._now = now
        if self.phase is Phase.CLOSING:
            self._finish(None, "closed")
        elif self.phase in LINKED:
            self._link_failed(LinkFailure(reason, error=error))

    def receive_data(self, data: bytes, now: float) -> None:
        """Plaintext bytes from the server."""
        self._now = now
        if self.phase not in READING or not data:
            return
        self._last_rx = now
        try:
            for line in self._decoder.feed(data):
                self._on_line(line)
                if self.phase not in READING:
                    return  # the link failed or finished on this frame
            if (bad := self._decoder.failed) is not None:
                raise LinkFailure(f"bad data from the server: {bad}") from bad
        except LinkFailure as failure:
            self._link_failed(failure)
            return
        if self.phase is Phase.ACTIVE:
            self.backoff.alive()
            self._pump()

    def data_sent(self, now: float, *, sent: int, all_sent: bool) -> None:
        """The driver wrote ``sent`` bytes (0: none) and whether its buffer is empty."""
        self._now = now
        if sent:
            self._last_tx = now
        self._backlog = not all_sent

    def send(self, message: Outgoing) -> None:
        """Queue a message; it goes out (and again after reconnects) until acked."""
        if self.phase is Phase.DONE:
            message.failed(self.error or ClientClosed("the client is closed"))
            return
        if len(message.frame) - 1 > self.max_frame:
            self._fail_message(message, too_long(message, self.max_frame))
            return
        self._queue = self._queue.added(message)
        if self.phase is Phase.ACTIVE:
            self._pump()

    def join(self, room: str) -> None:
        """Be in ``room`` from now on (asked now if connected, at every reconnect)."""
        if self.phase is not Phase.DONE and (
                frame := self.rooms.join(room, self.phase is Phase.ACTIVE)) is not None:
            self._out.append(frame)

    def leave(self, room: str) -> None:
        """Be in ``room`` no more (said now if connected; never asked for again)."""
        if self.phase is not Phase.DONE and (
                frame := self.rooms.leave(room, self.phase is Phase.ACTIVE)) is not None:
            self._out.append(frame)

    def history(self, request: HistoryRequest) -> None:
        """Queue a ``history`` request; it goes out once connected (again after a
        reconnect until its ``history_end`` arrives)."""
        if self.phase is Phase.DONE:
            return
        self._history = self._history.added(request)
        if self.phase is Phase.ACTIVE:
            self._pump()

    def close(self, now: float) -> None:
        """Say bye and wait for the server's (at most ``close_timeout``), or stop at once
        when not connected. Idempotent."""
        self._now = now
        self.close_requested = True
        if self.phase is Phase.ACTIVE:
            self._goto("close")
            self._close_deadline = now + self.close_timeout
            self._out.append(_BYE)
        elif self.phase is not Phase.CLOSING and self.phase is not Phase.DONE:
            self._finish(None, "closed")

    def abort(self, reason: str, error: ClientError | None = None) -> None:
        """Stop at once without a bye (the driver is shutting down, or had a bug)."""
        if self.phase is not Phase.DONE:
            self._finish(error, reason)

    def tick(self, now: float) -> None:
        """Act on the deadlines that passed (see :meth:`next_deadline`)."""
        self._now = now
        phase = self.phase
        try:
            if phase is Phase.WAITING:
                if now >= self._next_attempt_at:
                    self._start_attempt("retry")
            elif phase is Phase.CONNECTING or phase is Phase.AUTH:
                if now >= self._attempt_deadline:
                    stage = "auth" if phase is Phase.AUTH else self.stage
                    raise LinkFailure(f"timed out after {self.connect_timeout:g} s ({stage})")
            elif phase is Phase.CLOSING:
                if now >= self._close_deadline:
                    self._finish(None, "closed")
            elif phase is Phase.ACTIVE:
                self._heartbeat_tick(now)
                for room, gap in self.rooms.expired(now):
                    logger.info("%s sent no caught_up for %r after a resume: taken as a "
                                "server that does not replay", self.address, room.name)
                    self._end_replay(room.name, gap)
                self._pump()
        except LinkFailure as failure:
            self._link_failed(failure)

    # ================================================================== transitions
    def _goto(self, trigger: str) -> None:
        """The one place the phase changes."""
        if trigger == "finish":
            if self.phase is Phase.DONE:
                raise LocalProtocolError("internal", "the client core already finished")
            self.phase = Phase.DONE
            return
        new = TRANSITIONS.get((self.phase, trigger))
        if new is None:
            raise LocalProtocolError(
                "internal", f"{trigger!r} is not allowed in phase {self.phase.value}")
        self.phase = new

    def _start_attempt(self, trigger: str) -> None:
        self._goto(trigger)
        self.stage = "connecting"
        self.stats["attempts"] += 1
        attempt = self.backoff.attempt
        self._outputs.append(Connecting(self.address, attempt))
        self._attempt_deadline = self._now + self.connect_timeout
        self._outputs.append(Connect(attempt))
        self._linked = True

    def _link_failed(self, failure: LinkFailure) -> None:
        was_active = self.phase is Phase.ACTIVE
        self._close_link(failure.reason)
        if was_active:
            self._outputs.append(Disconnected(failure.reason))
        if failure.error is not None and is_fatal(failure.error):
            self._finish(failure.error, failure.reason)
            return
        if self.close_requested:
            self._finish(None, "closed")
            return
        delay = self.backoff.next_delay(failure.retry_after)
        if delay is None:
            retries = self.backoff.attempt
            self._finish(GaveUp(f"gave up after {retries} retr{'y' if retries == 1 else 'ies'}:"
                                f" {failure.reason}"), failure.reason)
            return
        self._goto("lost")
        self._next_attempt_at = self._now + delay
        self._outputs.append(Reconnecting(delay, self.backoff.attempt, failure.reason,
                                          failure.retry_after))

    def _close_link(self, reason: str) -> None:
        if self._linked:
            self._linked = False
            self._outputs.append(CloseLink(reason))
        self._out.clear()
        self._backlog = False

    def _finish(self, error: ClientError | None, reason: str) -> None:
        """Terminal: close the link, fail what was never acknowledged, emit Closed."""
        self._close_link(reason)
        self._goto("finish")
        self.error = error
        pending = self._queue.drain()
        self._history.drain()
        failure = error or ClientClosed("the client was closed before the server "
                                        "acknowledged the message")
        for message in pending:
            message.failed(failure)
        self._outputs.append(Closed(reason, error))

    # ================================================================== timers
    def _heartbeat_tick(self, now: float) -> None:
        interval = self._heartbeat
        if interval <= 0:
            return
        if now >= self._last_rx + DEAD_AFTER_INTERVALS * interval:
            raise LinkFailure(
                f"no answer from the server for {now - self._last_rx:.1f} s (heartbeat)")
        if now >= self._last_tx + interval and not self._backlog and not self._out:
            self._out.append(_PING)
            self._last_tx = now  # one ping per interval, even if the write stalls

    # ================================================================== frames
    def _on_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            frame = protocol.decode_server_frame(line)
        except RemoteProtocolError as exc:
            # Unknown types are later protocol versions: ignore them, as the contract says.
            level = logging.DEBUG if exc.code == "unknown_type" else logging.WARNING
            logger.log(level, "ignored a frame from %s: %s", self.address, exc)
            return
        if self.phase is Phase.AUTH:
            self._on_auth_frame(frame)
        elif self.phase is Phase.ACTIVE or self.phase is Phase.CLOSING:
            self._on_frame(frame)

    def _hint(self, retry_after: float | None) -> float | None:
        return self.backoff.policy.clamp_hint(retry_after)

    def _on_auth_frame(self, frame: protocol.ServerFrame) -> None:
        if isinstance(frame, protocol.Welcome):
            self._on_welcome(frame)
        elif isinstance(frame, protocol.ErrorFrame):
            self._on_error(frame)
        elif isinstance(frame, protocol.Bye):
            hint = self._hint(frame.retry_after)
            raise LinkFailure(bye_reason(frame, hint), retry_after=hint)
        elif isinstance(frame, protocol.Ping):
            self._out.append(_PONG)

    def _on_welcome(self, welcome: protocol.Welcome) -> None:
        now = self._now
        self._goto("welcome")
        welcome = interned(welcome)
        self._decoder.max_frame = decoder_limit(welcome.max_frame)
        self.max_frame = welcome.max_frame
        self.welcome = welcome
        self._heartbeat = self._heartbeat_override or welcome.heartbeat
        self._last_rx = self._last_tx = now
        self.backoff.connected()
        gap = self.rooms.welcome(welcome, now)
        reconnect = self._ever_connected
        self._ever_connected = True
        self.stats["connects"] += 1
        self._outputs.append(Connected(welcome, self.address, reconnect))
        if gap is not None:
            self._outputs.append(gap)
        # Rooms that did not fit in auth, then unacknowledged messages, with their old
        # ids, in a full window.
        self._out.extend(self.rooms.unasked())
        self.stats["resent"] += self._queue.requeue()
        self._history.requeue()
        if welcome.protocol < 2:  # no log to read from
            self._outputs.extend(self._history.refuse_all("this server keeps no history"))
        self._fail_oversized()
        self._pump()

    def _on_frame(self, frame: protocol.ServerFrame) -> None:
        if isinstance(frame, protocol.Message):
            self._on_message(frame)
        elif isinstance(frame, protocol.Ack):
            self._on_ack(frame)
        elif isinstance(frame, protocol.HistoryMessage):
            self._outputs.append(frame)
        elif isinstance(frame, protocol.HistoryEnd):
            self._history.answered(frame.id)
            self._outputs.append(frame)
        elif isinstance(frame, protocol.CaughtUp):
            self._end_replay(frame.room, self.rooms.caught_up(frame), frame)
        elif isinstance(frame, protocol.Joined):
            gap = self.rooms.joined(frame, self._now)
            self._outputs.append(frame)
            if gap is not None:
                self._outputs.append(gap)
        elif isinstance(frame, protocol.Left):
            if (room := dropped_room(frame)) is not None:
                self.rooms.drop(room)
            self._outputs.append(frame)
        elif isinstance(frame, protocol.Join | protocol.Leave | protocol.Grants):
            self._outputs.append(frame)
        elif isinstance(frame, protocol.Ping):
            self._out.append(_PONG)
        elif isinstance(frame, protocol.Bye):
            if self.phase is Phase.CLOSING:
                self._finish(None, "closed")
            else:
                hint = self._hint(frame.retry_after)
                raise LinkFailure(bye_reason(frame, hint), retry_after=hint)
        elif isinstance(frame, protocol.ErrorFrame):
            self._on_error(frame)

    def _on_message(self, message: protocol.Message) -> None:
        shown = self.rooms.message(message, self._now)
        if shown is None:
            return  # seen already: a replay can repeat what came live
        if shown.replayed:
            self.stats["replayed"] += 1
        self._outputs.append(shown)
        self._settle(message.room)

    def _end_replay(self, room: str, gap: Gap | None,
                    caught_up: protocol.CaughtUp | None = None) -> None:
        """A room's resume replay ended (``caught_up``, or none came in time)."""
        if gap is not None:
            self._outputs.append(gap)
        if caught_up is not None:
            self._outputs.append(caught_up)
        self._settle(room)

    def _on_ack(self, ack: protocol.Ack) -> None:
        self.rooms.ack(ack)
        message = self._queue.acked(str(ack.id)) if ack.id is not None else None
        if message is not None:
            self.stats["acked"] += 1
            message.acked(ack.seq)
        self._outputs.append(ack)
        # Holes in any room may have waited for this ack.
        self._settle(None if len(self.rooms) > 1 else ack.room)

    def _settle(self, room: str | None) -> None:
        if not self._queue.in_flight:
            self._outputs.extend(self.rooms.settle(room))

    def _on_error(self, err: protocol.ErrorFrame) -> None:
        if err.retry_after is not None:
            # Users see the hint the client honours, never inf or 1e300.
            err = replace(err, retry_after=self._hint(err.retry_after))
        message = self._queue.get(str(err.id)) if err.id is not None else None
        if err.code in _RETRY_CODES and message is not None:
            # The server dropped this message: send it again after the pause, in order.
            self.stats[err.code] += 1
            self._queue.rate_limited(message, self._now, err.retry_after)
            self._outputs.append(err)
            return
        if is_fatal_code(err.code):
            fatal = AuthRefused(err.code, err.message)
            raise LinkFailure(str(fatal), error=fatal)
        if err.closes:
            # frame_too_large names no message: drop the largest in flight, or its
            # resend after the reconnect would be refused the same way forever.
            if err.code == "frame_too_large" and (big := self._queue.largest_in_flight()):
                self._refuse(big, err)
            self._outputs.append(err)
            raise LinkFailure(f"server error {err.code}: {err.message}",
                               retry_after=err.retry_after)
        self._history.answered(err.id)  # a refused request gets no history_end
        if (room := dropped_room(err)) is not None:
            self.rooms.drop(room)  # its join was refused: not asked for again
        if message is not None:
            self._refuse(message, err)  # bad_frame...: the same bytes cannot do better
        self._outputs.append(err)

    def _refuse(self, message: Outgoing, err: protocol.ErrorFrame) -> None:
        self._queue.remove(message)
        self._fail_message(message, RemoteProtocolError(err.code, err.message,
                                                        message_id=message.id))

    # ================================================================== outgoing messages
    def _pump(self) -> None:
        """Move queued messages onto the wire, keeping at most the window in flight."""
        if self.phase is not Phase.ACTIVE:
            return
        if self._history:
            self._out.extend(request.frame for request in self._history.take())
        batch = self._queue.take(self._now)
        if batch:
            self.stats["sent"] += len(batch)
            self._out.extend(message.frame for message in batch)

    def _fail_oversized(self) -> None:
        """The new server may accept smaller frames than the message was checked against."""
        for message in self._queue.remove_oversized(self.max_frame):
            self._fail_message(message, too_long(message, self.max_frame))

    def _fail_message(self, message: Outgoing, error: SecureChatClientFailure) -> None:
        message.failed(error)
        self._outputs.append(SendFailed(message.id, message.body, error, message.room))
