"""What a client's users can see of its session, kept from its events (pure).

The rooms the server has the session in and their members, the token's grants, the
rooms the user asked to be in and the default send room. The public client
(:mod:`securechat.client.api`) calls :meth:`SessionView.apply` with every event on the
I/O thread and reads it from user threads, both under the client's lock; the core
(:mod:`securechat.client.rooms`) keeps the same wanted rooms by the same rules
(:func:`~securechat.client.rooms.dropped_room`) for its logins.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..protocol import ErrorFrame, Grants, Join, Joined, Leave, Left, Welcome
from .events import Closed, Connected, Disconnected, Event
from .rooms import dropped_room
from .roster import Roster

__all__ = ["SessionView"]

_NOBODY: frozenset[str] = frozenset()


class SessionView:
    """The session as last known. Not locked itself: the client's lock guards it."""

    __slots__ = ("_legacy_named", "connected", "grants", "joined", "legacy", "wanted",
                 "welcome")

    def __init__(self, rooms: Sequence[str] | None) -> None:
        #: An old-style login (no ``rooms``): the welcome names the default room.
        self.legacy = rooms is None
        self._legacy_named = False
        #: The rooms asked to be in, in order (the first is the default send room).
        self.wanted: list[str] = list(dict.fromkeys(rooms or ()))
        #: The rooms the server has the session in (in the order joined), with members;
        #: kept as last known while disconnected.
        self.joined: dict[str, Roster] = {}
        self.grants: tuple[tuple[str, str], ...] = ()
        self.welcome: Welcome | None = None
        self.connected = False

    @property
    def room(self) -> str:
        """The default send room: the first wanted (for an old-style login the
        server's default room, once the welcome named it), or ""."""
        return self.wanted[0] if self.wanted else ""

    def members_of(self, room: str) -> frozenset[str]:
        roster = self.joined.get(room)
        return roster.frozen() if roster is not None else _NOBODY

    def want(self, room: str) -> None:
        if room not in self.wanted:
            self.wanted.append(room)

    def unwant(self, room: str) -> None:
        if room in self.wanted:
            self.wanted.remove(room)

    def _key(self, room: str) -> str:
        """A frame's room: "" (a version 2 server) is the welcome's."""
        if room or self.welcome is None:
            return room
        return self.welcome.room

    def apply(self, event: Event) -> bool:
        """Update from one event; returns whether anything a waiter checks changed."""
        if isinstance(event, Join | Leave):
            roster = self.joined.get(self._key(event.room))
            if roster is not None:
                if isinstance(event, Join):
                    roster.add(event.user)
                else:
                    roster.discard(event.user)
            return True
        if isinstance(event, Joined):
            self.joined[event.room] = Roster(event.members)
            return True
        if isinstance(event, Left | ErrorFrame):
            if isinstance(event, Left):
                self.joined.pop(event.room, None)
            if (dropped := dropped_room(event)) is not None:
                self.unwant(dropped)
            return True
        if isinstance(event, Grants):
            self.grants = event.grants
            return False
        if isinstance(event, Connected):
            welcome = event.welcome
            self.welcome = welcome
            self.connected = True
            self.grants = welcome.grants
            self.joined = {welcome.room: Roster(welcome.members)} if welcome.room else {}
            if self.legacy and welcome.room and not self._legacy_named:
                self._legacy_named = True
                self.unwant(welcome.room)
                self.wanted.insert(0, welcome.room)
            return True
        if isinstance(event, Disconnected | Closed):
            self.connected = False
            return True
        return False
