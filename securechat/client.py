"""The securechat client API: a connection that survives the network.

:class:`Client` keeps one authenticated TLS link to a server and hides its
failures: it reconnects with jittered exponential backoff (:mod:`securechat.backoff`),
pings when idle and declares the link dead after three silent heartbeat
intervals, queues what the user sends while it is offline and resends every
message the server has not acknowledged. Fatal failures (token refused,
certificate not trusted) end it with a clear error instead of retrying forever.

Thread model (shared/design-notes.md s1): the client owns ONE I/O thread, named
``securechat-client-io...``, which is the only code that touches the socket and
the SSL object (connect, handshake, read, write, close). It waits on a
``selectors`` selector plus a socketpair that other threads write one byte to.
User threads never touch the socket: :meth:`Client.send` appends to a bounded
queue and wakes the I/O thread; events come back through a thread-safe queue
(:meth:`Client.next_event`, :meth:`Client.events`) or an ``on_event`` callback.

Events are the protocol frames :class:`~securechat.protocol.Message`,
:class:`~securechat.protocol.Ack`, :class:`~securechat.protocol.Join`,
:class:`~securechat.protocol.Leave` and :class:`~securechat.protocol.ErrorFrame`,
plus the connection-state events defined here: :class:`Connecting`,
:class:`Connected`, :class:`Disconnected`, :class:`Reconnecting`, :class:`Gap`,
:class:`SendFailed`, :class:`EventsDropped` and, always last, :class:`Closed`
(whose ``error`` is a :class:`~securechat.errors.GaveUp` when retries ran out).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import random
import secrets
import selectors
import socket
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from . import protocol
from .backoff import Backoff, BackoffPolicy, is_fatal, is_fatal_code
from .errors import (
    AuthRefused,
    ClientClosed,
    ClientError,
    ConfigError,
    GaveUp,
    LocalProtocolError,
    ProtocolError,
    QueueFull,
    RemoteProtocolError,
    TLSVerificationFailed,
)
from .protocol import Ack, ErrorFrame, Join, Leave, Message, Welcome
from .sendbuffer import SendBuffer
from .tlsconfig import client_context

__all__ = [
    "Client",
    "Closed",
    "Connected",
    "Connecting",
    "Disconnected",
    "Event",
    "EventsDropped",
    "Gap",
    "Reconnecting",
    "Resolver",
    "SendFailed",
    "SendHandle",
    "SeqTracker",
    "resolve",
]

logger = logging.getLogger("securechat.client")

RECV_SIZE: Final = 65536
#: Messages sent but not yet acknowledged at once. The server drops messages over
#: its rate (50/s, bursts of 100 by default) with ``rate_limited``; a window keeps
#: a long backlog flushed after a reconnect from being refused by the hundred.
#: After a ``rate_limited`` the window drops to 1 and doubles with every ack (as
#: TCP's slow start), so the refused message goes again before newer ones.
SEND_WINDOW: Final = 32
#: Pause after ``rate_limited`` when the server gave no ``retry_after``.
DEFAULT_RATE_PAUSE: Final = 1.0
#: Heartbeat intervals without any frame after which the link is declared dead.
DEAD_AFTER_INTERVALS: Final = 3

#: Seconds :meth:`Client.close` waits at most for a name resolution still running.
RESOLVER_JOIN_WAIT: Final = 1.0

_PING = protocol.encode(protocol.Ping())
_PONG = protocol.encode(protocol.Pong())
_BYE = protocol.encode(protocol.Bye())


#: What a message that will never be delivered failed with.
SecureChatClientFailure = ClientError | ProtocolError


# --------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class Connecting:
    """A connection attempt starts (``attempt`` 0 is the very first one)."""

    address: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Connected:
    """Authenticated and in the room; ``reconnect`` is False for the first connection."""

    welcome: Welcome
    address: str
    reconnect: bool


@dataclass(frozen=True, slots=True)
class Disconnected:
    """An authenticated link was lost; a :class:`Reconnecting` or :class:`Closed` follows."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The next attempt, number ``attempt`` (1-based), starts in ``delay`` seconds;
    ``retry_after`` is the server's hint, when it gave one (``delay`` is at least that)."""

    delay: float
    attempt: int
    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """Room messages numbered after ``after`` and before ``before`` were not all seen:
    ``missing`` of them never reached this client (an outage, or the server restarted
    and began numbering again when ``restarted``). A hint, not a replay."""

    after: int
    before: int
    missing: int
    restarted: bool = False


@dataclass(frozen=True, slots=True)
class SendFailed:
    """A message will never be delivered (too large, refused by the server, client closed)."""

    id: str
    body: str
    error: SecureChatClientFailure


@dataclass(frozen=True, slots=True)
class EventsDropped:
    """``count`` older events were dropped because nobody read the event queue."""

    count: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The last event: the client stopped. ``error`` is None after :meth:`Client.close`,
    else why it stopped (:class:`AuthRefused`, :class:`TLSVerificationFailed`,
    :class:`GaveUp`...)."""

    reason: str
    error: ClientError | None = None


Event = (Message | Ack | Join | Leave | ErrorFrame | Connecting | Connected | Disconnected
         | Reconnecting | Gap | SendFailed | EventsDropped | Closed)


# --------------------------------------------------------------------------- name resolution
#: ``resolver(host, port)`` -> ``(family, sockaddr)`` pairs to try in order; raises
#: OSError when the name does not resolve. It runs in a helper thread, so it may block.
Resolver = Callable[[str, int], Sequence[tuple[int, Any]]]


def resolve(host: str, port: int) -> list[tuple[int, Any]]:
    """The default :data:`Resolver`: ``getaddrinfo`` for TCP."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def _is_ip_literal(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return True
    return False


# --------------------------------------------------------------------------- send handles
class SendHandle:
    """One message given to :meth:`Client.send`: wait for its ``seq`` or its failure."""

    __slots__ = ("_done", "body", "error", "frame", "id", "order", "seq")

    def __init__(self, mid: str, body: str, frame: bytes, order: int) -> None:
        self.id = mid
        self.body = body
        self.frame = frame
        self.order = order
        self.seq: int | None = None
        self.error: SecureChatClientFailure | None = None
        self._done = threading.Event()

    def __repr__(self) -> str:
        state = f"seq={self.seq}" if self.seq is not None else (
            f"error={self.error}" if self.error else "pending")
        return f"<SendHandle {self.id} {state}>"

    def done(self) -> bool:
        """Acknowledged or failed."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> int:
        """The room ``seq`` the server gave the message. Raises :class:`TimeoutError`
        if it is not acknowledged in time (it stays queued), or the reason it never
        will be (:class:`ClientClosed`, :class:`GaveUp`, :class:`AuthRefused`...)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"message {self.id} not acknowledged within {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.seq is not None
        return self.seq

    # I/O thread (or the closing thread) only
    def _resolve(self, seq: int) -> None:
        self.seq = seq
        self._done.set()

    def _fail(self, error: SecureChatClientFailure) -> None:
        self.error = error
        self._done.set()


# --------------------------------------------------------------------------- gap detection
class SeqTracker:
    """Notices room messages this client never saw, from the ``seq`` numbers (pure).

    Every room message has the next ``seq``; this client sees others' messages as
    ``msg`` and its own as ``ack``. Our own ack can arrive after a later message
    (the server acks after publishing), so a hole only counts as lost once nothing
    of ours is in flight (:meth:`settle`).
    """

    def __init__(self) -> None:
        self.last: int | None = None
        self.epoch = ""
        self._ahead: set[int] = set()

    def welcome(self, seq: int, epoch: str = "") -> Gap | None:
        """A (re)connection: what was numbered while we were away is missed.

        ``epoch`` (``welcome.epoch``) names the numbering; a new one means the server
        restarted and counted again from 0. Servers without it: numbering that went
        backwards is taken as a restart.
        """
        last, ahead, previous = self.last, self._ahead, self.epoch
        self.last, self._ahead, self.epoch = seq, set(), epoch
        if last is None:
            return None
        if (epoch and previous and epoch != previous) or seq < last:
            # A new numbering: everything it counted before we came back was missed.
            return Gap(0, seq + 1, seq, restarted=True) if seq > 0 else None
        missing = seq - last - sum(1 for s in ahead if s <= seq)
        return Gap(last, seq + 1, missing) if missing > 0 else None

    def seen(self, seq: int) -> None:
        """A ``msg`` or ``ack`` with this number arrived."""
        if self.last is None or seq <= self.last:
            return
        self._ahead.add(seq)
        while self.last + 1 in self._ahead:
            self.last += 1
            self._ahead.discard(self.last)

    def settle(self) -> Gap | None:
        """Nothing of ours is in flight: holes below the highest number are lost."""
        if not self._ahead or self.last is None:
            return None
        high = max(self._ahead)
        gap = Gap(self.last, high + 1, high - self.last - len(self._ahead))
        self.last = high
        self._ahead.clear()
        return gap


# --------------------------------------------------------------------------- the client
class _Phase:
    WAITING = "waiting"  # before an attempt (backoff)
    RESOLVING = "resolving"  # name resolution in the helper thread
    CONNECTING = "connecting"  # TCP connect in progress
    HANDSHAKE = "handshake"
    AUTH = "auth"  # auth sent, waiting for welcome
    ACTIVE = "active"
    CLOSING = "closing"  # bye sent, waiting for the server's bye
    DONE = "done"


class _LinkFailure(Exception):
    """Internal: the current link or attempt failed. ``error``, when set, is what the
    client ends with if :func:`securechat.backoff.is_fatal` says retrying cannot help."""

    def __init__(self, reason: str, *, retry_after: float | None = None,
                 error: ClientError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.error = error


def validate_token(token: str) -> str:
    """Reject a token the server could only refuse, before connecting."""
    token = token.strip()
    if not token:
        raise ConfigError("the token is empty")
    # The server answers such a token with bad_frame, which a client retries; refusing
    # it here makes a mistyped token a usage error instead of an endless reconnect.
    problem = protocol.token_problem(token)
    if problem is not None:
        raise ConfigError(f"the token is malformed: {problem}")
    return token


class Client:
    """A reconnecting, keep-alive chat client. See the module docstring.

    Keyword-only settings (defaults in brackets):

    - ``token``: the access token (required).
    - ``cafile`` [None: the system trust store]: CA certificate(s) to verify the server.
    - ``server_name`` [``host``]: the name the certificate must carry (use it when
      ``host`` is an IP address but the certificate names a host).
    - ``ssl_context`` [built from ``cafile``]: a ready client context instead.
    - ``backoff`` [``BackoffPolicy()``: base 0.5 s, cap 30 s, reset after 30 s,
      retry forever]: the reconnect schedule.
    - ``queue_size`` [1000]: messages held until acknowledged; beyond it
      :meth:`send` raises :class:`QueueFull`.
    - ``max_events`` [10000]: events kept for :meth:`next_event`; the oldest are
      dropped (and counted in :class:`EventsDropped`) if nobody reads. 0 keeps
      none (use ``on_event``).
    - ``on_event`` [None]: called in the I/O thread with every event; must be quick
      and must not block.
    - ``connect_timeout`` [10 s]: TCP connect + TLS handshake + welcome, per attempt.
    - ``close_timeout`` [2 s]: how long :meth:`close` waits for the server's bye.
    - ``heartbeat`` [None: the server's ``welcome.heartbeat``]: ping interval.
    - ``rng`` [a fresh ``random.Random``]: jitter source, for reproducible tests.
    - ``name`` [``securechat-client-io``]: I/O thread name prefix (a random suffix
      is added).
    - ``resolver`` [:func:`resolve`, i.e. ``getaddrinfo``]: turns ``host`` into
      addresses. It runs in a daemon helper thread (``<I/O thread name>-resolve``)
      under ``connect_timeout``, because ``getaddrinfo`` cannot be interrupted and a
      slow DNS server must not freeze the I/O thread (pings, close). An IP literal
      with the default resolver needs no lookup and no thread.

    The first connection attempt starts at once; every *re*connect waits its jittered
    delay first (see :mod:`securechat.backoff`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = protocol.DEFAULT_PORT, *,
                 token: str, cafile: Path | str | None = None, server_name: str | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 backoff: BackoffPolicy | None = None, queue_size: int = 1000,
                 max_events: int = 10000, on_event: Callable[[Event], None] | None = None,
                 connect_timeout: float = 10.0, close_timeout: float = 2.0,
                 heartbeat: float | None = None, rng: random.Random | None = None,
                 name: str = "securechat-client-io",
                 resolver: Resolver | None = None) -> None:
        if queue_size < 1:
            raise ConfigError("queue_size must be at least 1")
        if connect_timeout <= 0 or close_timeout < 0:
            raise ConfigError("connect_timeout must be > 0 and close_timeout >= 0")
        if heartbeat is not None and heartbeat <= 0:
            raise ConfigError("heartbeat must be greater than 0")
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.server_name = server_name or host
        self._token = validate_token(token)
        self._ctx = ssl_context or client_context(Path(cafile) if cafile else None)
        self._backoff = Backoff(backoff, rng=rng)
        self.queue_size = queue_size
        self.max_events = max_events
        self._on_event = on_event
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self._heartbeat_override = heartbeat
        self._resolver = resolver

        # Shared with user threads, guarded by _cond.
        self._cond = threading.Condition()
        self._outbox: deque[SendHandle] = deque()
        self._unacked = 0  # outbox + in flight
        self._events: deque[Event] = deque()
        self._dropped = 0
        self._stream_ended = False
        self._welcome: Welcome | None = None
        self._connected = False
        self._members: frozenset[str] = frozenset()
        self._terminal: ClientError | None = None
        self._finished = False
        self._close_requested = False
        self._started = False
        self._id_prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._max_frame = protocol.DEFAULT_MAX_FRAME
        self._stats = {"attempts": 0, "connects": 0, "sent": 0, "acked": 0, "resent": 0,
                       "rate_limited": 0}

        # Owned by the I/O thread.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._phase = _Phase.WAITING
        self._sock: socket.socket | None = None
        self._sock_events = 0
        self._addrs: list[tuple[int, object]] = []
        self._attempt_deadline = 0.0
        self._next_attempt_at = 0.0
        self._close_deadline = 0.0
        self._decoder = protocol.FrameDecoder(_decoder_limit(protocol.DEFAULT_MAX_FRAME))
        self._wbuf = SendBuffer()
        self._write_blocked = False
        self._read_wants_write = False
        self._inflight: OrderedDict[str, SendHandle] = OrderedDict()
        self._paused_until = 0.0
        self._window = SEND_WINDOW
        self._heartbeat = 0.0
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._ever_connected = False
        self._tracker = SeqTracker()
        self._thread = threading.Thread(target=self._run, name=f"{name}-{self._id_prefix}",
                                        daemon=True)
        # The resolver helper: it only ever touches these three (under the lock) and
        # the wake socket (through _wake, which knows when it is closed).
        self._resolve_lock = threading.Lock()
        self._resolution: list[tuple[int, Any]] | BaseException | None = None
        self._resolver_thread: threading.Thread | None = None
        self._wake_lock = threading.Lock()
        self._wake_closed = False

    # ================================================================== user threads
    def start(self) -> Client:
        """Start the I/O thread, which connects at once (no delay on the first attempt)."""
        with self._cond:
            if self._started or self._close_requested:
                return self
            self._started = True
        self._thread.start()
        return self

    def connect(self, timeout: float | None = None) -> Welcome:
        """Start if needed and wait until authenticated; see :meth:`wait_connected`."""
        self.start()
        return self.wait_connected(timeout)

    def wait_connected(self, timeout: float | None = None) -> Welcome:
        """Block until the client is authenticated and return the welcome.

        Raises the fatal error if the client stopped (:class:`AuthRefused`,
        :class:`TLSVerificationFailed`, :class:`GaveUp`, :class:`ClientClosed`) and
        :class:`TimeoutError` when ``timeout`` passes first.
        """
        with self._cond:
            ok = self._cond.wait_for(lambda: self._connected or self._finished, timeout)
            if self._connected and self._welcome is not None:
                return self._welcome
            if not ok:
                raise TimeoutError(f"not connected to {self.address} within {timeout} s")
            raise self._terminal or ClientClosed("the client is closed")

    def wait_for_member(self, user: str, timeout: float | None = None) -> bool:
        """Block until ``user`` is in the room (connected); False on timeout or close."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (self._connected and user in self._members) or self._finished,
                timeout) and not self._finished

    def send(self, body: str, *, wait: float | None = 0.0) -> SendHandle:
        """Queue ``body`` for the room and return a handle whose ``wait()`` gives its seq.

        The message is resent after a reconnect until the server acknowledges it.
        When ``queue_size`` messages are already unacknowledged, wait up to ``wait``
        seconds (None: forever) for room, then raise :class:`QueueFull`. Raises
        :class:`LocalProtocolError` for an empty body or one larger than the
        server's frame limit, and :class:`ClientClosed` (or the fatal error) once
        the client has stopped.
        """
        with self._cond:
            order = next(self._ids)
        mid = f"{self._id_prefix}-{order}"
        frame = protocol.encode(protocol.SendMessage(body, mid))
        limit = self._max_frame
        if len(frame) - 1 > limit:
            raise LocalProtocolError(
                "frame_too_large",
                f"message too long: {len(frame) - 1} bytes encoded, the server accepts {limit}")
        with self._cond:
            if not self._cond.wait_for(
                    lambda: self._unacked < self.queue_size or self._finished, wait):
                raise QueueFull(
                    f"{self._unacked} messages are already waiting for the server "
                    f"(queue_size={self.queue_size}); message not queued")
            if self._finished or self._close_requested:
                raise self._terminal or ClientClosed("the client is closed")
            handle = SendHandle(mid, body, frame, order)
            self._outbox.append(handle)
            self._unacked += 1
        self._wake()
        return handle

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the client has stopped (closed, fatal error, gave up)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._finished, timeout)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued message is acknowledged (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._unacked == 0 or self._finished, timeout)

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, or None if none comes within ``timeout``.

        After the :class:`Closed` event has been returned, raises :class:`ClientClosed`.
        """
        if self.max_events <= 0:
            raise ClientError("events are not queued (max_events=0); use on_event")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._dropped:
                    count, self._dropped = self._dropped, 0
                    return EventsDropped(count)
                if self._events:
                    event = self._events.popleft()
                    if isinstance(event, Closed):
                        self._stream_ended = True
                    return event
                if self._stream_ended:
                    raise ClientClosed("the client is closed; no more events")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Iterate over events up to and including :class:`Closed`; stops early if
        nothing arrives within ``timeout`` seconds."""
        while True:
            try:
                event = self.next_event(timeout)
            except ClientClosed:
                return
            if event is None:
                return
            yield event
            if isinstance(event, Closed):
                return

    def close(self, timeout: float | None = None) -> None:
        """Say ``bye`` (waiting at most ``close_timeout`` for the answer), close the
        link and join the I/O thread. Idempotent; unacknowledged messages fail
        with :class:`ClientClosed`.

        A name resolution still running (``getaddrinfo`` cannot be interrupted) is
        waited for at most ``close_timeout`` (and :data:`RESOLVER_JOIN_WAIT`) seconds
        within the same ``timeout``, then logged and left to end on its own: its
        daemon thread touches nothing of the closed client but a lock and exits when
        the lookup returns.
        """
        with self._cond:
            self._close_requested = True
            started = self._started
        if not started:
            self._finish_unstarted()
            return
        self._wake()
        if threading.current_thread() is self._thread:
            return  # called from an on_event callback: the loop sees the flag
        budget = self.close_timeout + 2.0 if timeout is None else timeout
        deadline = time.monotonic() + budget
        self._thread.join(budget)
        resolver = self._resolver_thread
        if resolver is not None and resolver is not threading.current_thread():
            resolver.join(max(0.0, min(deadline - time.monotonic(), self.close_timeout,
                                       RESOLVER_JOIN_WAIT)))
            if resolver.is_alive():
                logger.warning("name resolution of %s still running after close(); its "
                               "thread %s ends when the lookup returns", self.host,
                               resolver.name)

    def __enter__(self) -> Client:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ state for users
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def welcome(self) -> Welcome | None:
        """The welcome of the current (or last) connection."""
        return self._welcome

    @property
    def members(self) -> frozenset[str]:
        """Users in the room, as last known (welcome, then join/leave)."""
        return self._members

    @property
    def error(self) -> ClientError | None:
        """Why the client stopped, if it stopped on its own."""
        return self._terminal

    @property
    def closed(self) -> bool:
        return self._finished

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def threads(self) -> list[threading.Thread]:
        """The threads this client started that are still alive (the I/O thread, and
        a name-resolution helper while a lookup runs)."""
        return [t for t in (self._thread, self._resolver_thread)
                if t is not None and t.is_alive()]

    def stats(self) -> dict[str, int]:
        """Counters: attempts, connects, sent, acked, resent, rate_limited, queued."""
        with self._cond:
            out = dict(self._stats)
            out["queued"] = self._unacked
        return out

    def _wake(self) -> None:
        # Under a lock with the close: a resolver thread finishing after the client
        # closed must not write to a descriptor number the process has reused.
        with self._wake_lock, contextlib.suppress(BlockingIOError, OSError):
            if not self._wake_closed:
                self._wake_w.send(b"\0")

    def _close_wake(self) -> None:
        with self._wake_lock:
            self._wake_closed = True
            self._wake_r.close()
            self._wake_w.close()

    def _finish_unstarted(self) -> None:
        with self._cond:
            if self._finished:
                return
        self._finish(None, "closed")
        self._sel.close()
        self._close_wake()

    # ================================================================== I/O thread
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug: stop cleanly, say why
            logger.exception("client I/O thread failed")
            self._close_socket()
            self._finish(ClientError(f"internal error: {exc!r}"), "internal error")
        finally:
            self._close_socket()
            self._sel.close()
            self._close_wake()

    def _loop(self) -> None:
        self._start_attempt()
        while self._phase != _Phase.DONE:
            timeout = self._timers(time.monotonic())
            if self._close_requested and self._phase not in (_Phase.CLOSING, _Phase.DONE):
                self._begin_close()
            if self._phase == _Phase.DONE:
                break
            # Write before waiting: a ping queued by the timers, a message queued by
            # send() (which woke us) or a bye must not wait for the next wake-up.
            try:
                if self._phase == _Phase.ACTIVE:
                    self._pump()
                if self._sock is not None and self._wbuf and not self._write_blocked:
                    self._write()
            except _LinkFailure as failure:
                self._link_failed(failure)
                continue
            for key, mask in self._sel.select(timeout):
                if key.data is None:
                    self._drain_wake()
                    continue
                try:
                    self._on_socket(mask)
                except _LinkFailure as failure:
                    self._link_failed(failure)

    def _timers(self, now: float) -> float:
        """Act on deadlines that passed; return seconds until the next one."""
        phase = self._phase
        try:
            if phase == _Phase.WAITING:
                if now >= self._next_attempt_at:
                    self._start_attempt()
                    return 0.0
                return self._next_attempt_at - now
            if phase == _Phase.RESOLVING and self._take_resolution():
                return 0.0
            if phase in (_Phase.RESOLVING, _Phase.CONNECTING, _Phase.HANDSHAKE, _Phase.AUTH):
                if now >= self._attempt_deadline:
                    raise _LinkFailure(
                        f"timed out after {self.connect_timeout:g} s ({phase})")
                return self._attempt_deadline - now
            if phase == _Phase.CLOSING:
                if now >= self._close_deadline:
                    self._finish(None, "closed")
                    return 0.0
                return self._close_deadline - now
            if phase == _Phase.ACTIVE:
                return self._heartbeat_timers(now)
        except _LinkFailure as failure:
            self._link_failed(failure)
            return 0.0
        return 1.0

    def _heartbeat_timers(self, now: float) -> float:
        wakeups = [now + 3600.0]
        if self._outbox and self._paused_until > now:
            wakeups.append(self._paused_until)
        interval = self._heartbeat
        if interval > 0:
            dead_at = self._last_rx + DEAD_AFTER_INTERVALS * interval
            if now >= dead_at:
                # The process may have been frozen (SIGSTOP, a slow on_event callback):
                # what the server sent meanwhile, a bye say, waits in the socket. Read it
                # before calling the link dead, or its acks and its retry_after are lost.
                self._read()
                if self._phase != _Phase.ACTIVE:
                    return 0.0
                now = time.monotonic()
                dead_at = self._last_rx + DEAD_AFTER_INTERVALS * interval
                if now >= dead_at:
                    raise _LinkFailure(
                        f"no answer from the server for {now - self._last_rx:.1f} s "
                        "(heartbeat)")
            wakeups.append(dead_at)
            ping_at = self._last_tx + interval
            if now < ping_at:
                wakeups.append(ping_at)
            elif not self._wbuf:
                self._queue(_PING)
                self._last_tx = now  # one ping per interval, even if the write stalls
                wakeups.append(now + interval)
            # else a ping is due but bytes are still waiting for a blocked write: the
            # selector wakes us when the socket takes them, and until then the next
            # deadline is the dead link's. (A past ping_at here made select(0) spin.)
        return max(0.0, min(wakeups) - now)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass

    # ------------------------------------------------------------------ connecting
    def _start_attempt(self) -> None:
        if self._close_requested:
            self._finish(None, "closed")
            return
        attempt = self._backoff.attempt
        with self._cond:
            self._stats["attempts"] += 1
        self._emit(Connecting(self.address, attempt))
        self._attempt_deadline = time.monotonic() + self.connect_timeout
        try:
            if self._resolver is None and _is_ip_literal(self.host):
                try:
                    addrs: list[tuple[int, Any]] | BaseException = resolve(self.host, self.port)
                except OSError as exc:
                    addrs = exc
                self._on_resolved(addrs)
            else:
                self._phase = _Phase.RESOLVING
                self._start_resolver()
        except _LinkFailure as failure:
            self._link_failed(failure)

    def _start_resolver(self) -> None:
        """Resolve in a helper thread; the I/O thread keeps its timers meanwhile."""
        with self._resolve_lock:
            running = self._resolver_thread
            if running is not None and running.is_alive():
                return  # an earlier attempt's lookup still runs: its answer will do
            self._resolution = None
        thread = threading.Thread(target=self._resolve_in_thread,
                                  name=f"{self._thread.name}-resolve", daemon=True)
        self._resolver_thread = thread
        thread.start()

    def _resolve_in_thread(self) -> None:
        resolver = self._resolver or resolve
        result: list[tuple[int, Any]] | BaseException
        try:
            result = list(resolver(self.host, self.port))
        except Exception as exc:  # gaierror, or whatever a custom resolver raises
            result = exc
        with self._resolve_lock:
            self._resolution = result
        self._wake()

    def _take_resolution(self) -> bool:
        """I/O thread, while RESOLVING: go on with the lookup's answer if it came."""
        with self._resolve_lock:
            result, self._resolution = self._resolution, None
        if result is None:
            return False
        self._on_resolved(result)
        return True

    def _on_resolved(self, result: list[tuple[int, Any]] | BaseException) -> None:
        if isinstance(result, BaseException):
            # socket.gaierror: DNS may come back (containers start), so retry.
            raise _LinkFailure(f"cannot resolve {self.host}: {_describe(result)}")
        self._addrs = list(result)
        self._connect_next()

    def _connect_next(self, last_error: str = "no address") -> None:
        """Start a non-blocking TCP connect to the next resolved address."""
        while self._addrs:
            family, sockaddr = self._addrs.pop(0)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A backstop for a peer that vanished; the heartbeat is the real check.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            err = sock.connect_ex(sockaddr)  # type: ignore[arg-type]
            if err in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                self._sock = sock
                self._phase = _Phase.CONNECTING
                self._set_events(selectors.EVENT_WRITE)
                return
            sock.close()
            last_error = _describe(OSError(err, os.strerror(err)))
        raise _LinkFailure(last_error)

    def _on_connected_tcp(self) -> None:
        assert self._sock is not None
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._close_socket()
            self._connect_next(_describe(OSError(err, os.strerror(err))))
            return
        raw = self._sock
        self._set_events(0)
        self._sock = None
        try:
            self._sock = self._ctx.wrap_socket(raw, server_hostname=self.server_name,
                                               do_handshake_on_connect=False)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raw.close()
            raise _LinkFailure(f"TLS setup failed: {_describe(exc)}") from exc
        self._phase = _Phase.HANDSHAKE
        self._set_events(selectors.EVENT_READ)
        self._handshake()

    def _handshake(self) -> None:
        sock = self._sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_events(selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._set_events(selectors.EVENT_READ | selectors.EVENT_WRITE)
            return
        except ssl.SSLCertVerificationError as exc:
            detail = exc.verify_message or exc.reason or str(exc)
            fatal = TLSVerificationFailed(
                f"the certificate of {self.address} did not verify for "
                f"{self.server_name!r}: {detail}")
            fatal.__cause__ = exc
            raise _LinkFailure(str(fatal), error=fatal) from exc
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise _LinkFailure(f"TLS handshake failed: {_describe(exc)}") from exc
        self._phase = _Phase.AUTH
        self._decoder = protocol.FrameDecoder(_decoder_limit(protocol.DEFAULT_MAX_FRAME))
        self._set_events(selectors.EVENT_READ)
        self._queue(protocol.encode(protocol.Auth(self._token)))
        self._write()
        self._read()  # the welcome may already sit decrypted inside OpenSSL

    # ------------------------------------------------------------------ socket events
    def _set_events(self, events: int) -> None:
        sock = self._sock
        if sock is None or events == self._sock_events:
            return
        if self._sock_events == 0:
            self._sel.register(sock, events, "sock")
        elif events == 0:
            self._sel.unregister(sock)
        else:
            self._sel.modify(sock, events, "sock")
        self._sock_events = events

    def _update_events(self) -> None:
        events = selectors.EVENT_READ
        if self._write_blocked or self._read_wants_write:
            events |= selectors.EVENT_WRITE
        self._set_events(events)

    def _on_socket(self, mask: int) -> None:
        phase = self._phase
        if phase == _Phase.CONNECTING:
            self._on_connected_tcp()
            return
        if phase == _Phase.HANDSHAKE:
            self._handshake()
            return
        if mask & selectors.EVENT_WRITE:
            if self._read_wants_write:
                self._read_wants_write = False
                self._update_events()
                self._read()
            if self._write_blocked:
                self._write()
        if mask & selectors.EVENT_READ and self._sock is not None:
            if self._write_blocked:
                self._write()  # a write that wanted to read can go on
            self._read()

    def _read(self) -> None:
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
                raise _LinkFailure(f"connection lost: {_describe(exc)}") from exc
            if not data:
                if self._phase == _Phase.CLOSING:
                    self._finish(None, "closed")
                    return
                raise _LinkFailure("the server closed the connection")
            self._last_rx = time.monotonic()
            for line in self._decoder.feed(data):
                self._on_line(line)
                if self._sock is None or self._phase in (_Phase.WAITING, _Phase.DONE):
                    return
            if (bad := self._decoder.failed) is not None:
                raise _LinkFailure(f"bad data from the server: {bad}") from bad
            if self._phase == _Phase.ACTIVE:
                self._backoff.alive()
            if not sock.pending():
                return

    def _write(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent, drained = self._wbuf.write_to(sock)
        except (ssl.SSLError, OSError) as exc:
            raise _LinkFailure(f"connection lost: {_describe(exc)}") from exc
        if sent:
            self._last_tx = time.monotonic()
        if drained != (not self._write_blocked):
            self._write_blocked = not drained
            self._update_events()

    def _queue(self, frame: bytes) -> None:
        self._wbuf.append(frame)

    # ------------------------------------------------------------------ frames
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
        if self._phase == _Phase.AUTH:
            self._on_auth_frame(frame)
        elif self._phase in (_Phase.ACTIVE, _Phase.CLOSING):
            self._on_frame(frame)

    def _on_auth_frame(self, frame: protocol.ServerFrame) -> None:
        if isinstance(frame, Welcome):
            self._on_welcome(frame)
        elif isinstance(frame, ErrorFrame):
            self._on_error(frame)
        elif isinstance(frame, protocol.Bye):
            hint = self._hint(frame.retry_after)
            raise _LinkFailure(_bye_reason(frame, hint), retry_after=hint)
        elif isinstance(frame, protocol.Ping):
            self._queue(_PONG)

    def _hint(self, retry_after: float | None) -> float | None:
        """A server's ``retry_after`` clamped to ``[0, backoff cap]`` (None if absent/NaN)."""
        return self._backoff.policy.clamp_hint(retry_after)

    def _on_welcome(self, welcome: Welcome) -> None:
        now = time.monotonic()
        self._phase = _Phase.ACTIVE
        self._decoder.max_frame = _decoder_limit(welcome.max_frame)
        self._max_frame = welcome.max_frame
        self._heartbeat = self._heartbeat_override or welcome.heartbeat
        self._window = SEND_WINDOW  # a new session starts with a full rate bucket
        self._last_rx = self._last_tx = now
        self._backoff.connected()
        gap = self._tracker.welcome(welcome.seq, welcome.epoch)
        reconnect = self._ever_connected
        self._ever_connected = True
        with self._cond:
            self._welcome = welcome
            self._connected = True
            self._members = frozenset(welcome.members)
            self._stats["connects"] += 1
            self._cond.notify_all()
        self._emit(Connected(welcome, self.address, reconnect))
        if gap is not None:
            self._emit(gap)
        self._requeue_inflight()
        self._fail_oversized()

    def _on_frame(self, frame: protocol.ServerFrame) -> None:
        if isinstance(frame, Message):
            self._tracker.seen(frame.seq)
            self._emit(frame)
            self._settle()
        elif isinstance(frame, Ack):
            self._on_ack(frame)
        elif isinstance(frame, Join | Leave):
            with self._cond:
                if isinstance(frame, Join):
                    self._members = self._members | {frame.user}
                else:
                    self._members = self._members - {frame.user}
                self._cond.notify_all()
            self._emit(frame)
        elif isinstance(frame, protocol.Ping):
            self._queue(_PONG)
        elif isinstance(frame, protocol.Bye):
            if self._phase == _Phase.CLOSING:
                self._finish(None, "closed")
            else:
                hint = self._hint(frame.retry_after)
                raise _LinkFailure(_bye_reason(frame, hint), retry_after=hint)
        elif isinstance(frame, ErrorFrame):
            self._on_error(frame)

    def _on_ack(self, ack: Ack) -> None:
        self._tracker.seen(ack.seq)
        handle = self._inflight.pop(str(ack.id), None) if ack.id is not None else None
        if handle is not None:
            self._window = min(SEND_WINDOW, self._window * 2)
            handle._resolve(ack.seq)
            with self._cond:
                self._unacked -= 1
                self._stats["acked"] += 1
                self._cond.notify_all()
        self._emit(ack)
        self._settle()

    def _settle(self) -> None:
        if not self._inflight:
            gap = self._tracker.settle()
            if gap is not None:
                self._emit(gap)

    def _on_error(self, err: ErrorFrame) -> None:
        if err.retry_after is not None:
            # Users (and --json) see the hint the client honours, never inf or 1e300.
            err = replace(err, retry_after=self._hint(err.retry_after))
        handle = self._inflight.get(str(err.id)) if err.id is not None else None
        if err.code == "rate_limited" and handle is not None:
            # The server dropped this message: send it again after the pause, in order.
            del self._inflight[handle.id]
            with self._cond:
                self._stats["rate_limited"] += 1
                self._outbox.appendleft(handle)
                self._sort_outbox()
            pause = err.retry_after if err.retry_after is not None else DEFAULT_RATE_PAUSE
            self._paused_until = max(self._paused_until, time.monotonic() + pause)
            self._window = 1
            self._emit(err)
            return
        if is_fatal_code(err.code):
            fatal = AuthRefused(err.code, err.message)
            raise _LinkFailure(str(fatal), error=fatal)
        if err.closes:
            if err.code == "frame_too_large":
                self._drop_largest_inflight(err)
            self._emit(err)
            raise _LinkFailure(f"server error {err.code}: {err.message}",
                               retry_after=err.retry_after)
        if handle is not None:
            # Refused for good (bad_frame...): resending the same bytes cannot help.
            del self._inflight[handle.id]
            self._fail_handle(handle, RemoteProtocolError(err.code, err.message,
                                                          message_id=handle.id))
        self._emit(err)

    def _drop_largest_inflight(self, err: ErrorFrame) -> None:
        """``frame_too_large`` names no message: drop the largest in flight, or the
        resend after the reconnect would be refused the same way forever."""
        if not self._inflight:
            return
        handle = max(self._inflight.values(), key=lambda h: len(h.frame))
        del self._inflight[handle.id]
        self._fail_handle(handle, RemoteProtocolError(err.code, err.message,
                                                      message_id=handle.id))

    # ------------------------------------------------------------------ outgoing messages
    def _pump(self) -> None:
        """Move queued messages onto the wire, keeping at most the window in flight."""
        if self._paused_until and time.monotonic() < self._paused_until:
            return
        self._paused_until = 0.0
        room = self._window - len(self._inflight)
        if room <= 0:
            return
        with self._cond:
            batch = [self._outbox.popleft() for _ in range(min(room, len(self._outbox)))]
            self._stats["sent"] += len(batch)
        for handle in batch:
            self._inflight[handle.id] = handle
            self._queue(handle.frame)

    def _sort_outbox(self) -> None:
        # caller holds _cond
        if len(self._outbox) > 1:
            self._outbox = deque(sorted(self._outbox, key=lambda h: h.order))

    def _requeue_inflight(self) -> None:
        """After a reconnect, unacknowledged messages go first, with their old ids."""
        if not self._inflight:
            return
        with self._cond:
            self._stats["resent"] += len(self._inflight)
            self._outbox.extendleft(reversed(self._inflight.values()))
            self._sort_outbox()
        self._inflight.clear()

    def _fail_oversized(self) -> None:
        """The new server may accept smaller frames than the message was checked against."""
        limit = self._max_frame
        with self._cond:
            too_big = [h for h in self._outbox if len(h.frame) - 1 > limit]
            if too_big:
                self._outbox = deque(h for h in self._outbox if len(h.frame) - 1 <= limit)
        for handle in too_big:
            self._fail_handle(handle, LocalProtocolError(
                "frame_too_large",
                f"message too long: {len(handle.frame) - 1} bytes, the server accepts {limit}"))

    def _fail_handle(self, handle: SendHandle, error: SecureChatClientFailure) -> None:
        handle._fail(error)
        with self._cond:
            self._unacked -= 1
            self._cond.notify_all()
        self._emit(SendFailed(handle.id, handle.body, error))

    # ------------------------------------------------------------------ failure and closing
    def _link_failed(self, failure: _LinkFailure) -> None:
        was_active = self._phase == _Phase.ACTIVE
        self._close_socket()
        if self._phase == _Phase.DONE:
            return
        if was_active:
            with self._cond:
                self._connected = False
                self._cond.notify_all()
            self._emit(Disconnected(failure.reason))
        if failure.error is not None and is_fatal(failure.error):
            self._finish(failure.error, failure.reason)
            return
        if self._close_requested:
            self._finish(None, "closed")
            return
        delay = self._backoff.next_delay(failure.retry_after)
        if delay is None:
            retries = self._backoff.attempt
            self._finish(GaveUp(f"gave up after {retries} retr{'y' if retries == 1 else 'ies'}:"
                                f" {failure.reason}"), failure.reason)
            return
        self._phase = _Phase.WAITING
        self._next_attempt_at = time.monotonic() + delay
        self._emit(Reconnecting(delay, self._backoff.attempt, failure.reason,
                                failure.retry_after))

    def _begin_close(self) -> None:
        if self._phase == _Phase.ACTIVE and self._sock is not None:
            self._phase = _Phase.CLOSING
            self._close_deadline = time.monotonic() + self.close_timeout
            self._queue(_BYE)
            return
        self._finish(None, "closed")

    def _close_socket(self) -> None:
        sock = self._sock
        if sock is None:
            return
        if self._sock_events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(sock)
        self._sock_events = 0
        self._sock = None
        with contextlib.suppress(OSError):
            sock.close()
        self._wbuf.clear()
        self._write_blocked = False
        self._read_wants_write = False
        if self._phase != _Phase.DONE:
            self._phase = _Phase.WAITING

    def _finish(self, error: ClientError | None, reason: str) -> None:
        """Terminal: close the link, fail what was never acknowledged, emit Closed."""
        self._close_socket()
        self._phase = _Phase.DONE
        with self._cond:
            if self._finished:
                return
            pending = list(self._inflight.values()) + list(self._outbox)
            self._inflight.clear()
            self._outbox.clear()
            self._terminal = error
            self._connected = False
            self._finished = True
            self._unacked = 0
            self._cond.notify_all()
        failure = error or ClientClosed("the client was closed before the server "
                                        "acknowledged the message")
        for handle in pending:
            handle._fail(failure)
        self._emit(Closed(reason, error))

    # ------------------------------------------------------------------ events
    def _emit(self, event: Event) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event callback failed for %r", event)
        if self.max_events <= 0:
            return
        with self._cond:
            if len(self._events) >= self.max_events and not isinstance(event, Closed):
                self._events.popleft()
                self._dropped += 1
            self._events.append(event)
            self._cond.notify_all()


def _decoder_limit(max_frame: int) -> int:
    # The server re-encodes a body it accepted (adding from/seq/ts, and a body can
    # grow when re-escaped), so accept well over max_frame from it.
    return 2 * max_frame + 4096


def _bye_reason(bye: protocol.Bye, retry_after: float | None) -> str:
    if bye.reason == "shutdown":
        hint = f", back in {retry_after:g} s" if retry_after is not None else ""
        return f"the server is shutting down{hint}"
    return f"the server said bye{f' ({bye.reason})' if bye.reason else ''}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or exc.__class__.__name__
