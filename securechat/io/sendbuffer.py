"""Bytes waiting for a non-blocking TLS socket: coalesced writes and OpenSSL's retry rule.

Used by the server's sessions and by the client, each from the one thread that
owns the socket. Two rules live here so neither side can get them wrong:

- many queued frames go out in one ``SSL_write`` (up to ``chunk`` bytes), not one
  TLS record per frame: this is what makes fan-out cheap;
- after ``SSLWantWriteError``/``SSLWantReadError`` the *same* buffer must be
  passed again (OpenSSL remembers how much of it it already wrote; another buffer
  gives ``BAD_LENGTH``), so the buffer in flight is kept until it is written.
"""

from __future__ import annotations

import socket
import ssl
from collections import deque

__all__ = ["DEFAULT_CHUNK", "SendBuffer"]

DEFAULT_CHUNK = 256 * 1024


class SendBuffer:
    """A FIFO of byte strings drained into a TLS socket in large writes."""

    __slots__ = ("_pending", "_queue", "chunk", "size")

    def __init__(self, chunk: int = DEFAULT_CHUNK) -> None:
        self.chunk = chunk
        self._queue: deque[bytes] = deque()
        self._pending: bytes | None = None  # the exact buffer OpenSSL may be half-way into
        #: Bytes not yet written (queued plus in flight).
        self.size = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: bytes) -> None:
        if data:
            self._queue.append(data)
            self.size += len(data)

    @property
    def in_flight(self) -> bool:
        """A write was interrupted and must be completed before anything else."""
        return self._pending is not None

    def drop_queued(self) -> None:
        """Forget what is queued but keep the interrupted write, which must finish."""
        self._queue.clear()
        self.size = len(self._pending) if self._pending is not None else 0

    def clear(self) -> None:
        """Forget everything (the socket is being closed)."""
        self._queue.clear()
        self._pending = None
        self.size = 0

    def _next(self) -> bytes:
        queue = self._queue
        first = queue.popleft()
        if not queue or len(first) >= self.chunk:
            return first
        parts = [first]
        size = len(first)
        while queue and size + len(queue[0]) <= self.chunk:
            part = queue.popleft()
            parts.append(part)
            size += len(part)
        return b"".join(parts)

    def write_to(self, sock: socket.socket) -> tuple[int, bool]:
        """Write until empty or the socket would block: ``(bytes written, drained)``.

        ``sock`` is a non-blocking :class:`ssl.SSLSocket`. TLS and OS errors other than
        "would block" propagate to the caller, which owns the connection and decides
        how it ends.
        """
        written = 0
        while True:
            data = self._pending
            if data is None:
                if not self._queue:
                    return written, True
                data = self._pending = self._next()
            try:
                sent = sock.send(data)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return written, False
            written += sent
            self.size -= sent
            self._pending = None if sent >= len(data) else data[sent:]
