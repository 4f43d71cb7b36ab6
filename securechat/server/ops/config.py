"""The admin listener's settings, apart from :class:`~securechat.server.config.ServerConfig`
(chat limits) because they describe a second, operator-only port.

The rule: plain HTTP only on a loopback address. Anything else must be TLS (the
server's own certificate, so rotation covers it) with a bearer token, because
``/metrics`` tells an observer who is busy and when, and a token sent in clear is no
token. The choice is the operator's to make explicitly, never a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError

__all__ = ["AdminConfig", "add_arguments", "from_args", "parse_address"]

#: The least a token file may hold (securechat-token makes 43-character secrets).
MIN_TOKEN_LENGTH = 16


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); ConfigError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--admin-listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9090")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--admin-listen {text!r}: the port is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"--admin-listen {text!r}: the port must be between 0 and 65535")
    return host, number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """Where and how the admin endpoint listens, and its caps. Times in seconds."""

    listen: str = field(default="", metadata=_doc(
        "HOST:PORT of the admin HTTP endpoint (/metrics, /healthz, /readyz); empty: off. "
        "Only a loopback address may be plain HTTP; any other needs --admin-tls and "
        "--admin-token-file"))
    tls: bool = field(default=False, metadata=_doc(
        "serve the admin endpoint over TLS with the server's --cert/--key"))
    token_file: Path | None = field(default=None, metadata=_doc(
        "file holding the bearer token admin requests must send "
        "(Authorization: Bearer TOKEN); required off loopback"))
    health_stall: float = field(default=5.0, metadata=_doc(
        "seconds an I/O loop (or the accept thread) may go without a turn before "
        "/healthz answers 503"))
    header_timeout: float = 5.0
    max_connections: int = 16
    max_head: int = 8192

    def __post_init__(self) -> None:
        if not self.listen:
            return
        host, _ = parse_address(self.listen)
        if not is_loopback(host) and not (self.tls and self.token_file is not None):
            raise ConfigError(
                f"--admin-listen {self.listen}: not a loopback address, so it needs "
                "--admin-tls and --admin-token-file (metrics are not for everyone, and a "
                "token sent in clear protects nothing)")
        if self.health_stall <= 0 or self.header_timeout <= 0:
            raise ConfigError("--health-stall must be greater than 0")
        if self.max_connections < 1 or self.max_head < 256:
            raise ConfigError("admin caps must be at least 1 connection and 256 bytes")

    @property
    def address(self) -> tuple[str, int]:
        return parse_address(self.listen)

    def read_token(self) -> bytes | None:
        """The bearer token from ``token_file`` (None without one); ConfigError if the
        file is missing, unreadable or too short to be a secret."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--admin-token-file {self.token_file}: cannot read it: "
                              f"{exc.strerror}") from exc
        except UnicodeError as exc:
            raise ConfigError(f"--admin-token-file {self.token_file}: not text") from exc
        if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise ConfigError(f"--admin-token-file {self.token_file}: expected one token of "
                              f"at least {MIN_TOKEN_LENGTH} characters without spaces")
        return token.encode()

    def replace(self, **changes: object) -> AdminConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the command line
ENV_PREFIX = "SECURECHAT_"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The admin options of ``securechat-server`` (each also SECURECHAT_<NAME>)."""
    docs = {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(AdminConfig)}
    group = parser.add_argument_group("admin endpoint (metrics and health)")
    group.add_argument("--admin-listen", metavar="HOST:PORT", default=None,
                       help=f"{docs['listen']} (default: off; env SECURECHAT_ADMIN_LISTEN)")
    group.add_argument("--admin-tls", action="store_true", default=None,
                       help=f"{docs['tls']} (env SECURECHAT_ADMIN_TLS=1)")
    group.add_argument("--admin-token-file", metavar="FILE", type=Path, default=None,
                       help=f"{docs['token_file']} (env SECURECHAT_ADMIN_TOKEN_FILE)")
    group.add_argument("--health-stall", metavar="SECONDS", type=float, default=None,
                       help=f"{docs['health_stall']} (default: {AdminConfig().health_stall}; "
                       "env SECURECHAT_HEALTH_STALL)")


def from_args(args: argparse.Namespace, env: Mapping[str, str]) -> AdminConfig | None:
    """Command line over environment; None when the endpoint is off."""
    def pick(name: str) -> str | None:
        value = getattr(args, name, None)
        if value is not None:
            return str(value)
        raw = env.get(ENV_PREFIX + name.upper())
        return raw if raw else None

    listen = pick("admin_listen")
    if not listen:
        return None
    tls_raw = "1" if args.admin_tls else (env.get(ENV_PREFIX + "ADMIN_TLS") or "").lower()
    if tls_raw not in _TRUE | _FALSE:
        raise ConfigError(f"SECURECHAT_ADMIN_TLS={tls_raw!r}: expected 1/true/yes/on or "
                          "0/false/no/off")
    token = pick("admin_token_file")
    stall = pick("health_stall")
    try:
        health_stall = float(stall) if stall is not None else AdminConfig().health_stall
    except ValueError:
        raise ConfigError(f"SECURECHAT_HEALTH_STALL={stall!r}: not a number") from None
    return AdminConfig(listen=listen, tls=tls_raw in _TRUE,
                       token_file=Path(token) if token else None, health_stall=health_stall)
