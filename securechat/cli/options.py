"""The command line of ``securechat-client``: flags and environment in, :class:`Options`
out, and the exit codes a run ends with (both are what ``--help`` documents, so they
sit together here). Pure: parsing only, no connection and no terminal.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .. import __version__, protocol
from ..client.backoff import BackoffPolicy
from ..errors import (
    AuthRefused,
    ClientError,
    ConfigError,
    GaveUp,
    ProtocolError,
    TLSVerificationFailed,
)

__all__ = [
    "DEFAULT_INTERACTIVE_HISTORY", "EXIT_AUTH", "EXIT_ERROR", "EXIT_GAVE_UP", "EXIT_OK",
    "EXIT_REFUSED", "EXIT_TLS", "EXIT_USAGE", "PROG", "ROOM_REFUSALS",
    "Options", "RoomRefused", "UsageError", "build_parser", "exit_code", "literal_rooms",
    "normalize_room", "options_from_args", "room_refusal_text",
]

PROG: Final = "securechat-client"
#: Messages shown on joining in interactive mode (``--history``), and per ``/history``.
DEFAULT_INTERACTIVE_HISTORY: Final = 20
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_AUTH, EXIT_TLS, EXIT_GAVE_UP = 0, 1, 2, 3, 4, 5
#: The server refused a room or a message in it (forbidden, room_full...); not retried.
EXIT_REFUSED: Final = 6
#: The error codes that refuse one room (or a message in it) and leave the session up,
#: with what they mean to the person at the keyboard.
ROOM_REFUSALS: Final[dict[str, str]] = {
    "forbidden": "this token has no grant for it",
    "not_joined": "not in that room",
    "already_joined": "already in that room",
    "room_full": "it holds as many members as the server allows",
    "too_many_rooms": "in too many rooms already, or the server holds too many rooms",
}

DESCRIPTION = """\
Connect to a securechat server over TLS, authenticate with a token, and chat.

On a terminal it is interactive: type a line and press Enter to send it;
incoming messages appear above the line you are typing. With stdin not a
terminal (a pipe, a file) every input line is sent as one message.

The client reconnects by itself after any transient failure (refused, reset,
timeout, server restart, three heartbeat intervals without a word from the
server), waiting uniform(0, min(cap, base * 2**n)) seconds before reconnect
attempt n (n = 0, 1, ...), plus the server's retry_after when it gave one
(clamped to --retry-cap); n starts again from 0 once a connection stayed
healthy for 30 s. A token refused by the server or a certificate that does not
verify is not retried. Lines typed while disconnected are queued (up to 1000)
and sent after the reconnect; a message counts as delivered only when the
server acknowledges it, and unacknowledged ones are sent again (with this
client's id, so a server that got one already does not deliver it twice).

After a reconnect, a server that keeps the room's log (protocol 2) replays what
was missed meanwhile; those lines are marked [earlier], as are the last
--history messages shown on joining. Only what the server no longer has is
reported as missed.
"""

#: The interactive commands: in --help, and what /help shows (one text).
INTERACTIVE_COMMANDS = """\
  /quit            say bye and leave (also Ctrl-D, Ctrl-C)
  /join #ROOM      join a room and make it the current one
  /leave [#ROOM]   leave a room (default: the current one)
  /switch #ROOM    make a joined room the current one (also Tab: the next one)
  /rooms           the joined rooms (current one marked) and the token's grants
  /who             who is in the current room
  /history [N]     show N (default 20) messages of the current room older than
                   the oldest shown
  /help            list the commands
  //text           send a line that starts with '/'"""

EPILOG = f"""\
using rooms:
  A session can be in several rooms at once. Without --room the client logs in
  to the server's default room, as older clients do. --room NAME (repeatable; a
  leading '#' is dropped and the name folded to lower case) joins those rooms
  instead, and sends (--send, --say, stdin lines) go to the first one; --wait-for
  waits in it too. --all-rooms also joins, after the login, every room the
  token's grants name without a wildcard (for listening bots; with a sending
  mode add --room for where to send). Room names: 1-64 lower-case letters,
  digits, '-', '_', '.', starting with a letter or digit. A token may enter the
  rooms it was granted (securechat-token add NAME --rooms 'general,ops'
  [--read-only]). A room refused (forbidden, room_full, too_many_rooms, or a
  message into a read-only room) is one line naming it; scripted, a refusal of
  the room you send to exits 6. With several --room or --all-rooms, text lines
  start with their #room; --json gives every room event a "room" field and adds
  joined, left and grants events.

interactive commands:
{INTERACTIVE_COMMANDS}
  The prompt names the current room ([#general] alice> ); typed lines go there,
  and lines from other rooms are prefixed with their #room.

token: a token on the command line (--token) can be read by every local user
  (ps, /proc/PID/cmdline) for as long as the client runs. Prefer --token-file
  FILE (mode 0600) or the SECURECHAT_TOKEN environment variable.

environment (a command line option wins):
  SECURECHAT_HOST, SECURECHAT_PORT, SECURECHAT_CA, SECURECHAT_SERVER_NAME,
  SECURECHAT_TOKEN, SECURECHAT_TOKEN_FILE

exit codes (never 0 without a login the server accepted):
  0  done (/quit, end of input, message acknowledged, bot finished); with
     stdin: welcomed and every line acknowledged, even when stdin was empty
  1  other error (e.g. stdin cannot be read, /quit before the login succeeded)
  2  usage or configuration error (bad option, no token, unreadable CA file)
  3  the server refused the token (auth_failed, revoked); not retried
  4  the server certificate did not verify (unknown CA, wrong name); not retried
  5  gave up reconnecting after --max-retries attempts
  6  the server refused the room sent to, or the message (forbidden: no grant
     or a read-only one; room_full; too_many_rooms; not_joined); not retried
  128+N  stopped by signal N in a non-interactive mode (130 SIGINT, 143 SIGTERM)

examples:
  securechat-client --ca certs/ca.pem --token-file alice.token
  echo "deploy finished" | securechat-client --ca certs/ca.pem --token-file ci.token
  securechat-client --ca certs/ca.pem --token-file bob.token --json --listen
  securechat-client --token-file bot.token --say hello --every 5 --count 10 --wait-for alice
  securechat-client --token-file ci.token --room ops --send "deploy finished"
  securechat-client --token-file alice.token --room general --room '#ops'
  securechat-client --token-file watcher.token --all-rooms --json --listen
"""


class UsageError(ConfigError):
    """A bad option combination or value; exits 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    conn = parser.add_argument_group("connection")
    conn.add_argument("--host", help="server host name or address "
                      "(default: 127.0.0.1; env SECURECHAT_HOST)")
    conn.add_argument("--port", type=int, help=f"server TCP port (default: "
                      f"{protocol.DEFAULT_PORT}; env SECURECHAT_PORT)")
    conn.add_argument("--ca", metavar="FILE", help="CA certificate(s) that signed the "
                      "server certificate, PEM (default: the system trust store; "
                      "env SECURECHAT_CA)")
    conn.add_argument("--server-name", metavar="NAME", help="name the server certificate "
                      "must carry (default: --host; env SECURECHAT_SERVER_NAME)")
    conn.add_argument("--token", help="access token; VISIBLE to other local users in ps, "
                      "see below (env SECURECHAT_TOKEN)")
    conn.add_argument("--token-file", metavar="FILE", help="read the token from FILE "
                      "(env SECURECHAT_TOKEN_FILE)")
    conn.add_argument("--max-retries", type=int, metavar="N", help="give up (exit 5) after "
                      "N failed reconnect attempts without a healthy connection in "
                      "between (default: retry forever)")
    conn.add_argument("--retry-base", type=float, default=0.5, metavar="SECONDS",
                      help="backoff base (default: 0.5)")
    conn.add_argument("--retry-cap", type=float, default=30.0, metavar="SECONDS",
                      help="longest backoff wait; a server's retry_after hint is "
                      "clamped to it as well (default: 30)")
    conn.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                      help="name lookup + TCP connect + TLS handshake + login, per attempt "
                      "(default: 10)")
    rooms = parser.add_argument_group("rooms")
    rooms.add_argument("--room", action="append", metavar="NAME", help="join room NAME "
                       "(repeatable; '#ops' and 'Ops' mean ops); sending modes send to "
                       "the first one (default: the server's default room)")
    rooms.add_argument("--all-rooms", action="store_true", help="after the login, also "
                       "join every room the token's grants name without a wildcard")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print every event as one JSON "
                     "line on stdout (messages, presence, acks, connection state); "
                     "reads messages from stdin unless another mode is chosen")
    out.add_argument("--quiet", action="store_true", help="do not print connection state "
                     "changes on stderr (non-interactive modes)")
    out.add_argument("--history", type=int, metavar="N", help="on joining, show the last N "
                     "messages of each room, marked [earlier] (with --json: history_msg "
                     "objects); needs a server that keeps the room's log (default: 20 "
                     f"interactive, 0 otherwise; at most {protocol.MAX_HISTORY_LIMIT})")
    modes = parser.add_argument_group("modes (default: interactive on a terminal, "
                                      "else one message per stdin line)")
    modes.add_argument("--send", metavar="TEXT", help="send TEXT, wait for its ack, exit")
    modes.add_argument("--listen", action="store_true",
                       help="send nothing; print what arrives until interrupted")
    modes.add_argument("--say", metavar="TEXT", help="bot: send 'TEXT #1', 'TEXT #2'... "
                       "printing what arrives, then linger max(EVERY, 1) s and exit 0")
    modes.add_argument("--every", type=float, default=1.0, metavar="SECONDS",
                       help="with --say: seconds between messages (default: 1)")
    modes.add_argument("--count", type=int, default=1, metavar="N",
                       help="with --say: how many messages, 0 = until stopped (default: 1)")
    modes.add_argument("--wait-for", metavar="USER", help="with --say: start only once "
                       "USER is in the room (the first --room)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


@dataclass(frozen=True, slots=True)
class Options:
    host: str
    port: int
    ca: Path | None
    server_name: str | None
    token: str
    backoff: BackoffPolicy
    connect_timeout: float
    mode: str  # interactive, lines, send, say, listen
    json: bool
    quiet: bool
    history: int
    send: str | None
    say: str | None
    every: float
    count: int
    wait_for: str | None
    #: Rooms to log in to (v3); empty with ``all_rooms`` False: the old login into the
    #: server's default room.
    rooms: tuple[str, ...] = ()
    all_rooms: bool = False

    @property
    def login_rooms(self) -> list[str] | None:
        """What ``Client(rooms=...)`` gets: None is the old default-room login."""
        return list(self.rooms) if self.rooms or self.all_rooms else None

    @property
    def send_room(self) -> str | None:
        """Where the sending modes send: the first --room (None: the default room)."""
        return self.rooms[0] if self.rooms else None


class RoomRefused(ClientError):
    """The server refused a room, or a message in it (exit :data:`EXIT_REFUSED`)."""

    def __init__(self, room: str, code: str, message: str = "", *, sending: bool = False
                 ) -> None:
        super().__init__(room_refusal_text(room, code, message, sending=sending))
        self.room = room
        self.code = code


def normalize_room(text: str) -> str:
    """What a person typed (``#Ops``) -> the room name (``ops``); raises
    :class:`UsageError` naming the rule when it cannot be one."""
    name = text.strip().removeprefix("#").lower()
    if not protocol.ROOM_NAME.fullmatch(name):
        raise UsageError(f"bad room name {text.strip()!r}: use 1-{protocol.MAX_ROOM_LENGTH} "
                         "lower-case letters, digits, '-', '_' or '.', starting with a "
                         "letter or digit")
    return name


def literal_rooms(grants: Iterable[tuple[str, str]]) -> list[str]:
    """The rooms the grants name without a wildcard, in order (what --all-rooms joins)."""
    rooms: list[str] = []
    for pattern, _mode in grants:
        if "*" not in pattern and "?" not in pattern and pattern not in rooms:
            rooms.append(pattern)
    return rooms


def room_refusal_text(room: str, code: str, message: str = "", *, sending: bool = False
                      ) -> str:
    """One readable line for a room refusal: ``cannot join #ops: forbidden (...)``;
    ``sending``: the refusal of a message (a read-only grant, or not in the room)."""
    if sending:
        what = "not sent to"
    elif code == "not_joined":
        what = "cannot leave"
    elif code == "already_joined":
        what = "already in"
    else:
        what = "cannot join"
    if code == "forbidden" and sending:
        meaning = "this token may only read it"
    else:
        meaning = ROOM_REFUSALS.get(code) or message or code
    return f"{what} #{room}: {code} ({meaning})"


def _read_token_file(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read token file {path}: {exc.strerror}") from exc
    token = text.strip()
    if not token:
        raise UsageError(f"token file {path} is empty")
    return token


def _token(args: argparse.Namespace, env: dict[str, str]) -> str:
    if args.token and args.token_file:
        raise UsageError("give either --token or --token-file, not both")
    if args.token:
        return str(args.token)
    if args.token_file:
        return _read_token_file(args.token_file)
    if env.get("SECURECHAT_TOKEN"):
        return env["SECURECHAT_TOKEN"]
    if env.get("SECURECHAT_TOKEN_FILE"):
        return _read_token_file(env["SECURECHAT_TOKEN_FILE"])
    raise UsageError("no token: use --token-file FILE, SECURECHAT_TOKEN or --token "
                     "(get one with: securechat-token add NAME)")


def _mode(args: argparse.Namespace, stdin_tty: bool) -> str:
    chosen = [name for name in ("send", "say", "listen") if getattr(args, name)]
    if len(chosen) > 1:
        raise UsageError("choose one of --send, --say and --listen")
    if chosen:
        return chosen[0]
    if args.wait_for or args.count != 1 or args.every != 1.0:
        raise UsageError("--every, --count and --wait-for go with --say")
    return "lines" if args.json or not stdin_tty else "interactive"


def _rooms(args: argparse.Namespace, mode: str) -> tuple[str, ...]:
    rooms: list[str] = []
    for text in args.room or ():
        name = normalize_room(text)
        if name in rooms:
            raise UsageError(f"--room {name} given twice")
        rooms.append(name)
    if len(rooms) > protocol.MAX_AUTH_ROOMS:
        raise UsageError(f"at most {protocol.MAX_AUTH_ROOMS} --room options")
    if args.all_rooms and not rooms and mode in ("send", "say", "lines"):
        raise UsageError("--all-rooms without --room has no room to send to: add "
                         "--room NAME, or use --listen")
    return tuple(rooms)


def options_from_args(args: argparse.Namespace, env: dict[str, str] | None = None, *,
                      stdin_tty: bool = False) -> Options:
    """Command line over environment over defaults; raises :class:`UsageError`."""
    env = dict(os.environ) if env is None else env
    host = args.host or env.get("SECURECHAT_HOST") or "127.0.0.1"
    port = args.port
    if port is None:
        raw = env.get("SECURECHAT_PORT") or str(protocol.DEFAULT_PORT)
        try:
            port = int(raw)
        except ValueError as exc:
            raise UsageError(f"SECURECHAT_PORT={raw!r} is not a port number") from exc
    if not 0 < port < 65536:
        raise UsageError("--port must be between 1 and 65535")
    ca = args.ca or env.get("SECURECHAT_CA") or None
    if args.send is not None and not args.send.strip():
        raise UsageError("--send needs a non-empty TEXT")
    if args.say is not None and not args.say.strip():
        raise UsageError("--say needs a non-empty TEXT")
    if args.every < 0 or args.count < 0:
        raise UsageError("--every and --count must not be negative")
    if args.connect_timeout <= 0:
        raise UsageError("--connect-timeout must be greater than 0")
    if args.history is not None and not 0 <= args.history <= protocol.MAX_HISTORY_LIMIT:
        raise UsageError(f"--history must be from 0 to {protocol.MAX_HISTORY_LIMIT}")
    try:
        backoff = BackoffPolicy(base=args.retry_base, cap=args.retry_cap,
                                max_retries=args.max_retries)
    except ConfigError as exc:
        raise UsageError(str(exc).replace("backoff base", "--retry-base")
                         .replace("backoff cap", "--retry-cap")
                         .replace("max_retries", "--max-retries")) from exc
    mode = _mode(args, stdin_tty)
    rooms = _rooms(args, mode)
    history = args.history if args.history is not None else (
        DEFAULT_INTERACTIVE_HISTORY if mode == "interactive" else 0)
    return Options(
        host=host, port=port, ca=Path(ca) if ca else None,
        server_name=args.server_name or env.get("SECURECHAT_SERVER_NAME") or None,
        token=_token(args, env), backoff=backoff, connect_timeout=args.connect_timeout,
        mode=mode, json=args.json, quiet=args.quiet, history=history, send=args.send,
        say=args.say, every=args.every, count=args.count, wait_for=args.wait_for,
        rooms=rooms, all_rooms=args.all_rooms)


def exit_code(error: BaseException | None) -> int:
    """The documented exit code for how the client ended."""
    if error is None:
        return EXIT_OK
    if isinstance(error, AuthRefused):
        return EXIT_AUTH
    if isinstance(error, RoomRefused):
        return EXIT_REFUSED
    if isinstance(error, TLSVerificationFailed):
        return EXIT_TLS
    if isinstance(error, GaveUp):
        return EXIT_GAVE_UP
    if isinstance(error, ConfigError | ProtocolError):
        return EXIT_USAGE
    return EXIT_ERROR

