"""The in-process room: members, presence and fan-out in this process, messages kept
by a :class:`~securechat.store.base.MessageLog` (in memory, or SQLite on disk).

Store first, then fan out: a message is numbered by the log when it is stored, and
only then reaches the members and the sender's ack, in seq order, under the room lock.
So a seq anyone has seen is always a stored message, even after a crash. With the
memory log that all happens in the publisher's thread; with SQLite the writer thread
reports each committed batch to :meth:`InProcessRoom.on_stored`.

Frames are encoded once per room event and handed to every member; the newest ones
are also kept (``cache``) so that resume replays and short catch-ups never touch disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, cast

from .. import protocol
from ..metering import Histogram
from ..store.base import (
    MessageLog,
    Pending,
    PresenceEvent,
    RoomEpochs,
    Roster,
    SharedPresence,
    StoredMessage,
    StoreUnavailable,
)
from ..store.memory import MemoryLog
from .base import HistoryEntry, HistoryPage, Member, RoomSnapshot
from .presence import Change, RemotePresence
from .resends import PENDING, ResendTable

__all__ = ["InProcessRoom"]

#: Frames kept in memory for replays: at most this many, and this many bytes, per room;
#: and all rooms of a server together at most CACHE_TOTAL_BYTES (see CacheBudget).
CACHE_FRAMES = 10_000
CACHE_BYTES = 32 * 1024 * 1024
CACHE_TOTAL_BYTES = 64 * 1024 * 1024
#: How often (in publishes) expired resend entries are swept.
_SWEEP_EVERY = 4096
#: One publish in this many (a power of two) is timed to its ack, if none is in flight.
_SAMPLE_EVERY = 64


class _Appends(Protocol):
    def append(self, item: Pending) -> None: ...


class _Submits(Protocol):
    def submit(self, item: Pending) -> None: ...


def encode_stored(message: StoredMessage, room_json: str) -> bytes:
    """The ``msg`` frame of a stored message, as it was sent live."""
    return protocol.encode_room_message(protocol.json_string(message.sender), message.body,
                                        message.seq, message.ts, room_json)


class CacheBudget:
    """The bytes of cached frames of all rooms together: a room that adds a frame past
    the budget trims its own cache, so the busiest rooms give back the most and a
    thousand rooms never hold a thousand times one room's cache.

    Being the one object all rooms of a server share, it also keeps their totals for
    ``/metrics`` (:meth:`totals`): the rooms in memory count under their own locks, and
    a dropped room's counts are folded in here, so no total ever goes back."""

    __slots__ = ("_live", "_lock", "_retired", "_retired_latency", "limit", "used")

    def __init__(self, limit: int = CACHE_TOTAL_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._live: dict[InProcessRoom, None] = {}
        self._retired = [0, 0, 0]  # published, delivered, refused by the store
        self._retired_latency = Histogram()

    def totals(self) -> tuple[int, int, int, Histogram]:
        """Messages published, deliveries made, publishes the store refused, and the
        sampled publish-to-ack latency, over every room this server held."""
        with self._lock:
            rooms = list(self._live)
            counts = list(self._retired)
            latency = Histogram.merged([self._retired_latency, *(r.ack_latency for r in rooms)])
        for room in rooms:  # racy int reads of counters that only grow: fine here
            counts[0] += room._publishes
            counts[1] += room.delivered
            counts[2] += room.refused
        return counts[0], counts[1], counts[2], latency

    def _enter(self, room: InProcessRoom) -> None:
        with self._lock:
            self._live[room] = None

    def _retire(self, room: InProcessRoom) -> None:
        with self._lock:
            if self._live.pop(room, 0) is None:
                self._retired[0] += room._publishes
                self._retired[1] += room.delivered
                self._retired[2] += room.refused
                self._retired_latency.add(room.ack_latency)

    def add(self, size: int) -> bool:
        """Count ``size`` more bytes; True if the total is now over the budget."""
        with self._lock:
            self.used += size
            return self.used > self.limit


class InProcessRoom:
    """A room held in this process, shared by all I/O threads under one lock.

    Presence is per user: ``join`` when a user's first session arrives, ``leave``
    when the last one goes, so a second device is not announced as a new person.
    With a shared log (Redis) that holds across nodes: the users other nodes have in
    the room (``_remote``) count too, and this node's changes are passed on.
    """

    def __init__(self, name: str = "lobby", *, log: MessageLog | None = None,
                 resend_window: float = 300.0, resends_per_client: int = 1000,
                 cache: int = CACHE_FRAMES, clock: Callable[[], float] = time.time,
                 budget: CacheBudget | None = None) -> None:
        self.name = name
        #: The name as a JSON string, put in every frame of the room (encoded once).
        self.room_json = protocol.json_string(name)
        self.log: MessageLog = log if log is not None else MemoryLog()
        self._budget = budget if budget is not None else CacheBudget()
        #: Messages handed to the writer and not yet stored or refused (room lock).
        self.inflight = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[Member, None] = {}
        self._users: dict[str, int] = {}
        # Redis keeps an epoch per room (read before the seq: it notes the position).
        self._epoch = (self.log.room_epoch(name) if isinstance(self.log, RoomEpochs)
                       else self.log.epoch)
        self._shared = self.log if isinstance(self.log, SharedPresence) else None
        #: The users other nodes have in this room (shared log only).
        self._remote = RemotePresence(
            self._shared.roster(name) if self._shared is not None else None)
        self._seq = self.log.last_seq(name)
        self._resends = ResendTable(window=resend_window, per_client=resends_per_client)
        for sender, client, mid, seq, stored_at in self.log.recent_ids(
                name, clock() - resend_window):
            self._resends.take(sender, client, mid, stored_at, seq)
        self._publishes = 0
        # Encoded msg frames of the newest seqs: _cache[i] is seq _cache_first + i.
        self._cache: list[bytes] = []
        self._cache_first = self._seq + 1
        self._cache_bytes = 0
        self._cache_max = max(cache, 0)
        # /metrics (CacheBudget.totals), under the room lock: frames handed to members,
        # publishes refused by the store, one sampled publish timed to its ack.
        self.delivered = 0
        self.refused = 0
        self.ack_latency = Histogram()
        self._timed: tuple[Pending, float] | None = None
        self._budget._enter(self)

    @property
    def budget(self) -> CacheBudget:
        """The cache budget (and ledger) this room shares with the server's others."""
        return self._budget

    @property
    def seq(self) -> int:
        """The last seq fanned out (everything up to it is stored)."""
        return self._seq

    @property
    def epoch(self) -> str:
        return self._epoch

    def __len__(self) -> int:
        return len(self._sessions)

    def _broadcast(self, frame: bytes, skip: Member | None) -> None:
        for member in self._sessions:
            if member is not skip:
                member.deliver(frame)

    def subscribe(self, member: Member, greet: Callable[[RoomSnapshot], bytes]) -> RoomSnapshot:
        with self._lock:
            user = member.user
            count = self._users.get(user, 0)
            self._users[user] = count + 1
            if count == 0:
                if user not in self._remote:
                    self._broadcast(protocol.encode(protocol.Join(user, self.name)), member)
                if self._shared is not None:
                    self._shared.joined(self.name, user)
            self._sessions[member] = None
            snapshot = RoomSnapshot(self.name, self._member_names(), self._seq, self._epoch)
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
            if self._shared is not None:
                self._shared.left(self.name, user, reason)
            if user not in self._remote:
                self._broadcast(protocol.encode(protocol.Leave(user, reason, self.name)),
                                member)

    def _member_names(self) -> tuple[str, ...]:
        if not self._remote:
            return tuple(sorted(self._users))
        return tuple(sorted(self._users.keys() | self._remote.users()))

    # ------------------------------------------------------------------ other nodes
    def on_presence(self, event: PresenceEvent) -> None:
        """Another node's user joined or left this room: announced here only if that
        changes whether the user is in the room at all."""
        with self._lock:
            if (change := self._remote.event(event)) is not None:
                self._announce(change)

    def on_roster(self, roster: Roster) -> None:
        """The other nodes' users as the shared log holds them now: whoever is new
        joined, whoever is gone (their node stopped refreshing: it died) left."""
        with self._lock:
            for change in self._remote.roster(roster):
                self._announce(change)

    def _announce(self, change: Change) -> None:
        """Room lock held. A user with a session on this node is in the room anyway."""
        user, present, reason = change
        if user in self._users:
            return
        if present:
            self._broadcast(protocol.encode(protocol.Join(user, self.name)), None)
        else:
            self._broadcast(protocol.encode(protocol.Leave(user, reason, self.name)), None)

    # ------------------------------------------------------------------ publishing
    def publish(self, sender: Member, body: str, msg_id: str | int | None = None) -> int | None:
        """Store a message, then deliver it to every other session and the ``ack`` to
        the sender (in seq order with everything else the sender receives). Returns
        the seq if it was stored at once (memory log), None if it is queued for the
        writer (the ack follows), the original seq of a recognised resend, or
        :data:`~securechat.rooms.resends.PENDING` for a resend of a message still being
        stored (no second answer). Every other call answers the sender exactly once
        through ``deliver_ack``.

        A resend is recognised by ``(user, client, id)`` when the sender has a client
        id: it is acknowledged with its original seq and ``duplicate``, not delivered
        again; a resend of a message still being stored gets no second ack."""
        client = sender.client_id
        key_ok = client is not None and msg_id is not None
        with self._lock:
            now = self._clock()
            if key_ok:
                assert client is not None and msg_id is not None
                seen = self._resends.lookup(sender.user, client, msg_id, now)
                if seen is not None:
                    if seen != PENDING:
                        sender.deliver_ack(protocol.encode_ack(msg_id, seen, self.room_json,
                                                               duplicate=True))
                    return seen
                self._resends.take(sender.user, client, msg_id, now)
            self._publishes += 1
            if self._publishes % _SWEEP_EVERY == 0:
                self._resends.sweep(now)
            item = Pending(self.name, sender.user, client, msg_id, body, sender)
            if not self._publishes & (_SAMPLE_EVERY - 1) and self._timed is None:
                self._timed = (item, time.monotonic())
            if self.log.synchronous:
                cast(_Appends, self.log).append(item)
                self._fan_out(item)
                if self._timed is not None:
                    self._time_ack(item.seq)
                return item.seq
            try:
                cast(_Submits, self.log).submit(item)
            except StoreUnavailable as exc:
                self._refuse(item, exc)
            else:
                self.inflight += 1
            return None

    def on_stored(self, batch: list[Pending]) -> None:
        """The writer stored ``batch`` (numbered, in seq order): fan it out. A shared
        log (Redis) also hands over other nodes' messages (no ``ref``: no local sender)
        and recognised resends (``duplicate``: only the ack)."""
        with self._lock:
            for item in batch:
                if item.ref is not None:
                    self.inflight -= 1
                if item.duplicate:
                    self._duplicate(item)
                    continue
                if item.epoch and item.epoch != self._epoch:
                    self._new_epoch(item.epoch)
                if item.seq <= self._seq and item.epoch:
                    if item.ref is not None:  # seen already (read at the room's start)
                        cast(Member, item.ref).deliver_ack(protocol.encode_ack(
                            item.msg_id, item.seq, self.room_json))
                    continue
                self._fan_out(item)
            if self._timed is not None and batch:
                self._time_ack(batch[-1].seq)

    def _duplicate(self, item: Pending) -> None:
        if item.client is not None and item.msg_id is not None:
            self._resends.stored(item.sender, item.client, item.msg_id, item.seq)
        cast(Member, item.ref).deliver_ack(protocol.encode_ack(
            item.msg_id, item.seq, self.room_json, duplicate=True))

    def _new_epoch(self, epoch: str) -> None:
        """The shared log lost this room's data: its numbering starts over, and every
        member that was told the old epoch is told to come back (room lock held). A
        room that never knew its epoch (Redis was down when it was made) told nobody."""
        if self._epoch:
            for member in self._sessions:
                member.reset(self.name)
        self._epoch = epoch
        self._seq = 0
        self._budget.add(-self._cache_bytes)
        self._cache.clear()
        self._cache_bytes = 0
        self._cache_first = 1

    def on_failed(self, batch: list[Pending], error: StoreUnavailable) -> None:
        """The writer could not store ``batch``: nothing of it was numbered or seen;
        each sender is told to resend (error store_unavailable, not acknowledged)."""
        with self._lock:
            self.inflight -= len(batch)
            for item in batch:
                self._refuse(item, error)

    def _time_ack(self, last_seq: int) -> None:
        """The timed publish's ack went out if its seq is at most ``last_seq`` (its seq
        is 0 until the writer numbers it; a later batch may be numbered already, so
        the bound matters). Room lock held."""
        assert self._timed is not None
        item, started = self._timed
        if item.seq and item.seq <= last_seq:
            self.ack_latency.observe(time.monotonic() - started)
            self._timed = None

    def _refuse(self, item: Pending, error: StoreUnavailable) -> None:
        self.refused += 1
        if self._timed is not None and self._timed[0] is item:
            self._timed = None  # refused: no publish-to-ack time
        if item.client is not None and item.msg_id is not None:
            self._resends.forget(item.sender, item.client, item.msg_id)
        sender = cast(Member, item.ref)
        sender.deliver_ack(protocol.encode_error(
            "store_unavailable", f"message not stored: {error.reason}", item.msg_id,
            round(error.retry_after, 3), room=self.name))

    def _fan_out(self, item: Pending) -> None:
        """Deliver a stored message; called with the lock held, in seq order."""
        sender = cast("Member | None", item.ref)
        seq = item.seq
        user_json = protocol.json_string(item.sender) if sender is None else sender.user_json
        frame = protocol.encode_room_message(user_json, item.body, seq, item.ts,
                                             self.room_json)
        self._seq = seq
        if item.client is not None and item.msg_id is not None:
            self._resends.stored(item.sender, item.client, item.msg_id, seq)
        self._remember(seq, frame)
        sessions = self._sessions
        self.delivered += len(sessions) - (sender in sessions)
        for member in sessions:
            if member is not sender:
                member.deliver(frame)
        # Under the lock, so the sender sees ack N before any message N+1.
        if sender is not None:
            sender.deliver_ack(protocol.encode_ack(item.msg_id, seq, self.room_json))

    def _remember(self, seq: int, frame: bytes) -> None:
        if not self._cache_max:
            return
        cache = self._cache
        if seq != self._cache_first + len(cache):  # a hole (memory durability lost writes)
            cache.clear()
            self._cache_bytes = 0
            self._cache_first = seq
        cache.append(frame)
        self._cache_bytes += len(frame)
        over_budget = self._budget.add(len(frame))
        if len(cache) > self._cache_max or self._cache_bytes > CACHE_BYTES or over_budget:
            drop = max(len(cache) // 4, 1)  # amortised: trim a quarter at a time
            dropped = sum(map(len, cache[:drop]))
            self._cache_bytes -= dropped
            self._budget.add(-dropped)
            del cache[:drop]
            self._cache_first += drop

    def release_cache(self) -> None:
        """Give the cache's bytes back to the budget (the room is being dropped)."""
        with self._lock:
            self._budget.add(-self._cache_bytes)
            self._budget._retire(self)
            self._cache.clear()
            self._cache_bytes = 0
            self._cache_first = self._seq + 1

    # ------------------------------------------------------------------ reading
    def frames_after(self, after: int, upto: int, max_bytes: int,
                     max_count: int = 500) -> tuple[list[bytes], int | None]:
        """Encoded ``msg`` frames with ``after < seq <= upto``, ascending, about
        ``max_bytes`` at most (at least one), and the seq of the first one (None if
        the log holds nothing in that range). From memory when it can, else from the
        log, outside the room lock."""
        # Retention may have pruned the start of the range (in the log, not in the
        # cache): never replay what history no longer holds.
        oldest = self.log.oldest_seq(self.name)
        if oldest is None:
            return [], None
        after = max(after, oldest - 1)
        with self._lock:
            first = self._cache_first
            if self._cache and first <= after + 1 <= upto:
                start = after + 1 - first
                stop = min(upto - first + 1, len(self._cache), start + max_count)
                frames: list[bytes] = []
                size = 0
                for frame in self._cache[start:stop]:
                    frames.append(frame)
                    size += len(frame)
                    if size >= max_bytes:
                        break
                return frames, after + 1
        if after >= upto:
            return [], None
        stored = self.log.read_after(self.name, after, min(max_count, upto - after))
        frames = []
        size = 0
        for message in stored:
            if message.seq > upto:
                break
            frame = encode_stored(message, self.room_json)
            frames.append(frame)
            size += len(frame)
            if size >= max_bytes:
                break
        return frames, (stored[0].seq if stored and stored[0].seq <= upto else None)

    def history_page(self, *, before: int | None = None, after: int | None = None,
                     limit: int = 50) -> HistoryPage:
        """Read from the log, outside the lock; only what the members were already sent
        (seq <= :attr:`seq`) is shown, never a message still on its way."""
        latest = self._seq
        log, name = self.log, self.name
        if after is not None:
            rows = [m for m in log.read_after(name, after, limit + 1) if m.seq <= latest]
            more = len(rows) > limit
            rows = rows[:limit]
        else:
            if before is None or before > latest + 1:
                before = latest + 1
            rows = log.read_before(name, before, limit + 1)
            more = len(rows) > limit
            rows = rows[-limit:] if more else rows
        return HistoryPage(rows, more, log.oldest_seq(name), latest)

    def members(self) -> tuple[str, ...]:
        with self._lock:
            return self._member_names()

    def history(self, after_seq: int = 0) -> list[HistoryEntry]:
        """Messages with ``seq`` > ``after_seq`` still held in the room's memory."""
        with self._lock:
            first = self._cache_first
            return [HistoryEntry(first + i, frame) for i, frame in enumerate(self._cache)
                    if first + i > after_seq]
