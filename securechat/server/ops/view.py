"""What the admin endpoint reads of a running server: the server hands it this view
(so nothing under ops/ imports the listener), and reads only, never writes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .health import Readiness

if TYPE_CHECKING:
    from ...io.loop import IOLoop
    from ...rooms.memory import CacheBudget
    from ...rooms.registry import RoomRegistry
    from ...store.writer import Writer
    from ..admission import Admission

__all__ = ["ServerView"]


@dataclass(frozen=True)
class ServerView:
    loops: Sequence[IOLoop]
    admission: Admission
    rooms: RoomRegistry
    #: The rooms' shared ledger (messages, deliveries, publish-to-ack latency).
    ledger: CacheBudget
    #: The SQLite log's writer thread; None for the memory store.
    writer: Writer | None
    readiness: Readiness
    #: The accept thread's last turn, and how long it may sleep between turns.
    accept_turn: Callable[[], float]
    accept_sleep: float
    #: Why the server is not accepting now (None if it is).
    not_listening: Callable[[], str | None]
    stopping: threading.Event
    #: time.monotonic() when the server started.
    started: float
    #: The Redis log's counters (round trips, publishes, gap fills, subscriptions);
    #: None for the other stores.
    redis: Callable[[], dict[str, int]] | None = None
