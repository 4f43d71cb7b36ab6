"""Who is in one room on the other nodes (a log shared through Redis): pure bookkeeping.

Two sources say it: events (a node's user joined or left, as it happens) and rosters
(every pair the shared log holds, read every refresh; it is how a dead node's users
drop out). They can cross on the way: a roster read just before a join may arrive
just after it. Both carry the shared log's clock, so the newer word wins for each
``(user, node)`` pair: a roster never undoes an event that came after it was read.
"""

from __future__ import annotations

from collections.abc import KeysView

from ..store.base import PresenceEvent, Roster

__all__ = ["Change", "RemotePresence"]

#: (user, present on some other node now, reason if they just left)
Change = tuple[str, bool, str]


class RemotePresence:
    """The users other nodes have in a room, and on which nodes. Not thread-safe: the
    room calls it under its lock."""

    __slots__ = ("_nodes", "_recent")

    def __init__(self, roster: Roster | None = None) -> None:
        self._nodes: dict[str, frozenset[str]] = {}
        #: (user, node) -> when its last event happened (shared clock, ms); pruned by
        #: every roster read after it.
        self._recent: dict[tuple[str, str], int] = {}
        if roster is not None:
            self.roster(roster)

    def __contains__(self, user: object) -> bool:
        return user in self._nodes

    def __bool__(self) -> bool:
        return bool(self._nodes)

    def users(self) -> KeysView[str]:
        return self._nodes.keys()

    def nodes(self, user: str) -> frozenset[str]:
        return self._nodes.get(user, frozenset())

    def event(self, event: PresenceEvent) -> Change | None:
        """Apply one event; the change of the user's presence elsewhere, if any."""
        pair = (event.user, event.node)
        if self._recent.get(pair, -1) > event.at:
            return None  # older than what this pair last said
        self._recent[pair] = event.at
        nodes = self.nodes(event.user)
        after = nodes | {event.node} if event.joined else nodes - {event.node}
        return self._set(event.user, after, event.reason)

    def roster(self, roster: Roster) -> list[Change]:
        """Apply a full read: pairs it lacks are gone (their node stopped refreshing, or
        a leave was missed), pairs it has are there, except where an event newer than
        the read said otherwise."""
        current = {(user, node) for user, nodes in self._nodes.items() for node in nodes}
        recent = self._recent
        gone = {p for p in current - roster.pairs if recent.get(p, -1) < roster.at}
        new = {p for p in roster.pairs - current if recent.get(p, -1) < roster.at}
        self._recent = {p: at for p, at in recent.items() if at >= roster.at}
        changes: list[Change] = []
        for user in sorted({u for u, _ in gone} | {u for u, _ in new}):
            after = ((self.nodes(user) - {n for u, n in gone if u == user})
                     | {n for u, n in new if u == user})
            change = self._set(user, after, "disconnected")
            if change is not None:
                changes.append(change)
        return changes

    def _set(self, user: str, nodes: frozenset[str], reason: str) -> Change | None:
        was = user in self._nodes
        if nodes:
            self._nodes[user] = nodes
        else:
            self._nodes.pop(user, None)
        if was == bool(nodes):
            return None
        return user, bool(nodes), "" if nodes else (reason or "disconnected")
