"""Recognising a client's resends: which ``(user, client, id)`` a room already took.

A client that lost an ack resends the message with the same ``id``; the room must
acknowledge it again with the original seq and not deliver it twice. Ids are scoped
to one client instance (``auth.client``, as an MQTT client id or a Kafka producer id),
so two devices of one user, or a client that numbers from 1 again, never collide; a
session without a client id has nothing recognised. Entries are kept for ``window``
seconds, at most ``per_client`` per client and ``max_clients`` clients (the least
recently used go first), so no sender can evict another's entries by talking a lot.

Pure: time comes in as ``now``; the room calls it under its lock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

__all__ = ["PENDING", "ResendTable"]

#: The id is taken but its message is still being stored: its ack is on the way.
PENDING: Final = -1

Key = tuple[str, str]
MessageId = str | int


class ResendTable:
    """``(user, client) -> {id: (seq, taken_at)}``, each bounded by time and count."""

    __slots__ = ("_clients", "max_clients", "per_client", "window")

    def __init__(self, *, window: float = 300.0, per_client: int = 1000,
                 max_clients: int = 100_000) -> None:
        self.window = window
        self.per_client = max(per_client, 1)
        self.max_clients = max(max_clients, 1)
        # Least recently used client first; within a client, oldest id first.
        self._clients: OrderedDict[Key, OrderedDict[MessageId, tuple[int, float]]] = (
            OrderedDict())

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._clients.values())

    def lookup(self, user: str, client: str, mid: MessageId, now: float) -> int | None:
        """The seq the room gave ``mid`` (or :data:`PENDING`), if it is a resend."""
        ids = self._clients.get((user, client))
        if ids is None:
            return None
        self._expire(ids, now)
        entry = ids.get(mid)
        return None if entry is None else entry[0]

    def take(self, user: str, client: str, mid: MessageId, now: float,
             seq: int = PENDING) -> None:
        """Remember ``mid`` as taken (``seq`` once stored, :data:`PENDING` before)."""
        key = (user, client)
        ids = self._clients.get(key)
        if ids is None:
            ids = self._clients[key] = OrderedDict()
            if len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(key)
        ids[mid] = (seq, now)
        ids.move_to_end(mid)
        if len(ids) > self.per_client:
            ids.popitem(last=False)

    def stored(self, user: str, client: str, mid: MessageId, seq: int) -> None:
        """A pending id got its seq (its time stays when it was taken)."""
        ids = self._clients.get((user, client))
        if ids is not None and (entry := ids.get(mid)) is not None:
            ids[mid] = (seq, entry[1])

    def forget(self, user: str, client: str, mid: MessageId) -> None:
        """The message was refused (not stored): a resend must be taken as new."""
        ids = self._clients.get((user, client))
        if ids is not None:
            ids.pop(mid, None)
            if not ids:
                del self._clients[(user, client)]

    def sweep(self, now: float) -> None:
        """Drop expired ids and empty clients, least recently used first; the room
        calls it now and then so clients that went away free their entries."""
        clients = self._clients
        for key in list(clients):
            ids = clients[key]
            self._expire(ids, now)
            if ids:
                break  # this client was used recently, and so were all after it
            del clients[key]

    def _expire(self, ids: OrderedDict[MessageId, tuple[int, float]], now: float) -> None:
        cutoff = now - self.window
        while ids:
            mid, (_, taken) = next(iter(ids.items()))
            if taken >= cutoff:
                return
            del ids[mid]
