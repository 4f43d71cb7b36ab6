"""A hand-driven :class:`~securechat.client.core.ClientCore` for the core's unit tests:
a fake clock, the server's frames fed as bytes, the client's frames read back as JSON."""

from __future__ import annotations

import json
from typing import Any

from securechat import protocol
from securechat.client.backoff import BackoffPolicy
from securechat.client.core import ClientCore, Connect, Outgoing, Output, Phase

TOKEN = "sct1.abcdefabcdef.secret"


class Extreme:
    """An rng that always returns the top of the range (the longest wait)."""

    def uniform(self, a: float, b: float) -> float:
        return b


def welcome(seq: int = 10, *, heartbeat: float = 20.0, epoch: str = "e1",
            max_frame: int = protocol.DEFAULT_MAX_FRAME, version: int = 1) -> protocol.Welcome:
    """A welcome; ``version`` 1 (no resume, no caught_up) unless a test is about v2."""
    return protocol.Welcome("alice", "lobby", ("alice", "bob"), heartbeat, seq,
                            max_frame=max_frame, epoch=epoch, protocol=version)


class Harness:
    """A core, a fake clock and helpers to play the server's side."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("backoff", BackoffPolicy(base=0.5, cap=30.0))
        self.core = ClientCore(token=TOKEN, address="h:1", rng=Extreme(),  # type: ignore[arg-type]
                               **kwargs)
        self.now = 1000.0
        self.ids = 0

    def outputs(self) -> list[Output]:
        return self.core.outputs()

    def frames(self) -> list[dict[str, Any]]:
        """What the core wants on the wire, as decoded JSON objects."""
        data = self.core.data_to_send()
        return [json.loads(line) for line in data.splitlines() if line]

    def message(self, body: str = "hi", size: int | None = None) -> Outgoing:
        self.ids += 1
        mid = f"m{self.ids}"
        body = body if size is None else "x" * size
        return Outgoing(mid, body, protocol.encode(protocol.SendMessage(body, mid)), self.ids)

    def feed(self, *frames: protocol.ServerFrame) -> None:
        self.core.receive_data(b"".join(protocol.encode(f) for f in frames), self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.core.tick(self.now)

    def to_deadline(self) -> None:
        deadline = self.core.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        self.core.tick(self.now)

    def connect(self, w: protocol.Welcome | None = None) -> list[Output]:
        """Start (or retry) and authenticate; returns the outputs of the welcome. The
        auth frame sent is kept in :attr:`auth`."""
        if self.core.phase is Phase.IDLE:
            self.core.start(self.now)
        elif self.core.phase is Phase.WAITING:
            self.to_deadline()
        out = self.outputs()
        assert isinstance(out[-1], Connect), out
        self.core.connection_made(self.now)
        frames = self.frames()
        assert len(frames) == 1 and frames[0]["type"] == "auth", frames
        assert frames[0]["token"] == TOKEN
        self.auth: dict[str, Any] = frames[0]
        self.feed(w or welcome())
        return self.outputs()
