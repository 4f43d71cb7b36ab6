"""The command line of ``securechat-client``: flags and environment in, :class:`Options`
out, and the exit codes a run ends with (both are what ``--help`` documents, so they
sit together here). Pure: parsing only, no connection and no terminal.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .. import __version__, protocol
from ..client.backoff import BackoffPolicy
from ..errors import (
    AuthRefused,
    ConfigError,
    GaveUp,
    ProtocolError,
    TLSVerificationFailed,
)

__all__ = [
    "DEFAULT_INTERACTIVE_HISTORY", "EXIT_AUTH", "EXIT_ERROR", "EXIT_GAVE_UP", "EXIT_OK",
    "EXIT_TLS", "EXIT_USAGE", "PROG",
    "Options", "UsageError", "build_parser", "exit_code", "options_from_args",
]

PROG: Final = "securechat-client"
#: Messages shown on joining in interactive mode (``--history``), and per ``/history``.
DEFAULT_INTERACTIVE_HISTORY: Final = 20
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_AUTH, EXIT_TLS, EXIT_GAVE_UP = 0, 1, 2, 3, 4, 5

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

EPILOG = """\
interactive commands:
  /quit            say bye and leave (also Ctrl-D, Ctrl-C)
  /who             who is in the room
  /history [N]     show N (default 20) messages older than the oldest shown
  /help            list the commands
  //text           send a line that starts with '/'

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
  128+N  stopped by signal N in a non-interactive mode (130 SIGINT, 143 SIGTERM)

examples:
  securechat-client --ca certs/ca.pem --token-file alice.token
  echo "deploy finished" | securechat-client --ca certs/ca.pem --token-file ci.token
  securechat-client --ca certs/ca.pem --token-file bob.token --json --listen
  securechat-client --token-file bot.token --say hello --every 5 --count 10 --wait-for alice
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
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print every event as one JSON "
                     "line on stdout (messages, presence, acks, connection state); "
                     "reads messages from stdin unless another mode is chosen")
    out.add_argument("--quiet", action="store_true", help="do not print connection state "
                     "changes on stderr (non-interactive modes)")
    out.add_argument("--history", type=int, metavar="N", help="on joining, show the last N "
                     "messages of the room, marked [earlier] (with --json: history_msg "
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
                       "USER is in the room")
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
    history = args.history if args.history is not None else (
        DEFAULT_INTERACTIVE_HISTORY if mode == "interactive" else 0)
    return Options(
        host=host, port=port, ca=Path(ca) if ca else None,
        server_name=args.server_name or env.get("SECURECHAT_SERVER_NAME") or None,
        token=_token(args, env), backoff=backoff, connect_timeout=args.connect_timeout,
        mode=mode, json=args.json, quiet=args.quiet, history=history, send=args.send,
        say=args.say, every=args.every, count=args.count, wait_for=args.wait_for)


def exit_code(error: BaseException | None) -> int:
    """The documented exit code for how the client ended."""
    if error is None:
        return EXIT_OK
    if isinstance(error, AuthRefused):
        return EXIT_AUTH
    if isinstance(error, TLSVerificationFailed):
        return EXIT_TLS
    if isinstance(error, GaveUp):
        return EXIT_GAVE_UP
    if isinstance(error, ConfigError | ProtocolError):
        return EXIT_USAGE
    return EXIT_ERROR

