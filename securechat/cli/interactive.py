"""The interactive mode of ``securechat-client``: a prompt_toolkit prompt on a terminal.

Lines printed by the event thread go above the line being typed (``patch_stdout``),
which is redrawn intact under them. prompt_toolkit is imported only when this mode
runs, so the scripted modes start without it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from types import FrameType

from .. import protocol
from ..client.api import Client, Connected
from ..errors import ClientError, ProtocolError, QueueFull
from .display import clean, clock, event_text, status_text
from .options import DEFAULT_INTERACTIVE_HISTORY, PROG, exit_code

__all__ = ["INTERACTIVE_HELP", "run_interactive"]


INTERACTIVE_HELP = """\
commands:
  /quit         say bye and leave (also Ctrl-D, Ctrl-C)
  /who          who is in the room
  /history [N]  show N (default 20) messages older than the oldest shown
  /help         this list
  //text        send a line that starts with '/'
anything else is sent to the room."""


class _Shown:
    """The oldest seq on screen, so that ``/history`` asks for what is before it."""

    def __init__(self) -> None:
        self.oldest: int | None = None

    def saw(self, seq: int) -> None:
        if self.oldest is None or seq < self.oldest:
            self.oldest = seq


def run_interactive(client: Client, history: int = DEFAULT_INTERACTIVE_HISTORY) -> int:
    """Chat through ``client`` (not started yet) at a prompt until /quit, Ctrl-D, Ctrl-C,
    SIGTERM or the client stops; returns the exit code. Lines printed by other threads
    go above the line being typed (patch_stdout), which is redrawn intact under them.
    The last ``history`` messages are shown once the first welcome came."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    session: PromptSession[str] = PromptSession()
    app = session.app
    finished = threading.Event()
    shown = _Shown()

    def prompt_text() -> str:
        welcome = client.welcome
        name = welcome.user if welcome else PROG
        return f"{name}> " if client.connected else f"{name} (offline)> "

    def stop_prompt() -> None:
        """From any thread: make a running prompt end (as if Ctrl-D was typed)."""
        loop = app.loop  # set before pre_run, None between prompts
        if loop is None:
            return

        def exit_app() -> None:
            if app.is_running and app.future is not None and not app.future.done():
                app.exit(exception=EOFError)

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(exit_app)

    def pre_run() -> None:
        # Closes the race where the client stopped between two prompts.
        if finished.is_set():
            app.exit(exception=EOFError)

    def show(line: str) -> None:
        print(line, flush=True)

    def on_events() -> None:
        try:
            for event in client.events():
                if isinstance(event, Connected) and not event.reconnect and history:
                    with contextlib.suppress(ClientError):
                        client.history(limit=history)
                elif isinstance(event, protocol.Message | protocol.HistoryMessage):
                    shown.saw(event.seq)
                elif isinstance(event, protocol.HistoryEnd) and not event.count:
                    show("-- no earlier messages")
                status = status_text(event)
                if status is not None:
                    show(f"{clock()} -- {status}")
                    app.invalidate()  # thread-safe: redraw the prompt's online state
                text = event_text(event)
                if text is not None:
                    show(text)
        finally:
            finished.set()
            stop_prompt()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        finished.set()
        stop_prompt()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    printer = threading.Thread(target=on_events, name="securechat-client-printer",
                               daemon=True)
    try:
        with patch_stdout():
            show(f"{PROG}: connecting to {client.address}; /help lists the commands")
            client.start()
            printer.start()
            while not finished.is_set():
                try:
                    line = session.prompt(prompt_text, pre_run=pre_run)
                except (EOFError, KeyboardInterrupt):
                    break
                if finished.is_set():
                    break
                if not _interactive_line(client, line.rstrip("\r\n"), show, shown):
                    break
            client.close()
            printer.join(2.0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return exit_code(client.error)


def _interactive_line(client: Client, line: str, show: Callable[[str], None],
                      shown: _Shown) -> bool:
    """Handle one typed line; False means leave."""
    if not line.strip():
        return True
    if line.startswith("/") and not line.startswith("//"):
        command = line.split(maxsplit=1)[0].lower()
        if command in ("/quit", "/exit", "/q"):
            return False
        if command == "/help":
            show(INTERACTIVE_HELP)
        elif command == "/history":
            _history_command(client, line, show, shown)
        elif command == "/who":
            members = sorted(client.members)
            show(f"-- in the room: {', '.join(clean(m) for m in members) or 'nobody'}"
                 + ("" if client.connected else " (as last seen; offline)"))
        else:
            show(f"-- unknown command {clean(command)}; /help lists the commands")
        return True
    if line.startswith("//"):
        line = line[1:]
    try:
        client.send(line)
    except QueueFull as exc:
        show(f"-- not sent: {exc}")
    except ProtocolError as exc:
        show(f"-- not sent: {exc.message}")
    except ClientError:
        return False
    else:
        if not client.connected:
            show("-- offline: queued, it will be sent once reconnected")
    return True


def _history_command(client: Client, line: str, show: Callable[[str], None],
                     shown: _Shown) -> None:
    """``/history [N]``: ask for N messages before the oldest one on screen."""
    words = line.split()
    try:
        count = int(words[1]) if len(words) > 1 else DEFAULT_INTERACTIVE_HISTORY
        client.history(before=shown.oldest, limit=count)
    except ValueError:
        show(f"-- usage: /history [N], N from 1 to {protocol.MAX_HISTORY_LIMIT}")
    except ClientError as exc:
        show(f"-- no history: {exc}")
