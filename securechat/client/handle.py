"""The handle :meth:`securechat.client.Client.send` returns: one message on its way,
which a user thread can wait on while the I/O thread acknowledges or fails it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .core import Outgoing
from .events import SecureChatClientFailure

__all__ = ["SendHandle"]


class SendHandle(Outgoing):
    """One message given to :meth:`Client.send`: wait for its ``seq`` or its failure."""

    __slots__ = ("_done", "_on_done")

    def __init__(self, mid: str, body: str, frame: bytes, order: int,
                 on_done: Callable[[], None] | None = None, room: str = "") -> None:
        super().__init__(mid, body, frame, order, room)
        self._done = threading.Event()
        self._on_done = on_done

    def __repr__(self) -> str:
        state = f"seq={self.seq}" if self.seq is not None else (
            f"error={self.error}" if self.error else "pending")
        return f"<SendHandle {self.id} {state}>"

    def done(self) -> bool:
        """Acknowledged or failed."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> int:
        """The room ``seq`` the server gave the message. Raises :class:`TimeoutError`
        if it is not acknowledged in time (it stays queued), or the reason it never
        will be (:class:`ClientClosed`, :class:`GaveUp`, :class:`AuthRefused`...)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"message {self.id} not acknowledged within {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.seq is not None
        return self.seq

    # Called once, by the core (loop thread) or the closing thread.
    def acked(self, seq: int) -> None:
        super().acked(seq)
        self._settled()

    def failed(self, error: SecureChatClientFailure) -> None:
        super().failed(error)
        self._settled()

    def _settled(self) -> None:
        if self._done.is_set():
            return
        self._done.set()
        if self._on_done is not None:
            self._on_done()
