"""Presence shared by the nodes on one Redis: which users are in a room, on which node.

A room tells its node when a user's first session there arrives and when the last one
goes (:meth:`Presence.joined` / :meth:`Presence.left`: queued, never blocking an I/O
loop). This module's thread writes that to the room's sorted set
``securechat:{ROOM}:presence`` (member ``NODE USER``, score the time it expires, read
off Redis's own clock so the nodes' clocks need not agree) and publishes it on the
channel of the same name, so the other nodes announce it at once (the subscriber
hands the events on, :class:`~securechat.store.base.PresenceEvent`).

Every ``ttl / 3`` seconds, and whenever the subscription is made again, the thread
refreshes this node's entries and reads back each room this node holds: the full
roster of the other nodes (``on_roster``). That heals whatever an event missed (a
lost subscription, a Redis outage) and is how a node that died without a word drops
out: its entries are not refreshed, so they expire after ``ttl`` seconds and every
other node's next read (at most ``ttl / 3`` later) says its users left.

Only presence is shared: each node's rooms still count toward its own ``--max-rooms``
and ``--max-room-members``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from .base import PresenceEvent, Roster
from .redis_script import PREFIX
from .worker import Worker

__all__ = ["PRESENCE_PATTERN", "Presence", "decode_event", "presence_key", "roster_of"]

logger = logging.getLogger("securechat.store")

#: The channels of presence events (the key of the same name is the sorted set).
PRESENCE_PATTERN = PREFIX + "{*}:presence"

#: KEYS: the room's presence set. ARGV: ttl (ms), op (join, leave or refresh), channel,
#: event payload, then the members (``NODE USER``) to add (join, refresh) or remove
#: (leave). join and leave publish ``TIME|payload``; refresh also drops expired entries
#: and returns {TIME, live members}. TIME is Redis's clock in ms, so a roster and an
#: event can be put in order on any node. The set expires 2 x ttl after its last write.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local op = ARGV[2]
for i = 5, #ARGV do
  if op == 'leave' then
    redis.call('ZREM', KEYS[1], ARGV[i])
  else
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], 2 * ttl)
end
if op ~= 'refresh' then
  redis.call('PUBLISH', ARGV[3], now .. '|' .. ARGV[4])
  return {}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return {now, redis.call('ZRANGE', KEYS[1], 0, -1)}
"""

OnRoster = Callable[[str, Roster], None]


def presence_key(room: str) -> str:
    """The room's presence set, and the channel of its events."""
    return f"{PREFIX}{{{room}}}:presence"


def roster_of(reply: list[Any], own_node: str) -> Roster:
    """A refresh's reply ({time, ``NODE USER`` members}) as a Roster, this node's own
    entries left out."""
    at, members = int(reply[0]), reply[1]
    pairs = set()
    for member in members:
        node, _, user = str(member).partition(" ")
        if node != own_node and user:
            pairs.add((user, node))
    return Roster(at, frozenset(pairs))


def decode_event(room: str, payload: str) -> PresenceEvent:
    """A presence event read off the channel; raises ValueError if it is not ours."""
    at, _, text = payload.partition("|")
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("e") not in ("join", "leave"):
        raise ValueError("not a presence event")
    return PresenceEvent(room, str(data["u"]), str(data["n"]), data["e"] == "join",
                         str(data.get("r", "")), int(at))


class Presence(Worker):
    """This node's users per room, kept in Redis by one thread."""

    def __init__(self, client: Any, node: str, *, errors: Any, ttl: float,
                 rooms: Callable[[], list[str]] | None = None,
                 on_thread_died: Callable[[BaseException], None] | None = None) -> None:
        super().__init__("securechat-redis-presence")
        self._client = client
        self.node = node
        self._errors = errors
        self.ttl = ttl
        self.ttl_ms = max(int(ttl * 1000), 1)
        #: The rooms this node holds (read back on every refresh).
        self.rooms = rooms
        self.on_roster: OnRoster | None = None
        self._on_thread_died = on_thread_died
        #: (op, room, user, reason) waiting for the thread.
        self._ops: list[tuple[str, str, str, str]] = []
        self._refresh_now = False
        #: The thread's own view: room -> users with a session on this node.
        self._local: dict[str, set[str]] = {}
        #: Why the last write failed (logged once per outage), or None.
        self.failure: str | None = None
        self.refreshes = 0

    @property
    def every(self) -> float:
        """Seconds between refreshes."""
        return self.ttl / 3

    def start(self) -> None:
        self._start_thread()

    def joined(self, room: str, user: str) -> None:
        """``user``'s first session on this node is in ``room`` (never blocks)."""
        self._queue(("join", room, user, ""))

    def left(self, room: str, user: str, reason: str) -> None:
        """``user``'s last session on this node left ``room`` (never blocks)."""
        self._queue(("leave", room, user, reason))

    def refresh_soon(self) -> None:
        """Refresh and read back now (the subscription was made again: events may have
        been missed)."""
        with self._cond:
            self._refresh_now = True
            self._cond.notify()

    def _queue(self, op: tuple[str, str, str, str]) -> None:
        with self._cond:
            if self._closing:
                return
            self._ops.append(op)
            if len(self._ops) == 1:
                self._cond.notify()

    def close(self) -> None:
        """Write what is queued (the leaves of a shutdown), then stop the thread."""
        self._stop_thread()

    # -- the presence thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            due = time.monotonic() + self.every
            while True:
                with self._cond:
                    while (not self._ops and not self._closing and not self._refresh_now
                           and time.monotonic() < due):
                        self._cond.wait(max(due - time.monotonic(), 0.0))
                    ops, self._ops = self._ops, []
                    closing, refresh = self._closing, self._refresh_now
                    self._refresh_now = False
                if ops:
                    self._send(ops)
                if closing:
                    return
                if refresh or time.monotonic() >= due:
                    self._refresh()
                    due = time.monotonic() + self.every
        except BaseException as exc:
            logger.critical("Redis presence thread died", exc_info=exc)
            if self._on_thread_died is not None:
                self._on_thread_died(exc)

    def _member(self, user: str) -> str:
        return f"{self.node} {user}"

    def _send(self, ops: list[tuple[str, str, str, str]]) -> None:
        """One pipeline for every queued join and leave. The local view changes even if
        Redis fails: the next refresh writes it again, and what is left of a lost leave
        expires with the ttl."""
        pipe = self._client.pipeline(transaction=False)
        for op, room, user, reason in ops:
            users = self._local.setdefault(room, set())
            if op == "join":
                users.add(user)
            else:
                users.discard(user)
                if not users:
                    del self._local[room]
            event = json.dumps({"e": op, "u": user, "n": self.node, "r": reason},
                               separators=(",", ":"))
            key = presence_key(room)
            pipe.eval(SCRIPT, 1, key, self.ttl_ms, op, key, event, self._member(user))
        self._execute(pipe)

    def _refresh(self) -> None:
        rooms = set(self.rooms() if self.rooms is not None else ()) | set(self._local)
        if not rooms:
            return
        order = sorted(rooms)
        pipe = self._client.pipeline(transaction=False)
        for room in order:
            key = presence_key(room)
            pipe.eval(SCRIPT, 1, key, self.ttl_ms, "refresh", key, "",
                      *map(self._member, sorted(self._local.get(room, ()))))
        replies = self._execute(pipe)
        if replies is None:
            return
        self.refreshes += 1
        if self.on_roster is None:
            return
        for room, reply in zip(order, replies, strict=True):
            if not isinstance(reply, Exception):
                self.on_roster(room, roster_of(list(reply), self.node))

    def _execute(self, pipe: Any) -> list[Any] | None:
        try:
            replies = list(pipe.execute(raise_on_error=False))
        except (self._errors.RedisError, OSError) as exc:
            if self.failure is None:
                logger.warning("Redis: presence not written: %s; it is written again on "
                               "the next refresh (every %g s)", exc, self.every)
            self.failure = str(exc)
            return None
        if self.failure is not None:
            logger.info("Redis: presence written again")
            self.failure = None
        return replies
