"""What a client tells its user: connection-state events, as frozen dataclasses (pure).

The events a :class:`~securechat.client.Client` emits are the protocol frames
:class:`~securechat.protocol.Message`, :class:`~securechat.protocol.Ack`,
:class:`~securechat.protocol.Join`, :class:`~securechat.protocol.Leave`,
:class:`~securechat.protocol.ErrorFrame`, :class:`~securechat.protocol.CaughtUp`,
:class:`~securechat.protocol.HistoryMessage`, :class:`~securechat.protocol.HistoryEnd`,
:class:`~securechat.protocol.Joined`, :class:`~securechat.protocol.Left` and
:class:`~securechat.protocol.Grants`, plus the ones defined here:
:class:`Connecting`, :class:`Connected`, :class:`Disconnected`, :class:`Reconnecting`,
:class:`Gap`, :class:`SendFailed`, :class:`EventsDropped` and, always last,
:class:`Closed` (whose ``error`` is a :class:`~securechat.errors.GaveUp` when retries
ran out).

A reconnect to a server that keeps the room's log (protocol 2) goes: ``Connected``,
the messages missed meanwhile as ``Message(..., replayed=True)`` in seq order, then
one ``CaughtUp`` (the server's frame) and live traffic. A :class:`Gap` comes before
that ``CaughtUp`` only for messages the server no longer has (``missing_after`` /
``missing_before``) or for a log that was reset (``restarted=True``). A server
that never sends ``caught_up`` (protocol 1, or one that ignores ``resume``) gets
the old behaviour: a ``Gap`` for what was numbered while away, and no ``CaughtUp``.
``HistoryMessage`` events (ascending seq) and one ``HistoryEnd`` answer each
:meth:`~securechat.client.Client.history` request, under its id.

With rooms (protocol 3) all of that is per room: every event about a room carries
``.room`` (``Gap`` and ``SendFailed`` too), a resume of several rooms gives each its
``Joined``, its replay and its ``CaughtUp``, and ``Left(room, "forbidden")`` says a
grant was removed (the client stops asking for that room).

They live in their own module, importing only :mod:`securechat.protocol` and
:mod:`securechat.errors`, so that the sans-I/O core (:mod:`securechat.client.core`),
the I/O driver and the public client can all import them without a cycle.
``securechat/client.py`` still has its own copies until it is replaced by
:mod:`securechat.client` (then they are deleted and it re-exports these).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ClientError, ProtocolError
from ..protocol import (
    Ack,
    CaughtUp,
    ErrorFrame,
    Grants,
    HistoryEnd,
    HistoryMessage,
    Join,
    Joined,
    Leave,
    Left,
    Message,
    Welcome,
)

__all__ = [
    "Closed",
    "Connected",
    "Connecting",
    "Disconnected",
    "Event",
    "EventsDropped",
    "Gap",
    "Reconnecting",
    "SecureChatClientFailure",
    "SendFailed",
]

#: What a message that will never be delivered failed with.
SecureChatClientFailure = ClientError | ProtocolError


@dataclass(frozen=True, slots=True)
class Connecting:
    """A connection attempt starts (``attempt`` 0 is the very first one)."""

    address: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Connected:
    """Authenticated and in the room; ``reconnect`` is False for the first connection."""

    welcome: Welcome
    address: str
    reconnect: bool


@dataclass(frozen=True, slots=True)
class Disconnected:
    """An authenticated link was lost; a :class:`Reconnecting` or :class:`Closed` follows."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The next attempt, number ``attempt`` (1-based), starts in ``delay`` seconds;
    ``retry_after`` is the server's hint, when it gave one (``delay`` is at least that)."""

    delay: float
    attempt: int
    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """Room messages numbered after ``after`` and before ``before`` were not all seen:
    ``missing`` of them never reached this client (an outage, or the server restarted
    and began numbering again when ``restarted``). A hint, not a replay."""

    after: int
    before: int
    missing: int
    restarted: bool = False
    #: The room the messages were numbered in.
    room: str = ""


@dataclass(frozen=True, slots=True)
class SendFailed:
    """A message will never be delivered (too large, refused by the server, client closed)."""

    id: str
    body: str
    error: SecureChatClientFailure
    room: str = ""


@dataclass(frozen=True, slots=True)
class EventsDropped:
    """``count`` older events were dropped because nobody read the event queue."""

    count: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The last event: the client stopped. ``error`` is None after ``Client.close()``,
    else why it stopped (:class:`~securechat.errors.AuthRefused`,
    :class:`~securechat.errors.TLSVerificationFailed`, :class:`~securechat.errors.GaveUp`...)."""

    reason: str
    error: ClientError | None = None


Event = (Message | Ack | Join | Leave | ErrorFrame | CaughtUp | HistoryMessage | HistoryEnd
         | Joined | Left | Grants | Connecting | Connected | Disconnected | Reconnecting | Gap
         | SendFailed | EventsDropped | Closed)
