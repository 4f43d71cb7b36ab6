"""``securechat-certs``: a development CA and a server certificate, in one command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from ..devcerts import CA_DAYS, DEFAULT_NAMES, MAX_SERVER_DAYS, generate, parse_names
from ..errors import ConfigError

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

DESCRIPTION = f"""\
Create a development CA and a server certificate signed by it (ECDSA P-256,
SHA-256). The server certificate is valid for {MAX_SERVER_DAYS} days at most and names
{", ".join(DEFAULT_NAMES)} (the last two as IP addresses; "securechat"
is the server's host name in docker-compose.yml), plus every --name given.

Files written to the output directory:
  ca.pem      the CA certificate: give it to clients (securechat-client --ca ca.pem)
  ca.key      the CA key (mode 0600): only needed to issue the next server certificate
  server.pem  the server certificate (the server's --cert)
  server.key  the server key (mode 0600; the server's --key)

An existing CA (ca.pem + ca.key) is reused, so renewing the server certificate
(--force) does not make clients trust anything new. Existing files are never
replaced without --force.
"""

EPILOG = """\
examples:
  securechat-certs                              # certs/ for localhost and docker compose
  securechat-certs --name chat.lan --name 192.168.1.20   # also reachable by these
  securechat-certs --force                      # renew server.pem/server.key, same CA
  securechat-certs --new-ca --force             # start over: clients need the new ca.pem
  securechat-certs --if-missing                 # only if absent or expiring (scripts)

For a server reachable from the Internet, prefer a certificate from a public CA
(e.g. Let's Encrypt): give the server its full chain and key with --cert/--key;
clients then need no --ca.

exit codes: 0 done (or nothing to do), 1 files exist or cannot be read/written, 2 usage.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securechat-certs", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("certs"), metavar="DIR",
                        help="output directory (default: certs; created if missing)")
    parser.add_argument("--name", action="append", default=[], metavar="NAME",
                        help="an extra host name or IP address for the server certificate "
                             "(repeatable; added to the defaults)")
    parser.add_argument("--ip", action="append", default=[], metavar="ADDR",
                        help="an extra IP address (repeatable; same as --name ADDR)")
    parser.add_argument("--no-default-names", action="store_true",
                        help=f"leave out the defaults ({', '.join(DEFAULT_NAMES)})")
    parser.add_argument("--days", type=int, default=MAX_SERVER_DAYS, metavar="N",
                        help=f"server certificate validity, 1-{MAX_SERVER_DAYS} days "
                             f"(default: {MAX_SERVER_DAYS})")
    parser.add_argument("--ca-days", type=int, default=CA_DAYS, metavar="N",
                        help=f"validity of a new CA in days (default: {CA_DAYS})")
    parser.add_argument("--new-ca", action="store_true",
                        help="make a new CA even if ca.pem/ca.key exist (needs --force "
                             "to replace them)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing if server.pem/server.key exist, match and are valid "
                             "for at least one more day; otherwise (re)create them")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [*(() if args.no_default_names else DEFAULT_NAMES), *args.name, *args.ip]
    try:
        parse_names(names)
        for ip in args.ip:
            if not isinstance(parse_names([ip])[0], x509.IPAddress):
                raise ValueError(f"--ip {ip!r} is not an IP address")
    except ValueError as exc:
        parser.error(str(exc))
    if not names:
        parser.error("no names left: give at least one --name with --no-default-names")
    if not 1 <= args.days <= MAX_SERVER_DAYS:
        parser.error(f"--days must be between 1 and {MAX_SERVER_DAYS}")
    if args.ca_days < args.days:
        parser.error("--ca-days must be at least --days")
    try:
        outcome = generate(args.out, names, days=args.days, ca_days=args.ca_days,
                           new_ca=args.new_ca, force=args.force, if_missing=args.if_missing)
    except ConfigError as exc:
        print(f"securechat-certs: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"securechat-certs: error: {exc.filename or args.out}: {exc.strerror}",
              file=sys.stderr)
        return EXIT_ERROR
    out = args.out
    if outcome.server is None or outcome.ca is None:
        print(f"securechat-certs: {out / 'server.pem'} and {out / 'server.key'} are in place "
              "and valid; nothing to do")
        return EXIT_OK
    ca_until = f"{outcome.ca.cert.not_valid_after_utc:%Y-%m-%d}"
    if outcome.new_ca:
        print(f"securechat-certs: new development CA {out / 'ca.pem'} (valid until {ca_until})")
    else:
        print(f"securechat-certs: reused the CA in {out / 'ca.pem'} (valid until {ca_until})")
    shown = ", ".join(str(n.value) for n in parse_names(names))
    print(f"securechat-certs: server certificate {out / 'server.pem'} for {shown} "
          f"(valid until {outcome.server.cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)")
    print(f"securechat-certs: wrote {', '.join(str(p) for p in outcome.written)}")
    print(f"next: securechat-server --cert {out / 'server.pem'} --key {out / 'server.key'} ...; "
          f"clients: securechat-client --ca {out / 'ca.pem'} ...")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
