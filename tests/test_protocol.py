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


# ------------------------------------------------------------------ hostile client frames
_AUTH = b'{"type":"auth","token":%s}'
_LONE = rb'"sct1.0123456789ab.\ud800"'  # json.loads accepts it; UTF-8 cannot encode it
HOSTILE_CLIENT_FRAMES: list[tuple[bytes, str, str]] = [
    # auth token: wrong type, empty, too long, not visible ASCII
    (_AUTH % b"null", "bad_frame", "non-empty string"),
    (_AUTH % b"42", "bad_frame", "non-empty string"),
    (_AUTH % b"1e999", "bad_frame", "non-empty string"),  # json gives float inf
    (_AUTH % b'["sct1.a.b"]', "bad_frame", "non-empty string"),
    (_AUTH % b'{"t":"x"}', "bad_frame", "non-empty string"),
    (_AUTH % b"true", "bad_frame", "non-empty string"),
    (_AUTH % b'""', "bad_frame", "non-empty string"),
    (_AUTH % (b'"' + b"a" * 257 + b'"'), "bad_frame", "longer than 256"),
    (_AUTH % (b'"' + b"a" * 3000 + b'"'), "bad_frame", "longer than 256"),
    (_AUTH % _LONE, "bad_frame", "visible ASCII"),
    (_AUTH % rb'"\udc00"', "bad_frame", "visible ASCII"),
    (_AUTH % rb'"\ud83d"', "bad_frame", "visible ASCII"),
    (_AUTH % rb'"sct1.\u0000.x"', "bad_frame", "visible ASCII"),
    (_AUTH % rb'"sct1.a.b\n"', "bad_frame", "visible ASCII"),
    (_AUTH % rb'"sct1.a.b\t"', "bad_frame", "visible ASCII"),
    (_AUTH % rb'"sct1.a.\u001f"', "bad_frame", "visible ASCII"),
    (_AUTH % rb'"sct1.a.\u007f"', "bad_frame", "visible ASCII"),
    (_AUTH % b'"sct1.a b.c"', "bad_frame", "visible ASCII"),
    (_AUTH % '"sct1.a.caf\u00e9"'.encode(), "bad_frame", "visible ASCII"),
    (_AUTH % rb'"sct1.a.\u2028"', "bad_frame", "visible ASCII"),
    (_AUTH % rb'"\ud83d\ude00"', "bad_frame", "visible ASCII"),  # a valid pair, still not ASCII
    # JSON the decoder must turn into bad_frame, never another exception
    (b'{"type":"auth","token":' + b"[" * 5000 + b"]" * 5000 + b"}", "bad_frame", "not valid JSON"),
    (b'{"a":' * 50000, "bad_frame", "not valid JSON"),
    (b'{"type":"ping","x":NaN}', "bad_frame", "not valid JSON"),
    (b'{"type":"ping","x":-Infinity}', "bad_frame", "not valid JSON"),
    (b'{"type":"msg","body":"x","id":' + b"9" * 5000 + b"}", "bad_frame", "not valid JSON"),
    (b'{"type":"msg","body":"x","id":' + b"9" * 4000 + b"}", "bad_frame", "2**53"),
    (b'{"type":"msg","body":"x","id":9007199254740992}', "bad_frame", "2**53"),
    (b'{"type":"msg","body":"x","id":-9007199254740992}', "bad_frame", "2**53"),
    (b'{"type":"msg","body":"x","id":1e999}', "bad_frame", "string or an integer"),
    (b'{"type":"msg","body":"x","id":"\\udc00"}', "bad_frame", "lone surrogates"),
    (b'\xef\xbb\xbf{"type":"ping"}', "bad_frame", "not valid JSON"),  # a BOM
    (b'{"type":"ping"}{"type":"ping"}', "bad_frame", "not valid JSON"),
    (b'{"type":"msg","body":"\xed\xa0\x80"}', "bad_frame", "UTF-8"),  # CESU-8 surrogate
    (b"{}", "bad_frame", "'type'"),
    (b'{"type":["msg"]}', "bad_frame", "'type'"),
    # msg bodies that could not be re-encoded for the other members
    (b'{"type":"msg","body":"\\ud800"}', "bad_frame", "lone surrogates"),
    (b'{"type":"msg","body":"ok \\udfff","id":"m1"}', "bad_frame", "lone surrogates"),
    (b'{"type":"msg","body":"\\ude00\\ud83d"}', "bad_frame", "lone surrogates"),  # pair reversed
    (b'{"type":"\\ud800"}', "unknown_type", "unknown frame type"),
]


_HOSTILE_IDS = [f"{i}-{line[:40]!r}" for i, (line, _, _) in enumerate(HOSTILE_CLIENT_FRAMES)]


@pytest.mark.parametrize(("line", "code", "why"), HOSTILE_CLIENT_FRAMES, ids=_HOSTILE_IDS)
def test_hostile_client_frames_are_remote_protocol_errors(line: bytes, code: str, why: str
                                                          ) -> None:
    """Every hostile frame is a RemoteProtocolError with the code, a clear message, and an
    error frame the server can encode."""
    with pytest.raises(RemoteProtocolError) as info:
        protocol.decode_client_frame(line)
    assert info.value.code == code
    assert why in info.value.message
    assert protocol.encode_error(code, info.value.message, info.value.message_id)


@pytest.mark.parametrize(("line", "expected"), [
    (_AUTH % b'"sct1.0123456789ab.Zm9v-_bar"', protocol.Auth("sct1.0123456789ab.Zm9v-_bar")),
    (_AUTH % (b'"' + b"~" * 256 + b'"'), protocol.Auth("~" * 256)),
    (b'{"type":"msg","body":"\\ud83d\\ude00","id":9007199254740991}',
     protocol.SendMessage("\U0001f600", 2**53 - 1)),
    (b'{"type":"msg","body":"tab\\tnul\\u0000","id":-9007199254740991}',
     protocol.SendMessage("tab\tnul\x00", -(2**53 - 1))),
])
def test_edge_frames_that_are_fine(line: bytes, expected: protocol.ClientFrame) -> None:
    """At the limits, but valid: a 256-character token, a surrogate pair, the largest ids."""
    assert protocol.decode_client_frame(line) == expected


def test_random_garbage_only_ever_raises_remote_protocol_error() -> None:
    """Thousands of random JSON-ish lines: each decodes, or raises RemoteProtocolError, and
    whatever decodes can be re-encoded for the room."""
    import random

    rng = random.Random(7)
    pieces = [b"{", b"}", b"[", b"]", b'"', b":", b",", b'"type"', b'"auth"', b'"msg"',
              b'"token"', b'"body"', b'"id"', b"1", b"-", b"1e999", b"\\ud800", b"\\u0000",
              b"\xff", b"\xed\xa0\x80", b"NaN", b"null", b"true", b" ", b"\\", b"x"]
    for _ in range(20000):
        line = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 24)))
        try:
            frame = protocol.decode_client_frame(line)
        except RemoteProtocolError as exc:
            protocol.encode_error(exc.code, exc.message, exc.message_id)
            continue
        if isinstance(frame, protocol.SendMessage):
            protocol.encode_room_message('"a"', frame.body, 1, "T")
            protocol.encode(protocol.Ack(frame.id, 1))
        elif isinstance(frame, protocol.Auth):
            frame.token.encode("ascii")


@pytest.mark.parametrize("line", [
    b'{"type":"msg","from":"a","body":"\\ud800","seq":1,"ts":"T"}',
    b'{"type":"join","user":"\\udc00"}',
    b'{"type":"welcome","user":"a","room":"r","members":["\\ud800"],"heartbeat":1,"seq":0}',
])
def test_server_text_with_lone_surrogates_is_bad_frame(line: bytes) -> None:
    """A client never gets a str it cannot print or re-encode from a hostile server."""
    with pytest.raises(RemoteProtocolError) as info:
        protocol.decode_server_frame(line)
    assert info.value.code == "bad_frame"


def test_server_error_message_with_lone_surrogate_is_escaped() -> None:
    """An error frame's human text stays printable: a lone surrogate comes out escaped."""
    frame = protocol.decode_server_frame(b'{"type":"error","code":"x","message":"a\\ud800"}')
    assert isinstance(frame, protocol.ErrorFrame)
    frame.message.encode("utf-8")
    assert "ud800" in frame.message


def test_token_problem_matches_what_the_server_refuses() -> None:
    """Clients can refuse, before connecting, exactly the tokens the server calls bad_frame."""
    assert protocol.token_problem("sct1.0123456789ab.c2VjcmV0") is None
    assert protocol.token_problem("sct1.a.\ud800") is not None
    assert protocol.token_problem("x" * 257) is not None
    assert protocol.token_problem(5) is not None
