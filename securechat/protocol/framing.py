"""Splitting a byte stream into frames: one line each, bounded in length."""

from __future__ import annotations

from ..errors import RemoteProtocolError
from .frames import DEFAULT_MAX_FRAME


class FrameDecoder:
    """Splits a byte stream into lines of at most ``max_frame`` bytes (newline excluded).

    Linear in the bytes fed, however the stream is cut: an incomplete line grows in a
    bytearray (amortised O(1) per byte, at most ``max_frame`` bytes held) and only the
    new data is split, so a line fed one byte at a time costs no more than one read.

    A line that is too long, complete or not (it is refused as soon as it is known to
    be too long, without waiting for its end), sets :attr:`failed` to a
    :class:`RemoteProtocolError` ``frame_too_large``. :meth:`feed` still returns the
    complete lines before it, so the caller can handle those first, then fail with
    :attr:`failed`; after a failure ``feed`` returns nothing.
    """

    __slots__ = ("_tail", "failed", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        #: Set once the stream went bad; the stream cannot be re-synchronised.
        self.failed: RemoteProtocolError | None = None
        self._tail = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._tail)

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete lines in ``data`` (after what was buffered before) that
        precede any over-long line; see :attr:`failed`."""
        if self.failed is not None:
            return []
        limit = self.max_frame
        tail = self._tail
        held = len(tail)
        lines = data.split(b"\n")
        rest = lines.pop()
        if held:
            if not lines:  # still no end of line: append, never re-split what is held
                if held + len(rest) > limit:
                    return self._fail([])
                tail += rest
                return lines
            lines[0] = b"".join((tail, lines[0]))  # the held line is complete: join it once
            tail.clear()
        # Fast path: if the whole read fits in a frame, no line in it can be too long.
        if held + len(data) > limit and (
            max(map(len, lines), default=0) > limit or len(rest) > limit
        ):
            for i, line in enumerate(lines):
                if len(line) > limit:
                    return self._fail(lines[:i])
            return self._fail(lines)
        if rest:
            tail += rest
        return lines

    def _fail(self, good: list[bytes]) -> list[bytes]:
        self.failed = _too_large(self.max_frame)
        self._tail = bytearray()
        return good


def _too_large(limit: int) -> RemoteProtocolError:
    return RemoteProtocolError("frame_too_large", f"frame longer than {limit} bytes")
