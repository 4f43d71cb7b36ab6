"""The rooms of one server, by name: made on first join, dropped when the last member
leaves, counted toward ``--max-rooms`` while they have members or stored messages.

A lookup is one dict access, so fan-out in one room never depends on how many other
rooms there are. Lock order: the registry's lock, then a room's (never the reverse),
so a join cannot race a room being dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..store.base import MessageLog, Pending, PresenceEvent, Roster, StoreUnavailable
from .base import Member, RoomSnapshot
from .memory import CacheBudget, InProcessRoom

__all__ = ["RoomRegistry"]


class RoomRegistry:
    """Every room of a server over one message log.

    ``default`` always exists (it is where a client that names no room goes). Other
    rooms are made by :meth:`join` and dropped from memory by :meth:`leave` once the
    last member is gone and no message is on its way to the log; a dropped room with
    stored messages still counts, and comes back with its seq and history on the next
    join (its resend table is rebuilt from the log).
    """

    def __init__(self, log: MessageLog, *, default: str, max_rooms: int = 10_000,
                 max_members: int = 10_000, resend_window: float = 300.0,
                 budget: CacheBudget | None = None) -> None:
        self.log = log
        self.default = default
        self.max_rooms = max_rooms
        self.max_members = max_members
        self._resend_window = resend_window
        self._budget = budget if budget is not None else CacheBudget()
        self._lock = threading.Lock()
        self._rooms: dict[str, InProcessRoom] = {}
        #: Rooms not in memory that hold stored messages (they exist all the same).
        self._stored: set[str] = set(log.room_names())
        self._stored.discard(default)
        self.default_room = self._make(default)

    def _make(self, name: str) -> InProcessRoom:
        room = InProcessRoom(name, log=self.log, resend_window=self._resend_window,
                             budget=self._budget)
        self._rooms[name] = room
        return room

    def __len__(self) -> int:
        """Rooms that exist: in memory (with members) or with stored messages."""
        with self._lock:
            return len(self._rooms) + len(self._stored)

    def get(self, name: str) -> InProcessRoom | None:
        """The room if it exists (made in memory if it only has stored messages); never
        makes a new one: for history requests."""
        with self._lock:
            room = self._rooms.get(name)
            if room is None and name in self._stored:
                self._stored.discard(name)
                room = self._make(name)
            return room

    def in_memory(self, name: str) -> InProcessRoom | None:
        return self._rooms.get(name)

    def names_in_memory(self) -> list[str]:
        """The rooms held now (any thread): those whose presence this node follows."""
        with self._lock:
            return list(self._rooms)

    def join(self, name: str, member: Member,
             greet: Callable[[RoomSnapshot], bytes]) -> InProcessRoom | str:
        """Subscribe ``member`` to room ``name``, making the room if needed; returns the
        room, or the error code that refused it (``room_full``, ``too_many_rooms``)."""
        with self._lock:
            room = self._rooms.get(name)
            if room is None:
                if name in self._stored:
                    self._stored.discard(name)
                elif len(self._rooms) + len(self._stored) >= self.max_rooms:
                    return "too_many_rooms"
                room = self._make(name)
            elif len(room) >= self.max_members:
                return "room_full"
            room.subscribe(member, greet)
            return room

    def leave(self, room: InProcessRoom, member: Member, reason: str) -> None:
        """Unsubscribe ``member``; drop the room from memory if that emptied it."""
        room.unsubscribe(member, reason)
        self._maybe_drop(room)

    def release(self, room: InProcessRoom) -> None:
        """A room fetched with :meth:`get` is no longer needed: drop it from memory again
        if nobody is in it."""
        self._maybe_drop(room)

    def _maybe_drop(self, room: InProcessRoom) -> None:
        if len(room) or room is self.default_room:
            return
        with self._lock:
            if (len(room) == 0 and room.inflight == 0
                    and self._rooms.get(room.name) is room):
                del self._rooms[room.name]
                room.release_cache()
                if room.seq > 0:
                    self._stored.add(room.name)

    # ------------------------------------------------------------------ the writer
    def on_stored(self, batch: list[Pending]) -> None:
        """The writer stored ``batch``: each room fans out its own part, in order."""
        for room, items in self._by_room(batch):
            room.on_stored(items)
            self._maybe_drop(room)  # its last member may have left meanwhile

    def on_presence(self, events: list[PresenceEvent]) -> None:
        """Other nodes' joins and leaves; a room not held here has no one to tell (it
        reads the roster when it is made)."""
        for event in events:
            if (room := self._rooms.get(event.room)) is not None:
                room.on_presence(event)

    def on_roster(self, name: str, roster: Roster) -> None:
        if (room := self._rooms.get(name)) is not None:
            room.on_roster(roster)

    def on_failed(self, batch: list[Pending], error: StoreUnavailable) -> None:
        for room, items in self._by_room(batch):
            room.on_failed(items, error)
            self._maybe_drop(room)

    def _by_room(self, batch: list[Pending]) -> list[tuple[InProcessRoom, list[Pending]]]:
        """The batch cut into runs of one room, in the batch's order, so a sender in
        several rooms gets its acks in the order it sent (a room with messages in flight
        is never dropped, so each is found; a vanished one is skipped)."""
        runs: list[tuple[InProcessRoom, list[Pending]]] = []
        name = ""
        items: list[Pending] = []
        for item in batch:
            if item.room != name:
                if items and (room := self._rooms.get(name)) is not None:
                    runs.append((room, items))
                name, items = item.room, []
            items.append(item)
        if items and (room := self._rooms.get(name)) is not None:
            runs.append((room, items))
        return runs
