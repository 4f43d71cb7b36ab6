"""The in-process room backend: members, message numbering, presence and recent
history in this process's memory (lost on restart).

Frames are encoded once per room event and handed to every member.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from .. import protocol
from .base import HistoryEntry, Member, RoomSnapshot

__all__ = ["InProcessRoom"]


def _ack(msg_id: str | int | None, seq: int) -> bytes:
    if msg_id is None:
        return b'{"type":"ack","id":null,"seq":%d}\n' % seq
    return protocol.encode(protocol.Ack(msg_id, seq))


class InProcessRoom:
    """A room held in this process, shared by all I/O threads under one lock.

    Presence is per user: ``join`` when a user's first session arrives, ``leave``
    when the last one goes, so a second device is not announced as a new person.
    """

    def __init__(self, name: str = "lobby", *, history: int = 1000) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._sessions: dict[Member, None] = {}
        self._users: dict[str, int] = {}
        self._seq = 0
        self._history: deque[HistoryEntry] = deque(maxlen=max(history, 1))
        self._keep_history = history > 0
        # (user, client message id) -> seq, oldest first, at most max(history, 1000) kept.
        self._recent_ids: dict[tuple[str, str | int], int] = {}
        self._max_ids = max(history, 1000)

    @property
    def seq(self) -> int:
        return self._seq

    def __len__(self) -> int:
        return len(self._sessions)

    def _broadcast(self, frame: bytes, skip: Member) -> None:
        for member in self._sessions:
            if member is not skip:
                member.deliver(frame)

    def subscribe(self, member: Member, greet: Callable[[RoomSnapshot], bytes]) -> RoomSnapshot:
        with self._lock:
            user = member.user
            count = self._users.get(user, 0)
            self._users[user] = count + 1
            if count == 0:
                self._broadcast(protocol.encode(protocol.Join(user)), member)
            self._sessions[member] = None
            snapshot = RoomSnapshot(self.name, tuple(sorted(self._users)), self._seq)
            member.deliver(greet(snapshot))
            return snapshot

    def unsubscribe(self, member: Member, reason: str) -> None:
        with self._lock:
            if member not in self._sessions:
                return  # never subscribed, or already left
            del self._sessions[member]
            user = member.user
            count = self._users.get(user, 1) - 1
            if count > 0:
                self._users[user] = count
                return
            self._users.pop(user, None)
            self._broadcast(protocol.encode(protocol.Leave(user, reason)), member)

    def publish(self, sender: Member, body: str, msg_id: str | int | None = None) -> int:
        with self._lock:
            if msg_id is not None:
                key = (sender.user, msg_id)
                seen = self._recent_ids.get(key)
                if seen is not None:
                    sender.deliver(_ack(msg_id, seen))
                    return seen
            seq = self._seq + 1
            self._seq = seq
            if msg_id is not None:
                recent = self._recent_ids
                recent[key] = seq
                if len(recent) > self._max_ids:
                    del recent[next(iter(recent))]
            frame = protocol.encode_room_message(
                sender.user_json, body, seq, protocol.rfc3339_utc()
            )
            if self._keep_history:
                self._history.append(HistoryEntry(seq, frame))
            for member in self._sessions:
                if member is not sender:
                    member.deliver(frame)
            # Under the lock, so the sender sees ack N before any message N+1.
            sender.deliver(_ack(msg_id, seq))
            return seq

    def members(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._users))

    def history(self, after_seq: int = 0) -> list[HistoryEntry]:
        with self._lock:
            return [entry for entry in self._history if entry.seq > after_seq]
