"""The non-interactive modes of ``securechat-client``: one message per stdin line
(also ``--json``), ``--send``, the ``--say`` bot and ``--listen``.

The main thread only waits for the work thread or for SIGINT/SIGTERM
(:func:`run_until_signal`); a :class:`Printer` thread prints events as they arrive
and tells a :class:`RoomWatch` about them, which the work thread waits on (a room
joined or refused, a member in a room). Sending modes send to the first ``--room``
(the server's default room without one), once it is joined.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TextIO

from .. import protocol
from ..client.api import Client, Closed, Connected, Connecting, SendHandle
from ..client.rooms import JOIN_REFUSALS
from ..errors import ClientClosed, ClientError, ConfigError, ProtocolError
from .display import ShownEvent, event_json, event_text, status_text, write_line
from .options import (
    PROG,
    ROOM_REFUSALS,
    Options,
    RoomRefused,
    exit_code,
    literal_rooms,
)

__all__ = ["Printer", "RoomFollow", "RoomWatch", "run_scripted", "run_until_signal",
           "wait_room"]


class RoomWatch:
    """Rooms refused and "something happened" for threads that wait on the event
    stream without reading it (the printer reads it and calls :meth:`saw`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        #: room -> the error that refused joining it (cleared by a later joined).
        self.refused: dict[str, protocol.ErrorFrame] = {}
        self.ended = False

    def saw(self, event: ShownEvent) -> None:
        with self._cond:
            if (isinstance(event, protocol.ErrorFrame) and event.room
                    and event.code in JOIN_REFUSALS and event.id is None):
                self.refused[event.room] = event
            elif isinstance(event, protocol.Joined):
                self.refused.pop(event.room, None)
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``predicate()`` (checked after every event) or the stream ended;
        returns ``predicate()``."""
        with self._cond:
            self._cond.wait_for(lambda: self.ended or predicate(), timeout)
            return predicate()


def wait_room(client: Client, watch: RoomWatch, room: str | None) -> None:
    """Block until logged in and in ``room`` (None: the default room, in with the
    login); raises :class:`RoomRefused` if the server refused it, or why the client
    stopped."""
    client.wait_connected()
    if room is None:
        return
    watch.wait(lambda: room in client.rooms or room in watch.refused or client.closed)
    if room not in client.rooms and (error := watch.refused.get(room)) is not None:
        raise RoomRefused(room, error.code, error.message)
    if room not in client.rooms:
        client.wait_connected()  # raises why it stopped
        raise ClientClosed("the client is closed")


def sent(handle: SendHandle, room: str | None, client: Client) -> int:
    """``handle.wait()``, with a refusal by the server named by its room."""
    try:
        return handle.wait()
    except ProtocolError as exc:
        if exc.code in ROOM_REFUSALS:
            raise RoomRefused(room or client.room, exc.code, exc.message,
                              sending=True) from exc
        raise


class RoomFollow:
    """What the client does by itself as rooms come and go: ask for the last
    ``history`` messages of each room the first time it is joined, and with
    ``all_rooms`` join every room the grants name without a wildcard (at login,
    and again when the grants change)."""

    def __init__(self, client: Client, *, history: int, all_rooms: bool,
                 login_rooms: Sequence[str] = ()) -> None:
        self.client = client
        self.history = history
        self.all_rooms = all_rooms
        self._asked: set[str] = set()
        #: Asked for already (the login's rooms among them): never joined twice.
        self._requested: set[str] = set(login_rooms)

    def saw(self, event: ShownEvent) -> None:
        """Called by the thread reading the events; never raises for a closed client."""
        with contextlib.suppress(ClientError, ConfigError, ProtocolError, ValueError):
            self._saw(event)

    def _saw(self, event: ShownEvent) -> None:
        if isinstance(event, Connected) and not event.reconnect:
            if event.welcome.room:  # the old login: in the default room already
                self._asked.add(event.welcome.room)
                if self.history:
                    self.client.history(limit=self.history)
            if self.all_rooms:
                self._join_all(event.welcome.grants)
        elif isinstance(event, protocol.Joined) and event.room not in self._asked:
            self._asked.add(event.room)
            if self.history:
                # What was there when we joined; what came after arrives live.
                self.client.history(before=event.seq + 1, limit=self.history,
                                    room=event.room)
        elif isinstance(event, protocol.Left):
            self._requested.discard(event.room)
        elif isinstance(event, protocol.Grants) and self.all_rooms:
            self._join_all(event.grants)

    def _join_all(self, grants: tuple[tuple[str, str], ...]) -> None:
        joined = set(self.client.rooms)
        for room in literal_rooms(grants):
            if room not in joined and room not in self._requested:
                self._requested.add(room)
                self.client.join(room)


class Printer:
    """Prints events as they arrive, on its own thread (the main thread sends).

    ``show`` filters what goes to stdout; connection state goes to stderr. It asks
    for the last ``--history`` messages of each room joined, joins the granted rooms
    with ``--all-rooms`` (:class:`RoomFollow`), and tells ``watch`` every event."""

    def __init__(self, client: Client, opts: Options, *, stdout: TextIO, stderr: TextIO,
                 show: Callable[[ShownEvent], bool] = lambda e: True,
                 finished: threading.Event | None = None,
                 watch: RoomWatch | None = None) -> None:
        #: Set once the Closed event was printed.
        self.finished = finished or threading.Event()
        self.client = client
        self.opts = opts
        self.stdout = stdout
        self.stderr = stderr
        self.show = show
        self.watch = watch or RoomWatch()
        self.follow = RoomFollow(client, history=opts.history, all_rooms=opts.all_rooms,
                                 login_rooms=opts.rooms)
        #: Text lines name their room unless only one room can be joined.
        self.current: str | None = (
            None if len(opts.rooms) <= 1 and not opts.all_rooms else "")
        self.thread = threading.Thread(target=self._run, name="securechat-client-printer",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        try:
            for event in self.client.events():
                self.follow.saw(event)
                self.print(event)
                self.watch.saw(event)
        finally:
            self.watch.end()
            self.finished.set()

    def print(self, event: ShownEvent) -> None:
        status = status_text(event)
        # --quiet hides state changes, never why the client stopped.
        if status is not None and (not self.opts.quiet or isinstance(event, Closed)):
            write_line(self.stderr, f"{PROG}: {status}")
        if not self.show(event):
            return
        if self.opts.json:
            write_line(self.stdout, json.dumps(event_json(event), ensure_ascii=False))
        else:
            text = event_text(event, self.current)
            if text is not None:
                write_line(self.stdout, text)


def _run_lines(client: Client, stdin_fd: int, done: threading.Event,
               room: str | None) -> BaseException | None:
    """Send every stdin line to ``room``; at end of input wait for every ack. ``done``
    is also set when the client stops by itself (so a silent stdin does not keep us
    waiting)."""
    handles: list[SendHandle] = []
    failure: list[BaseException] = []

    def reader() -> None:
        try:
            for line in _lines(stdin_fd):
                if line.strip():
                    handles.append(client.send(line, room=room, wait=None))
        except (ClientError, ProtocolError) as exc:
            failure.append(exc)
        except OSError as exc:  # stdin is a directory, a closed descriptor...
            failure.append(ClientError(f"cannot read standard input: "
                                       f"{exc.strerror or exc}"))
        finally:
            done.set()

    # A daemon thread with os.read: a blocked read never holds up the exit, and it
    # takes no lock the interpreter needs at shutdown (sys.stdin's would be).
    threading.Thread(target=reader, name="securechat-client-stdin", daemon=True).start()
    done.wait()
    if failure:
        return failure[0]
    for handle in list(handles):
        sent(handle, room, client)
    if not handles:
        # "Done" needs a welcome: with nothing to send, end of input alone must not
        # exit 0 for a refused token or a server that never answered.
        client.wait_connected()
    return None


def _lines(fd: int) -> Any:
    """Lines of text read from ``fd`` with ``os.read`` (no newline; invalid UTF-8 replaced)."""
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for raw in complete:
            yield raw.rstrip(b"\r").decode("utf-8", errors="replace")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", errors="replace")


def _run_say(client: Client, opts: Options, stop: threading.Event, watch: RoomWatch
             ) -> None:
    assert opts.say is not None
    room = opts.send_room
    wait_room(client, watch, room)
    if opts.wait_for:
        user = opts.wait_for
        if room is None:
            while not client.wait_for_member(user, 1.0):
                if client.closed:
                    client.wait_connected()  # raises why it closed
        else:
            watch.wait(lambda: user in client.members_of(room) or client.closed)
            if client.closed:
                client.wait_connected()
    i = 0
    while opts.count == 0 or i < opts.count:
        i += 1
        sent(client.send(f"{opts.say} #{i}", room=room, wait=None), room, client)
        if (opts.count == 0 or i < opts.count) and stop.wait(opts.every):
            return
    stop.wait(max(opts.every, 1.0))  # let replies arrive


def run_scripted(opts: Options, client: Client, stdout: TextIO, stderr: TextIO) -> int:
    """Run ``client`` (not started yet) in ``opts.mode`` until it is done or a signal
    stops it; returns the exit code (128+N for signal N)."""
    show: Callable[[ShownEvent], bool] = lambda e: True  # noqa: E731
    if opts.mode == "send":
        show = lambda e: isinstance(e, protocol.Ack)  # noqa: E731
    elif not opts.json:
        # Our own acks are not chat lines; neither is every connection attempt.
        show = lambda e: not isinstance(e, protocol.Ack | Connecting)  # noqa: E731
    done = threading.Event()  # the client stopped, or (lines mode) stdin ended
    watch = RoomWatch()
    printer = Printer(client, opts, stdout=stdout, stderr=stderr, show=show, finished=done,
                      watch=watch)
    stop = threading.Event()
    outcome: list[BaseException | None] = []

    def work() -> None:
        error: BaseException | None = None
        try:
            room = opts.send_room
            if opts.mode == "send":
                assert opts.send is not None
                wait_room(client, watch, room)
                sent(client.send(opts.send, room=room, wait=None), room, client)
            elif opts.mode == "say":
                _run_say(client, opts, stop, watch)
            elif opts.mode == "listen":
                client.wait_connected()
                client.wait_closed()
            else:
                wait_room(client, watch, room)
                error = _run_lines(client, sys.stdin.fileno(), done, room)
        except (ClientError, ProtocolError) as exc:
            error = exc
        outcome.append(error)

    def interrupted() -> None:
        stop.set()
        client.close(timeout=0)  # says bye; the waits in work() end with ClientClosed

    def begin() -> None:
        client.start()
        printer.start()

    signum = run_until_signal(work, before=begin, on_signal=interrupted)
    client.close()
    printer.join(2.0)
    if signum is not None:
        return 128 + signum
    error = outcome[0] if outcome else ClientError("internal error (see above)")
    if isinstance(error, ClientClosed) and client.error is not None:
        error = client.error
    if error is not None and error is not client.error:  # else the printer said it
        write_line(stderr, f"{PROG}: error: {error}")
    return exit_code(error if error is not None else client.error)


def run_until_signal(work: Callable[[], None], *, before: Callable[[], None],
                      on_signal: Callable[[], None], grace: float = 5.0) -> int | None:
    """Run ``work`` in a thread while the main thread waits for it or for SIGINT/SIGTERM
    (``before`` runs once the signals are caught, ``on_signal`` when one arrives).

    The signal handler only records the signal; the main thread wakes through
    ``signal.set_wakeup_fd``. Raising from a handler instead would land inside
    whatever lock the main thread was waiting on and could leave it held, hanging
    the I/O thread. Returns the signal number, or None if ``work`` finished first.
    """
    caught: list[int] = []
    wake_r, wake_w = socket.socketpair()
    done_r, done_w = socket.socketpair()
    for sock in (wake_r, wake_w, done_r):
        sock.setblocking(False)

    def run() -> None:
        try:
            work()
        finally:
            with contextlib.suppress(OSError):  # closed if the main thread stopped waiting
                done_w.send(b"x")

    def note(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    thread = threading.Thread(target=run, name="securechat-client-main", daemon=True)
    try:
        before()
        thread.start()
        while not caught:
            ready, _, _ = select.select([wake_r, done_r], [], [])
            if done_r in ready and not caught:
                return None
            with contextlib.suppress(OSError):
                wake_r.recv(64)
        on_signal()
        thread.join(grace)
        return caught[0]
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in (wake_r, wake_w, done_r, done_w):
            sock.close()
