"""The room interface: what a session needs from a room, whatever keeps it.

The server talks to a room only through :class:`Room` (subscribe, unsubscribe,
publish, members, history), so a durable or shared backend can replace the
in-process one. A room hands each encoded frame to every member's
:meth:`Member.deliver`, which must only enqueue, never block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..store.base import StoredMessage

__all__ = ["HistoryEntry", "HistoryPage", "Member", "Room", "RoomSnapshot"]


class Member(Protocol):
    """A session in the room, as the room sees it."""

    @property
    def user(self) -> str: ...

    @property
    def user_json(self) -> str:
        """``user`` as a JSON string literal, encoded once per session."""

    @property
    def client_id(self) -> str | None:
        """The client instance id from ``auth``: resends are recognised per
        ``(user, client_id, id)``, and only when it is set."""

    def deliver(self, frame: bytes) -> None:
        """Queue ``frame`` for sending. Called with the room lock held: must not block."""

    def deliver_ack(self, frame: bytes) -> None:
        """Queue the answer (ack or refusal) to one of this member's own messages; the
        room calls it exactly once per publish (see ``Room.publish``). Must not block."""

    def reset(self, room: str) -> None:
        """The room's log was lost and started over (a new epoch): the member's position
        in it means nothing now, so it must be told to come back and resume (which
        says ``reset``). Called with the room lock held: must not block."""


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """The room as a new member finds it; every later message has ``seq`` > this one."""

    room: str
    members: tuple[str, ...]
    seq: int
    epoch: str = ""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    seq: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One answer to a history request: ``messages`` ascending; ``more`` if the log holds
    further ones in the direction asked; the seqs it holds now (``oldest`` None if none)."""

    messages: list[StoredMessage]
    more: bool
    oldest: int | None
    latest: int


class Room(Protocol):
    name: str

    @property
    def epoch(self) -> str:
        """The identity of the room's log: seq numbering goes on while it stays."""

    @property
    def seq(self) -> int:
        """The last seq delivered to the members; every one up to it is stored."""

    def subscribe(self, member: Member, greet: Callable[[RoomSnapshot], bytes]) -> RoomSnapshot:
        """Add ``member``; ``greet(snapshot)`` is delivered to it before any later frame."""

    def unsubscribe(self, member: Member, reason: str) -> None:
        """Remove ``member``; nothing is delivered to it afterwards."""

    def publish(self, sender: Member, body: str, msg_id: str | int | None = None) -> int | None:
        """Store a message, then deliver it to every other session and the ``ack`` to
        the sender (in seq order with everything else the sender receives). Returns its
        seq if it is already stored, None if the ack comes later.

        A message whose ``(sender.user, sender.client_id, msg_id)`` was published recently
        is a client resending after a lost ack: it is acknowledged with its original
        ``seq`` and ``duplicate``, and not delivered again. A message the log could not
        store gets error ``store_unavailable`` instead of an ack."""

    def frames_after(self, after: int, upto: int, max_bytes: int,
                     max_count: int = 500) -> tuple[list[bytes], int | None]:
        """Stored ``msg`` frames with ``after < seq <= upto`` (a page of about
        ``max_bytes``), and the seq of the first (None if none is held): for replays."""

    def history_page(self, *, before: int | None = None, after: int | None = None,
                     limit: int = 50) -> HistoryPage:
        """Stored messages before ``before``, after ``after``, or the latest (neither),
        at most ``limit``; raises StoreUnavailable if the log cannot be read."""

    def members(self) -> tuple[str, ...]:
        """Names of the users with at least one session, sorted."""

    def history(self, after_seq: int = 0) -> list[HistoryEntry]:
        """Recent messages with ``seq`` > ``after_seq`` still held in memory."""
