"""``securechat-token``: create, list, rotate and revoke access tokens, and edit their
room grants."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, TokenError
from ..grants import MAX_GRANTS, Grants, Mode, parse_patterns
from ..protocol import room_problem
from ..server.tokens import (
    TokenRecord,
    add_token,
    format_time,
    grant_rooms,
    load_store,
    revoke_tokens,
    rotate_tokens,
    ungrant_rooms,
)

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: The server's default room, named as securechat-server names its --room variable.
ROOM_ENV = "SECURECHAT_ROOM"
DEFAULT_ROOM = "lobby"

EPILOG = """\
The token is printed once, on standard output, and never stored: the file keeps
only a salted SHA-256 of it, with mode 0600 (a file you made 0640 stays 0640). A
running server re-reads the file when it changes, within 2 seconds: a revoked
token's live sessions are closed, and grant changes apply to live sessions (a
session loses a room whose grant is gone, and may no longer send where its grant
became read-only).

rotate issues a new token with the same grants and lets the old ones (every token of
NAME, or the one id) keep working for --grace (default 1h; 0: stop now), so a client
can be moved to the new token without a gap. Past its expiry a token is refused at
login and its live sessions are closed (error revoked) within about a second; the
file does not need to change for that. list shows the expiry; revoke removes the
token for good.

Room grants are glob patterns over room names ('*' any run of characters, '?' one),
comma-separated: 'general,ops,team-*' (a leading '#' is dropped). Each is rw (read
and send) or, with --read-only, ro (read only); where several match a room, the
widest wins. A token made without --rooms may enter the server's default room only;
grant and ungrant first turn that into an explicit grant of --room, so give them
the server's --room if it is not 'lobby'.

examples:
  securechat-token add alice --tokens tokens.json      # the default room only
  securechat-token add alice --tokens tokens.json      # a second device: a second token
  securechat-token add bot --rooms 'general,team-*' --tokens tokens.json
  securechat-token add auditor --rooms '*' --read-only --tokens tokens.json
  securechat-token grant alice ops,release --tokens tokens.json
  securechat-token grant alice 'team-*' --read-only --tokens tokens.json
  securechat-token ungrant alice release --tokens tokens.json
  securechat-token list --tokens tokens.json
  securechat-token rotate alice --grace 10m --tokens tokens.json  # old ones: 10 more min
  securechat-token revoke alice --tokens tokens.json   # every token of alice
  securechat-token revoke 3f9c0a1b2c3d --tokens tokens.json  # one token, by id
"""


def _patterns(text: str) -> list[str]:
    try:
        patterns = parse_patterns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(patterns) > MAX_GRANTS:
        raise argparse.ArgumentTypeError(f"{len(patterns)} patterns: a token holds at most "
                                         f"{MAX_GRANTS}")
    return patterns


def _room(text: str) -> str:
    name = text.strip().removeprefix("#")
    if (problem := room_problem(name)) is not None:
        raise argparse.ArgumentTypeError(f"{problem}: {text!r}")
    return name


_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: A grace longer than this is a typo (and would overflow the time functions).
MAX_GRACE = 366 * 86400


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``10m``, ``1h``, ``2d`` or plain (``1.5``, ``0``)."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 10m, 1h, "
                                         "2d or plain seconds)")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(value) or value > MAX_GRACE:
        raise argparse.ArgumentTypeError(f"duration {text!r} is longer than 366 days")
    return value


def format_expiry(record: TokenRecord, now: float) -> str:
    """``expires 2026-12-02T08:00:00Z`` (or ``expired ...``), "" for a token that does
    not expire."""
    if record.expires is None:
        return ""
    word = "expired" if record.expires <= now else "expires"
    return f"{word} {format_time(record.expires)}"


def format_grants(grants: Grants | None) -> str:
    """``general:rw,ops:ro`` for ``list`` and ``grant``; None is the default room."""
    if grants is None:
        return "(default room)"
    return ",".join(f"{p}:{m}" for p, m in grants.items) or "(none)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securechat-token", description="Manage securechat access tokens and the "
        "rooms each may enter.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.environ.get("SECURECHAT_TOKENS") or "tokens.json"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tokens", type=Path, default=Path(default), metavar="FILE",
                        help=f"tokens file (default: {default}; env SECURECHAT_TOKENS)")
    room = argparse.ArgumentParser(add_help=False)
    default_room = os.environ.get(ROOM_ENV) or DEFAULT_ROOM
    room.add_argument("--room", type=_room, default=default_room, metavar="ROOM",
                      help="the server's default room (its --room), which a token made "
                      f"without --rooms may enter (default: {default_room}; env {ROOM_ENV})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = sub.add_parser("add", parents=[common, room],
                         help="create a token for NAME, print it once")
    add.add_argument("name", metavar="NAME", help="user name: 1-32 of A-Z a-z 0-9 _ . -")
    add.add_argument("--rooms", type=_patterns, metavar="PATTERNS",
                     help="comma-separated room patterns the token may enter, e.g. "
                     "'general,ops,team-*' (default: the server's default room only)")
    add.add_argument("--read-only", action="store_true",
                     help="grant those rooms read-only (ro): join and read, never send")
    add.add_argument("--quiet", action="store_true",
                     help="print only the token (for scripts); otherwise a hint goes to stderr")
    sub.add_parser("list", parents=[common],
                   help="list names, token ids, grants and expiries (never tokens)")
    rot = sub.add_parser("rotate", parents=[common],
                         help="issue NAME (or one token id) a new token with the same "
                         "grants, print it once; the old ones expire after --grace")
    rot.add_argument("name", metavar="NAME_OR_ID")
    rot.add_argument("--grace", type=parse_duration, default=3600.0, metavar="DURATION",
                     help="how long the old tokens keep working: 90s, 10m, 1h, 2d or "
                     "plain seconds; 0: not at all (default: 1h)")
    rot.add_argument("--quiet", action="store_true",
                     help="print only the token (for scripts); otherwise a hint goes to stderr")
    rev = sub.add_parser("revoke", parents=[common], help="revoke NAME's tokens, or one token id")
    rev.add_argument("name", metavar="NAME_OR_ID")
    grant = sub.add_parser("grant", parents=[common, room],
                           help="let NAME's tokens (or one token id) enter PATTERNS; "
                           "live within 2 s")
    grant.add_argument("name", metavar="NAME_OR_ID")
    grant.add_argument("patterns", type=_patterns, metavar="PATTERNS",
                       help="comma-separated room patterns; one already granted gets the "
                       "new mode")
    grant.add_argument("--read-only", action="store_true",
                       help="grant them read-only (ro); without it: read and send (rw)")
    ungrant = sub.add_parser("ungrant", parents=[common, room],
                             help="remove PATTERNS from NAME's tokens (or one token id); "
                             "live within 2 s")
    ungrant.add_argument("name", metavar="NAME_OR_ID")
    ungrant.add_argument("patterns", type=_patterns, metavar="PATTERNS",
                         help="comma-separated patterns, exactly as granted ('team-*' "
                         "removes that pattern, not a grant of 'team-a')")
    return parser


def _error(message: str) -> None:
    print(f"securechat-token: error: {message}", file=sys.stderr)


def _show(records: list[TokenRecord]) -> None:
    for r in records:
        print(f"{r.name}\t{r.id}\t{format_grants(r.grants)}")
        if r.grants is not None and not r.grants.items:
            print(f"securechat-token: warning: token {r.id} of {r.name} now holds no grant: "
                  "it can enter no room (revoke removes it)", file=sys.stderr)


def _add(args: argparse.Namespace) -> int:
    mode: Mode = "ro" if args.read_only else "rw"
    grants = None
    if args.rooms is not None:
        grants = Grants(dict.fromkeys(args.rooms, mode))
    elif args.read_only:
        grants = Grants({args.room: mode})
    token, record = add_token(args.tokens, args.name, grants)
    print(token)
    if not args.quiet:
        print(f"securechat-token: token {record.id} for {record.name} added to "
              f"{args.tokens}, rooms {format_grants(record.grants)}; it is shown only "
              "this once", file=sys.stderr)
    return EXIT_OK


def _grant(args: argparse.Namespace) -> int:
    mode: Mode = "ro" if args.read_only else "rw"
    records = grant_rooms(args.tokens, args.name, args.patterns, mode, args.room)
    if not records:
        _error(f"no token for {args.name!r} in {args.tokens}")
        return EXIT_ERROR
    _show(records)
    return EXIT_OK


def _ungrant(args: argparse.Namespace) -> int:
    results = ungrant_rooms(args.tokens, args.name, args.patterns, args.room)
    if not results:
        _error(f"no token for {args.name!r} in {args.tokens}")
        return EXIT_ERROR
    changed = False
    for record, missing in results:
        for pattern in missing:
            print(f"securechat-token: warning: token {record.id} of {record.name} holds "
                  f"no grant {pattern!r}", file=sys.stderr)
        changed = changed or len(missing) < len(args.patterns)
    if not changed:
        _error(f"nothing changed: no token of {args.name!r} holds "
               f"{', '.join(map(repr, args.patterns))}")
        return EXIT_ERROR
    _show([record for record, _ in results])
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    store = load_store(args.tokens)
    if not len(store):
        print(f"securechat-token: {args.tokens} holds no tokens", file=sys.stderr)
    now = time.time()
    for r in store:
        # The expiry is a fifth column only where there is one: four-column readers
        # of the output keep working.
        expiry = format_expiry(r, now)
        print(f"{r.name}\t{r.id}\t{r.created}\t{format_grants(r.grants)}"
              + (f"\t{expiry}" if expiry else ""))
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    result = rotate_tokens(args.tokens, args.name, args.grace)
    if result is None:
        _error(f"no token for {args.name!r} in {args.tokens}")
        return EXIT_ERROR
    token, record, old = result
    print(token)
    if not args.quiet:
        now = time.time()
        print(f"securechat-token: token {record.id} for {record.name} added to "
              f"{args.tokens}, rooms {format_grants(record.grants)}; it is shown only "
              "this once", file=sys.stderr)
        for r in old:
            print(f"securechat-token: old token {r.id} {format_expiry(r, now)}",
                  file=sys.stderr)
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    removed = revoke_tokens(args.tokens, args.name)
    if not removed:
        _error(f"no token for {args.name!r} in {args.tokens}")
        return EXIT_ERROR
    for r in removed:
        print(f"revoked {r.name} {r.id}")
    return EXIT_OK


COMMANDS = {"add": _add, "list": _list, "revoke": _revoke, "grant": _grant,
            "ungrant": _ungrant, "rotate": _rotate}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (TokenError, ConfigError) as exc:
        _error(str(exc))
        return EXIT_USAGE if isinstance(exc, TokenError) and args.command == "add" else EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
