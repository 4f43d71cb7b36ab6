"""``securechat-client``: chat from a terminal, a script or a container.

Modes, picked from the flags and from whether stdin is a terminal:

- interactive (stdin and stdout are terminals, no mode flag): a prompt_toolkit
  prompt; incoming lines are printed above the line being typed, never over it;
- lines (stdin is not a terminal, or ``--json``): every stdin line is one message;
  exits 0 at end of input once the server welcomed us and acknowledged every
  message (empty input included: a refused token still exits 3);
- ``--send TEXT``: one message, wait for its ack, exit;
- ``--say TEXT --every S --count N [--wait-for USER]``: a bot for demos;
- ``--listen``: print what arrives until interrupted.

The reconnecting and queueing are :class:`securechat.client.Client`'s; this module
only parses options, formats events and maps the outcome to an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import select
import signal
import socket
import sys
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

from .. import __version__, protocol
from ..client.api import (
    Client,
    Closed,
    Connected,
    Connecting,
    Disconnected,
    Event,
    EventsDropped,
    Gap,
    Reconnecting,
    SendFailed,
    SendHandle,
)
from ..client.backoff import BackoffPolicy
from ..errors import (
    AuthRefused,
    ClientClosed,
    ClientError,
    ConfigError,
    GaveUp,
    ProtocolError,
    QueueFull,
    TLSVerificationFailed,
)

__all__ = ["build_parser", "event_json", "event_text", "exit_code", "main"]

PROG: Final = "securechat-client"
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
server acknowledges it, and unacknowledged ones are sent again.
"""

EPILOG = """\
interactive commands:
  /quit            say bye and leave (also Ctrl-D, Ctrl-C)
  /who             who is in the room
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


# --------------------------------------------------------------------------- options
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
    try:
        backoff = BackoffPolicy(base=args.retry_base, cap=args.retry_cap,
                                max_retries=args.max_retries)
    except ConfigError as exc:
        raise UsageError(str(exc).replace("backoff base", "--retry-base")
                         .replace("backoff cap", "--retry-cap")
                         .replace("max_retries", "--max-retries")) from exc
    return Options(
        host=host, port=port, ca=Path(ca) if ca else None,
        server_name=args.server_name or env.get("SECURECHAT_SERVER_NAME") or None,
        token=_token(args, env), backoff=backoff, connect_timeout=args.connect_timeout,
        mode=_mode(args, stdin_tty), json=args.json, quiet=args.quiet, send=args.send,
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


# --------------------------------------------------------------------------- formatting
def clean(text: str) -> str:
    """Make untrusted text safe for a terminal: control and format characters
    (escape sequences, newlines, bidi overrides) are shown as escapes, not obeyed."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif unicodedata.category(ch) in ("Zs",):
            out.append(" ")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _clock(ts: str | None = None) -> str:
    """``HH:MM:SS`` in local time, of a server timestamp or of now."""
    if ts:
        try:
            when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone()
        except ValueError:
            when = dt.datetime.now()
    else:
        when = dt.datetime.now()
    return when.strftime("%H:%M:%S")


def status_text(event: Event) -> str | None:
    """A connection-state line (for stderr or the interactive screen), else None."""
    if isinstance(event, Connected):
        welcome = event.welcome
        others = [clean(m) for m in welcome.members if m != welcome.user]
        present = f"; here: {', '.join(others)}" if others else "; nobody else here"
        again = "re" if event.reconnect else ""
        return f"{again}connected to {event.address} as {clean(welcome.user)}{present}"
    if isinstance(event, Disconnected):
        return f"disconnected: {clean(event.reason)}"
    if isinstance(event, Reconnecting):
        delay = f"{event.delay:.2f}" if event.delay < 1 else f"{event.delay:.1f}"
        return f"reconnecting in {delay} s (attempt {event.attempt}): {clean(event.reason)}"
    if isinstance(event, Closed):
        if isinstance(event.error, GaveUp):
            return str(event.error)
        if isinstance(event.error, TLSVerificationFailed):
            return (f"error: {clean(str(event.error))} (is --ca the CA that signed the "
                    "server certificate, and --server-name a name in it?)")
        if event.error is not None:
            return f"error: {clean(str(event.error))}"
        return None
    return None


def event_text(event: Event) -> str | None:
    """The chat line for a content event (``12:01:03 alice: hi``), else None."""
    if isinstance(event, protocol.Message):
        return f"{_clock(event.ts)} {clean(event.sender)}: {clean(event.body)}"
    if isinstance(event, protocol.Join):
        return f"{_clock()} * {clean(event.user)} joined"
    if isinstance(event, protocol.Leave):
        reason = f" ({clean(event.reason)})" if event.reason and event.reason != "bye" else ""
        return f"{_clock()} * {clean(event.user)} left{reason}"
    if isinstance(event, Gap):
        plural = "s" if event.missing != 1 else ""
        why = " (the server restarted)" if event.restarted else ""
        return f"{_clock()} ! {event.missing} message{plural} missed while away{why}"
    if isinstance(event, protocol.ErrorFrame):
        if event.code == "rate_limited":
            return None  # the client resends it; nothing is lost
        return f"{_clock()} ! server: {clean(event.code)}: {clean(event.message)}"
    if isinstance(event, SendFailed):
        return f"{_clock()} ! not delivered: {clean(event.body)!r}: {clean(str(event.error))}"
    if isinstance(event, EventsDropped):
        return f"{_clock()} ! {event.count} events dropped (output too slow)"
    return None


def event_json(event: Event) -> dict[str, Any]:
    """One event as a JSON-ready object; ``type`` names it."""
    match event:
        case protocol.Message(sender, body, seq, ts):
            return {"type": "msg", "from": sender, "body": body, "seq": seq, "ts": ts}
        case protocol.Ack(mid, seq):
            return {"type": "ack", "id": mid, "seq": seq}
        case protocol.Join(user):
            return {"type": "join", "user": user}
        case protocol.Leave(user, reason):
            return {"type": "leave", "user": user, "reason": reason}
        case protocol.ErrorFrame(code, message, mid, retry_after):
            return {"type": "error", "code": code, "message": message, "id": mid,
                    "retry_after": retry_after}
        case Connecting(address, attempt):
            return {"type": "connecting", "address": address, "attempt": attempt}
        case Connected(welcome, address, reconnect):
            return {"type": "connected", "address": address, "user": welcome.user,
                    "room": welcome.room, "members": list(welcome.members),
                    "session": welcome.session, "reconnect": reconnect}
        case Disconnected(reason):
            return {"type": "disconnected", "reason": reason}
        case Reconnecting(delay, attempt, reason, retry_after):
            return {"type": "reconnecting", "delay": round(delay, 3), "attempt": attempt,
                    "reason": reason, "retry_after": retry_after}
        case Gap(after, before, missing, restarted):
            return {"type": "gap", "after": after, "before": before, "missing": missing,
                    "restarted": restarted}
        case SendFailed(mid, body, error):
            return {"type": "send_failed", "id": mid, "body": body, "error": str(error)}
        case EventsDropped(count):
            return {"type": "events_dropped", "count": count}
        case Closed(reason, error):
            return {"type": "closed", "reason": reason,
                    "error": str(error) if error else None, "exit_code": exit_code(error)}
    return {"type": type(event).__name__.lower()}  # pragma: no cover - every event is above


# --------------------------------------------------------------------------- running
class Printer:
    """Prints events as they arrive, on its own thread (the main thread sends).

    ``show`` filters what goes to stdout; connection state goes to stderr."""

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
                self.print(event)
        finally:
            self.finished.set()

    def print(self, event: Event) -> None:
        status = status_text(event)
        # --quiet hides state changes, never why the client stopped.
        if status is not None and (not self.opts.quiet or isinstance(event, Closed)):
            _write_line(self.stderr, f"{PROG}: {status}")
        if not self.show(event):
            return
        if self.opts.json:
            _write_line(self.stdout, json.dumps(event_json(event), ensure_ascii=False))
        else:
            text = event_text(event)
            if text is not None:
                _write_line(self.stdout, text)


def _write_line(stream: TextIO, line: str) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()  # one line at a time: docker logs, pipes
    except (OSError, ValueError):
        pass  # stdout closed (a pipe reader went away): keep the client running


def _make_client(opts: Options) -> Client:
    return Client(opts.host, opts.port, token=opts.token, cafile=opts.ca,
                  server_name=opts.server_name, backoff=opts.backoff,
                  connect_timeout=opts.connect_timeout)


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


def _run_scripted(opts: Options, stdout: TextIO, stderr: TextIO) -> int:
    client = _make_client(opts)
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

    signum = _run_until_signal(work, before=begin, on_signal=interrupted)
    client.close()
    printer.join(2.0)
    if signum is not None:
        return 128 + signum
    error = outcome[0] if outcome else ClientError("internal error (see above)")
    if isinstance(error, ClientClosed) and client.error is not None:
        error = client.error
    if error is not None and error is not client.error:  # else the printer said it
        _write_line(stderr, f"{PROG}: error: {error}")
    return _never_ok_unless_welcomed(
        client, exit_code(error if error is not None else client.error), stderr)


def _never_ok_unless_welcomed(client: Client, code: int, stderr: TextIO) -> int:
    """Exit 0 only after a login the server accepted (belt and braces for every mode:
    a script must not take "stopped before logging in" for success)."""
    if code == EXIT_OK and client.stats()["connects"] == 0:
        _write_line(stderr, f"{PROG}: stopped before the server accepted the login")
        return EXIT_ERROR
    return code


def _run_until_signal(work: Callable[[], None], *, before: Callable[[], None],
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


INTERACTIVE_HELP = """\
commands:
  /quit     say bye and leave (also Ctrl-D, Ctrl-C)
  /who      who is in the room
  /help     this list
  //text    send a line that starts with '/'
anything else is sent to the room."""


def _run_interactive(opts: Options, client: Client) -> int:
    """A prompt_toolkit prompt: lines printed by other threads go above the line being
    typed (patch_stdout), which is redrawn intact under them."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    session: PromptSession[str] = PromptSession()
    app = session.app
    finished = threading.Event()

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
                status = status_text(event)
                if status is not None:
                    show(f"{_clock()} -- {status}")
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
                if not _interactive_line(client, line.rstrip("\r\n"), show):
                    break
            client.close()
            printer.join(2.0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return _never_ok_unless_welcomed(client, exit_code(client.error), sys.stderr)


def _interactive_line(client: Client, line: str, show: Callable[[str], None]) -> bool:
    """Handle one typed line; False means leave."""
    if not line.strip():
        return True
    if line.startswith("/") and not line.startswith("//"):
        command = line.split(maxsplit=1)[0].lower()
        if command in ("/quit", "/exit", "/q"):
            return False
        if command == "/help":
            show(INTERACTIVE_HELP)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stdin_tty = sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty()
    try:
        opts = options_from_args(args, stdin_tty=stdin_tty)
        if opts.mode == "interactive":
            return _run_interactive(opts, _make_client(opts))
        return _run_scripted(opts, sys.stdout, sys.stderr)
    except ConfigError as exc:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
