"""Where the Redis log connects, and with which secret: the ``--store`` URL, read here.

``--store redis://[USER[:PASSWORD]@]HOST[:PORT][/DB]`` (``rediss://`` for TLS; query
arguments such as ``?ssl_ca_certs=/etc/ca.pem`` go to redis-py as they are). So that a
password is not on the command line, where ``ps`` shows it, it may come instead from
a file (its first line) or the environment variable
``SECURECHAT_REDIS_PASSWORD``; the URL's own password wins over both, the file over
the variable. ``SECURECHAT_REDIS_PASSWORD_FILE=FILE`` names the file (a Docker or
systemd credential, mode 0600). The user of an ACL login is the URL's (``redis://chat@host``).

redis-py is an optional extra (``pip install 'securechat[redis]'``): it is imported
only when a Redis store is chosen, and its absence is a configuration error that
says what to install.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

from .base import StoreOpenError

__all__ = ["PASSWORD_ENV", "PASSWORD_FILE_ENV", "RedisTarget", "import_redis",
           "is_redis_url", "redact", "redis_target"]

PASSWORD_ENV = "SECURECHAT_REDIS_PASSWORD"
PASSWORD_FILE_ENV = "SECURECHAT_REDIS_PASSWORD_FILE"
SCHEMES = ("redis://", "rediss://")


def is_redis_url(store: str) -> bool:
    return store.startswith(SCHEMES)


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """The URL to hand redis-py, the password if it comes from elsewhere, and the URL
    as it may be shown."""

    url: str
    password: str | None
    shown: str


def redis_target(url: str, *, env: dict[str, str] | None = None) -> RedisTarget:
    """Read the URL and find its password; raises StoreOpenError naming what is wrong."""
    environ = os.environ if env is None else env
    password_file = environ.get(PASSWORD_FILE_ENV, "")
    if not is_redis_url(url):
        raise StoreOpenError(f"--store {url!r}: a Redis store is redis:// or rediss://")
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise StoreOpenError(f"--store {shown}: not a valid URL: {exc}") from exc
    if not parts.hostname:
        raise StoreOpenError(f"--store {shown}: no host")
    if port is not None and not 0 < port < 65536:
        raise StoreOpenError(f"--store {shown}: bad port")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise StoreOpenError(f"--store {shown}: the path is a database number, "
                             f"not {path!r}")
    password: str | None = None
    if parts.password is None:
        if password_file:
            try:
                text = Path(password_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise StoreOpenError(f"{PASSWORD_FILE_ENV}={password_file}: cannot read "
                                     f"it: {exc.strerror or exc}") from exc
            password = text.splitlines()[0] if text.strip() else None
            if not password:
                raise StoreOpenError(f"{PASSWORD_FILE_ENV}={password_file}: it is empty")
        else:
            password = environ.get(PASSWORD_ENV) or None
    return RedisTarget(url, password, shown)


def import_redis() -> ModuleType:
    """redis-py, or a StoreOpenError that says how to get it."""
    try:
        return importlib.import_module("redis")
    except ImportError as exc:
        raise StoreOpenError(
            "--store redis://...: the Python package 'redis' is not installed; "
            "install securechat with the redis extra: pip install 'securechat[redis]'"
        ) from exc
