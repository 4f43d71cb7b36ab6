"""The room interface: what a session needs from a room, whatever keeps it.

The server talks to a room only through :class:`Room` (subscribe, unsubscribe,
publish, members, history), so a durable or shared backend can replace the
in-process one. A room hands each encoded frame to every member's
:meth:`Member.deliver`, which must only enqueue, never block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["HistoryEntry", "Member", "Room", "RoomSnapshot"]


class Member(Protocol):
    """A session in the room, as the room sees it."""

    @property
    def user(self) -> str: ...

    @property
    def user_json(self) -> str:
        """``user`` as a JSON string literal, encoded once per session."""

    def deliver(self, frame: bytes) -> None:
        """Queue ``frame`` for sending. Called with the room lock held: must not block."""


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """The room as a new member finds it; every later message has ``seq`` > this one."""

    room: str
    members: tuple[str, ...]
    seq: int


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    seq: int
    frame: bytes


class Room(Protocol):
    name: str

    def subscribe(self, member: Member, greet: Callable[[RoomSnapshot], bytes]) -> RoomSnapshot:
        """Add ``member``; ``greet(snapshot)`` is delivered to it before any later frame."""

    def unsubscribe(self, member: Member, reason: str) -> None:
        """Remove ``member``; nothing is delivered to it afterwards."""

    def publish(self, sender: Member, body: str, msg_id: str | int | None = None) -> int:
        """Number a message, deliver it to every other session and the ``ack`` to the
        sender (in seq order with everything else the sender receives), return ``seq``.

        A message whose ``(sender.user, msg_id)`` was published recently is a client
        resending after a lost ack: it is acknowledged with its original ``seq`` and
        not delivered again."""

    def members(self) -> tuple[str, ...]:
        """Names of the users with at least one session, sorted."""

    def history(self, after_seq: int = 0) -> list[HistoryEntry]:
        """Recent messages with ``seq`` > ``after_seq`` still held in memory."""
