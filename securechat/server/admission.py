"""Admission and accounting: who may connect, log in and stay, and what they cost.

The accept thread asks :meth:`Admission.admit` for a slot for each new connection
(per-IP cap on unauthenticated connections, the server-wide unauthenticated cap with
eviction of the oldest, max connections); the sessions report back to it through
:class:`~securechat.server.host.SessionHost`, which :class:`Admission` implements
(auth throttle, token lookup, per-user session cap, close accounting, the pre-auth
log budget and the global bound on queued bytes). All shared counters sit behind one
lock, taken once per event, never per message.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import ssl
import threading
import time
from collections import Counter, OrderedDict
from typing import Any

from ..io.loop import IOLoop
from ..rooms.registry import RoomRegistry
from .config import ServerConfig
from .limits import KeyedBuckets, QueueMeter
from .logs import LogThrottle, log_event
from .session import Session, State
from .tokens import TokenStore

__all__ = ["Admission", "Pending", "client_key"]

logger = logging.getLogger("securechat.server")

#: When the unauthenticated cap is reached, a new connection may push out the oldest
#: one only if that one has had this long to log in (a real client needs
#: milliseconds); younger ones keep their slot and the newcomer is closed before TLS,
#: so a flood of fresh connections cannot push out a real client mid-handshake.
EVICT_AFTER = 1.0
#: Past --max-queued-total with nothing left to cut in a loop, how long before it
#: scans its sessions again (so no flush pays for a scan).
TRIM_RESCAN = 0.05
#: Pre-auth log lines (connect, auth_failed, close...) per client address per window.
LOG_BURST_PER_IP = 20
LOG_WINDOW = 10.0


def client_key(ip: str) -> str:
    """The per-address limit key: the IPv4 address, or the /64 of an IPv6 address
    (one IPv6 host usually owns a whole /64)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class Pending:
    """Accounting for one connection that has not authenticated (yet)."""

    __slots__ = ("accepted_at", "conn_id", "ip_key", "ip_released", "loop", "reject",
                 "session")

    def __init__(self, conn_id: int, ip_key: str, loop: IOLoop, accepted_at: float) -> None:
        self.conn_id = conn_id
        self.ip_key = ip_key
        self.loop = loop
        self.accepted_at = accepted_at
        self.ip_released = False
        #: The error code to turn it away with after TLS (``server_full``), if any.
        self.reject: str | None = None
        self.session: Session | None = None


class Admission:
    """The admission limits and the accounting of one server; its sessions' host."""

    def __init__(self, config: ServerConfig, *, ssl_context: ssl.SSLContext,
                 tokens: TokenStore, rooms: RoomRegistry, loops: list[IOLoop],
                 stopping: threading.Event) -> None:
        self.config = config
        #: The context new sessions are wrapped with. Replaced as a whole (one reference
        #: store, atomic) by Server.reload_certificates and never mutated, so no lock: a
        #: session reads it once, in Session.__init__, and keeps the SSL object it made.
        self.ssl_context = ssl_context
        #: Replaced as a whole when the file changes (Server.tokens).
        self.tokens = tokens
        self.rooms = rooms
        self.session_prefix = secrets.token_hex(3)
        self._stopping = stopping
        self._lock = threading.Lock()
        self._unauth: Counter[str] = Counter()
        self._auth_failures = KeyedBuckets(config.auth_failures / 60.0, config.auth_failures)
        self._connections = 0
        #: Counted unauthenticated connections, oldest first (they may be pushed out).
        self._pending: OrderedDict[int, Pending] = OrderedDict()
        #: Connections being turned away with server_full (not counted in _connections).
        self._refusing: dict[int, Pending] = {}
        #: Pushed-out connections whose slot in _connections went to a newer one.
        self._transferred: set[int] = set()
        self._user_sessions: Counter[str] = Counter()
        self._log_throttle = LogThrottle(LOG_BURST_PER_IP, LOG_WINDOW)
        self._stats: Counter[str] = Counter()
        self._cut_at_shutdown = 0
        # One meter per loop, each written by its own loop thread only.
        self._meters = {loop: QueueMeter() for loop in loops}
        #: A loop checks the global bound only when its own share passes this.
        self.queue_check_above = config.max_queued_total // len(loops)

    # ------------------------------------------------------------------ accept thread
    def admit(self, conn_id: int, ip_key: str, loop: IOLoop, now: float) -> Pending | str:
        """A slot for a new connection: its :class:`Pending` entry (``reject`` set if it
        is to be turned away after TLS), or why it is refused before TLS. If the slot
        was taken from the oldest unauthenticated connection, that one is evicted."""
        cfg = self.config
        reject: str | None = None
        refused = ""
        victim: Pending | None = None
        entry = Pending(conn_id, ip_key, loop, now)
        with self._lock:
            if self._unauth[ip_key] >= cfg.max_unauth_per_ip:
                self._stats["refused_unauth_per_ip"] += 1
                refused = "too many unauthenticated connections from this address"
            elif len(self._pending) >= cfg.unauth_limit:
                oldest_id, oldest = next(iter(self._pending.items()))
                if now - oldest.accepted_at < EVICT_AFTER:
                    self._stats["refused_unauth"] += 1
                    refused = "too many unauthenticated connections"
                else:
                    # The oldest has had its chance: its slot goes to the newcomer.
                    del self._pending[oldest_id]
                    self._release_ip(oldest)
                    self._transferred.add(oldest_id)
                    self._stats["evicted_unauth"] += 1
                    victim = oldest
            elif self._connections >= cfg.max_connections:
                if len(self._refusing) >= cfg.max_refusing:
                    # Saturated: telling each client why would cost a TLS handshake each.
                    self._stats["refused_server_full_at_once"] += 1
                    refused = "server full"
                else:
                    self._stats["refused_server_full"] += 1
                    reject = "server_full"
            else:
                self._connections += 1
            if not refused:
                self._unauth[ip_key] += 1
                if reject is None:
                    self._pending[conn_id] = entry
                else:
                    self._refusing[conn_id] = entry
        if refused:
            return refused
        entry.reject = reject
        if victim is not None:
            # Queued after the victim's own adoption on its loop, so its session exists.
            pushed = victim
            pushed.loop.call_soon(lambda: pushed.session.evict() if pushed.session else None)
        return entry

    def release(self, conn_id: int, *, counted: bool) -> None:
        """A connection admitted but gone before it had a session."""
        with self._lock:
            self._release_unauth(conn_id)
            self._refusing.pop(conn_id, None)
            if counted:
                if conn_id in self._transferred:
                    self._transferred.discard(conn_id)
                else:
                    self._connections -= 1

    def stats(self) -> dict[str, int]:
        """The counters, plus the connections, queues and slots in use now."""
        with self._lock:
            out = dict(self._stats)
            out["connections"] = self._connections
            out["unauthenticated"] = sum(self._unauth.values())
            out["pending_auth"] = len(self._pending)
            out["refusing"] = len(self._refusing)
        out["queued_bytes"] = self.queued_total()
        return out

    def cut_at_shutdown(self) -> int:
        """Sessions cut off with frames still queued since shutdown began."""
        with self._lock:
            return self._cut_at_shutdown

    # ------------------------------------------------------------------ SessionHost
    def auth_retry_after(self, ip_key: str, now: float) -> float:
        """0 if ``ip_key`` may try a token now, else seconds to wait."""
        if self.config.auth_failures <= 0:
            return 0.0
        with self._lock:
            if self._auth_failures.allowed(ip_key, now):
                return 0.0
            return max(0.1, self._auth_failures.retry_after(ip_key, now))

    def note_auth_failure(self, ip_key: str, now: float) -> None:
        with self._lock:
            self._stats["auth_failed"] += 1
            if self.config.auth_failures > 0:
                self._auth_failures.take(ip_key, now)

    def on_authenticated(self, conn_id: int, user: str) -> str | None:
        """A valid token: None if the session may go on, else the error code to close
        it with (``too_many_sessions``, or ``server_full`` if its slot was given away)."""
        with self._lock:
            self._release_unauth(conn_id)
            if conn_id in self._transferred:
                return "server_full"  # pushed out while its token was being checked
            if self._user_sessions[user] >= self.config.max_sessions_per_user:
                self._stats["refused_sessions_per_user"] += 1
                return "too_many_sessions"
            self._user_sessions[user] += 1
            self._stats["authenticated"] += 1
            return None

    def on_auth_ended(self, conn_id: int) -> None:
        """A session left the unauthenticated state without authenticating."""
        with self._lock:
            self._release_unauth(conn_id)

    def on_closed(self, conn_id: int, *, refused: bool, user: str | None) -> None:
        with self._lock:
            self._release_unauth(conn_id)
            if refused:
                self._refusing.pop(conn_id, None)
            elif conn_id in self._transferred:
                self._transferred.discard(conn_id)
            else:
                self._connections -= 1
            if user is not None:
                _decrement(self._user_sessions, user)

    def on_cut_off(self, reason: str, log_fields: dict[str, Any]) -> None:
        """A closing session's linger ran out with frames still queued: they are lost."""
        log_event(logger, logging.WARNING, "cut_off",
                  "closed with frames still queued (the client did not read them in time)",
                  reason=reason, **log_fields)
        with self._lock:
            self._stats["cut_off"] += 1
            if self._stopping.is_set():
                self._cut_at_shutdown += 1

    def log_admit(self, ip_key: str, now: float) -> int | None:
        """Per-address budget for log lines before auth (see :class:`LogThrottle`)."""
        with self._lock:
            return self._log_throttle.admit(ip_key, now)

    def queue_meter(self, loop: IOLoop) -> QueueMeter:
        return self._meters[loop]

    def queued_total(self) -> int:
        """Bytes queued for all clients (a racy sum of per-loop meters: fine for a bound)."""
        return sum(meter.size for meter in self._meters.values())

    def trim_queues(self, loop: IOLoop) -> None:
        """In ``loop``'s thread, once its share passed ``queue_check_above``: while the
        global total is over ``max_queued_total``, cut this loop's sessions with the
        largest queues (slow_consumer). Only runs past the bound, never per message."""
        bound = self.config.max_queued_total
        total = self.queued_total()
        if total <= bound:
            return
        meter = self._meters[loop]
        now = time.monotonic()
        if now < meter.scan_after:
            return  # what is left is not ours to cut (closing sessions, other loops)
        queued = [ep for ep in loop.endpoints
                  if isinstance(ep, Session) and ep.state is State.ACTIVE and ep.out.size]
        queued.sort(key=lambda ep: ep.out.size, reverse=True)
        cut = 0
        for victim in queued:
            if total <= bound:
                break
            before = victim.out.size
            victim.cut_for_memory(bound)
            total -= before - victim.out.size
            cut += 1
        if total > bound:
            meter.scan_after = now + TRIM_RESCAN
        with self._lock:
            self._stats["cut_queued_total"] += cut

    # ------------------------------------------------------------------ under the lock
    def _release_unauth(self, conn_id: int) -> None:
        # caller holds self._lock; idempotent
        entry = self._pending.pop(conn_id, None)
        if entry is None:
            entry = self._refusing.get(conn_id)
        if entry is not None:
            self._release_ip(entry)

    def _release_ip(self, entry: Pending) -> None:
        # caller holds self._lock
        if entry.ip_released:
            return
        entry.ip_released = True
        _decrement(self._unauth, entry.ip_key)


def _decrement(counts: Counter[str], key: str) -> None:
    """Count one fewer, and forget keys that reach zero (so the table stays small)."""
    left = counts[key] - 1
    if left > 0:
        counts[key] = left
    else:
        del counts[key]
