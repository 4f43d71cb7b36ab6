"""Rooms: the interface sessions publish through (:mod:`.base`), its backend
(:mod:`.memory`: in this process), and the rooms of a server by name
(:mod:`.registry`)."""

from .base import HistoryEntry, Member, Room, RoomSnapshot
from .memory import CacheBudget, InProcessRoom
from .registry import RoomRegistry

__all__ = ["CacheBudget", "HistoryEntry", "InProcessRoom", "Member", "Room", "RoomRegistry",
           "RoomSnapshot"]
