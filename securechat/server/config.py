"""Server settings: one frozen dataclass, every default documented here once.

``securechat-server --help`` and README's limits table are generated from / checked
against these fields, so the numbers cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..protocol import DEFAULT_MAX_FRAME, DEFAULT_PORT, PRE_AUTH_MAX_FRAME, room_problem

__all__ = ["ServerConfig"]


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server can be told. Times are in seconds, sizes in bytes."""

    host: str = field(default="127.0.0.1", metadata=_doc(
        "address to listen on (0.0.0.0 or :: for every interface)"))
    port: int = field(default=DEFAULT_PORT, metadata=_doc("TCP port (0 picks a free one)"))
    cert: Path = field(default=Path("certs/server.pem"), metadata=_doc(
        "server certificate chain, PEM"))
    key: Path = field(default=Path("certs/server.key"), metadata=_doc(
        "server private key, PEM, unencrypted, mode 0600"))
    tokens: Path = field(default=Path("tokens.json"), metadata=_doc(
        "tokens file made by securechat-token; re-read when it changes"))
    room: str = field(default="lobby", metadata=_doc(
        "the default room: where a client that names no room (protocol 1 and 2) is put, "
        "and the one room a token made without --rooms may enter"))
    max_rooms: int = field(default=10_000, metadata=_doc(
        "rooms the server holds (with members or stored messages); a join that would "
        "make one more: error too_many_rooms"))
    max_room_members: int = field(default=10_000, metadata=_doc(
        "sessions in one room; beyond it a join gets error room_full"))
    max_rooms_per_session: int = field(default=100, metadata=_doc(
        "rooms one session may be in at once; beyond it: error too_many_rooms"))
    tls_min: str = field(default="1.3", metadata=_doc(
        "lowest TLS version accepted: 1.3, or 1.2 (AEAD suites only)"))
    io_threads: int = field(default=1, metadata=_doc(
        "I/O threads; each owns many connections through selectors. One is fastest "
        "under the GIL (bench: 560k vs 450k msgs/s with two on one core)"))
    max_connections: int = field(default=10000, metadata=_doc(
        "connections held at once; beyond it: error server_full"))
    max_unauth_per_ip: int = field(default=64, metadata=_doc(
        "not-yet-authenticated connections per client IP; beyond it the TCP "
        "connection is closed before the TLS handshake"))
    max_unauth: int = field(default=0, metadata=_doc(
        "connections in TLS handshake or auth at once, server-wide; must be below "
        "--max-connections so that authenticated clients always keep room. Beyond it "
        "the oldest such connection, once it has waited 1 s, is closed to make room "
        "for the new one (so silent connections cannot lock real users out); else the "
        "new one is closed before TLS. 0 = half of --max-connections, at most 1024"))
    max_refusing: int = field(default=64, metadata=_doc(
        "connections being turned away with server_full at once (each costs a TLS "
        "handshake); beyond it the TCP connection is closed at once, before TLS"))
    max_sessions_per_user: int = field(default=16, metadata=_doc(
        "sessions one user may hold at once; beyond it: error too_many_sessions"))
    auth_failures: float = field(default=10.0, metadata=_doc(
        "failed logins allowed per client IP per minute (burst the same); "
        "beyond it: error auth_throttled. 0 = no limit"))
    msg_rate: float = field(default=50.0, metadata=_doc(
        "messages per second per session, on average; beyond it: error rate_limited "
        "and the message is dropped. 0 = no limit"))
    msg_burst: int = field(default=100, metadata=_doc("messages a session may send in a burst"))
    frame_rate: float = field(default=20.0, metadata=_doc(
        "other frames (ping, pong, bye, repeated auth, bad frames) per second per session "
        "after auth; beyond it the frame is dropped with error rate_limited, which counts "
        "as a protocol error. 0 = no limit"))
    frame_burst: int = field(default=100, metadata=_doc(
        "other frames a session may send in a burst"))
    max_errors: int = field(default=10, metadata=_doc(
        "protocol errors (bad_frame, unknown_type, already_authenticated, frames over "
        "--frame-rate) a session may cause per minute, burst the same; one more: "
        "error too_many_errors, closed"))
    max_frame: int = field(default=DEFAULT_MAX_FRAME, metadata=_doc(
        "longest frame (one JSON line) accepted; beyond it: error frame_too_large"))
    max_pending: int = field(default=1024 * 1024, metadata=_doc(
        "bytes queued for one client; beyond it: error slow_consumer"))
    max_queued_total: int = field(default=256 * 1024 * 1024, metadata=_doc(
        "bytes queued for all clients together; beyond it the clients with the "
        "largest queues are cut first (error slow_consumer)"))
    write_timeout: float = field(default=10.0, metadata=_doc(
        "seconds a client may go without accepting queued bytes; then: slow_consumer"))
    heartbeat: float = field(default=20.0, metadata=_doc(
        "ping a client silent this long; close it (idle_timeout) after 3 intervals"))
    handshake_timeout: float = field(default=10.0, metadata=_doc(
        "deadline for the TLS handshake"))
    auth_timeout: float = field(default=15.0, metadata=_doc(
        "deadline from TCP accept to a valid auth frame (includes the handshake)"))
    store: str = field(default="sqlite", metadata=_doc(
        "where room messages are kept: sqlite (a durable log in --data-dir; members who "
        "come back get what they missed, also after a restart), memory (lost on "
        "restart; for tests and benchmarks), or redis://[USER[:PASSWORD]@]HOST:PORT/DB "
        "(rediss:// for TLS): a log shared by several nodes (README: Running several "
        "nodes). A password not in the URL is read from the file named by "
        "SECURECHAT_REDIS_PASSWORD_FILE, else from SECURECHAT_REDIS_PASSWORD"))
    data_dir: Path = field(default=Path("data"), metadata=_doc(
        "directory of the message log (created 0700; one server at a time, locked)"))
    durability: str = field(default="commit", metadata=_doc(
        "when a message is acknowledged: commit (once committed: survives kill -9), "
        "fsync (once fsynced: survives power loss), memory (before it is written)"))
    history_max: int = field(default=100_000, metadata=_doc(
        "messages kept per room; older ones are pruned in the background. 0 = no limit"))
    history_age: float = field(default=30 * 86400.0, metadata=_doc(
        "seconds a message is kept (default 30 days). 0 = no limit"))
    resend_window: float = field(default=300.0, metadata=_doc(
        "seconds a client's message ids are remembered, so that a resend after a lost "
        "ack is acknowledged again and not delivered twice"))
    presence_ttl: float = field(default=30.0, metadata=_doc(
        "with a redis:// store: seconds a node's presence entries live unless refreshed "
        "(every third of it); the members of a node that dies leave the other nodes' "
        "lists within about 1.33 x this"))
    backlog: int = field(default=4096, metadata=_doc(
        "listen queue length (the kernel caps it at net.core.somaxconn)"))
    shutdown_timeout: float = field(default=5.0, metadata=_doc(
        "on SIGINT/SIGTERM, time allowed to say bye, flush and close everything"))
    retry_spread: float = field(default=10.0, metadata=_doc(
        "on shutdown, clients are told to come back spread over this many seconds"))
    tokens_poll: float = field(default=0.5, metadata=_doc(
        "how often the tokens file and the certificate/key pair are checked for changes"))
    log_level: str = field(default="info", metadata=_doc("debug, info, warning or error"))
    log_format: str = field(default="text", metadata=_doc("text, or json (one object a line)"))

    def __post_init__(self) -> None:
        positive = ("heartbeat", "handshake_timeout", "auth_timeout", "write_timeout",
                    "shutdown_timeout", "tokens_poll", "presence_ttl")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be greater than 0")
        at_least_one = ("io_threads", "max_connections", "max_unauth_per_ip", "backlog",
                        "max_pending", "msg_burst", "frame_burst", "max_refusing",
                        "max_sessions_per_user", "max_errors", "max_queued_total",
                        "max_rooms", "max_room_members", "max_rooms_per_session")
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("msg_rate", "frame_rate", "auth_failures", "retry_spread",
                     "max_unauth", "history_max", "history_age", "resend_window"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
        if self.max_unauth and self.max_unauth >= self.max_connections:
            raise ConfigError("--max-unauth must be less than --max-connections, so that "
                              "authenticated clients always have room")
        if self.max_frame < PRE_AUTH_MAX_FRAME:
            raise ConfigError(f"--max-frame must be at least {PRE_AUTH_MAX_FRAME}")
        if self.auth_timeout < self.handshake_timeout:
            raise ConfigError("--auth-timeout must be at least --handshake-timeout")
        if not 0 <= self.port <= 65535:
            raise ConfigError("--port must be between 0 and 65535")
        if (problem := room_problem(self.room)) is not None:
            raise ConfigError(f"--room {self.room!r}: {problem}")
        if self.tls_min not in ("1.2", "1.3"):
            raise ConfigError("--tls-min must be 1.2 or 1.3")
        if self.store not in ("sqlite", "memory") and not self.store.startswith(
                ("redis://", "rediss://")):
            raise ConfigError("--store must be sqlite, memory, or a redis:// or "
                              "rediss:// URL")
        if self.durability not in ("commit", "fsync", "memory"):
            raise ConfigError("--durability must be commit, fsync or memory")
        if self.log_format not in ("text", "json"):
            raise ConfigError("--log-format must be text or json")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("--log-level must be debug, info, warning or error")

    @property
    def unauth_limit(self) -> int:
        """The server-wide cap on unauthenticated connections in force (``max_unauth``,
        or its automatic value)."""
        if self.max_unauth:
            return self.max_unauth
        return max(1, min(1024, self.max_connections // 2))

    def replace(self, **changes: object) -> ServerConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @staticmethod
    def option_docs() -> dict[str, str]:
        return {f.name: f.metadata["doc"] for f in dataclasses.fields(ServerConfig)}
