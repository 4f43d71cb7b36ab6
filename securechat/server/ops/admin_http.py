"""The admin thread: one ``selectors`` loop serving ``/metrics``, ``/healthz`` and
``/readyz`` to a handful of operators' clients, never a thread per connection.

It must not become the server's weak spot, so every connection is bounded: the
request head must arrive whole, TLS handshake included, within ``header_timeout``
(slowloris gets closed), in at most ``max_head`` bytes (431, closed), one request per
connection (``Connection: close``), and at most ``max_connections`` at once (more
are closed on accept). The chat's I/O loops never wait for this thread; it only
reads their counters. The thread owns its sockets and SSL objects alone.

A bug in one request's handler answers 500 and closes that connection; a bug in the
loop itself ends the thread and calls ``on_crash`` (the server then exits 70, like
for any thread it cannot run without).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping

from .httpwire import HeadError, Request, find_head, parse_head, response

__all__ = ["AdminHTTP", "Handler"]

logger = logging.getLogger("securechat.server")

#: A path's answer: (status, body, content type); called in the admin thread.
Handler = Callable[[], tuple[int, bytes, str]]
ACCEPTS_PER_EVENT = 64
RECV_SIZE = 4096
#: After the response, how long we read and drop what the client still sends before
#: closing (closing with unread input sends RST, which can destroy the response).
LINGER = 1.0
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_LISTEN, _WAKE = object(), object()


class _Conn:
    __slots__ = ("deadline", "events", "handshaking", "head", "out", "phase", "sock")

    def __init__(self, sock: socket.socket, deadline: float, handshaking: bool) -> None:
        self.sock = sock
        self.deadline = deadline
        self.handshaking = handshaking
        self.head = bytearray()
        self.out = b""
        self.phase = "head"  # then "write", then "linger"
        self.events = 0


class AdminHTTP:
    """Serve ``routes`` on the listening socket ``listener`` until :meth:`stop`."""

    def __init__(self, listener: socket.socket, *, routes: Mapping[str, Handler],
                 token: bytes | None = None,
                 tls: Callable[[], ssl.SSLContext] | None = None,
                 max_connections: int = 16, max_head: int = 8192,
                 header_timeout: float = 5.0, tick_interval: float = 0.5,
                 on_tick: Callable[[float], None] | None = None,
                 on_crash: Callable[[str, BaseException], None] | None = None,
                 name: str = "securechat-admin") -> None:
        listener.setblocking(False)
        self._listener = listener
        host, port = listener.getsockname()[:2]
        #: Where it listens (kept: the socket is closed when the thread ends).
        self.address = (str(host), int(port))
        self._routes = dict(routes)
        self._token = token
        self._tls = tls
        self.max_connections = max_connections
        self.max_head = max_head
        self.header_timeout = header_timeout
        self._tick_interval = tick_interval
        self._on_tick = on_tick
        self._on_crash = on_crash
        self._conns: dict[socket.socket, _Conn] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        #: Tests only: called once per loop turn, outside any containment; may raise.
        self._inject_fault: Callable[[], None] | None = None
        #: Monotonic time of the last turn (for the server's liveness view).
        self.last_turn = 0.0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to end (any thread); :meth:`join` waits for it. Never started:
        close the sockets here."""
        self._stopping = True
        if self.thread.ident is None:
            self._sel.close()
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()
            return
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def join(self, timeout: float | None = None) -> bool:
        if self.thread.is_alive():
            self.thread.join(timeout)
        return not self.thread.is_alive()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        crash: BaseException | None = None
        try:
            self._serve()
        except BaseException as exc:
            logger.exception("admin thread crashed")
            crash = exc
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._sel.close()
            for sock in (self._listener, self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    sock.close()
        if crash is not None and self._on_crash is not None:
            self._on_crash(self.thread.name, crash)

    def _serve(self) -> None:
        sel = self._sel
        sel.register(self._listener, _READ, _LISTEN)
        sel.register(self._wake_r, _READ, _WAKE)
        next_tick = time.monotonic()
        while not self._stopping:
            now = self.last_turn = time.monotonic()
            wake_at = min([next_tick, *(c.deadline for c in self._conns.values())])
            for key, mask in sel.select(max(0.0, wake_at - now)):
                if key.data is _LISTEN:
                    self._accept()
                elif key.data is _WAKE:
                    with contextlib.suppress(OSError):
                        while self._wake_r.recv(4096):
                            pass
                else:
                    self._service(key.data, mask)
            if self._inject_fault is not None:
                self._inject_fault()
            now = time.monotonic()
            for conn in [c for c in self._conns.values() if c.deadline <= now]:
                self._close(conn)  # slow head, slow reader, or the linger is over
            if now >= next_tick:
                next_tick = now + self._tick_interval
                if self._on_tick is not None:
                    self._on_tick(now)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                raw, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                logger.warning("admin accept failed", exc_info=True)
                return
            raw.setblocking(False)
            if len(self._conns) >= self.max_connections:
                raw.close()  # at the cap: the cheapest refusal, before any TLS work
                continue
            sock: socket.socket = raw
            if self._tls is not None:
                try:
                    sock = self._tls().wrap_socket(raw, server_side=True,
                                                   do_handshake_on_connect=False)
                except (OSError, ValueError):
                    raw.close()
                    continue
            conn = _Conn(sock, time.monotonic() + self.header_timeout,
                         handshaking=self._tls is not None)
            self._conns[sock] = conn
            self._set_events(conn, _READ)

    def _service(self, conn: _Conn, mask: int) -> None:
        """One connection's event; a bug here costs this connection only."""
        try:
            if conn.handshaking:
                self._handshake(conn)
            elif conn.phase == "head":
                self._read_head(conn)
            elif conn.phase == "write":
                self._write(conn)
            else:
                self._linger(conn)
        except Exception:
            logger.exception("admin connection failed")
            self._close(conn)

    def _handshake(self, conn: _Conn) -> None:
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_events(conn, _READ)
            return
        except ssl.SSLWantWriteError:
            self._set_events(conn, _READ | _WRITE)
            return
        except (ssl.SSLError, OSError, ValueError):
            self._close(conn)
            return
        conn.handshaking = False
        self._set_events(conn, _READ)
        self._read_head(conn)  # the request may already sit decrypted in OpenSSL

    def _read_head(self, conn: _Conn) -> None:
        sock = conn.sock
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                return
            except ssl.SSLWantWriteError:
                self._set_events(conn, _READ | _WRITE)
                return
            except (ssl.SSLError, OSError):
                self._close(conn)
                return
            if not data:
                self._close(conn)
                return
            conn.head += data
            try:
                size = find_head(conn.head, self.max_head)
            except HeadError as exc:
                self._respond(conn, response(exc.status, f"{exc}\n".encode()))
                return
            if size >= 0:
                self._respond(conn, self._answer(bytes(conn.head[:size])))
                return

    def _answer(self, head: bytes) -> bytes:
        try:
            request = parse_head(head)
        except HeadError as exc:
            return response(exc.status, f"{exc}\n".encode())
        if self._token is not None and not self._authorized(request):
            return response(401, b"a valid bearer token is required\n",
                            head_only=request.method == "HEAD",
                            extra={"WWW-Authenticate": 'Bearer realm="securechat-admin"'})
        handler = self._routes.get(request.path)
        if handler is None:
            return response(404, b"not found\n", head_only=request.method == "HEAD")
        if request.method not in ("GET", "HEAD"):
            return response(405, b"GET or HEAD only\n", extra={"Allow": "GET, HEAD"})
        try:
            status, body, content_type = handler()
        except Exception:
            logger.exception("admin handler for %s failed", request.path)
            status, body, content_type = 500, b"internal error\n", "text/plain; charset=utf-8"
        return response(status, body, content_type=content_type,
                        head_only=request.method == "HEAD")

    def _authorized(self, request: Request) -> bool:
        assert self._token is not None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("latin-1"), self._token)

    def _respond(self, conn: _Conn, data: bytes) -> None:
        conn.phase = "write"
        conn.out = data
        conn.deadline = time.monotonic() + self.header_timeout  # for a client slow to read
        self._set_events(conn, _WRITE)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        sock = conn.sock
        while conn.out:
            try:
                sent = sock.send(conn.out)  # after WantWrite: the same buffer again
            except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                self._set_events(conn, _WRITE)
                return
            except ssl.SSLWantReadError:
                self._set_events(conn, _READ)
                return
            except (ssl.SSLError, OSError):
                self._close(conn)
                return
            conn.out = conn.out[sent:]
        if isinstance(sock, ssl.SSLSocket):
            self._close(conn)  # no lingering over TLS: close_notify could block
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        conn.phase = "linger"
        conn.deadline = min(conn.deadline, time.monotonic() + LINGER)
        self._set_events(conn, _READ)

    def _linger(self, conn: _Conn) -> None:
        """Read and drop until the client closes (or the deadline)."""
        for _ in range(16):
            try:
                data = conn.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                break
            if not data:
                break
        else:
            return
        self._close(conn)

    def _set_events(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if conn.events == 0:
            self._sel.register(conn.sock, events, conn)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        if conn.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(conn.sock)
            conn.events = 0
        with contextlib.suppress(OSError):
            conn.sock.close()
