"""What a session needs from the server that runs it: the narrow interface of
:class:`~securechat.server.session.Session`.

A session never sees the listener. It is given a :class:`SessionHost` (in the
server, :class:`~securechat.server.admission.Admission`) and reports to it when it
authenticates, stops being unauthenticated, is cut off or closes; it asks it whether
its address may try a token, and for its share of the log and queue budgets. The
arguments are plain values, so this module knows nothing of sessions and the import
graph stays acyclic (tests/test_architecture.py).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..io.loop import IOLoop
    from ..rooms.registry import RoomRegistry
    from .config import ServerConfig
    from .limits import QueueMeter
    from .tokens import TokenStore

__all__ = ["SessionHost"]


class SessionHost(Protocol):
    """Everything a session reads from or reports to its server; nothing else."""

    config: ServerConfig
    #: The context to wrap a new connection with: read once, when the session starts.
    #: A certificate reload rebinds it to a new context (never mutates the old one), so
    #: live sessions keep theirs.
    ssl_context: ssl.SSLContext
    #: The tokens in force now: looked up at auth and on every tick (revocation).
    tokens: TokenStore
    #: The server's rooms by name (the default one included).
    rooms: RoomRegistry
    #: Names this server process in ``welcome`` (``epoch``, ``session``).
    session_prefix: str
    #: A loop's queued bytes past which it asks :meth:`trim_queues` to act.
    queue_check_above: int

    # Auth throttle: one budget of failed logins per client address.
    def auth_retry_after(self, ip_key: str, now: float) -> float:
        """0 if ``ip_key`` may try a token now, else seconds to wait."""

    def note_auth_failure(self, ip_key: str, now: float) -> None:
        """A failed login (a wrong token or a malformed auth frame) from ``ip_key``."""

    # Admission and close accounting.
    def on_authenticated(self, conn_id: int, user: str) -> str | None:
        """A valid token for ``user``: None if the session may go on (it now counts
        toward the user's cap), else the error code to close it with."""

    def on_auth_ended(self, conn_id: int) -> None:
        """The session left the unauthenticated state (idempotent)."""

    def on_closed(self, conn_id: int, *, refused: bool, user: str | None) -> None:
        """The session closed; ``refused`` if it was being turned away with
        server_full, ``user`` if it counted toward that user's session cap."""

    def on_cut_off(self, reason: str, log_fields: dict[str, Any]) -> None:
        """A closing session's linger ran out with frames still queued."""

    def log_admit(self, ip_key: str, now: float) -> int | None:
        """The per-address budget for log lines before auth (see ``LogThrottle.admit``)."""

    # The global bound on queued bytes.
    def queue_meter(self, loop: IOLoop) -> QueueMeter:
        """The meter of ``loop``'s queued bytes (written by that loop's thread only)."""

    def trim_queues(self, loop: IOLoop) -> None:
        """In ``loop``'s thread, once its meter passed ``queue_check_above``."""
