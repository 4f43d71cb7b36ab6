"""The states of a server session (its own module so the session and its frame
dispatch share it without importing each other)."""

from __future__ import annotations

import enum

__all__ = ["State"]


class State(enum.Enum):
    """HANDSHAKE -> AUTH -> ACTIVE -> CLOSING -> CLOSED; any state may jump to CLOSED."""

    HANDSHAKE = "handshake"
    AUTH = "auth"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"
