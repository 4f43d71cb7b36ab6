"""The in-memory message log (``--store memory``): today's behaviour, lost on restart.

It is the benchmark baseline, so ``append`` does the least it can: number, stamp and
keep, under one lock. Each room's history is a list with a moving head, so a read at
any seq is an index, not a scan.
"""

from __future__ import annotations

import secrets
import threading
import time

from ..protocol import rfc3339_utc
from .base import Pending, RecentId, StoredMessage

__all__ = ["MemoryLog"]


class _Room:
    __slots__ = ("head", "items", "last", "last_at")

    def __init__(self) -> None:
        self.items: list[StoredMessage] = []
        self.head = 0  # items[head:] are held; items[:head] are pruned, dropped in bulk
        self.last = 0
        self.last_at = 0.0

    def held(self) -> int:
        return len(self.items) - self.head

    def drop(self, count: int) -> None:
        self.head += count
        if self.head > 1024 and self.head * 2 > len(self.items):
            del self.items[: self.head]
            self.head = 0

    def window(self, lo_seq: int, hi_seq: int) -> list[StoredMessage]:
        """Held messages with lo_seq <= seq < hi_seq (held seqs are contiguous)."""
        if self.head == len(self.items):
            return []
        first = self.items[self.head].seq
        start = self.head + max(lo_seq - first, 0)
        stop = self.head + max(hi_seq - first, 0)
        return self.items[start:stop]


class MemoryLog:
    """Holds at most ``history_max`` messages per room and none older than
    ``history_age`` seconds (0 means no limit for either). ``synchronous`` is True:
    ``append`` has stored the message when it returns. The epoch is new per process."""

    synchronous = True

    def __init__(self, *, history_max: int = 1000, history_age: float = 0.0) -> None:
        if history_max < 0 or history_age < 0:
            raise ValueError("history_max and history_age must be >= 0")
        self._max = history_max
        self._age = history_age
        self._rooms: dict[str, _Room] = {}
        self._lock = threading.Lock()
        self._epoch = secrets.token_hex(8)

    @property
    def epoch(self) -> str:
        return self._epoch

    def append(self, item: Pending) -> None:
        """Number ``item`` (last + 1 in its room), stamp ``ts`` and ``stored_at``, keep it."""
        now = time.time()
        with self._lock:
            room = self._rooms.get(item.room)
            if room is None:
                room = self._rooms[item.room] = _Room()
            seq = room.last + 1
            stored_at = now if now > room.last_at else room.last_at
            room.last = seq
            room.last_at = stored_at
            item.seq = seq
            item.ts = rfc3339_utc(now)
            item.stored_at = stored_at
            room.items.append(StoredMessage(item.room, seq, item.sender, item.client,
                                            item.msg_id, item.body, item.ts, stored_at))
            if self._max and room.held() > self._max:
                room.drop(room.held() - self._max)
            if self._age:
                self._prune_age(room, now)

    def _prune_age(self, room: _Room, now: float) -> None:
        cutoff = now - self._age
        items = room.items
        count = 0
        while room.head + count < len(items) and items[room.head + count].stored_at < cutoff:
            count += 1
        if count:
            room.drop(count)

    def _room(self, name: str) -> _Room | None:
        room = self._rooms.get(name)
        if room is not None and self._age:
            self._prune_age(room, time.time())
        return room

    def last_seq(self, room: str) -> int:
        with self._lock:
            found = self._rooms.get(room)
            return found.last if found else 0

    def room_names(self) -> list[str]:
        with self._lock:
            return sorted(name for name in self._rooms if self._room(name) is not None
                          and self._rooms[name].held())

    def oldest_seq(self, room: str) -> int | None:
        with self._lock:
            found = self._room(room)
            if found is None or not found.held():
                return None
            return found.items[found.head].seq

    def read_after(self, room: str, after_seq: int, limit: int) -> list[StoredMessage]:
        with self._lock:
            found = self._room(room)
            if found is None or limit <= 0:
                return []
            if found.head < len(found.items):
                after_seq = max(after_seq, found.items[found.head].seq - 1)
            return found.window(after_seq + 1, after_seq + 1 + limit)

    def read_before(self, room: str, before_seq: int, limit: int) -> list[StoredMessage]:
        with self._lock:
            found = self._room(room)
            if found is None or limit <= 0:
                return []
            before_seq = min(before_seq, found.last + 1)
            return found.window(before_seq - limit, before_seq)

    def read_latest(self, room: str, limit: int) -> list[StoredMessage]:
        with self._lock:
            found = self._room(room)
            if found is None or limit <= 0:
                return []
            return found.window(found.last + 1 - limit, found.last + 1)

    def recent_ids(self, room: str, since: float) -> list[RecentId]:
        with self._lock:
            found = self._room(room)
            if found is None:
                return []
            out: list[RecentId] = []
            for i in range(len(found.items) - 1, found.head - 1, -1):
                msg = found.items[i]
                if msg.stored_at < since:
                    break  # stored_at never goes back within a room
                if msg.client is not None and msg.msg_id is not None:
                    out.append((msg.sender, msg.client, msg.msg_id, msg.seq, msg.stored_at))
            out.reverse()
            return out

    def close(self) -> None:
        """Nothing to release; present so both backends close the same way."""
