"""The client's I/O: client links driven by the server's loop, :class:`~securechat.io.loop.IOLoop`.

A :class:`ClientLoop` is one I/O thread (an ``IOLoop``) that owns any number of
links (:class:`securechat.client.link.Link`); a link is the sockets of one
:class:`~securechat.client.core.ClientCore`. All protocol decisions are the core's:
the link only resolves, connects, handshakes, reads, writes and closes, reports
what happened to the core and carries out its :class:`~securechat.client.core.Connect`
and :class:`~securechat.client.core.CloseLink` actions.

Thread model (shared/design-notes.md s1): every socket and SSL object is touched by
the loop thread only (connect, handshake, read, write, close). Other threads talk
to a link through ``Link.submit`` and ``Link.request_close``, which append
to a list and :meth:`~securechat.io.loop.IOLoop.schedule` a flush, as the server's
sessions do. Name resolution runs in a helper thread per lookup (``getaddrinfo``
cannot be interrupted and must not freeze the loop's heartbeats); its answer comes
back through ``call_soon``, and the core's connect deadline covers it. An IP
literal needs no lookup and no thread.

Timers: ``IOLoop`` has only a fixed-interval tick. A ``ClientLoop`` keeps a heap of
per-link deadlines and gives the loop a selector (:class:`_TimerSelector`) whose
``select`` never sleeps past the earliest one and then reports a pseudo-endpoint
that runs the due timers. A ``call_later`` inside ``ioloop.py`` would be cleaner.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from ..errors import ClientClosed
from ..io.loop import Endpoint, IOLoop

__all__ = ["MAX_CONNECTING", "ClientLoop", "Link", "Resolver", "describe", "is_ip_literal",
           "resolve"]

logger = logging.getLogger("securechat.client")

#: TCP connects + TLS handshakes in flight at once per loop; more wait their turn.
#: One thread does all the handshakes anyway, so more in flight is not faster, but
#: each holds ~40 KiB of OpenSSL state until it completes, and after 500 at once the
#: freed memory stays in the process (measured: 46 vs 25 KiB RSS per client).
MAX_CONNECTING: Final = 16
#: IOLoop's own tick does nothing for clients (timers are exact): wake rarely.
_IDLE_TICK: Final = 30.0

_READ = selectors.EVENT_READ

#: ``resolver(host, port)`` -> ``(family, sockaddr)`` pairs to try in order; raises
#: OSError when the name does not resolve. It runs in a helper thread, so it may block.
Resolver = Callable[[str, int], Sequence[tuple[int, Any]]]


def resolve(host: str, port: int) -> list[tuple[int, Any]]:
    """The default :data:`Resolver`: ``getaddrinfo`` for TCP."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (no lookup needed)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return True
    return False


def describe(exc: BaseException) -> str:
    """A short, lower-case reason for a socket or TLS error."""
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or exc.__class__.__name__


class Link(Endpoint, Protocol):
    """What a :class:`ClientLoop` needs from a link (:class:`securechat.client.link.Link`
    is the one implementation; a protocol here keeps the two modules acyclic)."""

    timer_at: float | None

    @property
    def close_timeout(self) -> float: ...

    def begin(self) -> None: ...

    def close_now(self) -> None: ...

    def on_timer(self, now: float) -> None: ...

    def wants_slot(self) -> bool: ...

    def slot_granted(self) -> None: ...


# --------------------------------------------------------------------------- timers
class _Timers:
    """Per-link deadlines (loop thread only), and the pseudo-endpoint that runs them."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Link]] = []
        self._seq = itertools.count()

    def set(self, link: Link, when: float | None) -> None:
        """Make sure ``link`` is woken no later than ``when``. A later time keeps the
        earlier entry (it fires, finds nothing due and sets the real one): at most a
        couple of entries per link however often its deadline moves."""
        if when is None:
            link.timer_at = None
            return
        if link.timer_at is not None and link.timer_at <= when:
            return
        link.timer_at = when
        heapq.heappush(self._heap, (when, next(self._seq), link))

    def next_at(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    # Endpoint: reported readable by _TimerSelector when a timer is due.
    def on_readable(self) -> None:
        heap = self._heap
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            when, _, link = heapq.heappop(heap)
            if link.timer_at != when:
                continue  # superseded
            link.timer_at = None
            link.on_timer(now)

    def on_writable(self) -> None:
        """Never registered for writing."""

    def flush(self) -> None:
        """Nothing is queued on the timers."""

    def tick(self, now: float) -> None:
        """Timers are run by on_readable."""

    def abort(self, reason: str) -> None:
        """Nothing to close."""


class _TimerSelector(selectors.DefaultSelector):
    """IOLoop's selector, plus timers: ``select`` sleeps no longer than the earliest
    deadline and then reports :class:`_Timers` as a readable endpoint."""

    def __init__(self, timers: _Timers) -> None:
        super().__init__()
        self._timers = timers
        self._key = selectors.SelectorKey(-1, -1, _READ, timers)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        at = self._timers.next_at()
        if at is not None:
            left = max(0.0, at - time.monotonic())
            if timeout is None or left < timeout:
                timeout = left
        events = super().select(timeout)
        at = self._timers.next_at()
        if at is not None and at <= time.monotonic():
            events.append((self._key, _READ))
        return events


# --------------------------------------------------------------------------- the loop
class ClientLoop:
    """One I/O thread shared by many clients: ``Client(..., loop=shared)``.

    Use it as a context manager (or call :meth:`close`): closing says bye for every
    client still on it (each waiting at most its ``close_timeout``), then stops and
    joins the thread. A client's own default loop is ``private``: it stops by itself
    once its one link has finished.
    """

    def __init__(self, name: str = "securechat-client-io", *, private: bool = False,
                 max_connecting: int = MAX_CONNECTING) -> None:
        self.name = name
        self.private = private
        self.max_connecting = max(1, max_connecting)
        self._connecting: set[Link] = set()  # loop thread only: links holding a slot
        self._slot_queue: deque[Link] = deque()
        self._granting = False
        self._lock = threading.Lock()
        self._io: IOLoop | None = None
        self._stopped = False  # under _lock: no call_soon after this
        self._closing = False
        self._thread = threading.Thread(name=name)  # a placeholder until started
        self.timers = _Timers()
        self.links: set[Link] = set()  # loop thread only
        #: The lock and condition of every client on this loop (one per client would
        #: cost ~1 KiB each; waits are on predicates, so a shared one is correct).
        self.condition = threading.Condition()

    @property
    def thread(self) -> threading.Thread:
        """The I/O thread (before :meth:`start`, a thread object that never runs)."""
        return self._thread

    @property
    def closed(self) -> bool:
        return self._stopped or self._closing

    def start(self) -> ClientLoop:
        """Start the I/O thread (idempotent)."""
        with self._lock:
            if self._io is not None:
                return self
            if self._stopped or self._closing:
                raise ClientClosed("the client loop is closed")
            io = IOLoop(self.name, tick_interval=_IDLE_TICK)
            selector = _TimerSelector(self.timers)
            for key in io.selector.get_map().values():
                selector.register(key.fileobj, key.events, key.data)
            io.selector.close()
            io.selector = selector
            self._io = io
            self._thread = io.thread
            io.start()
        return self

    # ------------------------------------------------------------------ any thread
    def call_soon(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` in the loop thread; False if the loop has stopped."""
        with self._lock:
            if self._stopped or self._io is None:
                return False
            self._io.call_soon(fn)
        return True

    def schedule(self, link: Link) -> None:
        with self._lock:
            if self._stopped or self._io is None:
                return
            self._io.schedule(link)

    def attach(self, link: Link) -> None:
        """Start ``link`` in the loop thread."""
        self.start()
        if self._closing or not self.call_soon(link.begin):
            raise ClientClosed("the client loop is closed")

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def close(self, timeout: float | None = None) -> bool:
        """Close every client on the loop (bye, bounded by their ``close_timeout``),
        stop and join the thread; True if it ended. Idempotent."""
        with self._lock:
            self._closing = True
            io = self._io
        if io is None:
            with self._lock:
                self._stopped = True
            return True
        if self.in_loop():
            self.call_soon(self._close_links)
            return False
        budget = (max((link.close_timeout for link in list(self.links)), default=0.0)
                  + 2.0) if timeout is None else timeout
        deadline = time.monotonic() + budget
        self.call_soon(self._close_links)
        io.join(budget)
        if io.thread.is_alive():
            self.call_soon(self._abort_links)
            io.join(max(0.1, deadline - time.monotonic()))
        return not io.thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after :meth:`close`, or a private loop's last link)."""
        if self._io is None:
            return True
        return self._io.join(timeout)

    def __enter__(self) -> ClientLoop:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ loop thread
    @property
    def selector(self) -> selectors.BaseSelector:
        """The loop's selector (loop thread only, once started)."""
        assert self._io is not None
        return self._io.selector

    def link_started(self, link: Link) -> None:
        self.links.add(link)

    def link_finished(self, link: Link) -> None:
        self.links.discard(link)
        self.timers.set(link, None)
        if not self.links and (self.private or self._closing):
            self._stop()

    def take_slot(self, link: Link) -> bool:
        """A connect slot for ``link`` now (True), or later through ``link.slot_granted``."""
        if len(self._connecting) < self.max_connecting:
            self._connecting.add(link)
            return True
        self._slot_queue.append(link)
        return False

    def release_slot(self, link: Link) -> None:
        self._connecting.discard(link)
        if self._granting:
            return  # a link that failed at once inside slot_granted: the loop below goes on
        self._granting = True
        try:
            queue = self._slot_queue
            while queue and len(self._connecting) < self.max_connecting:
                waiting = queue.popleft()
                if waiting.wants_slot():
                    self._connecting.add(waiting)
                    waiting.slot_granted()
        finally:
            self._granting = False

    @property
    def connecting(self) -> int:
        """Connect slots in use."""
        return len(self._connecting)

    def _close_links(self) -> None:
        if not self.links:
            self._stop()
            return
        for link in list(self.links):
            link.close_now()

    def _abort_links(self) -> None:
        for link in list(self.links):
            link.abort("the client loop was closed")
        self._stop()

    def _stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._io is not None:
                self._io.stop()
