"""Rooms: the interface sessions publish through (:mod:`.base`), and its backends
(:mod:`.memory`: in this process)."""

from .base import HistoryEntry, Member, Room, RoomSnapshot
from .memory import InProcessRoom

__all__ = ["HistoryEntry", "InProcessRoom", "Member", "Room", "RoomSnapshot"]
