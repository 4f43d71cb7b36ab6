"""The shared message log (``--store redis://...``): several nodes, one order per room.

It is a :class:`~securechat.store.base.MessageLog` like SQLite's, asynchronous: a
publish is queued (:meth:`RedisLog.submit`) for the broker thread, which runs the
script that de-duplicates, numbers, appends and publishes in one atomic step
(``redis_script``). The log reports back through ``on_stored`` only what comes back
on the live channel (``redis_subscriber``): messages of every node, this one's
included, in the one order Redis gave them. A message this node published carries
an origin (``node:counter``) by which its :class:`Pending`, and so its sender, is
found again: the sender's ack is sent where the others get the message, so "ack N
before msg N+1" holds for everyone. Messages of other nodes have no ``ref``.

A resend Redis recognised comes back at once as a Pending with ``duplicate`` set and
the original seq; a refused one through ``on_failed`` (store_unavailable).

Reads (history, replays) go to Redis from the caller's thread, short XRANGE/XREVRANGE
calls by seq like SQLite's indexed reads; each room's epoch is read, or made, once
when the room is made in this process.

Startup: the server pings Redis while it is built; if Redis cannot be reached it does
not start (StoreOpenError, exit 1, naming the URL without its password): a node that
could take no message is better refused than half up. After that, a Redis that goes
away is survived (see :meth:`RedisLog.health`).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from .base import (
    Pending,
    PresenceEvent,
    RecentId,
    Roster,
    StoredMessage,
    StoreOpenError,
    StoreUnavailable,
)
from .redis_broker import Broker, Job
from .redis_config import import_redis, redis_target
from .redis_presence import SCRIPT as PRESENCE_SCRIPT
from .redis_presence import OnRoster, Presence, presence_key, roster_of
from .redis_script import (
    SCRIPT,
    Entry,
    channel,
    decode_entry,
    dedup_key,
    encode_tail,
    meta_key,
    room_of,
    stream_key,
)
from .redis_subscriber import Subscriber

__all__ = ["RedisLog"]

logger = logging.getLogger("securechat.store")

#: Seconds a read on an I/O loop may wait for Redis (connect or answer).
READ_TIMEOUT = 1.0
#: The readiness self-test (:meth:`RedisLog.probe`): a message at most this often on
#: the node's own channel, which must come back through the subscription in time.
PROBE_EVERY = 1.0
PROBE_TIMEOUT = 3.0

OnStored = Callable[[list[Pending]], None]
OnFailed = Callable[[list[Pending], StoreUnavailable], None]
OnPresence = Callable[[list[PresenceEvent]], None]


class RedisLog:
    """Build it with :meth:`open`; :meth:`start` starts the broker and subscriber."""

    synchronous = False

    def __init__(self, client: Any, reader: Any, errors: Any, shown: str, *,
                 history_max: int, history_age: float, resend_window: float,
                 max_items: int, retry_after: float, presence_ttl: float = 30.0,
                 on_thread_died: Callable[[BaseException], None] | None) -> None:
        self._client = client
        #: For the reads of the I/O loops: short timeouts, and none at all while the
        #: subscription is known to be lost (fail fast, never hold up a loop).
        self._reader = reader
        self._retry_after = retry_after
        self._errors = errors
        self.shown = shown
        self.node = secrets.token_hex(6)
        self._counter = itertools.count(1)
        self._history_max = history_max
        self._age_ms = int(history_age * 1000)
        self._window = max(int(resend_window + 0.999), 1)
        self._lock = threading.Lock()
        #: Published by this node, not yet seen back on the channel: origin -> Pending.
        self._waiting: dict[str, Pending] = {}
        self._read_at_start: dict[str, int] = {}
        self._roster_at_start: dict[str, Roster] = {}
        self._on_presence: OnPresence | None = None
        self._on_stored: OnStored | None = None
        self._on_failed: OnFailed | None = None
        self.broker = Broker(client, SCRIPT, errors=errors, on_reply=self._on_reply,
                             max_items=max_items, retry_after=retry_after,
                             on_thread_died=on_thread_died)
        self.subscriber = Subscriber(client, errors=errors, deliver=self._deliver,
                                     read_range=self._read_range,
                                     room_state=self._peek_state, retry_after=retry_after,
                                     on_thread_died=on_thread_died)
        self.subscriber.probe_channel = f"securechat:probe:{self.node}"
        self.presence = Presence(client, self.node, errors=errors, ttl=presence_ttl,
                                 on_thread_died=on_thread_died)
        self.subscriber.on_presence = self._presence_events
        self.subscriber.on_subscribed = self.presence.refresh_soon
        self._probe_token = ""
        self._probe_sent = 0.0
        self._probe_count = itertools.count(1)
        #: Why the last self-test failed; cleared when a token comes back.
        self._probe_failure: str | None = None
        self._started = False
        self._closed = False

    @classmethod
    def open(cls, url: str, *, env: dict[str, str] | None = None,
             history_max: int = 100_000,
             history_age: float = 30 * 86400, resend_window: float = 300.0,
             max_items: int = 10_000, retry_after: float = 1.0,
             connect_timeout: float = 2.0, presence_ttl: float = 30.0,
             on_thread_died: Callable[[BaseException], None] | None = None) -> RedisLog:
        """Connect and check that Redis answers; raises StoreOpenError if not."""
        redis = import_redis()
        target = redis_target(url, env=env)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options: dict[str, Any] = {
            "decode_responses": True, "socket_connect_timeout": connect_timeout,
            "socket_timeout": 5.0, "retry": Retry(NoBackoff(), 0),
        }
        if target.password is not None:
            options["password"] = target.password
        client = redis.Redis.from_url(target.url, **options)
        reader = redis.Redis.from_url(target.url, **{
            **options, "socket_timeout": READ_TIMEOUT,
            "socket_connect_timeout": min(connect_timeout, READ_TIMEOUT)})
        try:
            client.ping()
        except redis.exceptions.AuthenticationError as exc:
            client.close()
            reader.close()
            raise StoreOpenError(f"Redis at {target.shown}: login refused: {exc} (check "
                                 "the URL's user and password, SECURECHAT_REDIS_PASSWORD"
                                 "_FILE or SECURECHAT_REDIS_PASSWORD)") from exc
        except (redis.exceptions.RedisError, OSError) as exc:
            client.close()
            reader.close()
            raise StoreOpenError(f"Redis at {target.shown}: cannot connect: {exc}; the "
                                 "server does not start without its message log") from exc
        return cls(client, reader, redis.exceptions, target.shown, history_max=history_max,
                   history_age=history_age, resend_window=resend_window,
                   max_items=max_items, retry_after=retry_after,
                   presence_ttl=presence_ttl, on_thread_died=on_thread_died)

    @property
    def epoch(self) -> str:
        """Epochs are per room here (:meth:`room_epoch`)."""
        return "redis"

    def health(self) -> str | None:
        """None while publishing and the subscription work, else why not (for /readyz)."""
        if self._closed:
            return "the Redis log is closed"
        failure = self.broker.failure or self.subscriber.failure or self._probe_failure
        if failure is None and self._started and not self.subscriber.subscribed.is_set():
            failure = "the Redis subscription is not made yet"
        return failure

    def counters(self) -> dict[str, int]:
        """For /metrics (read at scrape time: plain ints of the log's three threads)."""
        return {"round_trips": self.broker.round_trips, "published": self.broker.published,
                "filled": self.subscriber.filled,
                "subscriptions": self.subscriber.subscriptions,
                "presence_refreshes": self.presence.refreshes}

    def probe(self, now: float) -> None:
        """The self-test behind /readyz (admin thread, about twice a second): publish a
        token on this node's probe channel and expect it back on the subscription
        within PROBE_TIMEOUT. A subscription that is connected but delivers nothing,
        or a Redis that hangs, fails it, not only one that drops the connection (the
        Centrifugo bug of a green /health while delivery was broken)."""
        if not self._started or self._closed:
            return
        now = time.monotonic()
        if self._probe_token and self.subscriber.probe_seen == self._probe_token:
            self._probe_token = ""
            self._probe_failure = None
        if self._probe_token:
            if now - self._probe_sent < PROBE_TIMEOUT:
                return
            self._probe_failure = ("the Redis self-test message did not come back within "
                                   f"{PROBE_TIMEOUT:g} s")
        elif now - self._probe_sent < PROBE_EVERY:
            return
        token = f"{next(self._probe_count)}"
        try:
            self._reader.publish(self.subscriber.probe_channel, token)
        except (self._errors.RedisError, OSError) as exc:
            self._probe_failure = f"the Redis self-test publish failed: {exc}"
            self._probe_token, self._probe_sent = "", now
            return
        self._probe_token, self._probe_sent = token, now

    @property
    def ready(self) -> bool:
        return self.health() is None

    # -- writing ----------------------------------------------------------------------

    def start(self, on_stored: OnStored, on_failed: OnFailed) -> None:
        """Start the threads; the callbacks run on them (keep them short)."""
        self._on_stored = on_stored
        self._on_failed = on_failed
        self._started = True
        self.broker.start()
        self.subscriber.start()
        self.presence.start()

    def share_presence(self, on_events: OnPresence, on_roster: OnRoster,
                       rooms: Callable[[], list[str]]) -> None:
        """Before :meth:`start`: where other nodes' presence goes (events as they come,
        and every refresh's roster of each room in ``rooms()``, this node's rooms).
        The callbacks run on the subscriber and presence threads: keep them short."""
        self._on_presence = on_events
        self.presence.on_roster = on_roster
        self.presence.rooms = rooms

    def joined(self, room: str, user: str) -> None:
        self.presence.joined(room, user)

    def left(self, room: str, user: str, reason: str) -> None:
        self.presence.left(room, user, reason)

    def roster(self, room: str) -> Roster:
        with self._lock:  # read with the room's epoch (room_epoch)
            return self._roster_at_start.pop(room, Roster(0, frozenset()))

    def _presence_events(self, events: list[PresenceEvent]) -> None:
        """Subscriber thread: other nodes' joins and leaves (this node's own are
        announced by its rooms already)."""
        theirs = [event for event in events if event.node != self.node]
        if theirs and self._on_presence is not None:
            self._on_presence(theirs)

    def submit(self, item: Pending) -> None:
        """Queue ``item`` for the broker; raises StoreUnavailable (nothing queued)."""
        origin = f"{self.node}:{next(self._counter)}"
        room = item.room
        keys = [meta_key(room), stream_key(room)]
        if item.client is not None and item.msg_id is not None:
            keys.append(dedup_key(room, item.sender, item.client, item.msg_id))
        args: list[str | int] = [secrets.token_hex(8), encode_tail(item, origin),
                                 channel(room), self._history_max, self._age_ms,
                                 self._window, self.subscriber.position(room)]
        with self._lock:
            self._waiting[origin] = item
        try:
            self.broker.submit(Job(item, keys, args, origin))
        except StoreUnavailable:
            with self._lock:
                self._waiting.pop(origin, None)
            raise

    def _on_reply(self, job: Job, reply: list[Any] | StoreUnavailable) -> None:
        """Broker thread: a refusal or a recognised resend is answered here; a stored
        message is answered when it comes back on the channel."""
        if not isinstance(reply, StoreUnavailable) and int(reply[0]) == 1:
            return
        with self._lock:
            item = self._waiting.pop(job.origin, None)
        if item is None:
            return  # already seen on the channel (its ack is sent)
        if isinstance(reply, StoreUnavailable):
            assert self._on_failed is not None
            self._on_failed([item], reply)
            return
        item.seq, item.epoch, item.duplicate = int(reply[1]), str(reply[2]), True
        assert self._on_stored is not None
        self._on_stored([item])

    def _deliver(self, entries: list[Entry]) -> None:
        """Subscriber thread: messages of every node, in seq order per room."""
        batch: list[Pending] = []
        mine = self.node + ":"
        for entry in entries:
            message = entry.message
            item = None
            if entry.origin.startswith(mine):
                with self._lock:
                    item = self._waiting.pop(entry.origin, None)
            if item is None:
                item = Pending(message.room, message.sender, message.client,
                               message.msg_id, message.body)
            item.seq, item.ts, item.stored_at = message.seq, message.ts, message.stored_at
            item.epoch = entry.epoch
            batch.append(item)
        if batch and self._on_stored is not None:
            self._on_stored(batch)

    def close(self) -> None:
        """Send what is queued, stop both threads, close the connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self.presence.close()  # first: the leaves of the sessions just closed
            self.broker.close()
            self.subscriber.close()
        self._client.close()
        self._reader.close()

    # -- reading ----------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], Any], *, fast: bool = True) -> Any:
        lost = self.subscriber.failure
        if fast and lost is not None:
            raise StoreUnavailable(lost, self._retry_after)
        try:
            return fn()
        except (self._errors.RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unreachable ({what}): {exc}") from exc

    def _peek_state(self, room: str) -> tuple[str | None, int]:
        """For the subscriber (also while it knows Redis is lost)."""
        epoch, seq = self._call("room state", lambda: self._client.hmget(
            meta_key(room), "epoch", "seq"), fast=False)
        return epoch, int(seq or 0)

    def room_epoch(self, room: str) -> str:
        """The room's epoch, made now if it has none; the position new messages follow
        is noted for the subscriber. A Redis that cannot be reached gives "" (a resume
        then starts over) rather than failing the join."""
        candidate = secrets.token_hex(8)
        if self.subscriber.failure is not None:
            logger.warning("room %s: %s; its epoch is unknown for now", room,
                           self.subscriber.failure)
            return ""
        try:
            pipe = self._reader.pipeline(transaction=False)
            pipe.hsetnx(meta_key(room), "epoch", candidate)
            pipe.hmget(meta_key(room), "epoch", "seq")
            key = presence_key(room)
            pipe.eval(PRESENCE_SCRIPT, 1, key, self.presence.ttl_ms, "refresh", key, "")
            _, (epoch, seq), members = pipe.execute()
        except (self._errors.RedisError, OSError) as exc:
            logger.warning("room %s: cannot read its epoch from Redis: %s", room, exc)
            return ""
        self.subscriber.baseline(room, epoch, int(seq or 0))
        with self._lock:
            self._read_at_start[room] = int(seq or 0)
            self._roster_at_start[room] = roster_of(list(members), self.node)
        return str(epoch)

    def last_seq(self, room: str) -> int:
        with self._lock:  # the seq room_epoch just read, so both are one position
            seen = self._read_at_start.pop(room, None)
        if seen is not None:
            return seen
        try:
            seq = int(self._call("room state", lambda: self._reader.hget(
                meta_key(room), "seq")) or 0)
        except StoreUnavailable as exc:
            logger.warning("room %s: %s", room, exc.reason)
            return 0
        return seq

    def _entries(self, room: str, rows: list[Any], epoch: str = "") -> list[Entry]:
        return [decode_entry(room, epoch, sid, fields) for sid, fields in rows]

    def _messages(self, room: str, rows: list[Any]) -> list[StoredMessage]:
        return [e.message for e in self._entries(room, rows)]

    def _read_range(self, room: str, epoch: str, after: int, upto: int) -> list[Entry]:
        rows = self._call("stream", lambda: self._client.xrange(
            stream_key(room), str(after + 1), str(upto), count=upto - after), fast=False)
        return self._entries(room, rows, epoch)

    def oldest_seq(self, room: str) -> int | None:
        rows = self._call("stream", lambda: self._reader.xrange(
            stream_key(room), "-", "+", count=1))
        return self._messages(room, rows)[0].seq if rows else None

    def room_names(self) -> list[str]:
        """The rooms with a stream (one SCAN at startup; none if Redis fails then)."""
        try:
            keys = self._call("scan", lambda: list(self._reader.scan_iter(
                match=stream_key("*"), count=1000)))
        except StoreUnavailable as exc:
            logger.warning("listing the rooms in Redis failed: %s", exc.reason)
            return []
        return sorted({name for key in keys if (name := room_of(str(key)))})

    def read_after(self, room: str, after_seq: int, limit: int) -> list[StoredMessage]:
        if limit <= 0:
            return []
        return self._messages(room, self._call("stream", lambda: self._reader.xrange(
            stream_key(room), str(after_seq + 1), "+", count=limit)))

    def read_before(self, room: str, before_seq: int, limit: int) -> list[StoredMessage]:
        if limit <= 0 or before_seq <= 1:
            return []
        rows = self._call("stream", lambda: self._reader.xrevrange(
            stream_key(room), str(before_seq - 1), "-", count=limit))
        return self._messages(room, rows[::-1])

    def read_latest(self, room: str, limit: int) -> list[StoredMessage]:
        if limit <= 0:
            return []
        rows = self._call("stream", lambda: self._reader.xrevrange(
            stream_key(room), "+", "-", count=limit))
        return self._messages(room, rows[::-1])

    def recent_ids(self, room: str, since: float) -> list[RecentId]:
        """None: resends are recognised in Redis, by every node alike."""
        return []
