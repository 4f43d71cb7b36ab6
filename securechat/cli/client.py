"""``securechat-client``: chat from a terminal, a script or a container.

Modes, picked from the flags and from whether stdin is a terminal:

- interactive (stdin and stdout are terminals, no mode flag): a prompt_toolkit
  prompt; incoming lines are printed above the line being typed, never over it;
- lines (stdin is not a terminal, or ``--json``): every stdin line is one message;
  exits 0 at end of input once the server welcomed us and acknowledged every
  message (empty input included: a refused token still exits 3);
- ``--send TEXT``: one message, wait for its ack, exit;
- ``--room NAME`` (repeatable) logs in to those rooms instead of the server's default
  room, ``--all-rooms`` also joins every room the token's grants name;
- ``--say TEXT --every S --count N [--wait-for USER]``: a bot for demos;
- ``--listen``: print what arrives until interrupted.

The reconnecting and queueing are :class:`securechat.client.Client`'s. The command
is split by responsibility; this module picks the mode and owns the last word on
the exit code:

- :mod:`securechat.cli.options`: flags and environment -> ``Options``; exit codes;
- :mod:`securechat.cli.display`: events as terminal-safe lines or JSON objects;
- :mod:`securechat.cli.scripted`: stdin lines, ``--send``, ``--say``, ``--listen``;
- :mod:`securechat.cli.interactive`: the prompt_toolkit UI.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from ..client.api import Client
from ..errors import ConfigError
from .display import event_json, event_text, write_line
from .interactive import run_interactive
from .options import (
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_GAVE_UP,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TLS,
    EXIT_USAGE,
    PROG,
    Options,
    build_parser,
    exit_code,
    options_from_args,
)
from .scripted import run_scripted

__all__ = [
    "EXIT_AUTH", "EXIT_ERROR", "EXIT_GAVE_UP", "EXIT_OK", "EXIT_REFUSED", "EXIT_TLS",
    "EXIT_USAGE",
    "Options", "build_parser", "event_json", "event_text", "exit_code", "main",
    "options_from_args",
]


def _make_client(opts: Options) -> Client:
    return Client(opts.host, opts.port, token=opts.token, cafile=opts.ca,
                  server_name=opts.server_name, backoff=opts.backoff,
                  connect_timeout=opts.connect_timeout, rooms=opts.login_rooms)


def _never_ok_unless_welcomed(client: Client, code: int, stderr: TextIO) -> int:
    """Exit 0 only after a login the server accepted (belt and braces for every mode:
    a script must not take "stopped before logging in" for success)."""
    if code == EXIT_OK and client.stats()["connects"] == 0:
        write_line(stderr, f"{PROG}: stopped before the server accepted the login")
        return EXIT_ERROR
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stdin_tty = sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty()
    try:
        opts = options_from_args(args, stdin_tty=stdin_tty)
        client = _make_client(opts)
        if opts.mode == "interactive":
            code = run_interactive(client, opts.history, all_rooms=opts.all_rooms,
                                   login_rooms=opts.rooms)
        else:
            code = run_scripted(opts, client, sys.stdout, sys.stderr)
        return _never_ok_unless_welcomed(client, code, sys.stderr)
    except ConfigError as exc:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
