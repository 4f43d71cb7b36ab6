"""Frames to bytes, and the hot-path encoders the server uses per room message."""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import LocalProtocolError
from .frames import (
    Ack,
    Auth,
    Bye,
    CaughtUp,
    ClientFrame,
    ErrorFrame,
    History,
    HistoryEnd,
    HistoryMessage,
    Join,
    Leave,
    Message,
    MessageId,
    Ping,
    Pong,
    SendMessage,
    ServerFrame,
    Welcome,
    is_text,
)

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
        case Auth(token, client, resume):
            obj: dict[str, Any] = {"type": "auth", "token": token}
            if client is not None:
                obj["client"] = client
            if resume is not None:
                obj["resume"] = {"epoch": resume.epoch, "seq": resume.seq}
            return _line(obj)
        case History(mid, before, after, limit):
            return _line(_with_optional({"type": "history", "id": mid, "limit": limit},
                                        before=before, after=after))
        case SendMessage(body, mid):
            if not is_text(body) or not body:
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
        case Ack(mid, seq, duplicate):
            if duplicate:
                return _line({"type": "ack", "id": mid, "seq": seq, "duplicate": True})
            return _line({"type": "ack", "id": mid, "seq": seq})
        case CaughtUp(seq, replayed, missing_after, missing_before, reset):
            return _line(_with_optional(
                {"type": "caught_up", "seq": seq, "replayed": replayed},
                missing_after=missing_after, missing_before=missing_before,
                reset=True if reset else None))
        case HistoryMessage(mid, sender, body, seq, ts):
            return encode_history_message(mid, _dumps(sender), body, seq, ts)
        case HistoryEnd(mid, count, more, oldest, latest):
            return _line({"type": "history_end", "id": mid, "count": count, "more": more,
                          "oldest": oldest, "latest": latest})
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


def encode_history_message(mid: MessageId, sender_json: str, body: str, seq: int,
                           ts: str) -> bytes:
    """A ``history_msg`` frame: a stored message answering request ``mid``."""
    return (
        f'{{"type":"history_msg","id":{_dumps(mid)},"from":{sender_json},'
        f'"body":{_dumps(body)},"seq":{seq},"ts":"{ts}"}}\n'
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
