"""What every message log offers: the stored message, the message waiting to be stored,
the two errors, and the read interface both backends satisfy.

A log numbers messages per room (seq = last + 1) at the moment it stores them, so a
seq that anyone has seen always belongs to a stored message (store first, then fan out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from ..errors import ConfigError, SecureChatError

__all__ = [
    "Durability",
    "MessageLog",
    "Pending",
    "PresenceEvent",
    "RecentId",
    "RoomEpochs",
    "Roster",
    "SharedPresence",
    "StoreOpenError",
    "StoreUnavailable",
    "StoredMessage",
]

#: ``commit``: survives ``kill -9``; ``fsync``: survives power loss; ``memory``: acknowledged
#: before it is written (a crash may lose the tail). sqlite.py states each promise exactly.
Durability = Literal["commit", "fsync", "memory"]

#: (sender, client, msg_id, seq, stored_at): what the resend de-duplication table needs.
RecentId = tuple[str, str, str | int, int, float]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as the log holds it. ``ts`` is the RFC 3339 string sent on the wire;
    ``stored_at`` is unix time, used for retention and never going back within a room."""

    room: str
    seq: int
    sender: str
    client: str | None
    msg_id: str | int | None
    body: str
    ts: str
    stored_at: float


@dataclass(slots=True)
class Pending:
    """A message waiting to be stored. ``ref`` is the room's own back-reference (e.g. the
    sender session), never looked at by the log. ``seq``, ``ts`` and ``stored_at`` are
    filled in by the log when it assigns the number, and reset to their defaults if
    storing fails (the number was not used). A log with an epoch per room (Redis) also
    sets ``epoch``, and ``duplicate`` for a resend it recognised (``seq`` is then the
    original's; nothing was stored)."""

    room: str
    sender: str
    client: str | None
    msg_id: str | int | None
    body: str
    ref: object = None
    seq: int = 0
    ts: str = ""
    stored_at: float = 0.0
    epoch: str = ""
    duplicate: bool = False


class StoreUnavailable(SecureChatError):
    """The log cannot take or read messages right now (disk full, I/O error, queue full,
    closed). Nothing in the refused messages was stored or numbered; try again after
    ``retry_after`` seconds."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(f"message store unavailable: {reason} (retry after {retry_after:g} s)")
        self.reason = reason
        self.retry_after = retry_after


class StoreOpenError(ConfigError):
    """The log cannot be opened; the message names the file or directory, says why and
    what to do (the server refuses to start)."""


class MessageLog(Protocol):
    """The read side both backends share; reads may come from any thread, concurrently
    with writes.

    Writing differs by backend and ``synchronous`` tells which: ``MemoryLog.append``
    numbers and keeps a message in the caller's thread; ``SQLiteLog.submit`` queues it for
    a writer thread that reports back through the callbacks given to ``start``.
    """

    @property
    def epoch(self) -> str:
        """The identity of this log (≤ 64 visible ASCII characters); it changes only when
        the log is new, so a client's (epoch, seq) position is meaningful across restarts."""
        ...

    @property
    def synchronous(self) -> bool: ...

    def last_seq(self, room: str) -> int:
        """The highest seq given out in ``room`` (0 if none), even if pruned since."""
        ...

    def oldest_seq(self, room: str) -> int | None:
        """The lowest seq still held for ``room``, or None if it holds none."""
        ...

    def room_names(self) -> list[str]:
        """The rooms that hold at least one message (they exist with no member)."""
        ...

    def read_after(self, room: str, after_seq: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` messages with seq > ``after_seq``, ascending."""
        ...

    def read_before(self, room: str, before_seq: int, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages with seq < ``before_seq``, ascending."""
        ...

    def read_latest(self, room: str, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages, ascending."""
        ...

    def recent_ids(self, room: str, since: float) -> Sequence[RecentId]:
        """Stored messages with a client and an id, stored at or after ``since``,
        ascending by seq: the resend table is rebuilt from this after a restart."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class RoomEpochs(Protocol):
    """A log whose epoch is per room (Redis: a room's log there can be lost alone)."""

    def room_epoch(self, room: str) -> str: ...


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """Another node says: ``user``'s first session there joined ``room`` (``joined``),
    or their last one left it, with ``reason``; ``at`` is when, on the shared log's
    clock (ms), to put it in order with a :class:`Roster`."""

    room: str
    user: str
    node: str
    joined: bool
    reason: str = ""
    at: int = 0


@dataclass(frozen=True, slots=True)
class Roster:
    """The other nodes' users in a room as the shared log held them at ``at`` (its
    clock, ms): ``(user, node)`` pairs."""

    at: int
    pairs: frozenset[tuple[str, str]]


@runtime_checkable
class SharedPresence(Protocol):
    """A log shared by several nodes (Redis) that also shares who is in each room."""

    def roster(self, room: str) -> Roster:
        """The other nodes' users in ``room`` (user -> nodes), read when the room is made
        on this node; later changes come as PresenceEvents and rosters."""
        ...

    def joined(self, room: str, user: str) -> None:
        """``user``'s first session on this node joined ``room``. Must not block."""
        ...

    def left(self, room: str, user: str, reason: str) -> None:
        """``user``'s last session on this node left ``room``. Must not block."""
        ...
