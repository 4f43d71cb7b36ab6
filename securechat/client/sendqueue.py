"""The client's outgoing messages: the queue, the ack window and the resend order (pure).

:class:`SendQueue` holds every message the user sent and the server has not yet
acknowledged, in two places: the *outbox* (waiting to go on the wire) and *in
flight* (on the wire, waiting for an ack, by id). :class:`~securechat.client.core.ClientCore`
decides when the link can carry messages; this module decides which ones go, and
in what order they go again. No I/O and no clock: ``now`` comes in as an argument.

The rules, kept here together so they can be read (and tested) as one:

- at most ``window`` messages are in flight; the window starts at
  :data:`SEND_WINDOW`, drops to 1 after a ``rate_limited`` and doubles with every
  ack (as TCP's slow start), so the refused message goes again before newer ones;
- a ``rate_limited`` message goes back to the outbox and nothing is sent until the
  pause ends;
- after a reconnect, what was in flight goes first again, with its old ids, in
  the order the user sent it (:attr:`~securechat.client.parts.Outgoing.order`).

:class:`HistoryQueue` does the same for ``history`` requests, which are reads: no
window, and a request whose ``history_end`` never came is asked again after a
reconnect (its answer may repeat what the first link already delivered).
"""

from __future__ import annotations

from typing import ClassVar, Final

from ..protocol import ErrorFrame
from .parts import HistoryRequest, Outgoing

__all__ = ["DEFAULT_RATE_PAUSE", "SEND_WINDOW", "HistoryQueue", "SendQueue"]

#: Messages sent but not yet acknowledged at once. The server drops messages over
#: its rate (50/s, bursts of 100 by default) with ``rate_limited``; a window keeps
#: a long backlog flushed after a reconnect from being refused by the hundred.
#: After a ``rate_limited`` the window drops to 1 and doubles with every ack (as
#: TCP's slow start), so the refused message goes again before newer ones.
SEND_WINDOW: Final = 32
#: Pause after ``rate_limited`` when the server gave no ``retry_after``.
DEFAULT_RATE_PAUSE: Final = 1.0


class SendQueue:
    """Unacknowledged messages of one client: the outbox and the ones in flight.

    Not thread-safe: it belongs to the core that owns it.
    """

    # Lists and a dict, not deques and an OrderedDict: a few hundred bytes less per
    # client, which counts with thousands of clients on one loop.
    __slots__ = ("_inflight", "_outbox", "paused_until", "window")
    #: Shared by every core that has not sent yet (see the end of the module).
    EMPTY: ClassVar[SendQueue]

    def __init__(self) -> None:
        self._outbox: list[Outgoing] = []
        self._inflight: dict[str, Outgoing] = {}
        self.window = SEND_WINDOW
        #: Monotonic time before which nothing is sent (0.0: not paused).
        self.paused_until = 0.0

    def __len__(self) -> int:
        """Messages held: waiting to be sent, or sent and not acked."""
        return len(self._outbox) + len(self._inflight)

    @property
    def waiting(self) -> bool:
        """Whether the outbox has messages not yet on the wire."""
        return bool(self._outbox)

    @property
    def in_flight(self) -> bool:
        """Whether messages are on the wire without an ack."""
        return bool(self._inflight)

    def pause_deadline(self) -> float | None:
        """When a pause ends that holds back queued messages, or None."""
        return self.paused_until if self._outbox and self.paused_until else None

    def added(self, message: Outgoing) -> SendQueue:
        """Queue a new message behind the others; returns the queue now holding it (a
        new one in place of :attr:`EMPTY`)."""
        queue = SendQueue() if self is SendQueue.EMPTY else self
        queue._outbox.append(message)
        return queue

    def take(self, now: float) -> list[Outgoing]:
        """The messages to put on the wire now (moved in flight): as many as the
        window allows, none while paused."""
        if not self._outbox:
            return []
        if self.paused_until:
            if now < self.paused_until:
                return []
            self.paused_until = 0.0
        count = min(self.window - len(self._inflight), len(self._outbox))
        if count <= 0:
            return []
        batch = self._outbox[:count]
        del self._outbox[:count]
        for message in batch:
            self._inflight[message.id] = message
        return batch

    def get(self, mid: str | None) -> Outgoing | None:
        """The message in flight with id ``mid``, or None."""
        return self._inflight.get(mid) if mid is not None else None

    def acked(self, mid: str) -> Outgoing | None:
        """The server acknowledged ``mid``: it leaves the queue and the window grows."""
        message = self._inflight.pop(mid, None)
        if message is not None:
            self.window = min(SEND_WINDOW, self.window * 2)
        return message

    def rate_limited(self, message: Outgoing, now: float, retry_after: float | None) -> None:
        """The server dropped ``message`` (in flight) over its rate: send it again after
        the pause, in order, with a window of 1."""
        del self._inflight[message.id]
        self._outbox.insert(0, message)
        self._sort()
        pause = retry_after if retry_after is not None else DEFAULT_RATE_PAUSE
        self.paused_until = max(self.paused_until, now + pause)
        self.window = 1

    def remove(self, message: Outgoing) -> None:
        """Take ``message`` (in flight) out for good: the server refused it."""
        del self._inflight[message.id]

    def largest_in_flight(self) -> Outgoing | None:
        """The longest message in flight, or None (``frame_too_large`` names no id)."""
        if not self._inflight:
            return None
        return max(self._inflight.values(), key=lambda m: len(m.frame))

    def requeue(self) -> int:
        """After a reconnect: what was in flight goes first, with its old ids, and the
        window is full again (a new session starts with a full rate bucket). Returns
        how many messages will be resent."""
        if self.window != SEND_WINDOW:
            self.window = SEND_WINDOW
        count = len(self._inflight)
        if count:
            self._outbox[:0] = self._inflight.values()
            self._sort()
            self._inflight.clear()
        return count

    def remove_oversized(self, limit: int) -> list[Outgoing]:
        """Take out the queued messages whose frame is over ``limit`` bytes."""
        too_big = [m for m in self._outbox if len(m.frame) - 1 > limit]
        if too_big:
            self._outbox = [m for m in self._outbox if len(m.frame) - 1 <= limit]
        return too_big

    def drain(self) -> list[Outgoing]:
        """Empty the queue; returns every message, in flight first."""
        pending = [*self._inflight.values(), *self._outbox]
        self._inflight.clear()
        self._outbox.clear()
        return pending

    def _sort(self) -> None:
        self._outbox.sort(key=lambda m: m.order)


class HistoryQueue:
    """``history`` requests not yet answered: waiting for a link, or sent and waiting
    for their ``history_end``. Not thread-safe: it belongs to the core that owns it."""

    __slots__ = ("_sent", "_waiting")
    #: Shared by every core that has not asked for history yet.
    EMPTY: ClassVar[HistoryQueue]

    def __init__(self) -> None:
        self._waiting: list[HistoryRequest] = []
        self._sent: dict[str, HistoryRequest] = {}

    def __len__(self) -> int:
        return len(self._waiting) + len(self._sent)

    def added(self, request: HistoryRequest) -> HistoryQueue:
        """Queue a request; returns the queue now holding it (new in place of EMPTY)."""
        queue = HistoryQueue() if self is HistoryQueue.EMPTY else self
        queue._waiting.append(request)
        return queue

    def take(self) -> list[HistoryRequest]:
        """The requests to put on the wire now (then waiting for their answer)."""
        batch, self._waiting = self._waiting, []
        for request in batch:
            self._sent[request.id] = request
        return batch

    def answered(self, rid: object) -> bool:
        """The answer to ``rid`` ended (``history_end``, or an error naming it)."""
        return self._sent.pop(str(rid), None) is not None if rid is not None else False

    def requeue(self) -> None:
        """After a reconnect: unanswered requests are asked again, first."""
        if self._sent:
            self._waiting[:0] = self._sent.values()
            self._sent.clear()

    def refuse_all(self, why: str) -> list[ErrorFrame]:
        """Empty the queue; the ``unknown_type`` errors its requests would get."""
        return [ErrorFrame("unknown_type", why, request.id) for request in self.drain()]

    def drain(self) -> list[HistoryRequest]:
        """Empty the queue; returns every request, sent ones first."""
        pending = [*self._sent.values(), *self._waiting]
        self._sent.clear()
        self._waiting.clear()
        return pending


# The empty queues every core starts with (~400 bytes a client less, for the many
# that never send or ask for history). Never added to: a core that needs one makes
# its own first; every other method called on an empty queue changes nothing.
SendQueue.EMPTY = SendQueue()
HistoryQueue.EMPTY = HistoryQueue()
