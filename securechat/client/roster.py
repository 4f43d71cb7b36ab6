"""The room's member names as each client last saw them, shared between the clients
of one loop (pure).

A ``set`` per client costs ~66 bytes a name (its table is kept at most 60 % full):
33 KiB per client in a room of 500, for every client on a loop. Here a member list
is an immutable :class:`Members` (a sorted tuple of interned names, 8 bytes a
name; lookups bisect), and the clients of one loop that see the same members hold
the same one: :class:`Rosters` finds it by content, and remembers each join or
leave applied to a list, so the next client applying it gets the result in O(1)
(the first pays one O(n) copy). Lists nobody holds any more are freed (weak
references).
"""

from __future__ import annotations

import sys
import weakref
from bisect import bisect_left
from collections.abc import Iterable

__all__ = ["Members", "Rosters"]


class Members:
    """One immutable member list: sorted, interned names. Safe to read from any thread."""

    __slots__ = ("__weakref__", "_next", "names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        #: (name, joined) -> the list after that join (True) or leave (False).
        self._next: dict[tuple[str, bool], weakref.ref[Members]] | None = None

    def __contains__(self, name: object) -> bool:
        names = self.names
        if not isinstance(name, str):
            return False
        i = bisect_left(names, name)
        return i < len(names) and names[i] == name

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"<Members {len(self.names)}>"


class Rosters:
    """The member lists of the clients on one loop. Not thread-safe: only the loop's
    thread changes it (:attr:`empty` may be read anywhere)."""

    __slots__ = ("_known", "empty")

    def __init__(self) -> None:
        self._known: weakref.WeakValueDictionary[tuple[str, ...], Members] = (
            weakref.WeakValueDictionary())
        self.empty = Members(())

    def of(self, names: Iterable[str]) -> Members:
        """The list holding exactly ``names`` (a welcome's members)."""
        return self._share(tuple(sorted({sys.intern(name) for name in names})))

    def joined(self, members: Members, name: str) -> Members:
        """``members`` with ``name`` in it."""
        return self._step(members, name, True)

    def left(self, members: Members, name: str) -> Members:
        """``members`` without ``name``."""
        return self._step(members, name, False)

    def _share(self, names: tuple[str, ...]) -> Members:
        if not names:
            return self.empty
        found = self._known.get(names)
        if found is None:
            found = self._known[names] = Members(names)
        return found

    def _step(self, members: Members, name: str, join: bool) -> Members:
        if (name in members) == join:
            return members
        key = (name, join)
        known = members._next
        if known is not None and (ref := known.get(key)) is not None:
            after = ref()
            if after is not None:
                return after
        names = members.names
        i = bisect_left(names, name)
        after = self._share((*names[:i], sys.intern(name), *names[i:]) if join
                            else names[:i] + names[i + 1:])
        if members is not self.empty:  # read from any thread: never changed
            if known is None:
                known = members._next = {}
            known[key] = weakref.ref(after)
        return after
