"""The securechat client API on the sans-I/O core: a connection that survives the network.

:class:`Client` (also :class:`securechat.Client` and :class:`securechat.client.Client`)
is built from three layers:

- :mod:`securechat.client.core`: the protocol state machine (auth, acks, gaps,
  heartbeats, backoff), pure; its send queue and ack window are
  :mod:`securechat.client.sendqueue`;
- :mod:`securechat.client.loop` and :mod:`securechat.client.link`: the I/O, on the
  server's :class:`~securechat.io.loop.IOLoop` and
  :class:`~securechat.io.sendbuffer.SendBuffer`; one loop thread owns every socket
  and SSL object of the clients on it (shared/design-notes.md s1);
- this module: the thread-safe user API (send queue with ``queue_size``, event
  queue, waits).

:class:`Client` keeps one authenticated TLS link to a server and hides its failures:
it reconnects with jittered exponential backoff (:mod:`securechat.client.backoff`), pings
when idle and declares the link dead after three silent heartbeat intervals, queues
what the user sends while it is offline and resends every message the server has
not acknowledged. Fatal failures (token refused, certificate not trusted) end it
with a clear error instead of retrying forever.

By default every client has its own private loop thread (named
``securechat-client-io-...``) that starts with it and ends with it, so the one-liner
needs nothing else::

    with Client(host, port, token=token, cafile=ca) as client:
        client.send("hello")

Many clients can share one thread instead (one thread and no per-client thread
stacks: what a bench or a bot farm with hundreds of clients wants)::

    with ClientLoop() as shared:
        clients = [Client(host, port, token=t, cafile=ca, loop=shared).start() for t in tokens]

A shared loop outlives its clients: closing a client leaves it running, and closing
the loop closes every client still on it. Everything the clients on one loop do runs
on that one thread, so an ``on_event`` callback (called there) holds up every client
on the loop while it runs: keep it quick, never block in it, and use
:meth:`Client.next_event` / :meth:`Client.events` from another thread for slow work.

Events are the protocol frames and the events of :mod:`securechat.client.events`
(which also tells their order around a resume); :class:`Closed` is always last.
"""

from __future__ import annotations

import logging
import random
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from .. import protocol
from ..errors import ClientClosed, ClientError, ConfigError, LocalProtocolError, QueueFull
from ..io.tls import client_context
from ..protocol import Grants, Join, Joined, JoinRoom, Leave, LeaveRoom, Left, Welcome
from .backoff import BackoffPolicy
from .core import ClientCore, HistoryRequest, SeqTracker, validate_token
from .events import (
    Closed,
    Connected,
    Connecting,
    Disconnected,
    Event,
    EventsDropped,
    Gap,
    Reconnecting,
    SendFailed,
)
from .handle import SendHandle
from .link import Link
from .loop import ClientLoop, Resolver, resolve
from .rooms import validate_room
from .view import SessionView

__all__ = [
    "Client", "ClientLoop", "Closed", "Connected", "Connecting", "Disconnected", "Event",
    "EventsDropped", "Gap", "Grants", "Join", "Joined", "Leave", "Left", "Reconnecting",
    "Resolver", "SendFailed", "SendHandle", "SeqTracker", "resolve", "validate_token",
]

logger = logging.getLogger("securechat.client")

#: Seconds :meth:`Client.close` waits at most for a name resolution still running.
RESOLVER_JOIN_WAIT: Final = 1.0

#: The events that change what :class:`SessionView` shows.
_STATE_EVENTS: Final = (Connected, Join, Leave, Joined, Left, Grants, protocol.ErrorFrame,
                        Disconnected, Closed)

#: The jitter source of clients given no ``rng``: one for all (a Mersenne Twister is
#: 2.5 KiB; ``random()`` is atomic under the GIL, so sharing it across threads is safe).
_JITTER = random.Random()


class Client:
    """A reconnecting, keep-alive chat client. See the module docstring.

    ``with Client(host, port, token=..., cafile=...)`` runs the client on a private
    loop thread of its own, started by :meth:`start` and joined by :meth:`close`.
    With ``loop=shared`` (a :class:`ClientLoop`) it runs on that loop's one thread
    with every other client on it, and shares its lock and condition; ``on_event``
    then runs on that thread too, so a slow callback delays every client there.

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
      and must not block (on a shared loop it holds up every client on the loop).
    - ``connect_timeout`` [10 s]: name lookup + TCP connect + TLS handshake + welcome,
      per attempt.
    - ``close_timeout`` [2 s]: how long :meth:`close` waits for the server's bye.
    - ``heartbeat`` [None: the server's ``welcome.heartbeat``]: ping interval.
    - ``rng`` [a fresh ``random.Random``]: jitter source, for reproducible tests.
    - ``name`` [``securechat-client-io``]: I/O thread name prefix (a random suffix
      is added) of the client's own loop.
    - ``resolver`` [:func:`resolve`, i.e. ``getaddrinfo``]: turns ``host`` into
      addresses, in a daemon helper thread (``<loop name>-resolve``) under
      ``connect_timeout``. An IP literal with the default resolver needs no lookup.
    - ``loop`` [None: a private one, started and stopped with this client]: a
      :class:`ClientLoop` to share with other clients (one I/O thread for all of
      them); it outlives them and is closed by its owner.
    - ``client_id`` [random, ``secrets.token_hex(16)``]: names this client instance
      in every auth (1-64 visible ASCII characters), so the server recognises a
      resend after a lost ack (acked with ``duplicate=True``, not delivered twice).
    - ``resume`` [None]: an ``(epoch, seq)`` saved from :attr:`position`: the first
      connection then gets what was missed since (every reconnect resumes anyway).
    - ``rooms`` [None]: the rooms to be in (protocol 3). None logs in the old way,
      into the server's default room (``welcome.room``); a list, even empty, logs in
      to exactly those (the first is the default send room). :meth:`join` and
      :meth:`leave` change the set at any time (after a :meth:`join`, an old-style
      client logs in to all its rooms, the default one by name, when it reconnects).
    - ``resumes`` [None]: ``{room: (epoch, seq)}`` saved from :attr:`positions`.

    Every reconnect resumes EVERY room from its own position (in ``auth`` as far as
    it fits, then ``join`` frames). Room events carry ``.room``; each room has its
    ``Joined``, replay and ``CaughtUp``; ``Left(room, "forbidden")`` (grant removed)
    or a refused join drops the room from those asked for. :meth:`send` and
    :meth:`history` take ``room=`` (None: :attr:`room`); ``forbidden`` or
    ``not_joined`` fails a message's handle (never retried).

    After a reconnect (or with ``resume``) a protocol-2 server replays the missed
    messages as ``Message(..., replayed=True)``, then one ``CaughtUp``; a
    :class:`Gap` reports only what it could not replay (see
    :mod:`securechat.client.events`). :meth:`history` pages through older messages.

    The first connection attempt starts at once; every *re*connect waits its jittered
    delay first (see :mod:`securechat.client.backoff`).
    """

    __slots__ = (
        "_close_requested", "_cond", "_core", "_dropped", "_events", "_finished",
        "_id_prefix", "_ids", "_link", "_loop", "_max_frame", "_on_event", "_own_loop",
        "_position", "_positions", "_started", "_stream_ended", "_terminal", "_unacked",
        "_view", "address", "close_timeout", "connect_timeout", "host", "max_events",
        "port", "queue_size", "server_name",
    )

    def __init__(self, host: str = "127.0.0.1", port: int = protocol.DEFAULT_PORT, *,
                 token: str, cafile: Path | str | None = None, server_name: str | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 backoff: BackoffPolicy | None = None, queue_size: int = 1000,
                 max_events: int = 10000, on_event: Callable[[Event], None] | None = None,
                 connect_timeout: float = 10.0, close_timeout: float = 2.0,
                 heartbeat: float | None = None, rng: random.Random | None = None,
                 name: str = "securechat-client-io", resolver: Resolver | None = None,
                 loop: ClientLoop | None = None, client_id: str | None = None,
                 resume: tuple[str, int] | None = None, rooms: Sequence[str] | None = None,
                 resumes: Mapping[str, tuple[str, int]] | None = None) -> None:
        if queue_size < 1:
            raise ConfigError("queue_size must be at least 1")
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.server_name = server_name or host
        self._core = ClientCore(token=validate_token(token), address=self.address,
                                backoff=backoff, rng=rng or _JITTER,
                                connect_timeout=connect_timeout,
                                close_timeout=close_timeout, heartbeat=heartbeat,
                                client_id=secrets.token_hex(16) if client_id is None
                                else client_id, resume=resume,
                                rooms=None if rooms is None else list(rooms), resumes=resumes)
        ctx = ssl_context or client_context(Path(cafile) if cafile else None)
        self.queue_size = queue_size
        self.max_events = max_events
        self._on_event = on_event
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self._id_prefix = secrets.token_hex(4)
        self._own_loop = loop is None
        self._loop = loop or ClientLoop(f"{name}-{self._id_prefix}", private=True)
        self._link = Link(self._loop, self._core, host=host, port=port,
                          server_name=self.server_name, ssl_context=ctx,
                          deliver=self._deliver, resolver=resolver)

        # Shared with user threads, guarded by _cond.
        self._cond = self._loop.condition
        self._unacked = 0  # given to send() and not yet acked or failed
        self._events: deque[Event] | None = deque() if max_events > 0 else None
        self._dropped = 0
        self._stream_ended = False
        self._view = SessionView(rooms)  # rooms, rosters, grants as the events tell
        self._terminal: ClientError | None = None
        self._finished = False
        self._close_requested = False
        self._started = False
        self._ids = 0  # under _cond: the last message / request number given
        self._max_frame = protocol.DEFAULT_MAX_FRAME
        self._position = self._core.tracker.position()
        self._positions = self._core.rooms.positions()

    # ================================================================== user threads
    def start(self) -> Client:
        """Start connecting at once (no delay on the first attempt)."""
        with self._cond:
            if self._started or self._close_requested:
                return self
            self._started = True
        try:
            self._loop.attach(self._link)
        except ClientClosed:
            self._link.close_unstarted()
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
            view = self._view
            ok = self._cond.wait_for(lambda: view.connected or self._finished, timeout)
            if view.connected and view.welcome is not None:
                return view.welcome
            if not ok:
                raise TimeoutError(f"not connected to {self.address} within {timeout} s")
            raise self._terminal or ClientClosed("the client is closed")

    def wait_for_member(self, user: str, timeout: float | None = None) -> bool:
        """Block until ``user`` is in the default room (connected); False on timeout or
        close."""
        view = self._view
        with self._cond:
            return self._cond.wait_for(
                lambda: (view.connected and user in view.members_of(view.room))
                or self._finished, timeout) and not self._finished

    def join(self, room: str) -> None:
        """Be in ``room`` from now on: asked at once when connected (the answer is a
        ``Joined`` event, or an ``ErrorFrame`` with ``room``) and at every reconnect,
        resumed from its position. Does not block; see :meth:`wait_joined`. Raises
        :class:`ConfigError` for a name the server would refuse."""
        self._room_request(JoinRoom(validate_room(room)))

    def leave(self, room: str) -> None:
        """Be in ``room`` no more (a ``Left`` event follows when connected). Does not
        block; acks of messages already sent to it still come."""
        self._room_request(LeaveRoom(validate_room(room)))

    def _room_request(self, request: JoinRoom | LeaveRoom) -> None:
        with self._cond:
            if self._finished or self._close_requested:
                raise self._terminal or ClientClosed("the client is closed")
            if isinstance(request, JoinRoom):
                self._view.want(request.room)
            else:
                self._view.unwant(request.room)
            self._link.inbox.append(request)
        self._link.submit()

    def wait_joined(self, room: str, timeout: float | None = None) -> bool:
        """Block until the server has the connected session in ``room``; False on
        timeout, once the client stopped, or when ``room`` is no longer asked for (its
        join was refused, or it was left)."""
        view = self._view
        with self._cond:
            return self._cond.wait_for(
                lambda: (view.connected and room in view.joined) or self._finished
                or room not in view.wanted, timeout) and (
                    view.connected and room in view.joined and not self._finished)

    def _target(self, room: str | None) -> tuple[str, str | None]:
        """The room a message or request goes to, and the name its frame carries
        (None: the server's default room, as an old-style login says)."""
        if room is not None:
            return validate_room(room), room
        with self._cond:
            default, legacy = self._view.room, self._view.legacy
        return default, None if legacy or not default else default

    def send(self, body: str, *, room: str | None = None,
             wait: float | None = 0.0) -> SendHandle:
        """Queue ``body`` for ``room`` (None: :attr:`room`) and return a handle whose
        ``wait()`` gives its seq.

        The message is resent after a reconnect until the server acknowledges it.
        When ``queue_size`` messages are already unacknowledged, wait up to ``wait``
        seconds (None: forever) for room, then raise :class:`QueueFull`. Raises
        :class:`LocalProtocolError` for an empty body or one larger than the
        server's frame limit, and :class:`ClientClosed` (or the fatal error) once
        the client has stopped.
        """
        target, wire_room = self._target(room)
        with self._cond:
            self._ids = order = self._ids + 1
        mid = f"{self._id_prefix}-{order}"  # unique across rooms: acks match by id
        frame = protocol.encode(protocol.SendMessage(body, mid, wire_room))
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
            handle = SendHandle(mid, body, frame, order, self._message_settled, target)
            self._unacked += 1
            # Under the lock: the link fails whatever is in its inbox once it has
            # emitted Closed, which takes this lock first.
            self._link.inbox.append(handle)
        self._link.submit()
        return handle

    def history(self, before: int | None = None, *, after: int | None = None,
                limit: int = protocol.DEFAULT_HISTORY_LIMIT, room: str | None = None) -> str:
        """Ask for up to ``limit`` (1-500) stored messages of ``room`` (None:
        :attr:`room`) before seq ``before``, after seq ``after``, or the latest ones;
        returns the request id. The answer comes
        as ``HistoryMessage`` events (ascending seq) and one ``HistoryEnd`` with that
        id (an ``ErrorFrame`` with it if refused). Asked once connected, and again
        after a reconnect if its answer did not end. Raises :class:`ValueError` for
        bad arguments and :class:`ClientClosed` once the client has stopped."""
        wire_room = self._target(room)[1]
        with self._cond:
            self._ids = order = self._ids + 1
        request = HistoryRequest(f"{self._id_prefix}-h{order}", before, after, limit,
                                 wire_room)
        with self._cond:
            if self._finished or self._close_requested:
                raise self._terminal or ClientClosed("the client is closed")
            self._link.inbox.append(request)
        self._link.submit()
        return request.id

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
        events = self._events
        if events is None:
            raise ClientError("events are not queued (max_events=0); use on_event")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._dropped:
                    count, self._dropped = self._dropped, 0
                    return EventsDropped(count)
                if events:
                    event = events.popleft()
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
        link and, for a client's own loop, join its thread. Idempotent;
        unacknowledged messages fail with :class:`ClientClosed`.

        A name resolution still running (``getaddrinfo`` cannot be interrupted) is
        waited for at most ``close_timeout`` (and :data:`RESOLVER_JOIN_WAIT`) seconds
        within the same ``timeout``, then logged and left to end on its own: its
        daemon thread touches nothing of the closed client.
        """
        with self._cond:
            self._close_requested = True
            started = self._started
        if not started:
            if not self._finished:
                self._link.close_unstarted()
            return
        self._link.request_close()
        if self._loop.in_loop():
            return  # called from an on_event callback: the loop sees the request
        budget = self.close_timeout + 2.0 if timeout is None else timeout
        deadline = time.monotonic() + budget
        self.wait_closed(budget)
        if self._own_loop:
            self._loop.join(max(0.0, deadline - time.monotonic()))
        resolver = self._link.resolver_thread
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
        return self._view.connected

    @property
    def welcome(self) -> Welcome | None:
        """The welcome of the current (or last) connection."""
        return self._view.welcome

    @property
    def members(self) -> frozenset[str]:
        """Users in the default room (:attr:`room`), as last known."""
        with self._cond:
            return self._view.members_of(self._view.room)

    def members_of(self, room: str) -> frozenset[str]:
        """Users in ``room`` as last known (``Joined``, then join/leave); empty for a
        room the session is not in."""
        with self._cond:
            return self._view.members_of(room)

    @property
    def rooms(self) -> tuple[str, ...]:
        """The rooms the server has the session in (as last known), in join order."""
        with self._cond:
            return tuple(self._view.joined)

    @property
    def room(self) -> str:
        """The default room of :meth:`send` and :meth:`history`: for an old-style
        login the server's (``welcome.room``), else the first room asked for ("" if
        none, or before an old-style client's first welcome)."""
        with self._cond:
            return self._view.room

    @property
    def grants(self) -> tuple[tuple[str, str], ...]:
        """What the token may join: ``(pattern, "rw" | "ro")`` pairs (welcome, then
        ``Grants`` frames)."""
        with self._cond:
            return self._view.grants

    @property
    def client_id(self) -> str:
        """This instance's id, sent in every auth (see ``client_id`` above)."""
        assert self._core.client_id is not None
        return self._core.client_id

    @property
    def position(self) -> tuple[str, int] | None:
        """``(epoch, seq)``: the room log and the last seq of the events queued so far
        (None before the first welcome). Save it and pass ``resume=`` to a later
        client to get what was missed in between. Of the default room."""
        return self._position

    @property
    def positions(self) -> dict[str, tuple[str, int]]:
        """``{room: (epoch, seq)}`` for every room with a position: pass it as
        ``resumes=`` to a later client."""
        return dict(self._positions)

    @property
    def error(self) -> ClientError | None:
        """Why the client stopped, if it stopped on its own."""
        return self._terminal

    @property
    def closed(self) -> bool:
        return self._finished

    @property
    def thread(self) -> threading.Thread:
        """The I/O thread this client runs on (shared with others on a shared loop)."""
        return self._loop.thread

    @property
    def loop(self) -> ClientLoop:
        return self._loop

    def threads(self) -> list[threading.Thread]:
        """The threads this client started that are still alive (its own I/O thread,
        and a name-resolution helper while a lookup runs)."""
        own = self._loop.thread if self._own_loop else None
        return [t for t in (own, self._link.resolver_thread)
                if t is not None and t.is_alive()]

    def stats(self) -> dict[str, int]:
        """Counters: attempts, connects, sent, acked, resent, rate_limited,
        store_unavailable, replayed (messages flagged so), queued."""
        with self._cond:
            out = dict(self._core.stats)
            out["queued"] = self._unacked
        return out

    # ================================================================== I/O thread
    def _message_settled(self) -> None:
        with self._cond:
            self._unacked -= 1
            self._cond.notify_all()

    def _deliver(self, events: list[Event]) -> None:
        """Events from the core, in order: update what users can see, then emit."""
        self._position = self._core.tracker.position()
        self._positions = self._core.rooms.positions()
        for event in events:
            if isinstance(event, _STATE_EVENTS):
                self._apply(event)
            self._emit(event)

    def _apply(self, event: Event) -> None:
        with self._cond:
            if isinstance(event, Connected):
                self._max_frame = event.welcome.max_frame
            elif isinstance(event, Closed):
                self._terminal = event.error
                self._finished = True
            if self._view.apply(event):
                self._cond.notify_all()

    def _emit(self, event: Event) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event callback failed for %r", event)
        events = self._events
        if events is None:
            return
        with self._cond:
            if len(events) >= self.max_events and not isinstance(event, Closed):
                events.popleft()
                self._dropped += 1
            events.append(event)
            self._cond.notify_all()
