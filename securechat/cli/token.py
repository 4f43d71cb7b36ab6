"""``securechat-token``: create, list and revoke access tokens."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, TokenError
from ..server.tokens import add_token, load_store, revoke_tokens

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

EPILOG = """\
The token is printed once, on standard output, and never stored: the file keeps
only a salted SHA-256 of it, with mode 0600 (a file you made 0640 stays 0640). A
running server re-reads the file when it changes: a revoked token's live sessions
are closed within 2 seconds.

examples:
  securechat-token add alice --tokens tokens.json
  securechat-token add alice --tokens tokens.json      # a second device: a second token
  securechat-token list --tokens tokens.json
  securechat-token revoke alice --tokens tokens.json   # every token of alice
  securechat-token revoke 3f9c0a1b2c3d --tokens tokens.json  # one token, by id
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securechat-token", description="Manage securechat access tokens.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.environ.get("SECURECHAT_TOKENS") or "tokens.json"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tokens", type=Path, default=Path(default), metavar="FILE",
                        help=f"tokens file (default: {default}; env SECURECHAT_TOKENS)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = sub.add_parser("add", parents=[common], help="create a token for NAME, print it once")
    add.add_argument("name", metavar="NAME", help="user name: 1-32 of A-Z a-z 0-9 _ . -")
    add.add_argument("--quiet", action="store_true",
                     help="print only the token (for scripts); otherwise a hint goes to stderr")
    sub.add_parser("list", parents=[common], help="list names and token ids (never tokens)")
    rev = sub.add_parser("revoke", parents=[common], help="revoke NAME's tokens, or one token id")
    rev.add_argument("name", metavar="NAME_OR_ID")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "add":
            token, record = add_token(args.tokens, args.name)
            print(token)
            if not args.quiet:
                print(f"securechat-token: token {record.id} for {record.name} added to "
                      f"{args.tokens}; it is shown only this once", file=sys.stderr)
        elif args.command == "list":
            store = load_store(args.tokens)
            if not len(store):
                print(f"securechat-token: {args.tokens} holds no tokens", file=sys.stderr)
            for r in store:
                print(f"{r.name}\t{r.id}\t{r.created}")
        else:
            removed = revoke_tokens(args.tokens, args.name)
            if not removed:
                print(f"securechat-token: error: no token for {args.name!r} in {args.tokens}",
                      file=sys.stderr)
                return EXIT_ERROR
            for r in removed:
                print(f"revoked {r.name} {r.id}")
    except (TokenError, ConfigError) as exc:
        print(f"securechat-token: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, TokenError) and args.command == "add" else EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
