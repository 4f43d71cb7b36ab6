"""securechat.io.sendbuffer: coalescing queued frames into large writes (no socket)."""

from __future__ import annotations

from securechat.io.sendbuffer import SendBuffer


def test_send_buffer_coalesces_up_to_the_chunk_size() -> None:
    """Queued frames are joined into writes of at most ``chunk`` bytes, in order; a
    frame larger than the chunk goes out alone."""
    buf = SendBuffer(chunk=10)
    for part in (b"aaaa", b"bbbb", b"cc", b"d", b"e" * 12, b"ff"):
        buf.append(part)
    assert buf.size == 25 and buf
    writes = [buf._next() for _ in range(3)]  # the coalescing step, without a socket
    assert writes == [b"aaaabbbbcc", b"d", b"e" * 12]
    buf.drop_queued()
    assert buf.size == 0 and not buf.in_flight
    buf.append(b"")
    assert not buf
