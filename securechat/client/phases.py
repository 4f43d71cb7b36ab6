"""The phases of one client link and every allowed change between them, in one table
(in the spirit of h11's ``_state.py``), and the actions the core asks of its driver.
:meth:`securechat.client.core.ClientCore._goto` is the one place that applies the
table. Pure data: no I/O, no clock."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from .events import Event

__all__ = ["LINKED", "READING", "TRANSITIONS", "CloseLink", "Connect", "Output", "Phase"]


class Phase(enum.Enum):
    """Where one client link is; :data:`TRANSITIONS` says where it may go next."""

    IDLE = "idle"  # not started
    CONNECTING = "connecting"  # the driver resolves, connects, handshakes
    AUTH = "auth"  # TLS is up, auth sent, waiting for welcome
    ACTIVE = "active"
    CLOSING = "closing"  # bye sent, waiting for the server's bye
    WAITING = "waiting"  # backoff before the next attempt
    DONE = "done"


#: Every allowed phase change: (phase, trigger) -> next phase. ``finish`` (to DONE)
#: is allowed from every phase but DONE and is not listed.
TRANSITIONS: Final[dict[tuple[Phase, str], Phase]] = {
    (Phase.IDLE, "start"): Phase.CONNECTING,
    (Phase.WAITING, "retry"): Phase.CONNECTING,
    (Phase.CONNECTING, "connection_made"): Phase.AUTH,
    (Phase.AUTH, "welcome"): Phase.ACTIVE,
    (Phase.ACTIVE, "close"): Phase.CLOSING,
    (Phase.CONNECTING, "lost"): Phase.WAITING,
    (Phase.AUTH, "lost"): Phase.WAITING,
    (Phase.ACTIVE, "lost"): Phase.WAITING,
}

#: Phases in which frames from the server are read.
READING = frozenset({Phase.AUTH, Phase.ACTIVE, Phase.CLOSING})
#: Phases in which the driver has a socket or an attempt going.
LINKED = frozenset({Phase.CONNECTING, Phase.AUTH, Phase.ACTIVE})


# --------------------------------------------------------------------------- actions
@dataclass(frozen=True, slots=True)
class Connect:
    """Action: open a TLS connection to the server now (attempt ``attempt``, 0-based
    since the link was last healthy). The core times the attempt; report the outcome
    with :meth:`ClientCore.connection_made` or :meth:`ClientCore.connection_lost`."""

    attempt: int


@dataclass(frozen=True, slots=True)
class CloseLink:
    """Action: close the socket (or abandon the attempt) now; unsent bytes are dropped."""

    reason: str


Output = Event | Connect | CloseLink
