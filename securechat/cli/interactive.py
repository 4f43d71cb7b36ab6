"""The interactive mode of ``securechat-client``: a prompt_toolkit prompt on a terminal.

Lines printed by the event thread go above the line being typed (``patch_stdout``),
which is redrawn intact under them. The prompt names the current room (``[#general]
alice> ``), where typed lines and /who, /history go; /join, /leave, /switch, /rooms
and Tab move between the rooms joined. prompt_toolkit is imported only when this mode
runs, so the scripted modes start without it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from .. import protocol
from ..client.api import Client, Connected
from ..errors import ClientError, ConfigError, ProtocolError, QueueFull
from .display import ShownEvent, clean, clock, event_text, grants_text, status_text
from .options import (
    DEFAULT_INTERACTIVE_HISTORY,
    INTERACTIVE_COMMANDS,
    PROG,
    UsageError,
    exit_code,
    normalize_room,
)
from .scripted import RoomFollow

__all__ = ["INTERACTIVE_HELP", "next_room", "run_interactive", "split_command"]


INTERACTIVE_HELP = ("commands:\n" + INTERACTIVE_COMMANDS
                    + "\nanything else is sent to the current room, named in the prompt; "
                    "lines from\nother rooms start with their #room.")


def next_room(rooms: Sequence[str], current: str | None) -> str | None:
    """The room after ``current`` in ``rooms``, round (what Tab switches to)."""
    if not rooms:
        return None
    if current is None or current not in rooms:
        return rooms[0]
    return rooms[(list(rooms).index(current) + 1) % len(rooms)]


def split_command(line: str) -> tuple[str, str] | None:
    """``"/join #ops"`` -> ``("/join", "#ops")``; None for a line to send."""
    if not line.startswith("/") or line.startswith("//"):
        return None
    command, _, rest = line.partition(" ")
    return command.lower(), rest.strip()


class _Chat:
    """What the screen shows: the current room (where typed lines go), and the oldest
    seq on screen per room (so that ``/history`` asks for what is before it). Written
    by the event thread and the prompt thread; each field is one reference."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.current: str | None = None
        #: The room of a /join that becomes current once joined.
        self.switch_to: str | None = None
        self.oldest: dict[str, int] = {}

    def saw(self, room: str, seq: int) -> None:
        if room not in self.oldest or seq < self.oldest[room]:
            self.oldest[room] = seq

    def rooms(self) -> list[str]:
        return list(self.client.rooms)

    def on_event(self, event: ShownEvent) -> str | None:
        """Follow the room state; returns a line to show about it, if any."""
        if isinstance(event, Connected) and event.welcome.room and self.current is None:
            self.current = event.welcome.room  # the old login: the server's default room
        elif isinstance(event, protocol.Joined):
            if self.current is None or event.room == self.switch_to:
                self.current = event.room
                self.switch_to = None
                return f"now in #{clean(event.room)}"
        elif isinstance(event, protocol.Left) and event.room == self.current:
            self.current = next_room([r for r in self.rooms() if r != event.room], None)
            return (f"now in #{clean(self.current)}" if self.current
                    else "in no room now: /join #ROOM")
        elif isinstance(event, protocol.ErrorFrame) and event.room == self.switch_to:
            self.switch_to = None
        elif isinstance(event, protocol.Message | protocol.HistoryMessage):
            self.saw(event.room, event.seq)
        return None


def run_interactive(client: Client, history: int = DEFAULT_INTERACTIVE_HISTORY, *,
                    all_rooms: bool = False, login_rooms: Sequence[str] = ()) -> int:
    """Chat through ``client`` (not started yet) at a prompt until /quit, Ctrl-D, Ctrl-C,
    SIGTERM or the client stops; returns the exit code. Lines printed by other threads
    go above the line being typed (patch_stdout), which is redrawn intact under them.
    The last ``history`` messages of each room are shown once it is joined; with
    ``all_rooms`` every room the grants name without a wildcard is joined."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
    from prompt_toolkit.patch_stdout import patch_stdout

    chat = _Chat(client)
    keys = KeyBindings()

    @keys.add("tab")
    def _cycle(event: KeyPressEvent) -> None:
        chat.current = next_room(chat.rooms(), chat.current) or chat.current
        event.app.invalidate()

    session: PromptSession[str] = PromptSession(key_bindings=keys)
    app = session.app
    finished = threading.Event()
    follow = RoomFollow(client, history=history, all_rooms=all_rooms,
                        login_rooms=login_rooms)

    def prompt_text() -> str:
        welcome = client.welcome
        name = welcome.user if welcome else PROG
        room = f"[#{chat.current}] " if chat.current else ""
        return f"{room}{name}> " if client.connected else f"{room}{name} (offline)> "

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
                follow.saw(event)
                note = chat.on_event(event)
                if isinstance(event, protocol.HistoryEnd) and not event.count:
                    show("-- no earlier messages")
                status = status_text(event)
                if status is not None:
                    show(f"{clock()} -- {status}")
                if note is not None:
                    show(f"-- {note}")
                if status is not None or note is not None:
                    app.invalidate()  # thread-safe: redraw the prompt's state
                text = event_text(event, chat.current)
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
                if not _interactive_line(chat, line.rstrip("\r\n"), show):
                    break
            client.close()
            printer.join(2.0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return exit_code(client.error)


def _interactive_line(chat: _Chat, line: str, show: Callable[[str], None]) -> bool:
    """Handle one typed line; False means leave."""
    client = chat.client
    if not line.strip():
        return True
    command = split_command(line)
    if command is not None:
        name, arg = command
        if name in ("/quit", "/exit", "/q"):
            return False
        try:
            _command(chat, name, arg, show)
        except UsageError as exc:
            show(f"-- {exc}")
        except (ClientError, ConfigError, ProtocolError, ValueError) as exc:
            show(f"-- {name[1:]} failed: {clean(str(exc))}")
        return True
    if line.startswith("//"):
        line = line[1:]
    if chat.current is None and client.welcome is not None:
        show("-- in no room: /join #ROOM first")
        return True
    try:
        client.send(line, room=chat.current)
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


def _command(chat: _Chat, name: str, arg: str, show: Callable[[str], None]) -> None:
    """One slash command (not /quit); raises what the client raises."""
    client = chat.client
    if name == "/help":
        show(INTERACTIVE_HELP)
    elif name == "/history":
        _history_command(chat, arg, show)
    elif name == "/who":
        room = chat.current
        members = sorted(client.members_of(room) if room else client.members)
        where = f"#{clean(room)}" if room else "the room"
        show(f"-- in {where}: {', '.join(clean(m) for m in members) or 'nobody'}"
             + ("" if client.connected else " (as last seen; offline)"))
    elif name == "/rooms":
        rooms = [f"#{clean(r)}" + (" (current)" if r == chat.current else "")
                 for r in chat.rooms()]
        show(f"-- rooms: {', '.join(rooms) or 'none'}; grants: {grants_text(client.grants)}")
    elif name in ("/join", "/switch"):
        if not arg:
            raise UsageError(f"usage: {name} #ROOM")
        room = normalize_room(arg)
        if room in chat.rooms():
            chat.current = room
            show(f"-- now in #{room}")
        elif name == "/switch":
            show(f"-- not in #{room}; /join #{room} first")
        else:
            chat.switch_to = room
            client.join(room)
    elif name == "/leave":
        room = normalize_room(arg) if arg else chat.current
        if room is None:
            show("-- in no room")
        elif room not in chat.rooms():
            show(f"-- not in #{room}")
        else:
            client.leave(room)
    else:
        show(f"-- unknown command {clean(name)}; /help lists the commands")


def _history_command(chat: _Chat, arg: str, show: Callable[[str], None]) -> None:
    """``/history [N]``: ask for N messages before the oldest one on screen."""
    room = chat.current
    try:
        count = int(arg) if arg else DEFAULT_INTERACTIVE_HISTORY
        chat.client.history(before=chat.oldest.get(room or ""), limit=count, room=room)
    except ValueError:
        show(f"-- usage: /history [N], N from 1 to {protocol.MAX_HISTORY_LIMIT}")
    except ClientError as exc:
        show(f"-- no history: {exc}")
