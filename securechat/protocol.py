"""The securechat wire contract, version 1, as pure code (no sockets, no threads).

A frame is one UTF-8 JSON object on one line, ended by ``\\n``. This module turns
bytes into typed frames and typed frames into bytes; the server and the client
are thin I/O layers over it. ``docs/protocol.md`` is the prose version of this
file; keep them in step.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DEFAULT_PORT",
    "ERROR_CODES",
    "PRE_AUTH_MAX_FRAME",
    "PROTOCOL_VERSION",
    "Ack",
    "Auth",
    "Bye",
    "ClientFrame",
    "ErrorFrame",
    "FrameDecoder",
    "Join",
    "Leave",
    "Message",
    "Ping",
    "Pong",
    "SendMessage",
    "ServerFrame",
    "Welcome",
    "closes_connection",
    "decode_client_frame",
    "decode_server_frame",
    "encode",
    "encode_error",
    "encode_room_message",
    "rfc3339_utc",
    "token_problem",
]

PROTOCOL_VERSION: Final = 1
DEFAULT_PORT: Final = 7443
DEFAULT_MAX_FRAME: Final = 64 * 1024
#: Before authentication only an ``auth`` frame is expected: a small cap keeps an
#: unauthenticated peer from making the server buffer much.
PRE_AUTH_MAX_FRAME: Final = 4096
#: Real tokens (``sct1.<id>.<secret>``) are 61 characters; anything longer is refused
#: before it reaches the token store.
MAX_TOKEN_LENGTH: Final = 256
MAX_ID_LENGTH: Final = 128
#: Integer message ids must be I-JSON safe (RFC 7493): every JSON reader, JavaScript's
#: included, reads them exactly, and an id costs bounded memory in the dedup history.
MAX_INT_ID: Final = 2**53 - 1
#: A token is visible ASCII: no space, control character, non-ASCII or lone surrogate.
_TOKEN_CHARS: Final = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    closes: bool
    meaning: str


#: Every error code the server sends, whether the connection is closed after it,
#: and what it means. docs/protocol.md renders the same table.
ERROR_CODES: Final[dict[str, ErrorSpec]] = {
    "bad_frame": ErrorSpec(False, "not UTF-8, not a JSON object, or a field has the wrong type"),
    "frame_too_large": ErrorSpec(True, "a line longer than the frame limit"),
    "unknown_type": ErrorSpec(False, "the frame's type is not one the server knows"),
    "not_authenticated": ErrorSpec(True, "the first frame was not auth"),
    "already_authenticated": ErrorSpec(False, "a second auth frame on a live session"),
    "auth_failed": ErrorSpec(True, "the token is unknown or wrong"),
    "auth_timeout": ErrorSpec(True, "TLS handshake plus auth frame took longer than allowed"),
    "rate_limited": ErrorSpec(
        False, "a message over the per-session rate was dropped; retry after retry_after s"
    ),
    "auth_throttled": ErrorSpec(True, "too many failed logins from this address; retry later"),
    "slow_consumer": ErrorSpec(True, "the client did not read fast enough"),
    "server_full": ErrorSpec(True, "the server holds its maximum number of connections"),
    "revoked": ErrorSpec(True, "the session's token was revoked"),
    "idle_timeout": ErrorSpec(True, "nothing received for three heartbeat intervals"),
    "internal_error": ErrorSpec(True, "a server bug; the connection is closed"),
    "too_many_errors": ErrorSpec(True, "too many protocol errors from this session in a minute"),
    "too_many_sessions": ErrorSpec(
        True, "the user already holds the maximum number of sessions"),
}


def closes_connection(code: str) -> bool:
    """Whether the server closes the connection after sending error ``code``."""
    spec = ERROR_CODES.get(code)
    return True if spec is None else spec.closes


# --------------------------------------------------------------------------- frames
MessageId = str | int | None


@dataclass(frozen=True, slots=True)
class Auth:
    """Client -> server: the first frame of every connection."""

    token: str


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Client -> server: a message for the room; ``id`` is echoed in the ack."""

    body: str
    id: MessageId = None


@dataclass(frozen=True, slots=True)
class Ping:
    """Either direction: answered with :class:`Pong`."""


@dataclass(frozen=True, slots=True)
class Pong:
    """Either direction: the answer to :class:`Ping`."""


@dataclass(frozen=True, slots=True)
class Bye:
    """Either direction. From the server, ``reason`` and ``retry_after`` may be set."""

    reason: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    """Server -> client: authentication succeeded and the session joined the room."""

    user: str
    room: str
    members: tuple[str, ...]
    heartbeat: float
    seq: int
    max_frame: int = DEFAULT_MAX_FRAME
    session: str = ""
    protocol: int = PROTOCOL_VERSION
    #: Names the seq numbering: when it changes (server restarted), seq started over.
    epoch: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    """Server -> client: a room message from another session."""

    sender: str  # "from" on the wire
    body: str
    seq: int
    ts: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Server -> client: the sender's message is in the room with number ``seq``."""

    id: MessageId
    seq: int


@dataclass(frozen=True, slots=True)
class Join:
    """Server -> client: ``user`` opened their first session in the room."""

    user: str


@dataclass(frozen=True, slots=True)
class Leave:
    """Server -> client: ``user`` closed their last session in the room."""

    user: str
    reason: str


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """Server -> client: see :data:`ERROR_CODES`."""

    code: str
    message: str
    id: MessageId = None
    retry_after: float | None = None

    @property
    def closes(self) -> bool:
        return closes_connection(self.code)


ClientFrame = Auth | SendMessage | Ping | Pong | Bye
ServerFrame = Welcome | Message | Ack | Join | Leave | Ping | Pong | Bye | ErrorFrame


# --------------------------------------------------------------------------- framing
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


# --------------------------------------------------------------------------- decoding
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_json_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def _load_object(line: bytes) -> dict[str, Any]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("bad_frame", "frame is not valid UTF-8") from exc
    try:
        obj = _json_decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError("bad_frame", "frame is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise RemoteProtocolError("bad_frame", "frame must be a JSON object")
    return obj


def _is_text(value: object) -> TypeGuard[str]:
    """A str that is valid Unicode (no lone surrogates), so it can be re-encoded as UTF-8."""
    if not isinstance(value, str):
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _message_id(obj: dict[str, Any]) -> MessageId:
    mid = obj.get("id")
    if mid is None:
        return None
    if isinstance(mid, bool) or not isinstance(mid, int | str):
        raise RemoteProtocolError("bad_frame", "id must be a string or an integer")
    if isinstance(mid, int):
        if not -MAX_INT_ID <= mid <= MAX_INT_ID:
            raise RemoteProtocolError("bad_frame", "an integer id must be within +-(2**53 - 1)")
    elif len(mid) > MAX_ID_LENGTH:
        raise RemoteProtocolError("bad_frame", f"id must be at most {MAX_ID_LENGTH} characters")
    elif not _is_text(mid):
        raise RemoteProtocolError("bad_frame", "id must be valid Unicode (no lone surrogates)")
    return mid


def token_problem(token: object) -> str | None:
    """Why ``token`` cannot be a token at all, or None if it might be one.

    The server refuses such an auth frame with ``bad_frame``; a client can use this to
    refuse the token before connecting. Whether the token is *known* is the store's call.
    """
    if not isinstance(token, str) or not token:
        return "auth needs a non-empty string token"
    if len(token) > MAX_TOKEN_LENGTH:
        return f"auth token is longer than {MAX_TOKEN_LENGTH} characters"
    if not _TOKEN_CHARS.fullmatch(token):
        return "auth token must be visible ASCII (no spaces, control or non-ASCII characters)"
    return None


def _auth_token(obj: dict[str, Any]) -> str:
    token = obj.get("token")
    problem = token_problem(token)
    if problem is not None:
        raise RemoteProtocolError("bad_frame", problem)
    assert isinstance(token, str)
    return token


def decode_client_frame(line: bytes) -> ClientFrame:
    """Parse one line a client sent. Raises :class:`RemoteProtocolError`."""
    obj = _load_object(line)
    kind = obj.get("type")
    if kind == "msg":
        body = obj.get("body")
        if not isinstance(body, str) or not body:
            raise RemoteProtocolError(
                "bad_frame", "msg needs a non-empty string body", message_id=_message_id(obj)
            )
        if not _is_text(body):
            # It could not be re-encoded as UTF-8 for the other members.
            raise RemoteProtocolError(
                "bad_frame", "msg body must be valid Unicode (no lone surrogates)",
                message_id=_message_id(obj),
            )
        return SendMessage(body, _message_id(obj))
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind == "auth":
        return Auth(_auth_token(obj))
    if kind == "bye":
        return Bye()
    if not isinstance(kind, str):
        raise RemoteProtocolError("bad_frame", "frame needs a string field 'type'")
    raise RemoteProtocolError("unknown_type", f"unknown frame type {kind[:40]!r}")


def _str_field(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not _is_text(value):  # a lone surrogate would crash whoever prints or re-encodes it
        raise RemoteProtocolError("bad_frame", f"{obj.get('type')} needs a string {name!r}")
    return value


def _int_field(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RemoteProtocolError("bad_frame", f"{obj.get('type')} needs an integer {name!r}")
    return value


def _message_text(value: object) -> str:
    """A human text field: kept if valid, else shown escaped (never a lone surrogate)."""
    if _is_text(value):
        return value
    return ascii(value) if isinstance(value, str) else str(value)


def _number_or_none(obj: dict[str, Any], name: str) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RemoteProtocolError("bad_frame", f"{name!r} must be a number")
    return float(value)


def decode_server_frame(line: bytes) -> ServerFrame:
    """Parse one line the server sent (used by clients). Raises :class:`RemoteProtocolError`."""
    obj = _load_object(line)
    kind = obj.get("type")
    if kind == "msg":
        return Message(
            _str_field(obj, "from"), _str_field(obj, "body"), _int_field(obj, "seq"),
            _str_field(obj, "ts"),
        )
    if kind == "ack":
        return Ack(_message_id(obj), _int_field(obj, "seq"))
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind == "join":
        return Join(_str_field(obj, "user"))
    if kind == "leave":
        reason = obj.get("reason")
        return Leave(_str_field(obj, "user"), reason if _is_text(reason) else "")
    if kind == "welcome":
        members = obj.get("members")
        if not isinstance(members, list) or not all(_is_text(m) for m in members):
            raise RemoteProtocolError("bad_frame", "welcome needs a list of member names")
        heartbeat = _number_or_none(obj, "heartbeat")
        max_frame = obj.get("max_frame", DEFAULT_MAX_FRAME)
        session = obj.get("session", "")
        epoch = obj.get("epoch", "")
        return Welcome(
            user=_str_field(obj, "user"),
            room=_str_field(obj, "room"),
            members=tuple(members),
            heartbeat=heartbeat if heartbeat is not None else 0.0,
            seq=_int_field(obj, "seq"),
            max_frame=max_frame if isinstance(max_frame, int) else DEFAULT_MAX_FRAME,
            session=session if _is_text(session) else "",
            protocol=obj.get("protocol", PROTOCOL_VERSION),
            epoch=epoch if _is_text(epoch) else "",
        )
    if kind == "bye":
        reason = obj.get("reason")
        return Bye(reason if _is_text(reason) else None, _number_or_none(obj, "retry_after"))
    if kind == "error":
        return ErrorFrame(
            _str_field(obj, "code"),
            _message_text(obj.get("message", "")),
            _message_id(obj),
            _number_or_none(obj, "retry_after"),
        )
    if not isinstance(kind, str):
        raise RemoteProtocolError("bad_frame", "frame needs a string field 'type'")
    raise RemoteProtocolError("unknown_type", f"unknown frame type {kind[:40]!r}")


# --------------------------------------------------------------------------- encoding
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _line(obj: dict[str, Any]) -> bytes:
    try:
        return (_dumps(obj) + "\n").encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        raise LocalProtocolError("bad_frame", f"cannot encode {obj.get('type')} frame") from exc


def _with_optional(obj: dict[str, Any], **fields: object) -> dict[str, Any]:
    for key, value in fields.items():
        if value is not None:
            obj[key] = value
    return obj


def encode(frame: ClientFrame | ServerFrame) -> bytes:
    """Serialize any frame to one line of bytes, newline included."""
    match frame:
        case Auth(token):
            return _line({"type": "auth", "token": token})
        case SendMessage(body, mid):
            if not _is_text(body) or not body:
                raise LocalProtocolError("bad_frame", "a message body must be non-empty text")
            return _line(_with_optional({"type": "msg", "body": body}, id=mid))
        case Ping():
            return b'{"type":"ping"}\n'
        case Pong():
            return b'{"type":"pong"}\n'
        case Bye(reason, retry_after):
            return _line(_with_optional({"type": "bye"}, reason=reason, retry_after=retry_after))
        case Welcome():
            return _line({
                "type": "welcome", "user": frame.user, "room": frame.room,
                "members": list(frame.members), "heartbeat": frame.heartbeat, "seq": frame.seq,
                "max_frame": frame.max_frame, "session": frame.session,
                "protocol": frame.protocol, "epoch": frame.epoch,
            })
        case Message(sender, body, seq, ts):
            return encode_room_message(_dumps(sender), body, seq, ts)
        case Ack(mid, seq):
            return _line({"type": "ack", "id": mid, "seq": seq})
        case Join(user):
            return _line({"type": "join", "user": user})
        case Leave(user, reason):
            return _line({"type": "leave", "user": user, "reason": reason})
        case ErrorFrame(code, message, mid, retry_after):
            return encode_error(code, message, mid, retry_after)
    raise LocalProtocolError("bad_frame", f"not a frame: {frame!r}")


def encode_error(
    code: str, message: str, mid: MessageId = None, retry_after: float | None = None
) -> bytes:
    """An ``error`` frame; ``id`` names the message it is about, if any."""
    return _line(
        _with_optional({"type": "error", "code": code, "message": message},
                       id=mid, retry_after=retry_after)
    )


def encode_room_message(sender_json: str, body: str, seq: int, ts: str) -> bytes:
    """The hot path: a room ``msg`` frame, built once and shared by every recipient.

    ``sender_json`` is the sender's name already JSON-encoded (it is fixed per
    session, so it is encoded once at login). ``body`` was validated on decode.
    """
    return (
        f'{{"type":"msg","from":{sender_json},"body":{_dumps(body)},"seq":{seq},"ts":"{ts}"}}\n'
    ).encode()


def json_string(text: str) -> str:
    """``text`` as a JSON string literal (quotes included)."""
    return _dumps(text)


_ts_cache: tuple[int, str] = (-1, "")


def rfc3339_utc(now: float | None = None) -> str:
    """RFC 3339 UTC timestamp with milliseconds, e.g. ``2026-11-26T11:35:06.123Z``."""
    if now is None:
        now = time.time()
    global _ts_cache  # noqa: PLW0603 - a one-entry cache, replaced atomically
    whole = int(now)
    cached_second, prefix = _ts_cache
    if cached_second != whole:
        # Formatting the date part costs ~1 us; once per second is enough.
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _ts_cache = (whole, prefix)
    millis = int((now - whole) * 1000)
    return f"{prefix}.{millis:03d}Z"
