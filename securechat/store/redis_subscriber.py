"""The Redis log's subscription thread: every room's live channel, in seq order, no gap.

One pubsub connection per node, one pattern (``securechat:{*}:live``): each message
of every room reaches every node, the publisher's own included, and this thread
hands them on (``deliver``) in the order Redis ran the scripts. It keeps, per room,
the (epoch, seq) it last handed on:

- a seq that jumps (a message lost on the way) is filled from the room's stream first;
- one already handed on (seen again after a fill) is dropped;
- another epoch means Redis lost the room's data: numbering starts over at 1.

A second pattern, ``securechat:{*}:presence``, brings the other nodes' joins and
leaves (``redis_presence``), handed on as they come (``on_presence``).

Whenever the subscription is (re)made, after a lost connection (``CLIENT KILL TYPE
pubsub``, a Redis restart) or at start, each known room is read from its stream past
what was handed on, so members see no gap and no duplicate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .base import PresenceEvent, StoreUnavailable
from .redis_presence import PRESENCE_PATTERN, decode_event
from .redis_script import PATTERN, Entry, decode_live, room_of

__all__ = ["Subscriber"]

logger = logging.getLogger("securechat.store")

#: Messages handed on in one call at most (the rest of a burst goes in the next).
BATCH = 500
FILL_PAGE = 1000

Deliver = Callable[[list[Entry]], None]
#: (room, epoch, after, upto) -> the stream's entries in that range, ascending, a page.
ReadRange = Callable[[str, str, int, int], list[Entry]]
#: room -> (epoch or None if the room has none, last seq given out).
RoomState = Callable[[str], tuple[str | None, int]]


class Subscriber:
    def __init__(self, client: Any, *, errors: Any, deliver: Deliver, read_range: ReadRange,
                 room_state: RoomState, retry_after: float = 1.0,
                 on_thread_died: Callable[[BaseException], None] | None = None) -> None:
        self._client = client
        self._errors = errors
        self._deliver = deliver
        self._read_range = read_range
        self._room_state = room_state
        self._retry_after = retry_after
        self._on_thread_died = on_thread_died
        self._lock = threading.Lock()
        self._pos: dict[str, tuple[str, int]] = {}
        self._stop = threading.Event()
        #: Set while the pattern subscription is live (cleared when it is lost).
        self.subscribed = threading.Event()
        #: Why there is no subscription now, or None (read by health()).
        self.failure: str | None = None
        #: How many times the subscription was made (1 at start, +1 per loss), and the
        #: messages read from the streams to fill gaps.
        self.subscriptions = 0
        self.filled = 0
        #: Seconds before the first attempt to subscribe again (doubling up to
        #: ``retry_after``); tests raise it to make a gap.
        self.first_pause = 0.05
        #: The node's own self-test channel (RedisLog.probe) and the last token read
        #: back on it: proof that this very subscription still delivers.
        self.probe_channel = ""
        self.probe_seen = ""
        #: Where presence events go, and who is told that the subscription was made
        #: (again): events may have been missed meanwhile.
        self.on_presence: Callable[[list[PresenceEvent]], None] | None = None
        self.on_subscribed: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None

    def baseline(self, room: str, epoch: str, seq: int) -> None:
        """A room was read at ``seq``: messages after it are the new ones (if this
        thread has handed on nothing of that room yet)."""
        with self._lock:
            self._pos.setdefault(room, (epoch, seq))

    def position(self, room: str) -> int:
        """The last seq of ``room`` handed on (0 if none)."""
        with self._lock:
            return self._pos.get(room, ("", 0))[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="securechat-redis-subscriber",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    # -- the subscriber thread --------------------------------------------------------

    def _run(self) -> None:
        try:
            pause = self.first_pause
            while not self._stop.is_set():
                if self._listen():
                    pause = self.first_pause
                self._stop.wait(pause)
                pause = min(pause * 2, self._retry_after)
        except BaseException as exc:
            logger.critical("Redis subscriber thread died", exc_info=exc)
            if self._on_thread_died is not None:
                self._on_thread_died(exc)

    def _listen(self) -> bool:
        """One subscription, until it is lost or we stop; True if it was made."""
        errors = self._errors
        pubsub = self._client.pubsub()
        made = False
        try:
            pubsub.psubscribe(PATTERN, PRESENCE_PATTERN)
            if self.probe_channel:
                pubsub.subscribe(self.probe_channel)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.25)
                if message is None:
                    continue
                kind = message["type"]
                if kind == "psubscribe":
                    if message["channel"] == PRESENCE_PATTERN:  # both patterns hold now
                        made = True
                        self._subscribed()
                elif kind == "message" and message["channel"] == self.probe_channel:
                    self.probe_seen = str(message["data"])
                elif kind == "pmessage" and message["pattern"] == PRESENCE_PATTERN:
                    self._on_presence(message)
                elif kind == "pmessage":
                    burst = [message]
                    while len(burst) < BATCH:
                        more = pubsub.get_message(timeout=0.0)
                        if more is None or more["type"] != "pmessage":
                            break
                        if more["pattern"] == PRESENCE_PATTERN:
                            self._on_presence(more)
                            continue
                        burst.append(more)
                    self._on_messages(burst)
        except (errors.RedisError, OSError, StoreUnavailable) as exc:
            # A refusal (NOPERM, LOADING...) is survived like a lost connection: the
            # node stays up, not ready, and tries again.
            self.subscribed.clear()
            reason = f"Redis subscription lost: {exc}"
            if self.failure is None:
                logger.warning("%s; resubscribing, then filling the gap from the streams",
                               reason)
            self.failure = reason
        finally:
            try:
                pubsub.close()
            except Exception:  # closing a dead connection: nothing to save
                logger.debug("closing the pubsub connection failed", exc_info=True)
        return made

    def _subscribed(self) -> None:
        """Read every known room past its position, then take the live traffic."""
        self.subscriptions += 1
        with self._lock:
            rooms = list(self._pos.items())
        out: list[Entry] = []
        for room, (epoch, seen) in rooms:
            last = seen
            now_epoch, now_seq = self._room_state(room)
            if now_epoch is None:
                continue  # nothing there (Redis lost it): the next message says more
            if now_epoch != epoch:
                logger.warning("room %s: the Redis log is new (epoch %s, was %s); seq "
                               "starts over", room, now_epoch, epoch)
                last = 0
            filled = self._fill(room, now_epoch, last, now_seq) if now_seq > last else []
            out.extend(filled)
            with self._lock:
                self._pos[room] = (now_epoch, filled[-1].message.seq if filled else last)
        if out:
            self._deliver(out)
        if self.failure is not None:
            logger.info("Redis subscription made again; gaps filled (%d messages)", len(out))
        self.failure = None
        self.subscribed.set()
        if self.on_subscribed is not None:
            self.on_subscribed()

    def _on_presence(self, message: dict[str, Any]) -> None:
        room = room_of(str(message["channel"]))
        if room is None or self.on_presence is None:
            return
        try:
            event = decode_event(room, str(message["data"]))
        except (ValueError, KeyError, TypeError):
            logger.warning("room %s: a presence event that is not ours, ignored", room)
            return
        self.on_presence([event])

    def _fill(self, room: str, epoch: str, last: int, upto: int) -> list[Entry]:
        found: list[Entry] = []
        while last < upto:
            page = self._read_range(room, epoch, last, min(upto, last + FILL_PAGE))
            if not page:
                break
            found.extend(page)
            last = page[-1].message.seq
        self.filled += len(found)
        return found

    def _on_messages(self, messages: list[dict[str, Any]]) -> None:
        out: list[Entry] = []
        for message in messages:
            room = room_of(str(message["channel"]))
            if room is None:
                continue
            try:
                entry = decode_live(room, str(message["data"]))
            except (ValueError, KeyError):
                logger.warning("room %s: a live message that is not ours, ignored", room)
                continue
            self._accept(entry, out)
        if out:
            self._deliver(out)

    def _accept(self, entry: Entry, out: list[Entry]) -> None:
        room, seq = entry.message.room, entry.message.seq
        with self._lock:
            epoch, last = self._pos.get(room, (entry.epoch, seq - 1))
        if entry.epoch != epoch:
            logger.warning("room %s: the Redis log is new (epoch %s, was %s); seq starts "
                           "over", room, entry.epoch, epoch)
            last = 0
        if seq <= last:
            return
        if seq > last + 1:
            out.extend(e for e in self._fill(room, entry.epoch, last, seq - 1)
                       if e.message.seq < seq)
        out.append(entry)
        with self._lock:
            self._pos[room] = (entry.epoch, seq)
