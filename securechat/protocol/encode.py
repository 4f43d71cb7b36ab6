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
    Grants,
    History,
    HistoryEnd,
    HistoryMessage,
    Join,
    Joined,
    JoinRoom,
    Leave,
    LeaveRoom,
    Left,
    Message,
    MessageId,
    Ping,
    Pong,
    Resume,
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


def _resume(resume: Resume | None) -> dict[str, Any] | None:
    return None if resume is None else {"epoch": resume.epoch, "seq": resume.seq}


def _room_entry(join: JoinRoom) -> str | dict[str, Any]:
    if join.resume is None:
        return join.room
    return {"room": join.room, "resume": _resume(join.resume)}


def encode(frame: ClientFrame | ServerFrame) -> bytes:
    """Serialize any frame to one line of bytes, newline included."""
    match frame:
        case Auth(token, client, resume, rooms):
            obj: dict[str, Any] = {"type": "auth", "token": token}
            if client is not None:
                obj["client"] = client
            if resume is not None:
                obj["resume"] = _resume(resume)
            if rooms is not None:
                obj["rooms"] = [_room_entry(join) for join in rooms]
            return _line(obj)
        case History(mid, before, after, limit, room):
            return _line(_with_optional({"type": "history", "id": mid, "limit": limit},
                                        before=before, after=after, room=room))
        case SendMessage(body, mid, room):
            if not is_text(body) or not body:
                raise LocalProtocolError("bad_frame", "a message body must be non-empty text")
            return _line(_with_optional({"type": "msg", "body": body}, id=mid, room=room))
        case JoinRoom(room, resume):
            return _line(_with_optional({"type": "join", "room": room}, resume=_resume(resume)))
        case LeaveRoom(room):
            return _line({"type": "leave", "room": room})
        case Ping():
            return b'{"type":"ping"}\n'
        case Pong():
            return b'{"type":"pong"}\n'
        case Bye(reason, retry_after):
            return _line(_with_optional({"type": "bye"}, reason=reason, retry_after=retry_after))
        case Welcome():
            obj = {"type": "welcome", "user": frame.user}
            if frame.room:  # a version 1/2 login: the default room, described here
                obj.update(room=frame.room, members=list(frame.members), seq=frame.seq)
            obj.update(heartbeat=frame.heartbeat, max_frame=frame.max_frame,
                       session=frame.session, protocol=frame.protocol)
            if frame.room:
                obj["epoch"] = frame.epoch
            obj["rooms"] = list(frame.rooms)
            obj["grants"] = dict(frame.grants)
            return _line(obj)
        case Joined(room, members, seq, epoch):
            return _line({"type": "joined", "room": room, "members": list(members),
                          "seq": seq, "epoch": epoch})
        case Left(room, reason):
            return _line({"type": "left", "room": room, "reason": reason})
        case Grants(grants):
            return _line({"type": "grants", "grants": dict(grants)})
        case Message(sender, body, seq, ts, _, room):
            return encode_room_message(_dumps(sender), body, seq, ts, _room_json(room))
        case Ack(mid, seq, duplicate, room):
            return encode_ack(mid, seq, _room_json(room), duplicate=duplicate)
        case CaughtUp(seq, replayed, missing_after, missing_before, reset, room):
            return _line(_with_optional(
                {"type": "caught_up"}, room=room or None, seq=seq, replayed=replayed,
                missing_after=missing_after, missing_before=missing_before,
                reset=True if reset else None))
        case HistoryMessage(mid, sender, body, seq, ts, room):
            return encode_history_message(mid, _dumps(sender), body, seq, ts, _room_json(room))
        case HistoryEnd(mid, count, more, oldest, latest, room):
            obj = _with_optional({"type": "history_end"}, room=room or None)
            obj.update(id=mid, count=count, more=more, oldest=oldest, latest=latest)
            return _line(obj)
        case Join(user, room):
            return _line(_with_optional({"type": "join"}, room=room or None, user=user))
        case Leave(user, reason, room):
            return _line(_with_optional({"type": "leave"}, room=room or None, user=user,
                                        reason=reason))
        case ErrorFrame(code, message, mid, retry_after, room):
            return encode_error(code, message, mid, retry_after, room=room)
    raise LocalProtocolError("bad_frame", f"not a frame: {frame!r}")


def _room_json(room: str) -> str:
    return _dumps(room) if room else ""


def encode_error(
    code: str, message: str, mid: MessageId = None, retry_after: float | None = None, *,
    room: str | None = None,
) -> bytes:
    """An ``error`` frame; ``id`` names the message it is about, ``room`` its room."""
    return _line(
        _with_optional({"type": "error", "code": code, "message": message},
                       id=mid, retry_after=retry_after, room=room)
    )


def encode_ack(mid: MessageId, seq: int, room_json: str = "", *,
               duplicate: bool = False) -> bytes:
    """An ``ack`` frame; ``room_json`` is the room's name JSON-encoded ("" for none)."""
    room = f'"room":{room_json},' if room_json else ""
    dup = ',"duplicate":true' if duplicate else ""
    return f'{{"type":"ack",{room}"id":{_dumps(mid)},"seq":{seq}{dup}}}\n'.encode()


def encode_room_message(sender_json: str, body: str, seq: int, ts: str,
                        room_json: str = "") -> bytes:
    """The hot path: a room ``msg`` frame, built once and shared by every recipient.

    ``sender_json`` and ``room_json`` are the sender's and the room's names already
    JSON-encoded (fixed per session and per room, so encoded once). ``body`` was
    validated on decode.
    """
    room = f'"room":{room_json},' if room_json else ""
    return (
        f'{{"type":"msg",{room}"from":{sender_json},"body":{_dumps(body)},"seq":{seq},'
        f'"ts":"{ts}"}}\n'
    ).encode()


def encode_history_message(mid: MessageId, sender_json: str, body: str, seq: int,
                           ts: str, room_json: str = "") -> bytes:
    """A ``history_msg`` frame: a stored message answering request ``mid``."""
    room = f'"room":{room_json},' if room_json else ""
    return (
        f'{{"type":"history_msg",{room}"id":{_dumps(mid)},"from":{sender_json},'
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
