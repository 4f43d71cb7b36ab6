"""One I/O thread: a ``selectors`` loop that is the single owner of many connections.

Other threads never touch a connection's socket. They append frames to the
connection's inbox and call :meth:`IOLoop.schedule`; the loop writes everything
queued for a connection in one TLS write at the end of its iteration
(coalescing), and is woken through a socketpair only when it may be asleep, so a
broadcast to a whole room costs at most one wake-up per I/O thread.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ..metering import LoopStats

__all__ = ["Endpoint", "IOLoop"]

logger = logging.getLogger("securechat.server")


class Endpoint(Protocol):
    """What an :class:`IOLoop` drives: a connection it owns."""

    def on_readable(self) -> None: ...

    def on_writable(self) -> None: ...

    def flush(self) -> None:
        """Write what other threads queued (called once per scheduling)."""

    def tick(self, now: float) -> None:
        """Check deadlines and heartbeats."""

    def abort(self, reason: str) -> None:
        """Close at once, without saying anything (loop shutdown)."""

    def internal_error(self) -> None:
        """A handler of this connection raised (a bug): tell the peer, close cleanly."""


class IOLoop:
    """A thread running a selector loop; owns the :class:`Endpoint` objects registered on it."""

    def __init__(self, name: str, *, tick_interval: float,
                 on_tick: Callable[[IOLoop, float], None] | None = None,
                 on_crash: Callable[[str, BaseException], None] | None = None) -> None:
        self.name = name
        self.tick_interval = tick_interval
        self._on_tick = on_tick
        #: Called (in the dying thread, after cleanup) if the loop itself raised.
        self._on_crash = on_crash
        #: Tests only: called before handling each connection's event; may raise.
        self._inject_fault: Callable[[], None] | None = None
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._ready: deque[Endpoint] = deque()
        self._calls: deque[Callable[[], None]] = deque()
        self._awake = True  # True while the loop runs Python code: no wake-up needed
        self._stopping = False
        self._draining = False
        #: Set once draining began and the last endpoint is gone (or the loop ended).
        self.drained = threading.Event()
        self.endpoints: set[Endpoint] = set()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.ident: int | None = None
        #: Counters of this loop's sessions (written by this thread only; see metering.py).
        self.stats = LoopStats()
        #: Monotonic time of the last pass (0 until it runs): /healthz finds a stuck loop.
        self.last_turn = 0.0

    # ------------------------------------------------------------------ any thread
    def start(self) -> None:
        self.thread.start()

    def schedule(self, endpoint: Endpoint) -> None:
        """Ask the loop to call ``endpoint.flush()``; safe from any thread."""
        self._ready.append(endpoint)
        if not self._awake:
            self._awake = True
            self._wake()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the loop thread; safe from any thread."""
        self._calls.append(fn)
        if not self._awake:
            self._awake = True
            self._wake()

    def drain(self, say_goodbye: Callable[[], None]) -> None:
        """Run ``say_goodbye`` in the loop, then set :attr:`drained` once no endpoint is
        left. Safe from any thread."""
        def begin() -> None:
            self._draining = True
            say_goodbye()
        self.call_soon(begin)

    def stop(self) -> None:
        self._stopping = True
        self._wake()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it did."""
        if self.thread.is_alive():
            self.thread.join(timeout)
        return not self.thread.is_alive()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # ------------------------------------------------------------------ loop thread only
    def _run(self) -> None:
        self.ident = threading.get_ident()
        self.last_turn = time.monotonic()
        next_tick = time.monotonic() + self.tick_interval
        select = self.selector.select
        ready = self._ready
        calls = self._calls
        try:
            while not self._stopping:
                self._awake = False
                # Checked after clearing _awake: anything queued before this point is
                # seen here, anything after it wakes the selector.
                if ready or calls:
                    timeout: float = 0.0
                else:
                    timeout = max(0.0, next_tick - time.monotonic())
                events = select(timeout)
                self._awake = True
                for key, mask in events:
                    endpoint = key.data
                    if endpoint is None:
                        self._drain_wake()
                        continue
                    if self._inject_fault is not None:
                        self._inject_fault()
                    try:
                        if mask & selectors.EVENT_READ:
                            endpoint.on_readable()
                        if mask & selectors.EVENT_WRITE:
                            endpoint.on_writable()
                    except Exception:
                        self._contain(endpoint)
                while calls:
                    self._run_call(calls.popleft())
                while ready:
                    endpoint = ready.popleft()
                    try:
                        endpoint.flush()
                    except Exception:
                        self._contain(endpoint)
                now = self.last_turn = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self.tick_interval
                    for endpoint in list(self.endpoints):
                        try:
                            endpoint.tick(now)
                        except Exception:
                            self._contain(endpoint)
                    if self._on_tick is not None:
                        self._on_tick(self, now)
                if self._draining and not self.endpoints:
                    self.drained.set()
        except BaseException as exc:
            # A bug in the loop itself, outside any one connection's handlers: every
            # connection it owns is lost. Logged once here; the owner decides (the
            # server makes serve_forever raise, so the process exits non-zero).
            logger.exception("I/O loop %s crashed", self.name)
            crash: BaseException | None = exc
        else:
            crash = None
        finally:
            for endpoint in list(self.endpoints):
                with contextlib.suppress(Exception):
                    endpoint.abort("server stopped")
            self.endpoints.clear()
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()
            self.drained.set()  # nothing left to drain: shutdown must not wait for it
        if crash is not None and self._on_crash is not None:
            self._on_crash(self.name, crash)

    def _contain(self, endpoint: Endpoint) -> None:
        """A bug in one connection's handler closes that connection, not the loop: the
        peer gets ``error internal_error`` and a clean close; if that fails too, or the
        connection fails again while closing, it is closed at once."""
        logger.exception("connection handler failed in %s", self.name)
        try:
            endpoint.internal_error()
        except Exception:
            logger.exception("closing after an internal error failed in %s", self.name)
            with contextlib.suppress(Exception):
                endpoint.abort("internal error")
            self.endpoints.discard(endpoint)

    def _run_call(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            logger.exception("call in I/O loop %s failed", self.name)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
