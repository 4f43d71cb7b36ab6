"""``securechat-server``: run the relay from a terminal, a service manager or a container."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .. import __version__
from ..errors import ConfigError, ServerThreadDied, TokenError
from ..server import Server
from ..server.config import ServerConfig
from ..server.logs import setup_logging
from ..server.ops import config as admin_options
from ..store.redis_config import redact

__all__ = ["build_parser", "config_from_args", "main"]

ENV_PREFIX = "SECURECHAT_"
EXIT_OK, EXIT_USAGE, EXIT_CONFIG = 0, 2, 1
#: A server thread died of a bug (sysexits.h EX_SOFTWARE): restart the process.
EXIT_SOFTWARE = 70
#: Tests only: "accept", "io", "tokens" or "admin" makes that part of the server raise.
TEST_FAULT_ENV = "SECURECHAT_TEST_FAULT"
TEST_FAULTS = ("accept", "io", "tokens", "admin")

DESCRIPTION = """\
A TLS-secured, token-authenticated broadcast chat server.

Every option can also be set with an environment variable: SECURECHAT_ plus the
option name in capitals with '_' for '-' (e.g. SECURECHAT_PORT=7443). A command
line option wins over the environment.
"""

EPILOG = """\
examples:
  securechat-certs                                  # dev CA + server cert into certs/
  securechat-token add alice --tokens tokens.json   # prints alice's token once
  securechat-server --tokens tokens.json            # listen on 127.0.0.1:7443

exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 1 on a configuration error
(missing or bad certificate, key or tokens file) or when shutdown had to cut
clients off, 2 on a usage error, 70 when a server thread died of a bug (its
traceback is in the log): let a supervisor restart the server.

admin endpoint: --admin-listen 127.0.0.1:9090 serves /metrics (Prometheus),
/healthz and /readyz over plain HTTP on loopback; another address needs
--admin-tls and --admin-token-file. `securechat-server status` reads it (see
`securechat-server status --help`).

certificates: SIGHUP (or a change to --cert/--key, checked every --tokens-poll
seconds) loads the pair again for new connections; live sessions stay up, and a
pair that does not load is logged (certs_reload_failed) and the old one kept.
"""


def _env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securechat-server", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ServerConfig()
    docs = ServerConfig.option_docs()
    for f in dataclasses.fields(ServerConfig):
        default = getattr(defaults, f.name)
        kind: Any = type(default)
        if kind is bool:  # pragma: no cover - no boolean options yet
            continue
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
            metavar=f.name.upper() if kind is not Path else "FILE",
            help=f"{docs[f.name]} (default: {default}; env {_env_name(f.name)})")
    admin_options.add_arguments(parser)
    parser.add_argument("--check-config", action="store_true",
                        help="load certificate, key and tokens, report problems, and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def config_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> ServerConfig:
    """Command line over environment over defaults."""
    env = dict(os.environ) if env is None else env
    defaults = ServerConfig()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServerConfig):
        cli = getattr(args, f.name, None)
        if cli is not None:
            values[f.name] = cli
            continue
        raw = env.get(_env_name(f.name))
        if raw is not None and raw != "":
            kind: Any = type(getattr(defaults, f.name))
            try:
                values[f.name] = kind(raw)
            except ValueError as exc:
                raise ConfigError(f"{_env_name(f.name)}={raw!r}: not a valid {kind.__name__}"
                                  ) from exc
    return ServerConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["status"]:
        from .status import main as status_main
        code: int = status_main(argv[1:])
        return code
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        admin = admin_options.from_args(args, os.environ)
    except ConfigError as exc:
        parser.print_usage(sys.stderr)
        print(f"securechat-server: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.log_level, config.log_format)
    log = logging.getLogger("securechat.server")
    try:
        server = Server(config, admin=admin)
    except (ConfigError, TokenError) as exc:
        print(f"securechat-server: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        store = (f"message log in {config.data_dir}" if config.store == "sqlite"
                 else "messages in memory" if config.store == "memory"
                 else f"messages in Redis at {redact(config.store)}")
        print(f"securechat-server: configuration OK ({len(server.tokens)} tokens, {store})")
        server.close_unstarted()
        return EXIT_OK
    if not server.tokens:
        log.warning("the tokens file holds no tokens: nobody can log in "
                    "(add one with: securechat-token add NAME --tokens %s)", config.tokens)
    # Refusals in their TLS handshake hold descriptors too (--max-refusing).
    _raise_fd_limit(config.max_connections + config.max_refusing, log)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.interrupt()  # takes no lock: safe in a signal handler

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        server.request_certificate_reload()  # a flag and a non-blocking wake-up, no lock

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if hasattr(signal, "SIGHUP"):
        # Certificate rotation: new connections get the re-read --cert/--key pair.
        signal.signal(signal.SIGHUP, on_hangup)
    # A file-size limit (RLIMIT_FSIZE) must fail a write with EFBIG, which the message
    # log answers with store_unavailable, not kill the whole server.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    fault = os.environ.get(TEST_FAULT_ENV)
    if fault:
        if fault not in TEST_FAULTS:
            print(f"securechat-server: error: {TEST_FAULT_ENV}={fault!r}: not one of "
                  f"{', '.join(TEST_FAULTS)} (tests only)", file=sys.stderr)
            return EXIT_USAGE
        server._set_test_fault(fault)
    try:
        server.start()
    except OSError as exc:
        print(f"securechat-server: error: cannot listen on {config.host}:{config.port}: "
              f"{exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:  # the admin address
        print(f"securechat-server: error: {exc}", file=sys.stderr)
        server.close_unstarted()
        return EXIT_CONFIG
    # Everything allocated so far lives as long as the process: keep it out of the
    # cyclic collector's full passes, which otherwise pause every connection.
    gc.freeze()
    host, port = server.address
    _say(f"securechat-server: listening on {host}:{port} (TLS {config.tls_min}+)")
    if server._admin is not None:
        ahost, aport = server._admin.address
        scheme = "https" if admin is not None and admin.tls else "http"
        shown = f"[{ahost}]" if ":" in ahost else ahost
        _say(f"securechat-server: admin endpoint on {scheme}://{shown}:{aport} "
             "(/metrics /healthz /readyz)")
    try:
        server.serve_forever()
    except ServerThreadDied as exc:
        # Up but not accepting must not happen: say goodbye to whoever is still
        # served, then exit non-zero so that a supervisor starts a fresh process.
        server.shutdown()
        _say(f"securechat-server: error: {exc}; exiting with status {EXIT_SOFTWARE} "
             "so that a supervisor restarts the server")
        return EXIT_SOFTWARE
    clean = server.shutdown()
    return EXIT_OK if clean else EXIT_CONFIG


def _say(line: str) -> None:
    """One line on stderr in one write: server threads log to the same stream, and
    print() writes the text and the newline separately, so a log line could land
    between them."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _raise_fd_limit(max_connections: int, log: logging.Logger) -> None:
    """Each connection is a file descriptor: lift the soft limit towards the hard one so
    --max-connections is reachable (a default soft limit of 1024 is common)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + 64
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("open-files limit %d is below --max-connections %d; raise it "
                    "(ulimit -n) or lower --max-connections", soft, max_connections)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
