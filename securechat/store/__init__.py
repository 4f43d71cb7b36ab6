"""The room log: numbered, stored messages per room (issue 9).

``MemoryLog`` keeps them in this process (``--store memory``); ``SQLiteLog`` keeps them
in SQLite in the data dir, written by one group-commit thread. Both offer the read
side of :class:`MessageLog`; ``synchronous`` says how they take writes.
"""

from __future__ import annotations

from .base import (
    Durability,
    MessageLog,
    Pending,
    RecentId,
    StoredMessage,
    StoreOpenError,
    StoreUnavailable,
)
from .memory import MemoryLog
from .sqlite import SQLiteLog

__all__ = [
    "Durability",
    "MemoryLog",
    "MessageLog",
    "Pending",
    "RecentId",
    "SQLiteLog",
    "StoreOpenError",
    "StoreUnavailable",
    "StoredMessage",
]
