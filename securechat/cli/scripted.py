"""The non-interactive modes of ``securechat-client``: one message per stdin line
(also ``--json``), ``--send``, the ``--say`` bot and ``--listen``.

The main thread only waits for the work thread or for SIGINT/SIGTERM
(:func:`run_until_signal`); a :class:`Printer` thread prints events as they arrive.
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
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO

from .. import protocol
from ..client.api import Client, Closed, Connected, Connecting, Event, SendHandle
from ..errors import ClientClosed, ClientError, ProtocolError
from .display import event_json, event_text, status_text, write_line
from .options import PROG, Options, exit_code

__all__ = ["Printer", "run_scripted", "run_until_signal"]


class Printer:
    """Prints events as they arrive, on its own thread (the main thread sends).

    ``show`` filters what goes to stdout; connection state goes to stderr. After the
    first welcome it asks for the last ``--history`` messages, if any."""

    def __init__(self, client: Client, opts: Options, *, stdout: TextIO, stderr: TextIO,
                 show: Callable[[Event], bool] = lambda e: True,
                 finished: threading.Event | None = None) -> None:
        #: Set once the Closed event was printed.
        self.finished = finished or threading.Event()
        self.client = client
        self.opts = opts
        self.stdout = stdout
        self.stderr = stderr
        self.show = show
        self.thread = threading.Thread(target=self._run, name="securechat-client-printer",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        try:
            for event in self.client.events():
                if isinstance(event, Connected) and not event.reconnect and self.opts.history:
                    with contextlib.suppress(ClientError):  # closed meanwhile
                        self.client.history(limit=self.opts.history)
                self.print(event)
        finally:
            self.finished.set()

    def print(self, event: Event) -> None:
        status = status_text(event)
        # --quiet hides state changes, never why the client stopped.
        if status is not None and (not self.opts.quiet or isinstance(event, Closed)):
            write_line(self.stderr, f"{PROG}: {status}")
        if not self.show(event):
            return
        if self.opts.json:
            write_line(self.stdout, json.dumps(event_json(event), ensure_ascii=False))
        else:
            text = event_text(event)
            if text is not None:
                write_line(self.stdout, text)


def _run_lines(client: Client, stdin_fd: int, done: threading.Event) -> BaseException | None:
    """Send every stdin line; at end of input wait for every ack. ``done`` is also set
    when the client stops by itself (so a silent stdin does not keep us waiting)."""
    handles: list[SendHandle] = []
    failure: list[BaseException] = []

    def reader() -> None:
        try:
            for line in _lines(stdin_fd):
                if line.strip():
                    handles.append(client.send(line, wait=None))
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
        handle.wait()
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


def _run_say(client: Client, opts: Options, stop: threading.Event) -> None:
    assert opts.say is not None
    client.wait_connected()
    if opts.wait_for:
        while not client.wait_for_member(opts.wait_for, 1.0):
            if client.closed:
                client.wait_connected()  # raises why it closed
    i = 0
    while opts.count == 0 or i < opts.count:
        i += 1
        client.send(f"{opts.say} #{i}", wait=None).wait()
        if (opts.count == 0 or i < opts.count) and stop.wait(opts.every):
            return
    stop.wait(max(opts.every, 1.0))  # let replies arrive


def run_scripted(opts: Options, client: Client, stdout: TextIO, stderr: TextIO) -> int:
    """Run ``client`` (not started yet) in ``opts.mode`` until it is done or a signal
    stops it; returns the exit code (128+N for signal N)."""
    show: Callable[[Event], bool] = lambda e: True  # noqa: E731
    if opts.mode == "send":
        show = lambda e: isinstance(e, protocol.Ack)  # noqa: E731
    elif not opts.json:
        # Our own acks are not chat lines; neither is every connection attempt.
        show = lambda e: not isinstance(e, protocol.Ack | Connecting)  # noqa: E731
    done = threading.Event()  # the client stopped, or (lines mode) stdin ended
    printer = Printer(client, opts, stdout=stdout, stderr=stderr, show=show, finished=done)
    stop = threading.Event()
    outcome: list[BaseException | None] = []

    def work() -> None:
        error: BaseException | None = None
        try:
            if opts.mode == "send":
                assert opts.send is not None
                client.send(opts.send, wait=None).wait()
            elif opts.mode == "say":
                _run_say(client, opts, stop)
            elif opts.mode == "listen":
                client.wait_connected()
                client.wait_closed()
            else:
                error = _run_lines(client, sys.stdin.fileno(), done)
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
