"""Pure pieces of the client core: the outgoing-message and history-request records,
gap detection and the resume position from room numbers, and the checks on a token,
a client id, a saved position and a server's hints (no I/O).

Split from :mod:`securechat.client.core` to keep each module small; it re-exports them.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from .. import protocol
from ..errors import ClientError, ConfigError, LocalProtocolError
from ..protocol import CaughtUp
from .events import Gap, SecureChatClientFailure

__all__ = [
    "HistoryRequest",
    "LinkFailure",
    "Outgoing",
    "SeqTracker",
    "bye_reason",
    "decoder_limit",
    "interned",
    "too_long",
    "validate_client_id",
    "validate_position",
    "validate_token",
]


# --------------------------------------------------------------------------- pure helpers
class LinkFailure(Exception):
    """Internal to the core: the current link or attempt failed. ``error``, when set, is what the
    client ends with if :func:`securechat.client.backoff.is_fatal` says retrying cannot help."""

    def __init__(self, reason: str, *, retry_after: float | None = None,
                 error: ClientError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.error = error



def validate_token(token: str) -> str:
    """Reject a token the server could only refuse, before connecting."""
    token = token.strip()
    if not token:
        raise ConfigError("the token is empty")
    # The server answers such a token with bad_frame, which a client retries; refusing
    # it here makes a mistyped token a usage error instead of an endless reconnect.
    problem = protocol.token_problem(token)
    if problem is not None:
        raise ConfigError(f"the token is malformed: {problem}")
    return token


def validate_client_id(client_id: str) -> str:
    """Reject a client id the server would refuse (1-64 visible ASCII characters)."""
    problem = protocol.name_problem(client_id, "client_id", protocol.MAX_CLIENT_ID_LENGTH)
    if problem is not None:
        raise ConfigError(f"the client id is malformed: {problem}")
    return client_id


def validate_position(position: tuple[str, int]) -> tuple[str, int]:
    """Reject a saved ``(epoch, seq)`` the server would refuse, before connecting."""
    try:
        epoch, seq = position
    except (TypeError, ValueError):
        raise ConfigError("resume must be a pair (epoch, seq)") from None
    problem = protocol.name_problem(epoch, "the resume epoch", protocol.MAX_EPOCH_LENGTH)
    if problem is not None:
        raise ConfigError(problem)
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= protocol.MAX_INT_ID:
        raise ConfigError("the resume seq must be an integer from 0 to 2**53 - 1")
    return epoch, seq


def _history_bound(value: int | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 0 <= value <= protocol.MAX_INT_ID):
        raise ValueError(f"history {name} must be a seq (an integer from 0 to 2**53 - 1)")


class HistoryRequest:
    """One ``history`` request the user made: its id and wire frame (checked here, so
    a bad argument fails in the caller and not on the server)."""

    __slots__ = ("frame", "id")

    def __init__(self, rid: str, before: int | None = None, after: int | None = None,
                 limit: int = protocol.DEFAULT_HISTORY_LIMIT, room: str | None = None) -> None:
        if before is not None and after is not None:
            raise ValueError("history takes before or after, not both")
        _history_bound(before, "before")
        _history_bound(after, "after")
        if (isinstance(limit, bool) or not isinstance(limit, int)
                or not 1 <= limit <= protocol.MAX_HISTORY_LIMIT):
            raise ValueError(f"history limit must be from 1 to {protocol.MAX_HISTORY_LIMIT}")
        self.id = rid
        self.frame = protocol.encode(protocol.History(rid, before, after, limit, room))


def too_long(message: Outgoing, max_frame: int) -> LocalProtocolError:
    """Why ``message`` cannot go to a server accepting ``max_frame`` bytes a frame."""
    return LocalProtocolError(
        "frame_too_large",
        f"message too long: {len(message.frame) - 1} bytes, the server accepts {max_frame}")


def decoder_limit(max_frame: int) -> int:
    """What we accept from the server for a given ``max_frame``: it re-encodes a body
    it accepted (adding from/seq/ts, and a body can grow when re-escaped)."""
    return 2 * max_frame + 4096


def interned(welcome: protocol.Welcome) -> protocol.Welcome:
    """``welcome`` with one copy of each member name, room and epoch for all clients
    in the process (500 clients x 500 names = 25 MB else); the user is a member."""
    intern = sys.intern
    return replace(welcome, user=intern(welcome.user), room=intern(welcome.room),
                   epoch=intern(welcome.epoch), members=tuple(map(intern, welcome.members)))


def bye_reason(bye: protocol.Bye, retry_after: float | None) -> str:
    if bye.reason == "shutdown":
        hint = f", back in {retry_after:g} s" if retry_after is not None else ""
        return f"the server is shutting down{hint}"
    return f"the server said bye{f' ({bye.reason})' if bye.reason else ''}"


# --------------------------------------------------------------------------- gap detection
#: No numbers seen out of order: every tracker's ``_ahead`` until one arrives (an
#: empty set is 216 bytes a client; this is shared and never changed).
_NONE_AHEAD: frozenset[int] = frozenset()


class SeqTracker:
    """Notices room messages this client never saw, from the ``seq`` numbers (pure),
    and keeps the client's position in the room's log for a resume.

    Every room message has the next ``seq``; this client sees others' messages as
    ``msg`` and its own as ``ack``. Our own ack can arrive after a later message
    (the server acks after publishing), so a hole only counts as lost once nothing
    of ours is in flight (:meth:`settle`).

    After a resume (:meth:`resume`) the server replays what we missed before
    ``caught_up``: holes are judged only at :meth:`caught_up` (or at
    :meth:`end_replay` when a server never sends it), so a replay that fills them
    reports nothing.
    """

    __slots__ = ("_ahead", "_floor", "_pending", "epoch", "last", "live_from", "replaying")

    def __init__(self) -> None:
        self.last: int | None = None
        self.epoch = ""
        self._ahead: set[int] | frozenset[int] = _NONE_AHEAD
        #: Between a resumed welcome and caught_up: messages up to ``live_from`` (the
        #: welcome's seq) are the replay of what we missed.
        self.replaying = False
        self.live_from = 0
        #: The restart a resume found (a new epoch), reported when the replay ends.
        self._pending: Gap | None = None
        #: Numbers up to here must all be seen; holes below it count in :meth:`settle`.
        self._floor = 0

    def position(self) -> tuple[str, int] | None:
        """(epoch, last seq seen) to resume from, or None before any welcome."""
        if not self.epoch or self.last is None:
            return None
        return self.epoch, self.last

    def start_at(self, epoch: str, seq: int) -> None:
        """Resume from a position saved by an earlier client instance."""
        self.epoch, self.last, self._ahead = epoch, seq, _NONE_AHEAD

    def welcome(self, seq: int, epoch: str = "") -> Gap | None:
        """A (re)connection: what was numbered while we were away is missed.

        ``epoch`` (``welcome.epoch``) names the numbering; a new one means the server
        restarted and counted again from 0. Servers without it: numbering that went
        backwards is taken as a restart.
        """
        last, ahead, previous = self.last, self._ahead, self.epoch
        self.last, self._ahead, self.epoch = seq, _NONE_AHEAD, epoch
        self.replaying, self._pending, self._floor = False, None, 0
        if last is None:
            return None
        if (epoch and previous and epoch != previous) or seq < last:
            # A new numbering: everything it counted before we came back was missed.
            return Gap(0, seq + 1, seq, restarted=True) if seq > 0 else None
        missing = seq - last - sum(1 for s in ahead if s <= seq)
        return Gap(last, seq + 1, missing) if missing > 0 else None

    def resume(self, seq: int, epoch: str) -> bool:
        """A welcome after an auth with ``resume`` from a server that replays: the
        messages up to ``seq`` come next, then ``caught_up``; nothing is judged yet.
        Returns whether anything is left to judge (missed messages, or a restart)."""
        pending = None
        if self.last is None or epoch != self.epoch or seq < self.last:
            # Not our log (or it went backwards): nothing can be replayed. Switch to
            # the new numbering now; the restart is reported when the replay ends.
            pending = self.welcome(seq, epoch)
        # Nothing missed: no replay to wait for (a caught_up that comes is just shown).
        waits = pending is not None or (self.last is not None and seq > self.last)
        self.replaying, self.live_from, self._pending, self._floor = waits, seq, pending, 0
        return waits

    def is_new(self, seq: int) -> bool:
        """Whether a ``msg`` with this number was not seen yet (a replay or a resend
        can repeat one; it is not shown twice)."""
        return self.last is None or (seq > self.last and seq not in self._ahead)

    def seen(self, seq: int) -> None:
        """A ``msg`` or ``ack`` with this number arrived."""
        if self.last is None or seq <= self.last:
            return
        ahead = self._ahead
        if seq == self.last + 1 and not ahead:
            self.last = seq  # in order, nothing held: the usual case, no set needed
            return
        if not isinstance(ahead, set):
            ahead = self._ahead = set()
        ahead.add(seq)
        while self.last + 1 in ahead:
            self.last += 1
            ahead.discard(self.last)
        if not ahead:
            self._ahead = _NONE_AHEAD

    def caught_up(self, frame: CaughtUp) -> Gap | None:
        """The replay ended: what the server says it could not replay is missed."""
        if not self.replaying:
            return None  # a late caught_up, after end_replay judged the holes
        self.replaying = False
        pending, self._pending = self._pending, None
        if pending is not None:
            return pending
        if frame.reset:  # the same epoch name, yet not our log: a new numbering
            self.last, self._ahead = self.live_from, _NONE_AHEAD
            seq = self.live_from
            return Gap(0, seq + 1, seq, restarted=True) if seq > 0 else None
        gap = None
        after, before = frame.missing_after, frame.missing_before
        if after is not None and before is not None and before > after + 1:
            missing = before - after - 1 - sum(1 for s in self._ahead if after < s < before)
            if missing > 0:
                gap = Gap(after, before, missing)
            if self.last is not None and self.last >= after:
                self._pass(before - 1)  # the lost range is behind us now
        # Anything else below the welcome's seq should have been replayed; our own
        # resends may still be acked with their old numbers, so settle() judges it.
        self._floor = self.live_from
        return gap

    def end_replay(self) -> Gap | None:
        """No ``caught_up`` came (a server that ignores ``resume``): judge the holes up
        to the welcome's seq as a plain welcome would."""
        if not self.replaying:
            return None
        self.replaying = False
        pending, self._pending = self._pending, None
        if pending is not None or self.last is None:
            return pending
        seq, last = self.live_from, self.last
        if seq <= last:
            return None
        missing = seq - last - sum(1 for s in self._ahead if s <= seq)
        self._pass(seq)
        return Gap(last, seq + 1, missing) if missing > 0 else None

    def settle(self) -> Gap | None:
        """Nothing of ours is in flight: holes below the highest number are lost."""
        if self.replaying or self.last is None:
            return None
        high = max(max(self._ahead, default=0), self._floor)
        self._floor = 0
        if high <= self.last:
            return None
        gap = Gap(self.last, high + 1, high - self.last - len(self._ahead))
        self.last = high
        self._ahead = _NONE_AHEAD
        return gap

    def _pass(self, seq: int) -> None:
        """Count every number up to ``seq`` as dealt with."""
        assert self.last is not None
        self.last = max(self.last, seq)
        ahead = {s for s in self._ahead if s > self.last}
        while self.last + 1 in ahead:
            self.last += 1
            ahead.discard(self.last)
        self._ahead = ahead or _NONE_AHEAD


# --------------------------------------------------------------------------- messages
class Outgoing:
    """One message the user sent: its wire frame and how it ended.

    The core calls :meth:`acked` or :meth:`failed` exactly once. The public client's
    ``SendHandle`` subclasses this to wake the threads waiting on it.
    """

    __slots__ = ("body", "error", "frame", "id", "order", "room", "seq")

    def __init__(self, mid: str, body: str, frame: bytes, order: int, room: str = "") -> None:
        self.id = mid
        #: The room it goes to ("": the default room of an old-style login).
        self.room = room
        self.body = body
        self.frame = frame
        self.order = order
        self.seq: int | None = None
        self.error: SecureChatClientFailure | None = None

    def acked(self, seq: int) -> None:
        """The server put the message in the room as number ``seq``."""
        self.seq = seq

    def failed(self, error: SecureChatClientFailure) -> None:
        """The message will never be delivered."""
        self.error = error
