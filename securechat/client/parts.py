"""Pure pieces of the client core: the outgoing-message record, gap detection from
room numbers, and the checks on a token and on a server's hints (no I/O).

Split from :mod:`securechat.client.core` to keep each module small; it re-exports them.
"""

from __future__ import annotations

from .. import protocol
from ..errors import ConfigError
from .events import Gap, SecureChatClientFailure

__all__ = [
    "Outgoing",
    "SeqTracker",
    "bye_reason",
    "decoder_limit",
    "validate_token",
]


# --------------------------------------------------------------------------- pure helpers
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


def decoder_limit(max_frame: int) -> int:
    """What we accept from the server for a given ``max_frame``: it re-encodes a body
    it accepted (adding from/seq/ts, and a body can grow when re-escaped)."""
    return 2 * max_frame + 4096


def bye_reason(bye: protocol.Bye, retry_after: float | None) -> str:
    if bye.reason == "shutdown":
        hint = f", back in {retry_after:g} s" if retry_after is not None else ""
        return f"the server is shutting down{hint}"
    return f"the server said bye{f' ({bye.reason})' if bye.reason else ''}"


# --------------------------------------------------------------------------- gap detection
class SeqTracker:
    """Notices room messages this client never saw, from the ``seq`` numbers (pure).

    Every room message has the next ``seq``; this client sees others' messages as
    ``msg`` and its own as ``ack``. Our own ack can arrive after a later message
    (the server acks after publishing), so a hole only counts as lost once nothing
    of ours is in flight (:meth:`settle`).
    """

    __slots__ = ("_ahead", "epoch", "last")

    def __init__(self) -> None:
        self.last: int | None = None
        self.epoch = ""
        self._ahead: set[int] = set()

    def welcome(self, seq: int, epoch: str = "") -> Gap | None:
        """A (re)connection: what was numbered while we were away is missed.

        ``epoch`` (``welcome.epoch``) names the numbering; a new one means the server
        restarted and counted again from 0. Servers without it: numbering that went
        backwards is taken as a restart.
        """
        last, ahead, previous = self.last, self._ahead, self.epoch
        self.last, self._ahead, self.epoch = seq, set(), epoch
        if last is None:
            return None
        if (epoch and previous and epoch != previous) or seq < last:
            # A new numbering: everything it counted before we came back was missed.
            return Gap(0, seq + 1, seq, restarted=True) if seq > 0 else None
        missing = seq - last - sum(1 for s in ahead if s <= seq)
        return Gap(last, seq + 1, missing) if missing > 0 else None

    def seen(self, seq: int) -> None:
        """A ``msg`` or ``ack`` with this number arrived."""
        if self.last is None or seq <= self.last:
            return
        self._ahead.add(seq)
        while self.last + 1 in self._ahead:
            self.last += 1
            self._ahead.discard(self.last)

    def settle(self) -> Gap | None:
        """Nothing of ours is in flight: holes below the highest number are lost."""
        if not self._ahead or self.last is None:
            return None
        high = max(self._ahead)
        gap = Gap(self.last, high + 1, high - self.last - len(self._ahead))
        self.last = high
        self._ahead.clear()
        return gap


# --------------------------------------------------------------------------- messages
class Outgoing:
    """One message the user sent: its wire frame and how it ended.

    The core calls :meth:`acked` or :meth:`failed` exactly once. The public client's
    ``SendHandle`` subclasses this to wake the threads waiting on it.
    """

    __slots__ = ("body", "error", "frame", "id", "order", "seq")

    def __init__(self, mid: str, body: str, frame: bytes, order: int) -> None:
        self.id = mid
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
