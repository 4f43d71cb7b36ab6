"""One client connection on the server, owned by exactly one I/O loop thread.

Only the owning loop calls into the SSL object (handshake, recv, send, close):
CPython releases the GIL inside SSL_read/SSL_write and has no per-socket lock,
and concurrent use corrupts TLS 1.3 connections (shared/design-notes.md s1).
Other threads only call :meth:`Session.deliver`, which appends to a deque and
schedules a flush on the owner.

States: HANDSHAKE -> AUTH -> ACTIVE -> CLOSING -> CLOSED. Any state may jump to
CLOSED (hard close: peer gone, TLS error, loop shutdown).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING

from .. import protocol
from ..grants import Grants
from ..io.sendbuffer import SendBuffer
from ..store.base import StoreUnavailable
from .dispatch import FrameDispatch
from .limits import OrderGate, TokenBucket, spread_retry
from .logs import ConnectionLog, describe_error, log_event
from .replay import LOW_WATER, CatchUp
from .state import State

if TYPE_CHECKING:
    from ..io.loop import IOLoop
    from .host import SessionHost

__all__ = ["Session", "State"]

logger = logging.getLogger("securechat.server")

RECV_SIZE = 65536
#: Reads per readiness event before other connections get a turn.
MAX_READS_PER_EVENT = 16
#: After an error frame, how long we try to deliver it before closing anyway.
CLOSE_LINGER = 1.0
#: Replay pages sent in one turn of the loop before other connections get theirs.
REPLAY_PAGES_PER_TURN = 16

_PING = protocol.encode(protocol.Ping())
#: Before auth a session may enter no room (shared: grants are immutable).
_NO_GRANTS = Grants()

#: Closing errors before auth that the peer's own bytes caused: each counts as a failed
#: login toward --auth-failures, as a wrong token does, so malformed auth frames are
#: no cheaper way to guess than well-formed ones.
_PRE_AUTH_FAULTS = frozenset({"auth_failed", "bad_frame", "unknown_type", "frame_too_large",
                              "not_authenticated"})

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class Session(FrameDispatch):
    """A client connection: TLS handshake, authentication, room membership, heartbeats.

    What it does with each frame it reads is :class:`FrameDispatch`'s part.
    """

    def __init__(self, host: SessionHost, loop: IOLoop, raw: socket.socket, peer: str, ip_key: str,
                 conn_id: int, accepted_at: float, *, reject: str | None = None) -> None:
        cfg = host.config
        #: All this session may ask of the server (see host.py), never the Server itself.
        self.host = host
        self.loop = loop
        self.peer = peer
        self.ip_key = ip_key
        self.conn_id = conn_id
        self.reject = reject
        self.state = State.HANDSHAKE
        self.user = ""
        self.user_json = '""'
        self.token_id = ""
        #: The rooms it is in (see memberships.py), and what its token may enter.
        self.rooms = {}
        self.writable = set()
        self.grants = _NO_GRANTS
        self.tokens_seen = None
        self.joining = None
        self.deferred = []
        self.close_reason = ""
        self.sock: ssl.SSLSocket = host.ssl_context.wrap_socket(
            raw, server_side=True, do_handshake_on_connect=False)
        self.decoder = protocol.FrameDecoder(protocol.PRE_AUTH_MAX_FRAME)
        # Outbound: inbox is appended to by any thread; the rest belongs to the loop.
        self.inbox: deque[bytes] = deque()
        self.flush_scheduled = False
        self.out = SendBuffer()
        self.write_blocked = False
        self.read_wants_write = False
        self.events = 0
        now = time.monotonic()
        self.handshake_deadline = accepted_at + cfg.handshake_timeout
        self.auth_deadline = accepted_at + cfg.auth_timeout
        self.close_deadline = 0.0
        self.last_rx = now
        self.last_ping = 0.0
        self.last_progress = now
        self.bucket: TokenBucket | None = None
        self.order_gate = OrderGate()
        #: After auth: every frame but msg (which has ``bucket``), and protocol errors.
        self.frame_bucket: TokenBucket | None = None
        self.error_bucket: TokenBucket | None = None
        self.max_pending = cfg.max_pending
        #: Log lines the peer can cause, under the host's and this session's budgets.
        self.log = ConnectionLog(logger, host.log_admit, ip_key, {"conn": conn_id, "peer": peer})
        #: True while this session counts toward its user's session cap.
        self.user_counted = False
        #: From auth: the client instance id, and where a returning client left off.
        self.client_id: str | None = None
        self.resume: protocol.Resume | None = None
        #: Resume replays in progress (loop-owned), see replay.py.
        self.replay: CatchUp | None = None
        #: Messages handed to the room (loop thread) and answered by it (room threads):
        #: while they differ, acks are on the way and ``final_frame`` waits for them.
        self.submitted = 0
        self.settled = 0
        self.final_frame: bytes | None = None
        self.meter = host.queue_meter(loop)
        self.queue_check_above = host.queue_check_above

    def __repr__(self) -> str:
        return f"<Session {self.conn_id} {self.peer} {self.user or '-'} {self.state.value}>"

    # ------------------------------------------------------------------ any thread
    def deliver(self, frame: bytes) -> None:
        """Queue a frame; never blocks. Called by the room from any I/O thread."""
        if self.state is State.ACTIVE or self.state is State.AUTH:
            self.inbox.append(frame)
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.loop.schedule(self)

    def deliver_ack(self, frame: bytes) -> None:
        """The room's answer to one of this session's messages (ack, or its refusal):
        queued while closing too, so a closing error or bye never overtakes it."""
        self.settled += 1
        if self.state is not State.CLOSED:
            self.inbox.append(frame)
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.loop.schedule(self)

    # ------------------------------------------------------------------ loop thread
    def start(self) -> None:
        self.loop.endpoints.add(self)
        self._set_events(_READ)
        # INFO only once TLS is up: a port scan or a silent TCP peer is not news.
        log_event(logger, logging.DEBUG, "accept", **self.log.fields)
        self._handshake()

    def _set_events(self, events: int) -> None:
        if events == self.events:
            return
        selector = self.loop.selector
        if self.events == 0:
            selector.register(self.sock, events, self)
        elif events == 0:
            selector.unregister(self.sock)
        else:
            selector.modify(self.sock, events, self)
        self.events = events

    def _update_events(self) -> None:
        if self.state is State.CLOSED:
            return
        events = _READ
        if self.write_blocked or self.read_wants_write:
            events |= _WRITE
        self._set_events(events)

    def on_readable(self) -> None:
        state = self.state
        if state is State.HANDSHAKE:
            self._handshake()
            return
        if self.write_blocked:
            self._write()  # a write that wanted to read (TLS key update) can go on
        state = self.state
        if state is State.AUTH or state is State.ACTIVE:
            self._read()
        elif state is State.CLOSING:
            self._discard_input()

    def _discard_input(self) -> None:
        """While closing, read and drop what the peer still sends: closing a socket with
        unread input makes the kernel send RST, which can destroy our last frame."""
        for _ in range(4):
            try:
                data = self.sock.recv(RECV_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (ssl.SSLError, OSError):
                self._finish_close(graceful=False)
                return
            if not data:
                self._finish_close(graceful=False)
                return

    def on_writable(self) -> None:
        if self.state is State.HANDSHAKE:
            self._handshake()
            return
        if self.read_wants_write:
            self.read_wants_write = False
            self._update_events()
            self._read()
        if self.write_blocked:
            self._write()
        if self.replay is not None:
            self._pump_replay()

    def _handshake(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_events(_READ)
            return
        except ssl.SSLWantWriteError:
            self._set_events(_READ | _WRITE)
            return
        except (ssl.SSLError, OSError, ValueError) as exc:
            # Plain TCP, HTTP, an old TLS version, garbage, an early close: this
            # connection ends, nobody else notices.
            self._hard_close("handshake failed", detail=describe_error(exc), level=logging.DEBUG)
            return
        self.state = State.AUTH
        self.loop.stats.handshakes.observe(time.monotonic() - self.last_rx)  # since adopted
        self._set_events(_READ)
        self.log(logging.INFO, "connect", tls=self.sock.version(),
                 cipher=(self.sock.cipher() or ("",))[0])
        if self.reject is not None:
            self._fail(self.reject, "the server is full; try again later",
                       retry_after=spread_retry(1.0, self.host.config.retry_spread))
            return
        # The client's auth frame may already sit decrypted inside OpenSSL, where
        # the selector cannot see it.
        self._read()

    def _read(self) -> None:
        sock = self.sock
        for _ in range(MAX_READS_PER_EVENT):
            try:
                data = sock.recv(RECV_SIZE)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self.read_wants_write = True
                self._update_events()
                return
            except (ssl.SSLError, OSError) as exc:
                self._hard_close("read failed", detail=describe_error(exc))
                return
            if not data:
                self._on_eof()
                return
            self.last_rx = time.monotonic()
            self.loop.stats.bytes_in += len(data)
            for line in self.decoder.feed(data):
                self._on_line(line)
                if self.state is not State.ACTIVE and self.state is not State.AUTH:
                    return
            if (bad := self.decoder.failed) is not None:
                self._fail(bad.code, bad.message)  # after the good frames before it
                return
            if not sock.pending():
                return  # the rest, if any, is in the kernel and the selector sees it
        # Fairness cap hit with bytes still decrypted inside OpenSSL: come back soon.
        self.loop.call_soon(self._read_again)

    def _read_again(self) -> None:
        if self.state is State.ACTIVE or self.state is State.AUTH:
            self._read()

    def _on_eof(self) -> None:
        if self.state is State.AUTH:
            self._hard_close("closed before auth", level=logging.DEBUG)
        else:
            self._hard_close("disconnected")

    # ------------------------------------------------------------------ sending
    def _send(self, frame: bytes) -> None:
        """Queue a frame from the loop thread itself."""
        self.inbox.append(frame)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Write what ``_queue_out`` put in the send buffer, on the next loop turn."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.schedule(self)

    def flush(self) -> None:
        self.flush_scheduled = False
        state = self.state
        if state is State.CLOSED:
            return
        inbox = self.inbox
        if inbox:
            if len(inbox) == 1:
                chunk = inbox.popleft()
            else:
                parts = []
                pop = inbox.popleft
                try:
                    while True:
                        parts.append(pop())
                except IndexError:
                    pass
                chunk = b"".join(parts)
            replay = self.replay
            if replay is not None:
                # Live frames wait until the replay before them is out (replay.py).
                replay.hold(chunk)
                # Only what it holds counts: the replay's own read-ahead in ``out`` is
                # bounded by LOW_WATER + PAGE_BYTES and paced by the socket.
                if replay.held_bytes > self.max_pending:
                    self._slow_consumer(f"more than {self.max_pending} bytes queued "
                                        "while catching up")
                    return
            else:
                if not self.out:
                    self.last_progress = time.monotonic()
                self.out.append(chunk)
                meter = self.meter
                meter.size += len(chunk)
                if self.out.size > self.max_pending and state is State.ACTIVE:
                    self._slow_consumer(f"more than {self.max_pending} bytes queued")
                    return
                if meter.size > self.queue_check_above:
                    self.host.trim_queues(self.loop)  # rare: only past the global bound
                    if self.state is not state:
                        return
        if (self.final_frame is not None and self.submitted == self.settled
                and not self.inbox):
            self._queue_out(self.final_frame)
            self.final_frame = None
            self._leave_all(self.close_reason)  # after its last messages, not before
        if not self.write_blocked:
            self._write()
        if self.replay is not None:
            self._pump_replay()

    def _queue_out(self, chunk: bytes) -> None:
        """Append straight to the send buffer (loop thread only): the welcome before a
        replay, replay pages, and what the replay held."""
        if not self.out:
            self.last_progress = time.monotonic()
        self.out.append(chunk)
        self.meter.size += len(chunk)

    def _pump_replay(self) -> None:
        """Send what the catch-up owes (each room's joined, replay pages, caught_up)
        while the socket keeps up (below LOW_WATER unsent), then the held live frames.
        Bounded per call; resumes on writable."""
        catchup = self.replay
        for _ in range(REPLAY_PAGES_PER_TURN):
            if catchup is None or self.state is not State.ACTIVE or self.replay is not catchup:
                return
            if self.out.size >= LOW_WATER:
                return  # on_writable calls again once the client reads
            if catchup.done:
                self.replay = None
                self._queue_out(catchup.release())
                if not self.write_blocked:
                    self._write()
                self._run_deferred()
                return
            try:
                chunk, finished, room = catchup.step()
            except StoreUnavailable as exc:
                self._fail("store_unavailable", f"replay not readable: {exc.reason}",
                           retry_after=round(exc.retry_after, 3))
                return
            if finished is not None:
                log_event(logger, logging.INFO, "caught_up", room=room, upto=finished.upto,
                          replayed=finished.replayed, missing_after=finished.missing_after,
                          missing_before=finished.missing_before, **self.log.fields)
            if chunk:
                self._queue_out(chunk)
                if not self.write_blocked:
                    self._write()
        self.loop.call_soon(self._pump_replay)  # more to send: let the others run first

    def _write(self) -> None:
        out = self.out
        before = out.size
        try:
            sent, drained = out.write_to(self.sock)
        except (ssl.SSLError, OSError) as exc:
            self.meter.size -= before - out.size  # what got out before the error
            self._hard_close("write failed", detail=describe_error(exc))
            return
        if sent:
            self.meter.size -= sent
            self.loop.stats.bytes_out += sent
            self.last_progress = time.monotonic()
        if not drained:
            if not self.write_blocked:
                self.write_blocked = True
                self._update_events()
            return
        if self.write_blocked:
            self.write_blocked = False
            self._update_events()
            if self.replay is not None:  # unblocked outside on_writable: pump it again
                self.loop.call_soon(self._pump_replay)
        if self.state is State.CLOSING:
            self._finish_close(graceful=True)

    # ------------------------------------------------------------------ errors and closing
    def _error(self, code: str, message: str, mid: protocol.MessageId = None,
               retry_after: float | None = None, *, counts: bool = True,
               room: str | None = None) -> None:
        """Send an error frame; close afterwards if the code says so. Non-closing
        protocol errors (not msg's rate_limited) spend from the session's error
        budget: a client that keeps sending bad frames is cut off."""
        if protocol.closes_connection(code):
            self._fail(code, message, mid, retry_after)
            return
        errors = self.error_bucket
        if counts and errors is not None and not errors.take(time.monotonic()):
            cfg = self.host.config
            self._fail("too_many_errors", f"more than {cfg.max_errors} protocol errors "
                       f"in a minute (last: {code}: {message})")
            return
        self.log(logging.INFO, "error", code=code)
        self.loop.stats.error(code)
        self._send(protocol.encode_error(code, message, mid, retry_after, room=room))

    def _fail(self, code: str, message: str, mid: protocol.MessageId = None,
              retry_after: float | None = None) -> None:
        """Send a closing error frame, then close once it is written (or after a linger)."""
        if self.state is State.CLOSING or self.state is State.CLOSED:
            return
        self.log(logging.INFO, "error", code=code, detail=message, once=True)
        self.loop.stats.error(code, before_auth=self.state is State.AUTH)
        if self.state is State.AUTH and code in _PRE_AUTH_FAULTS:
            # Malformed or wrong: either way a failed login for the throttle.
            self.host.note_auth_failure(self.ip_key, time.monotonic())
        if self.state is State.HANDSHAKE:
            self._hard_close(code)
            return
        self._begin_close(code, final=protocol.encode_error(code, message, mid, retry_after))

    def _slow_consumer(self, detail: str) -> None:
        log_event(logger, logging.WARNING, "slow_consumer", detail=detail, **self.log.fields)
        self.loop.stats.error("slow_consumer")
        # What is queued will never get through in time: drop it, say why, close.
        before = self.out.size
        self.out.drop_queued()
        self.meter.size -= before - self.out.size
        self.inbox.clear()
        self.replay = None  # what it held is dropped with the rest
        self._send(protocol.encode_error("slow_consumer", f"client too slow: {detail}"))
        self._begin_close("slow_consumer", linger=CLOSE_LINGER)

    def cut_for_memory(self, bound: int) -> None:
        """The server's queues together passed ``bound`` and this one is among the
        largest: cut it (called by the host's ``trim_queues`` in this loop)."""
        if self.state is State.ACTIVE:
            self._slow_consumer(f"{self.out.size} bytes queued while the server holds more "
                                f"than {bound} for all clients (--max-queued-total)")

    def evict(self) -> None:
        """Make room for a newer unauthenticated connection (see Admission.admit)."""
        if self.state is State.HANDSHAKE:
            self._hard_close("pushed out before auth", level=logging.DEBUG)
        elif self.state is State.AUTH:
            self._fail("server_full", "too many connections waiting to log in; try again "
                       "later", retry_after=spread_retry(1.0, self.host.config.retry_spread))

    def _begin_close(self, reason: str, *, linger: float = CLOSE_LINGER,
                     final: bytes | None = None) -> None:
        """Stop reading, leave the room, flush what is queued, then ``final`` (the
        closing error or bye), then close. ``final`` waits for the acks of this
        session's messages still being stored, so they come before it (within the
        linger)."""
        if self.state is State.CLOSING or self.state is State.CLOSED:
            return
        previous = self.state
        self.close_reason = reason
        self.state = State.CLOSING
        self.replay = None  # the last frames (error, bye) go out; the client resumes again
        if final is not None:
            if self.submitted == self.settled:
                self._send(final)
            else:
                self.final_frame = final
        self.close_deadline = time.monotonic() + linger
        if self.final_frame is None:
            self._leave_all(reason)  # else once the acks are out: see flush
        if previous is State.AUTH:
            self.host.on_auth_ended(self.conn_id)
        self._update_events()
        self._schedule_flush()  # everything queued for it goes out in the flush that follows

    def say_bye(self, retry_after: float, linger: float) -> None:
        """Shutdown: tell the client when to come back, flush, close."""
        if self.state is State.HANDSHAKE:
            self._hard_close("shutdown", level=logging.DEBUG)
            return
        if self.state is State.AUTH or self.state is State.ACTIVE:
            self._begin_close("shutdown", linger=linger,
                              final=protocol.encode(protocol.Bye("shutdown", retry_after)))

    def _finish_close(self, *, graceful: bool) -> None:
        if graceful and (self.out or self.inbox or self.final_frame is not None):
            return  # still flushing; tick() enforces close_deadline
        if graceful:
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self.sock.unwrap()  # close_notify, so the peer sees a clean end of stream
        self._hard_close(self.close_reason or "closed", quiet=True)

    def _hard_close(self, reason: str, *, detail: str | None = None, level: int = logging.INFO,
                    quiet: bool = False) -> None:
        state = self.state
        if state is State.CLOSED:
            return
        self.state = State.CLOSED
        if not self.close_reason:
            self.close_reason = reason
        if self.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.loop.selector.unregister(self.sock)
            self.events = 0
        with contextlib.suppress(OSError):
            self.sock.close()
        self.loop.endpoints.discard(self)
        self.inbox.clear()
        self.replay = None
        self.meter.size -= self.out.size
        self.out.clear()
        self._leave_all(reason)
        if state is State.AUTH or state is State.HANDSHAKE:
            self.host.on_auth_ended(self.conn_id)
        self.host.on_closed(self.conn_id, refused=self.reject is not None,
                            user=self.user if self.user_counted else None)
        self.user_counted = False
        self.log.flush_suppressed()
        if not quiet:
            self.log(level, "close", reason=reason, detail=detail, once=True)
        else:
            self.log(logging.DEBUG, "close", reason=self.close_reason, once=True)

    def abort(self, reason: str) -> None:
        self._hard_close(reason, level=logging.DEBUG)

    def internal_error(self) -> None:
        """A handler raised (a server bug): send ``error internal_error``, flush, then
        close_notify. A second failure while closing closes at once."""
        if self.state is State.CLOSING:
            self._hard_close("internal_error")
        else:
            self._fail("internal_error", "the server failed handling this connection")

    # ------------------------------------------------------------------ timers
    def tick(self, now: float) -> None:
        state = self.state
        if state is State.ACTIVE:
            cfg = self.host.config
            silent = now - self.last_rx
            if silent >= 3 * cfg.heartbeat:
                self._fail("idle_timeout", f"nothing received for {silent:.1f} s")
                return
            if silent >= cfg.heartbeat and now - self.last_ping >= cfg.heartbeat:
                self.last_ping = now
                self._send(_PING)
            tokens = self.host.tokens
            if self.out and now - self.last_progress >= cfg.write_timeout:
                self._slow_consumer(f"no write progress for {cfg.write_timeout:g} s")
            elif self.token_id not in tokens:
                self._fail("revoked", "your token was revoked")
            elif tokens is not self.tokens_seen:
                self._check_grants(tokens)  # the file changed: maybe this token's grants
            elif tokens.next_expiry is not None and tokens.expired(self.token_id):
                self._fail("revoked", "your token expired")  # rotated: its grace is over
        elif state is State.AUTH:
            if now >= self.auth_deadline:
                self._fail("auth_timeout", "no valid auth frame in time")
        elif state is State.HANDSHAKE:
            if now >= self.handshake_deadline:
                self._hard_close("handshake timeout", level=logging.DEBUG)
        elif state is State.CLOSING and now >= self.close_deadline:
            if self.out or self.inbox or self.final_frame is not None:
                self.host.on_cut_off(self.close_reason, self.log.fields)  # frames are lost
            self._finish_close(graceful=False)

