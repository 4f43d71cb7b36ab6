"""One client link: the sockets of a :class:`~securechat.client.core.ClientCore`,
owned by a :class:`~securechat.client.loop.ClientLoop`'s thread.

The link resolves (in a helper thread), connects (non-blocking), handshakes
(``do_handshake_on_connect=False``, under the core's connect deadline), reads and
writes through a :class:`~securechat.io.sendbuffer.SendBuffer`, and closes; it tells
the core what happened and carries out its actions. Every call into the socket and
the SSL object happens in the loop thread (shared/design-notes.md s1).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from ..errors import ClientClosed, ClientError, TLSVerificationFailed
from ..io.sendbuffer import SendBuffer
from ..protocol import JoinRoom, LeaveRoom
from .core import ClientCore, CloseLink, Connect, HistoryRequest, Outgoing, Phase
from .events import Event
from .loop import ClientLoop, Resolver, describe, is_ip_literal, resolve

__all__ = ["RECV_SIZE", "Link"]

logger = logging.getLogger("securechat.client")

RECV_SIZE: Final = 65536

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class Link:
    """The sockets of one :class:`ClientCore`, owned by a :class:`ClientLoop`'s thread.

    ``deliver(events)`` is called (in the loop thread, or in the thread closing an
    unstarted link) with the user events the core produced, in order.
    """

    __slots__ = (
        "_addrs",
        "_close_asked",
        "_ctx",
        "_deliver",
        "_events",
        "_finished",
        "_flush_scheduled",
        "_handed_close",
        "_has_slot",
        "_read_wants_write",
        "_resolver",
        "_sock",
        "_stage",
        "_wbuf",
        "_write_blocked",
        "core",
        "host",
        "inbox",
        "loop",
        "port",
        "resolver_thread",
        "server_name",
        "timer_at",
    )

    def __init__(self, loop: ClientLoop, core: ClientCore, *, host: str, port: int,
                 server_name: str, ssl_context: ssl.SSLContext,
                 deliver: Callable[[list[Event]], None],
                 resolver: Resolver | None = None) -> None:
        self.loop = loop
        self.core = core
        self.host = host
        self.port = port
        self.server_name = server_name
        self._ctx = ssl_context
        self._deliver = deliver
        self._resolver = resolver
        # Any thread: appended to, then a flush is scheduled. A list (append and pop(0)
        # are atomic) rather than a deque: ~500 bytes less per client.
        #: From user threads, in order: messages, history requests, joins and leaves.
        self.inbox: list[Outgoing | HistoryRequest | JoinRoom | LeaveRoom] = []
        self._close_asked = False
        self._flush_scheduled = False
        # Loop thread only.
        self.timer_at: float | None = None
        self._sock: socket.socket | None = None
        self._events = 0
        self._stage = ""  # "", "resolving", "connecting", "handshake", "open"
        self._addrs: list[tuple[int, Any]] = []
        self._has_slot = False
        # Only while bytes wait: an idle link holds none (~0.8 KiB less per client). A
        # drained buffer has no write in flight, so dropping it keeps OpenSSL's rule.
        self._wbuf: SendBuffer | None = None
        self._write_blocked = False
        self._read_wants_write = False
        self._handed_close = False
        self._finished = False
        self.resolver_thread: threading.Thread | None = None

    @property
    def close_timeout(self) -> float:
        return self.core.close_timeout

    def __repr__(self) -> str:
        return f"<Link {self.core.address} {self.core.phase.value} {self._stage or '-'}>"

    # ================================================================== any thread
    def submit(self) -> None:
        """Something was appended to :attr:`inbox`: have the loop hand it to the core."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.schedule(self)

    def request_close(self) -> None:
        self._close_asked = True
        self._flush_scheduled = True
        self.loop.schedule(self)

    def close_unstarted(self) -> None:
        """Close a link that was never attached: the calling thread is its only user."""
        self._take_inbox()
        self.core.close(time.monotonic())
        self._process()

    # ================================================================== loop thread
    def begin(self) -> None:
        """Attached to the loop: connect at once."""
        if self._finished:
            return
        self.loop.link_started(self)
        if self.loop.closed:
            self._close_asked = True  # attached while the loop was being closed
        self._guard(self._begin)

    def _begin(self) -> None:
        now = time.monotonic()
        if self._close_asked:
            self._take_inbox()
            self.core.close(now)
            self._handed_close = True
        else:
            self.core.start(now)
            self._take_inbox()
        self._process()

    def flush(self) -> None:
        """IOLoop: messages or a close request arrived from another thread."""
        self._flush_scheduled = False
        self._guard(self._flush)

    def _flush(self) -> None:
        self._take_inbox()
        if self._close_asked and not self._handed_close:
            self._handed_close = True
            self.core.close(time.monotonic())
        self._process()

    def close_now(self) -> None:
        """The loop is closing: say bye (bounded by the core's close_timeout)."""
        self._close_asked = True
        self._guard(self._flush)

    def on_timer(self, now: float) -> None:
        self._guard(lambda: self._on_timer(now))

    def _on_timer(self, now: float) -> None:
        if self._stage == "open" and self._sock is not None:
            # After a freeze (SIGSTOP, a laptop lid, a slow on_event) a deadline can come
            # due before the selector reports what the server sent meanwhile, a bye and
            # its acks say: read it first, so the core judges the link on what arrived.
            self._read()
            now = time.monotonic()
        self.core.tick(now)
        self._process()

    def tick(self, now: float) -> None:
        """Not registered in IOLoop.endpoints: timers are exact (see on_timer)."""

    def abort(self, reason: str, error: ClientError | None = None) -> None:
        """Close at once without a bye (loop shutdown, or a bug in this link)."""
        self._close_socket()
        self.core.abort(reason, error)
        self._process()

    def internal_error(self) -> None:
        """IOLoop: a handler raised past :meth:`_guard` (a bug): this link ends."""
        self.abort("internal error", ClientError("internal error in the client link"))

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # a bug: this link ends, the loop and others go on
            logger.exception("client link %r failed", self)
            with contextlib.suppress(Exception):
                self.abort("internal error", ClientError(f"internal error: {exc!r}"))

    def _take_inbox(self) -> None:
        inbox = self.inbox
        while inbox:
            item = inbox.pop(0)
            if isinstance(item, HistoryRequest):
                self.core.history(item)
            elif isinstance(item, JoinRoom):
                self.core.join(item.room)
            elif isinstance(item, LeaveRoom):
                self.core.leave(item.room)
            else:
                self.core.send(item)

    def _process(self) -> None:
        """Carry out what the core asked for, until it asks nothing more."""
        core = self.core
        while True:
            outputs = core.outputs()
            data = core.data_to_send()
            if not outputs and not data:
                break
            events: list[Event] = []
            for out in outputs:
                if isinstance(out, Connect):
                    self._connect()
                elif isinstance(out, CloseLink):
                    self._close_socket()
                else:
                    events.append(out)
            if data and self._stage == "open":
                if self._wbuf is None:
                    self._wbuf = SendBuffer()
                self._wbuf.append(data)
                if not self._write_blocked:
                    self._write()
            if events:
                self._deliver(events)
        if core.done:
            if not self._finished:
                self._finished = True
                self._close_socket()
                error = core.error or ClientClosed("the client is closed")
                while self.inbox:
                    if isinstance(item := self.inbox.pop(0), Outgoing):
                        item.failed(error)
                if self.loop.in_loop():
                    self.loop.link_finished(self)
            return
        if self.loop.in_loop():
            self.loop.timers.set(self, core.next_deadline())

    # ------------------------------------------------------------------ connecting
    def _connect(self) -> None:
        if self._resolver is None and is_ip_literal(self.host):
            try:
                addrs: list[tuple[int, Any]] | BaseException = resolve(self.host, self.port)
            except OSError as exc:
                addrs = exc
            self._on_resolved(addrs)
            return
        self._stage = self.core.stage = "resolving"
        running = self.resolver_thread
        if running is not None and running.is_alive():
            return  # an earlier attempt's lookup still runs: its answer will do
        thread = threading.Thread(target=self._resolve_in_thread,
                                  name=f"{self.loop.name}-resolve", daemon=True)
        self.resolver_thread = thread
        thread.start()

    def _resolve_in_thread(self) -> None:
        resolver = self._resolver or resolve
        result: list[tuple[int, Any]] | BaseException
        try:
            result = list(resolver(self.host, self.port))
        except Exception as exc:  # gaierror, or whatever a custom resolver raises
            result = exc
        # Touches nothing of the link: the answer is handled in the loop thread, if the
        # loop still runs (else it is dropped).
        self.loop.call_soon(lambda: self._guard(lambda: self._resolved(result)))

    def _resolved(self, result: list[tuple[int, Any]] | BaseException) -> None:
        if self._stage != "resolving" or self.core.phase is not Phase.CONNECTING:
            return  # the attempt timed out or the link closed meanwhile
        self._on_resolved(result)
        self._process()

    def _on_resolved(self, result: list[tuple[int, Any]] | BaseException) -> None:
        if isinstance(result, BaseException):
            # socket.gaierror: DNS may come back (containers start), so retry.
            self._fail(f"cannot resolve {self.host}: {describe(result)}")
            return
        self._addrs = list(result)
        if self.loop.take_slot(self):
            self._has_slot = True
            self._connect_next()
        else:
            self._stage = self.core.stage = "queued"

    def wants_slot(self) -> bool:
        return self._stage == "queued" and self.core.phase is Phase.CONNECTING

    def slot_granted(self) -> None:
        self._has_slot = True
        self._guard(self._slot_granted)

    def _slot_granted(self) -> None:
        self._connect_next()
        self._process()

    def _release_slot(self) -> None:
        if self._has_slot:
            self._has_slot = False
            self.loop.release_slot(self)

    def _connect_next(self, last_error: str = "no address") -> None:
        """Start a non-blocking TCP connect to the next resolved address."""
        while self._addrs:
            family, sockaddr = self._addrs.pop(0)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                last_error = describe(exc)
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A backstop for a peer that vanished; the heartbeat is the real check.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            err = sock.connect_ex(sockaddr)
            if err in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                self._sock = sock
                self._stage = self.core.stage = "connecting"
                self._set_events(_WRITE)
                return
            sock.close()
            last_error = describe(OSError(err, os.strerror(err)))
        self._stage = ""
        self._fail(last_error)

    def _on_tcp_connected(self) -> None:
        raw = self._sock
        assert raw is not None
        err = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._close_socket()
            self._connect_next(describe(OSError(err, os.strerror(err))))
            return
        self._set_events(0)
        self._sock = None
        try:
            self._sock = self._ctx.wrap_socket(raw, server_hostname=self.server_name,
                                               do_handshake_on_connect=False)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raw.close()
            self._stage = ""
            self._fail(f"TLS setup failed: {describe(exc)}")
            return
        self._stage = self.core.stage = "handshake"
        self._set_events(_READ)
        self._handshake()

    def _handshake(self) -> None:
        sock = self._sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_events(_READ)
            return
        except ssl.SSLWantWriteError:
            self._set_events(_READ | _WRITE)
            return
        except ssl.SSLCertVerificationError as exc:
            detail = exc.verify_message or exc.reason or str(exc)
            fatal = TLSVerificationFailed(
                f"the certificate of {self.core.address} did not verify for "
                f"{self.server_name!r}: {detail}")
            fatal.__cause__ = exc
            self._fail(str(fatal), fatal)
            return
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._fail(f"TLS handshake failed: {describe(exc)}")
            return
        self._stage = "open"
        self._set_events(_READ)
        self._release_slot()
        self.core.connection_made(time.monotonic())
        self._process()
        self._read()  # the welcome may already sit decrypted inside OpenSSL

    def _fail(self, reason: str, error: ClientError | None = None) -> None:
        """The attempt or the link failed here: close, tell the core (caller processes)."""
        self._close_socket()
        self.core.connection_lost(reason, time.monotonic(), error=error)

    # ------------------------------------------------------------------ socket events
    def _set_events(self, events: int) -> None:
        sock = self._sock
        if sock is None or events == self._events:
            return
        selector = self.loop.selector
        if self._events == 0:
            selector.register(sock, events, self)
        elif events == 0:
            selector.unregister(sock)
        else:
            selector.modify(sock, events, self)
        self._events = events

    def _update_events(self) -> None:
        events = _READ
        if self._write_blocked or self._read_wants_write:
            events |= _WRITE
        self._set_events(events)

    def on_readable(self) -> None:
        self._guard(self._on_readable)

    def _on_readable(self) -> None:
        stage = self._stage
        if stage == "handshake":
            self._handshake()
        elif stage == "open":
            if self._write_blocked:
                self._write()  # a write that wanted to read can go on
            if self._sock is not None:
                self._read()
        self._process()

    def on_writable(self) -> None:
        self._guard(self._on_writable)

    def _on_writable(self) -> None:
        stage = self._stage
        if stage == "connecting":
            self._on_tcp_connected()
        elif stage == "handshake":
            self._handshake()
        elif stage == "open":
            if self._read_wants_write:
                self._read_wants_write = False
                self._update_events()
                self._read()
            if self._write_blocked and self._sock is not None:
                self._write()
        self._process()

    def _read(self) -> None:
        core = self.core
        while self._sock is not None:
            sock = self._sock
            assert isinstance(sock, ssl.SSLSocket)
            try:
                data = sock.recv(RECV_SIZE)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                self._update_events()
                return
            except (ssl.SSLError, OSError) as exc:
                self._fail(f"connection lost: {describe(exc)}")
                return
            if not data:
                self._fail("the server closed the connection")
                return
            core.receive_data(data, time.monotonic())
            self._process()  # may close the socket (bye, error, fatal)
            if self._sock is not sock or not sock.pending():
                return

    def _write(self) -> None:
        sock, wbuf = self._sock, self._wbuf
        if sock is None or wbuf is None:
            return
        try:
            sent, drained = wbuf.write_to(sock)
        except (ssl.SSLError, OSError) as exc:
            self._fail(f"connection lost: {describe(exc)}")
            return
        self.core.data_sent(time.monotonic(), sent=sent, all_sent=drained)
        if drained:
            self._wbuf = None
        if drained != (not self._write_blocked):
            self._write_blocked = not drained
            self._update_events()

    def _close_socket(self) -> None:
        self._stage = ""
        self._release_slot()
        sock = self._sock
        if sock is None:
            return
        if self._events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.loop.selector.unregister(sock)
        self._events = 0
        self._sock = None
        with contextlib.suppress(OSError):
            sock.close()
        self._wbuf = None
        self._write_blocked = False
        self._read_wants_write = False
