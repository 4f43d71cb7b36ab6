"""FrameDecoder: linear time however the stream is cut, and good frames before an
over-long line still count (unit tests), plus the same over real TLS; and hostile
auth frames over real TLS (the pure table is in test_protocol.py)."""

from __future__ import annotations

import json
import random
import time

import pytest

from securechat import protocol
from tests.support import MakeServer, RunningServer


# ------------------------------------------------------------------ linear time
def _bytewise_cpu(size: int, budget: float = float("inf")) -> float:
    """CPU seconds to feed one ``size``-byte line a byte at a time (stops past ``budget``)."""
    decoder = protocol.FrameDecoder(size)
    one = b"x"
    start = time.process_time()
    for i in range(size):
        assert decoder.feed(one) == []
        if i & 4095 == 0 and time.process_time() - start > budget:
            return time.process_time() - start
    assert decoder.feed(b"\n") == [b"x" * size]
    return time.process_time() - start


def test_line_fed_a_byte_at_a_time_costs_linear_time() -> None:
    """256 KiB fed byte by byte costs ~8x 32 KiB (linear), not ~64x (quadratic)."""
    small = max(_bytewise_cpu(32 * 1024) for _ in range(3))  # generous: the slowest run
    bound = 16 * small
    large = min(_bytewise_cpu(256 * 1024, budget=bound) for _ in range(2))
    assert large < bound, f"256 KiB took {large:.3f} s CPU, 32 KiB {small:.3f} s: not linear"


def test_held_bytes_never_exceed_the_limit() -> None:
    """An incomplete line is refused before it is stored, so at most max_frame bytes are held."""
    decoder = protocol.FrameDecoder(100)
    assert decoder.feed(b"x" * 60) == []
    assert decoder.feed(b"y" * 60) == []
    assert decoder.failed is not None and decoder.failed.code == "frame_too_large"
    assert decoder.buffered == 0


# ------------------------------------------------------------------ same lines, any cut
def _random_stream(rng: random.Random, limit: int) -> bytes:
    parts = []
    for _ in range(rng.randrange(1, 40)):
        kind = rng.random()
        if kind < 0.15:
            parts.append(b"")  # blank line
        elif kind < 0.25:
            parts.append(b"x" * limit)  # exactly the limit
        else:
            body = "".join(rng.choice("ab\u00e9\r ") for _ in range(rng.randrange(1, 60)))
            parts.append(json.dumps({"type": "msg", "body": body}).encode()[:limit])
    tail = b"partial" if rng.random() < 0.5 else b""
    return b"\n".join(parts) + b"\n" + tail


@pytest.mark.parametrize("seed", range(40))
def test_any_chunking_gives_the_same_lines(seed: int) -> None:
    """However the stream is cut (single bytes, random sizes, whole), the lines are the same."""
    rng = random.Random(seed)
    limit = rng.choice([64, 100, 4096])
    stream = _random_stream(rng, limit)
    *expected, tail = stream.split(b"\n")
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(0, 30))))
    if seed % 4 == 0:
        cuts = list(range(1, len(stream)))  # one byte at a time
    decoder = protocol.FrameDecoder(limit)
    got: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        lines = decoder.feed(stream[start:end])
        assert all(type(line) is bytes for line in lines)
        got.extend(lines)
    assert got == expected
    assert decoder.buffered == len(tail)


def test_exact_limit_across_chunks_is_accepted() -> None:
    """The limit is inclusive also when the line is split: max_frame bytes, then newline."""
    decoder = protocol.FrameDecoder(10)
    assert decoder.feed(b"x" * 4) == []
    assert decoder.feed(b"x" * 6) == []
    assert decoder.feed(b"\nok\n") == [b"x" * 10, b"ok"]
    assert decoder.failed is None


def test_raised_limit_applies_to_held_bytes() -> None:
    """After auth the server raises max_frame; a line already partly held may use it."""
    decoder = protocol.FrameDecoder(10)
    assert decoder.feed(b"x" * 8) == []
    decoder.max_frame = 20
    assert decoder.feed(b"x" * 8 + b"\n") == [b"x" * 16]


# ------------------------------------------------------------------ good frames, then the error
def test_good_lines_before_an_overflowing_tail_are_returned() -> None:
    """Frames complete in the same read as an over-long tail come out; then failed is set."""
    decoder = protocol.FrameDecoder(10)
    assert decoder.feed(b"one\ntwo\n" + b"x" * 11) == [b"one", b"two"]
    assert decoder.failed is not None
    assert decoder.failed.code == "frame_too_large"
    assert "10 bytes" in decoder.failed.message


def test_good_lines_before_a_long_complete_line_are_returned() -> None:
    """Only the lines before a complete over-long line count; nothing after it does."""
    decoder = protocol.FrameDecoder(10)
    assert decoder.feed(b"one\n" + b"x" * 11 + b"\nlater\n") == [b"one"]
    assert decoder.failed is not None and decoder.failed.code == "frame_too_large"


def test_held_line_completed_too_long_fails() -> None:
    """A held partial line whose completion makes it too long fails, with no lines."""
    decoder = protocol.FrameDecoder(10)
    assert decoder.feed(b"ok\n" + b"x" * 6) == [b"ok"]
    assert decoder.feed(b"x" * 5 + b"\nnext\n") == []
    assert decoder.failed is not None


def test_nothing_comes_out_after_a_failure() -> None:
    """The stream cannot be re-synchronised: feed returns nothing once it failed."""
    decoder = protocol.FrameDecoder(10)
    decoder.feed(b"x" * 11)
    failed = decoder.failed
    assert failed is not None
    assert decoder.feed(b"\nping\n") == []
    assert decoder.failed is failed


# ------------------------------------------------------------------ over real TLS
def test_good_frame_in_the_same_write_as_an_oversized_line_is_delivered(
        make_server: MakeServer) -> None:
    """msg then an over-long partial line in one TLS record: msg is acked and delivered,
    then frame_too_large closes the connection."""
    server = make_server(max_frame=4096)
    alice, _ = server.user("alice")
    bob, _ = server.user("bob")
    alice.expect("join")
    # Well under one 16 KiB TLS record, so the server reads it in one recv().
    alice.send(b'{"type":"msg","body":"before","id":"m1"}\n' + b"x" * 4097)
    frames = alice.expect_closed()
    assert [(f["type"], f.get("code", f.get("id"))) for f in frames] == [
        ("ack", "m1"), ("error", "frame_too_large")]
    msg = bob.expect("msg")
    assert (msg["from"], msg["body"]) == ("alice", "before")
    assert bob.expect("leave") == {"type": "leave", "room": "lobby",
                                   "user": "alice", "reason": "frame_too_large"}


def test_frames_after_an_oversized_complete_line_are_not_handled(
        make_server: MakeServer) -> None:
    """msg, an over-long complete line, then ping, in one write: ack, error, close, no pong."""
    server = make_server(max_frame=4096)
    alice, _ = server.user("alice")
    alice.send(b'{"type":"msg","body":"a","id":1}\n' + b"x" * 4097 + b'\n{"type":"ping"}\n')
    frames = alice.expect_closed()
    assert [(f["type"], f.get("code", f.get("id"))) for f in frames] == [
        ("ack", 1), ("error", "frame_too_large")]


@pytest.mark.parametrize("token", [
    "sct1.0123456789ab.\ud800",  # a well-formed id, then a secret UTF-8 cannot encode
    "sct1.0123456789ab.\x00\x1f\x7f",
    "sct1.0123456789ab.caf\u00e9",
    "sct1." + "a" * 3000,
])
def test_hostile_auth_token_gets_bad_frame_and_others_are_served(
        server: RunningServer, token: str) -> None:
    """A token with a lone surrogate, control or non-ASCII characters, or KiBs long: error
    bad_frame, the connection closes, and the server keeps serving a real user."""
    alice, _ = server.user("alice")
    client = server.tls_connect()
    client.send(json.dumps({"type": "auth", "token": token}).encode() + b"\n")
    frames = client.expect_closed()
    assert [(f["type"], f.get("code")) for f in frames] == [("error", "bad_frame")]
    alice.send({"type": "ping"})
    assert alice.expect("pong", skip=("ping", "join", "leave")) == {"type": "pong"}
    _, welcome = server.user("bob")
    assert welcome["user"] == "bob"
