"""Socket chores of the accept thread: peer names, TCP options, draining a wake-up."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any

from .admission import client_key
from .config import ServerConfig

__all__ = ["drain", "format_peer", "read_int", "tune_socket"]


def format_peer(addr: Any) -> tuple[str, str]:
    host, port = str(addr[0]), addr[1]
    if host.startswith("::ffff:"):
        host = host[7:]
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return shown, client_key(host)


def tune_socket(sock: socket.socket, cfg: ServerConfig) -> None:
    """Low latency, plus kernel backstops for dead peers (design-notes.md s3):
    keepalive finds a vanished idle peer, TCP_USER_TIMEOUT one with unacked data."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, int(cfg.heartbeat))
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        # Longer than our own deadlines, so the application-level error comes first.
        user_timeout = 3 * cfg.heartbeat + cfg.write_timeout + 5
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000))


def drain(sock: socket.socket) -> None:
    """Read a non-blocking socket empty (the wake-ups are only a nudge)."""
    with contextlib.suppress(OSError):
        while sock.recv(4096):
            pass


def read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
