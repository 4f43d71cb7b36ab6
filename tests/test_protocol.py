"""Unit tests for the pure wire-contract code: no sockets."""

from __future__ import annotations

import json

import pytest

from securechat import protocol
from securechat.errors import LocalProtocolError, RemoteProtocolError


def test_decoder_splits_lines_across_chunks() -> None:
    """Frames split at arbitrary byte boundaries come out whole and in order."""
    decoder = protocol.FrameDecoder(100)
    assert decoder.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert decoder.buffered == 4
    assert decoder.feed(b':2}\n\n{"c":3}\n') == [b'{"b":2}', b"", b'{"c":3}']
    assert decoder.buffered == 0


def test_decoder_accepts_exactly_max_frame() -> None:
    """The limit is inclusive: a line of exactly max_frame bytes is fine."""
    decoder = protocol.FrameDecoder(10)
    assert decoder.feed(b"x" * 10 + b"\n") == [b"x" * 10]


def test_decoder_rejects_long_line_before_newline() -> None:
    """An over-long line is refused as soon as it is too long, without its end."""
    decoder = protocol.FrameDecoder(10)
    assert decoder.feed(b"x" * 11) == []
    assert decoder.failed is not None and decoder.failed.code == "frame_too_large"


def test_decoder_rejects_long_complete_line() -> None:
    """A complete over-long line fails the stream; what follows it is not returned."""
    decoder = protocol.FrameDecoder(10)
    assert decoder.feed(b"x" * 11 + b"\nok\n") == []
    assert decoder.failed is not None and decoder.failed.code == "frame_too_large"


@pytest.mark.parametrize(("line", "expected"), [
    (b'{"type":"auth","token":"t"}', protocol.Auth("t")),
    (b'{"type":"msg","body":"hi"}', protocol.SendMessage("hi")),
    (b'{"type":"msg","body":"hi","id":"a-1"}', protocol.SendMessage("hi", "a-1")),
    (b'{"type":"msg","body":"hi","id":7}', protocol.SendMessage("hi", 7)),
    (b'{"type":"msg","body":"caf\xc3\xa9","extra":true}', protocol.SendMessage("café")),
    (b'{"type":"ping"}', protocol.Ping()),
    (b'{"type":"pong"}\r', protocol.Pong()),
    (b'{"type":"bye"}', protocol.Bye()),
])
def test_decode_client_frames(line: bytes, expected: protocol.ClientFrame) -> None:
    """Every client frame type parses; unknown fields and a trailing CR are tolerated."""
    assert protocol.decode_client_frame(line) == expected


@pytest.mark.parametrize(("line", "code"), [
    (b"\xff\xfe", "bad_frame"),
    (b"not json", "bad_frame"),
    (b"[1,2]", "bad_frame"),
    (b'{"type":"msg","body":NaN}', "bad_frame"),
    (b'{"type":"msg","body":""}', "bad_frame"),
    (b'{"type":"msg","body":5}', "bad_frame"),
    (b'{"type":"msg","body":"\\ud800"}', "bad_frame"),
    (b'{"type":"msg","body":"x","id":true}', "bad_frame"),
    (b'{"type":"msg","body":"x","id":1.5}', "bad_frame"),
    (b'{"type":"msg","body":"x","id":"' + b"i" * 129 + b'"}', "bad_frame"),
    (b'{"type":"auth"}', "bad_frame"),
    (b'{"type":"auth","token":""}', "bad_frame"),
    (b'{"body":"x"}', "bad_frame"),
    (b"[" * 100000, "bad_frame"),
    (b'{"type":"shout"}', "unknown_type"),
])
def test_decode_client_frame_errors(line: bytes, code: str) -> None:
    """Malformed input raises a RemoteProtocolError with the documented code."""
    with pytest.raises(RemoteProtocolError) as info:
        protocol.decode_client_frame(line)
    assert info.value.code == code


def test_bad_message_error_carries_its_id() -> None:
    """A malformed msg with a valid id names that id, so the client knows which one failed."""
    with pytest.raises(RemoteProtocolError) as info:
        protocol.decode_client_frame(b'{"type":"msg","body":3,"id":"m9"}')
    assert info.value.message_id == "m9"


SERVER_FRAMES: list[protocol.ServerFrame] = [
    protocol.Welcome("alice", "lobby", ("alice", "bob"), 20.0, 41, 65536, "ab-1", 1, "ab"),
    protocol.Message("bob", "héllo \"quoted\"\n", 42, "2026-11-26T11:35:06.123Z"),
    protocol.Ack("c-1", 42),
    protocol.Ack(None, 43),
    protocol.Join("bob"),
    protocol.Leave("bob", "bye"),
    protocol.Ping(),
    protocol.Pong(),
    protocol.Bye("shutdown", 3.5),
    protocol.Bye(),
    protocol.ErrorFrame("rate_limited", "slow down", "c-2", 0.5),
    protocol.ErrorFrame("auth_failed", "no"),
]


@pytest.mark.parametrize("frame", SERVER_FRAMES)
def test_server_frames_round_trip(frame: protocol.ServerFrame) -> None:
    """encode() then decode_server_frame() gives the same frame, one line of JSON."""
    line = protocol.encode(frame)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert isinstance(json.loads(line), dict)
    assert protocol.decode_server_frame(line[:-1]) == frame


def test_room_message_wire_names() -> None:
    """The wire uses 'from' for the sender, as the contract says."""
    line = protocol.encode_room_message(protocol.json_string("al"), "hi", 3, "T")
    assert json.loads(line) == {"type": "msg", "from": "al", "body": "hi", "seq": 3, "ts": "T"}


def test_client_frames_encode() -> None:
    assert json.loads(protocol.encode(protocol.Auth("tok"))) == {"type": "auth", "token": "tok"}
    assert json.loads(protocol.encode(protocol.SendMessage("x", 5))) == {
        "type": "msg", "body": "x", "id": 5}
    with pytest.raises(LocalProtocolError):
        protocol.encode(protocol.SendMessage(""))


def test_every_error_code_is_documented() -> None:
    """docs/protocol.md lists every code the server can send, with its close behaviour."""
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    for code, spec in protocol.ERROR_CODES.items():
        row = next((ln for ln in doc.splitlines() if ln.startswith(f"| `{code}` |")), None)
        assert row is not None, f"{code} missing from docs/protocol.md"
        assert row.split("|")[2].strip().startswith("yes" if spec.closes else "no"), row


def test_rfc3339_timestamp() -> None:
    assert protocol.rfc3339_utc(0.5) == "1970-01-01T00:00:00.500Z"
    assert protocol.rfc3339_utc(1_800_000_000.0129) == "2027-01-15T08:00:00.012Z"
