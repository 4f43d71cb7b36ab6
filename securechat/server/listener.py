"""The securechat server: a listener, an accept thread and a pool of I/O threads.

The accept thread never does TLS: it accepts plain sockets, asks admission.py for
a slot (per-IP cap on unauthenticated connections, max connections) and hands
each socket to the I/O loop with the fewest connections. The loop is then the
only thread that ever touches that socket (see session.py). Sessions report to
the :class:`~securechat.server.admission.Admission`, never to the Server.

Usage::

    with Server(config, ssl_context=ctx, tokens=store) as server:
        server.serve_forever()      # until shutdown() from another thread or a signal
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from ..errors import ServerThreadDied
from ..io.loop import IOLoop
from ..io.tls import CertificateWatcher, describe_certificate, server_context
from ..rooms import InProcessRoom, RoomRegistry
from ..store.base import Durability, MessageLog
from ..store.memory import MemoryLog
from ..store.redis_config import is_redis_url, redact
from ..store.redis_log import RedisLog
from ..store.sqlite import SQLiteLog
from .admission import Admission, Pending, client_key
from .config import ServerConfig
from .limits import spread_retry
from .logs import log_event
from .ops.config import AdminConfig
from .ops.health import Readiness
from .session import Session, State
from .sockets import drain, format_peer, read_int, tune_socket
from .tokens import TokenFileWatcher, TokenStore, load_store

__all__ = ["Server", "client_key"]

logger = logging.getLogger("securechat.server")

ACCEPTS_PER_EVENT = 256
#: accept() errors that concern one connection only: skip it and go on.
_ACCEPT_SKIP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
#: Out of file descriptors (or kernel memory): the listener stays readable, so accepting
#: pauses, first for ACCEPT_PAUSE_MIN seconds, doubling up to ACCEPT_PAUSE_MAX.
_ACCEPT_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE_MIN = 0.1
ACCEPT_PAUSE_MAX = 1.0


class Server:
    """A TLS chat relay. Thread-safe ``start``/``shutdown``; shutdown is idempotent."""

    def __init__(self, config: ServerConfig, *, ssl_context: ssl.SSLContext | None = None,
                 tokens: TokenStore | None = None, admin: AdminConfig | None = None) -> None:
        self.config = config
        self._log: MessageLog | None = None
        ssl_context = ssl_context or server_context(
            config.cert, config.key, tls_min=config.tls_min)
        # Watches --cert/--key from now on; the context given (or built) stays in force
        # until a changed pair loads (reload_certificates, SIGHUP, the accept thread's poll).
        self._certs = CertificateWatcher(config.cert, config.key, tls_min=config.tls_min)
        self._certs_lock = threading.Lock()
        #: Set by request_certificate_reload (a signal handler); read by the accept thread.
        self._certs_requested = False
        self._watcher: TokenFileWatcher | None = None
        if tokens is None:
            tokens = load_store(config.tokens)
            self._watcher = TokenFileWatcher(config.tokens)
        self._stopping = threading.Event()
        self._conn_ids = itertools.count(1)
        tick = min(0.25, config.heartbeat / 4, config.handshake_timeout / 4)
        self._loops = [IOLoop(f"securechat-io-{i}", tick_interval=tick,
                              on_crash=self._thread_died)
                       for i in range(config.io_threads)]
        #: The admission limits and the accounting; the host of every session.
        self._admission = Admission(
            config, ssl_context=ssl_context, tokens=tokens,
            rooms=self._make_rooms(config),
            loops=self._loops, stopping=self._stopping)
        # The same objects as the host's (never rebound; tokens is a property).
        self.rooms: RoomRegistry = self._admission.rooms
        #: The default room (``--room``), where protocol 1/2 clients go.
        self.room: InProcessRoom = self.rooms.default_room
        self.session_prefix = self._admission.session_prefix
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        # Neither end may block: a signal handler writes to one (a full pair means the
        # accept thread has a wake-up pending anyway), the accept thread drains the other.
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._started = False
        self._stopped = threading.Event()
        self._shutdown_lock = threading.Lock()
        # Thread supervision: see _thread_died and serve_forever.
        #: Set once an essential thread died of a bug; :attr:`failure` says how.
        self.failed = threading.Event()
        self.failure: BaseException | None = None
        self._serve_wakeup = threading.Event()
        self._interrupted = False
        self._token_fault: str | None = None
        # Accept pauses when out of file descriptors (accept thread only).
        self._accept_failures = 0
        self._accept_pause = 0.0
        self._accept_resume_at = 0.0
        #: Tests only: called with "accept" or "tokens" at those points; may raise.
        self._inject_fault: Callable[[str], None] | None = None
        #: /readyz's named checks; a backend adds its own (see ops/health.py).
        self.readiness = Readiness()
        if isinstance(self._log, RedisLog):  # publish path and subscription (redis_log.py)
            self.readiness.add("redis", self.store_health, probe=self._log.probe)
        self._accept_turn = 0.0
        self._admin = self._make_admin(admin) if admin is not None and admin.listen else None

    def _make_rooms(self, config: ServerConfig) -> RoomRegistry:
        """The rooms over the log ``--store`` names; opening SQLite may raise
        StoreOpenError (a ConfigError: the server refuses to start, saying why)."""
        log: MessageLog
        if config.store == "memory":
            log = MemoryLog(history_max=config.history_max, history_age=config.history_age)
        elif is_redis_url(config.store):
            log = RedisLog.open(
                config.store,
                history_max=config.history_max, history_age=config.history_age,
                resend_window=config.resend_window, presence_ttl=config.presence_ttl,
                on_thread_died=lambda exc: self._thread_died("securechat-redis", exc))
        else:
            log = SQLiteLog.open(
                config.data_dir, durability=cast(Durability, config.durability),
                history_max=config.history_max, history_age=config.history_age,
                on_thread_died=lambda exc: self._thread_died("securechat-store", exc))
        self._log = log
        return RoomRegistry(log, default=config.room, max_rooms=config.max_rooms,
                            max_members=config.max_room_members,
                            resend_window=config.resend_window)

    def _make_admin(self, admin: AdminConfig) -> Any:
        """The admin endpoint (ops/), imported only when asked for: it needs the
        optional prometheus_client. Raises ConfigError like any bad setting."""
        from .ops.service import AdminService
        from .ops.view import ServerView

        def not_listening() -> str | None:
            if self._listener is None or self._accept_thread is None:
                return "not started"
            if not self._accept_thread.is_alive():
                return "the accept thread is gone"
            return "accepting paused (out of file descriptors)" if self._accept_pause else None

        view = ServerView(
            loops=self._loops, admission=self._admission, rooms=self.rooms,
            ledger=self.room.budget, writer=getattr(self._log, "_writer", None),
            readiness=self.readiness, accept_turn=lambda: self._accept_turn,
            accept_sleep=self.config.tokens_poll, not_listening=not_listening,
            stopping=self._stopping, started=time.monotonic(),
            redis=self._log.counters if isinstance(self._log, RedisLog) else None)
        return AdminService(admin, view, tls=lambda: self._admission.ssl_context,
                            on_crash=self._thread_died)

    # ------------------------------------------------------------------ public API
    @property
    def tokens(self) -> TokenStore:
        """The tokens in force now (replaced as a whole when the file changes)."""
        return self._admission.tokens

    @tokens.setter
    def tokens(self, store: TokenStore) -> None:
        # Sessions whose token is gone notice on their next tick (< 0.25 s) and close
        # with "revoked": no list of sessions to walk here, no race with a login.
        self._admission.tokens = store

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The context new connections get (replaced as a whole by a certificate reload;
        live sessions keep the one they were wrapped with)."""
        return self._admission.ssl_context

    def reload_certificates(self) -> bool:
        """Load ``--cert``/``--key`` again, even if unchanged, for new connections; True
        if the new pair is in force. A pair that does not load is logged
        (``certs_reload_failed``) and the previous context stays. Thread-safe; never
        call it from a signal handler (it takes a lock): use
        :meth:`request_certificate_reload` there."""
        return self._reload_certificates(force=True)

    def request_certificate_reload(self) -> None:
        """Ask the accept thread to :meth:`reload_certificates` soon (SIGHUP). Takes no
        lock (safe in a signal handler): sets a flag and wakes the accept thread through
        the non-blocking wake socket."""
        self._certs_requested = True
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._wake_w.send(b"\0")

    def _reload_certificates(self, *, force: bool) -> bool:
        """One reload attempt (``force``) or poll; logs once per outcome. True if a new
        context is in force or (a poll) nothing changed."""
        with self._certs_lock:
            try:
                if self._inject_fault is not None:
                    self._inject_fault("certs")
                ctx = self._certs.poll(force=force)
            except Exception as exc:  # a bug here must not stop accepting
                logger.exception("certificate reload failed; keeping the previous certificate")
                log_event(logger, logging.ERROR, "certs_reload_failed",
                          f"{type(exc).__name__}: {exc}; keeping the previous certificate")
                return False
            if ctx is not None:
                self._admission.ssl_context = ctx
                log_event(logger, logging.INFO, "certs_reloaded",
                          "new connections get the new certificate",
                          cert=str(self._certs.certfile),
                          **describe_certificate(self._certs.certfile))
                return True
            error = self._certs.last_error
            self._certs.last_error = None
        if error:
            log_event(logger, logging.ERROR, "certs_reload_failed",
                      f"{error}; keeping the previous certificate")
            return False
        return not force

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise RuntimeError("server not started")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind, listen and start every thread; returns once connections are accepted."""
        if self._started:
            return
        if self._admin is not None:
            self._admin.bind()  # a bad admin address refuses the start, nothing begun
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        dualstack = cfg.host == "::" and socket.has_dualstack_ipv6()
        listener = socket.create_server((cfg.host, cfg.port), family=family, backlog=cfg.backlog,
                                        dualstack_ipv6=dualstack)
        listener.setblocking(False)
        self._listener = listener
        self._started = True
        if isinstance(self._log, (SQLiteLog, RedisLog)):
            # The writer thread only runs SQLite (which releases the GIL); the fan-out of
            # each committed batch is Python work and goes to an I/O loop, in order
            # (call_soon is FIFO), so the two threads do not fight over the GIL. The
            # registry hands each room its part of the batch.
            fanout, rooms = self._loops[0], self.rooms
            if isinstance(self._log, RedisLog):  # presence from other nodes, same path
                self._log.share_presence(
                    lambda events: fanout.call_soon(functools.partial(rooms.on_presence,
                                                                      events)),
                    lambda name, roster: fanout.call_soon(functools.partial(
                        rooms.on_roster, name, roster)),
                    rooms.names_in_memory)
            self._log.start(
                lambda batch: fanout.call_soon(functools.partial(rooms.on_stored, batch)),
                lambda batch, error: fanout.call_soon(
                    functools.partial(rooms.on_failed, batch, error)))
        for loop in self._loops:
            loop.start()
        self._accept_thread = threading.Thread(target=self._accept_loop,
                                               name="securechat-accept", daemon=True)
        self._accept_thread.start()
        if self._admin is not None:
            self._admin.start()
        host, port = self.address
        log_event(logger, logging.INFO, "listen", host=host, port=port, tls_min=cfg.tls_min,
                  io_threads=cfg.io_threads, room=self.room.name, store=redact(cfg.store),
                  epoch=self.room.epoch, seq=self.room.seq, rooms=len(self.rooms))
        somaxconn = read_int("/proc/sys/net/core/somaxconn")
        if somaxconn is not None and somaxconn < cfg.backlog:
            log_event(logger, logging.WARNING, "config",
                      f"listen backlog capped by net.core.somaxconn={somaxconn}")

    def serve_forever(self) -> None:
        """Start if needed and block until :meth:`shutdown` has finished or
        :meth:`interrupt` was called.

        Raises :class:`ServerThreadDied` as soon as an essential thread (accept, an I/O
        loop) has died: a server that is up but not accepting must not stay up. The
        caller then shuts down and exits non-zero so that a supervisor restarts it."""
        self.start()
        while not self._serve_wakeup.wait(0.25):
            if self._interrupted:
                break
        if self.failure is not None:
            raise ServerThreadDied(f"server thread died: {self.failure!r}") from self.failure

    def interrupt(self) -> None:
        """Make :meth:`serve_forever` return (within 0.25 s). Takes no lock, so it is safe
        to call from a signal handler (Event.set there can deadlock on the lock that the
        interrupted wait holds)."""
        self._interrupted = True

    def _thread_died(self, name: str, exc: BaseException) -> None:
        """An essential thread ended with an exception (its traceback is already logged)."""
        if self.failure is None:
            self.failure = exc
        log_event(logger, logging.CRITICAL, "thread_died",
                  "the server cannot go on without this thread; it must be restarted",
                  thread=name, error=type(exc).__name__)
        self.failed.set()
        self._serve_wakeup.set()

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop accepting, send ``bye`` with a spread ``retry_after`` to everyone, flush,
        close every connection and join every thread. Returns True if all threads ended
        within the deadline and no client had to be cut off with frames still queued.
        Safe to call twice and from any thread but an I/O loop."""
        with self._shutdown_lock:
            if self._stopped.is_set() or not self._started:
                self._close_log()
                self._stopped.set()
                self._serve_wakeup.set()
                return True
            deadline = time.monotonic() + (timeout or self.config.shutdown_timeout)
            self._stopping.set()
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")
            if self._accept_thread is not None:
                self._accept_thread.join(max(0.0, deadline - time.monotonic()))
            linger = max(0.1, (deadline - time.monotonic()) * 0.6)
            for loop in self._loops:
                loop.drain(lambda loop=loop: self._say_bye(loop, linger))  # type: ignore[misc]
            for loop in self._loops:
                loop.drained.wait(max(0.0, deadline - time.monotonic()))
            ok = True
            for loop in self._loops:
                loop.stop()
            for loop in self._loops:
                ok = loop.join(max(0.0, deadline - time.monotonic()) + 0.5) and ok
            self._close_log()
            if self._admin is not None:  # last: /readyz said "shutting down" until now
                ok = self._admin.stop(max(0.0, deadline - time.monotonic()) + 0.5) and ok
            if self._listener is not None:
                self._listener.close()
            self._wake_r.close()
            self._wake_w.close()
            cut = self._admission.cut_at_shutdown()
            if cut:
                # A clean exit promises that everyone got what they were owed.
                ok = False
                log_event(logger, logging.WARNING, "shutdown_cut",
                          f"{cut} clients were cut off with frames still queued", cut=cut)
            log_event(logger, logging.INFO, "stopped", clean=ok)
            self._stopped.set()
            self._serve_wakeup.set()
            return ok

    def _close_log(self) -> None:
        """Store what is still queued, stop the writer, release the data dir's lock."""
        if self._log is not None:
            try:
                self._log.close()
            except Exception:  # the process is stopping: say so, go on
                logger.exception("closing the message log failed")

    def close_unstarted(self) -> None:
        """Release what the constructor opened (the log's lock) when start never ran."""
        if not self._started:
            self._close_log()
            if self._admin is not None:
                self._admin.stop(0.0)  # its socket, if it was bound

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def store_health(self) -> str | None:
        """None while the message log can take messages, else why not (a readiness
        check; only the Redis log can be unhealthy while the server runs)."""
        if isinstance(self._log, RedisLog):
            return self._log.health()
        return None

    def threads(self) -> list[threading.Thread]:
        """Every thread this server started (for tests that check they were joined)."""
        found = [loop.thread for loop in self._loops]
        if self._accept_thread is not None:
            found.append(self._accept_thread)
        if self._admin is not None and self._admin.thread is not None:
            found.append(self._admin.thread)
        return found

    def stats(self) -> dict[str, int]:
        """Counters for tests, benchmarks and logs."""
        out = self._admission.stats()
        out["sessions"] = sum(len(loop.endpoints) for loop in self._loops)
        return out

    # ------------------------------------------------------------------ accept thread
    def _accept_loop(self) -> None:
        """The accept thread: accepts, polls the tokens file and the certificate pair. If
        it dies, nobody new gets in and revocation stops, so its death is fatal (see
        serve_forever)."""
        try:
            self._accept_forever()
        except BaseException as exc:
            logger.exception("accept thread crashed")
            self._thread_died(threading.current_thread().name, exc)

    def _accept_forever(self) -> None:
        assert self._listener is not None
        listener = self._listener
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        listening = False
        poll_every = self.config.tokens_poll
        next_poll = time.monotonic() + poll_every
        try:
            while not self._stopping.is_set():
                now = self._accept_turn = time.monotonic()
                if not listening and now >= self._accept_resume_at:
                    sel.register(listener, selectors.EVENT_READ, "accept")
                    listening = True
                timeout = next_poll - now
                if not listening:
                    timeout = min(timeout, self._accept_resume_at - now)
                for key, _ in sel.select(max(0.0, timeout)):
                    if key.data == "wake":
                        drain(self._wake_r)
                    elif key.data == "accept" and listening:
                        if self._inject_fault is not None:
                            self._inject_fault("accept")
                        if self._accept_batch(listener):
                            # Out of descriptors: the listener stays readable, so it
                            # leaves the selector for the pause instead of spinning.
                            sel.unregister(listener)
                            listening = False
                if self._certs_requested:
                    self._certs_requested = False
                    self._reload_certificates(force=True)
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + poll_every
                    self._poll_tokens()
                    self._reload_certificates(force=False)
        finally:
            sel.close()

    def _accept_batch(self, listener: socket.socket) -> bool:
        """Accept what is waiting; True if accepting must pause (out of descriptors).
        Pending clients wait in the listen backlog meanwhile."""
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                raw, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP:
                    continue  # that connection is gone or refused by a firewall rule
                self._pause_accepting(exc)
                return True
            if self._accept_failures:
                log_event(logger, logging.WARNING, "accept_resumed",
                          f"accepting again after {self._accept_failures} failed accepts",
                          failed=self._accept_failures)
                self._accept_failures = 0
                self._accept_pause = 0.0
            try:
                self._admit(raw, addr)
            except Exception:
                # A bug admitting one connection costs that connection, not the thread.
                logger.exception("admitting a connection failed")
                with contextlib.suppress(OSError):
                    raw.close()
        return False

    def _pause_accepting(self, exc: OSError) -> None:
        """One log line per pause; pauses double while accept keeps failing."""
        self._accept_failures += 1
        self._accept_pause = (ACCEPT_PAUSE_MIN if not self._accept_pause
                              else min(ACCEPT_PAUSE_MAX, self._accept_pause * 2))
        self._accept_resume_at = time.monotonic() + self._accept_pause
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        what = ("out of file descriptors" if exc.errno in _ACCEPT_OUT_OF_FDS
                else exc.strerror or str(exc))
        log_event(logger, logging.ERROR, "accept_paused",
                  f"accept paused: {what} ({code}), {self._accept_failures} failed accepts",
                  pause=self._accept_pause, failed=self._accept_failures)

    def _admit(self, raw: socket.socket, addr: Any) -> None:
        now = time.monotonic()
        peer, ip_key = format_peer(addr)
        loop = min(self._loops, key=lambda lp: len(lp.endpoints))
        entry = self._admission.admit(next(self._conn_ids), ip_key, loop, now)
        if isinstance(entry, str):
            # Cheapest possible answer to a flood: no TLS handshake, just close (RST).
            log_event(logger, logging.DEBUG, "refused", entry, peer=peer)
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            raw.close()
            return
        try:
            raw.setblocking(False)
            tune_socket(raw, self.config)
        except OSError:
            pass  # the peer may already be gone; the session will find out
        loop.call_soon(lambda: self._adopt(raw, peer, entry))

    def _adopt(self, raw: socket.socket, peer: str, entry: Pending) -> None:
        """In the loop thread: wrap the socket in TLS and start the handshake."""
        try:
            session = Session(self._admission, entry.loop, raw, peer, entry.ip_key,
                              entry.conn_id, entry.accepted_at, reject=entry.reject)
        except (OSError, ValueError) as exc:
            log_event(logger, logging.DEBUG, "close", "gone before TLS", conn=entry.conn_id,
                      peer=peer, detail=str(exc))
            raw.close()
            self._admission.release(entry.conn_id, counted=entry.reject is None)
            return
        entry.session = session  # read only by this loop, in evict calls queued after us
        if self._stopping.is_set():
            session.abort("shutdown")
            return
        session.start()

    def _poll_tokens(self) -> None:
        """In the accept thread. Nothing here may stop accepting: a bad file, or even a
        bug, is logged (once, until a poll succeeds) and the tokens in force stay."""
        if self._watcher is None:
            return
        try:
            if self._inject_fault is not None:
                self._inject_fault("tokens")
            store = self._watcher.poll()
        except Exception as exc:
            fault = f"{type(exc).__name__}: {exc}"
            if fault != self._token_fault:
                self._token_fault = fault
                logger.exception("token watcher failed; keeping the previous tokens")
            return
        self._token_fault = None
        if store is not None:
            removed = self.tokens.ids() - store.ids()
            self.tokens = store
            log_event(logger, logging.INFO, "tokens_reloaded", tokens=len(store),
                      revoked=len(removed))
        elif self._watcher.last_error:
            log_event(logger, logging.ERROR, "tokens_reload_failed",
                      f"{self._watcher.last_error}; keeping the previous tokens")
            self._watcher.last_error = None

    def _set_test_fault(self, where: str) -> None:
        """Tests only (SECURECHAT_TEST_FAULT): raise RuntimeError in the accept thread
        ("accept", on the next connection), the I/O loops ("io", on the next event) or
        the token watcher ("tokens", on every poll), the certificate reload ("certs") or
        the admin thread ("admin", on its next turn)."""
        def fault(point: str) -> None:
            if point == where:
                raise RuntimeError(f"injected test fault ({where})")
        self._inject_fault = fault
        if where == "io":
            for loop in self._loops:
                loop._inject_fault = lambda: fault("io")
        if where == "admin" and self._admin is not None:
            self._admin.inject_fault = lambda: fault("admin")

    # ------------------------------------------------------------------ shutdown
    def _say_bye(self, loop: IOLoop, linger: float) -> None:
        spread = self.config.retry_spread
        for endpoint in list(loop.endpoints):
            if isinstance(endpoint, Session):
                if endpoint.state is State.CLOSED:
                    continue
                # Spread the comebacks so N clients do not all reconnect at once.
                retry_after = spread_retry(0.0, spread)
                endpoint.say_bye(retry_after, linger)
