"""Bytes to frames: validate every field a peer sent, raise RemoteProtocolError."""

from __future__ import annotations

import json
from typing import Any

from ..errors import RemoteProtocolError
from .frames import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_MAX_FRAME,
    MAX_AUTH_ROOMS,
    MAX_CLIENT_ID_LENGTH,
    MAX_EPOCH_LENGTH,
    MAX_HISTORY_LIMIT,
    MAX_ID_LENGTH,
    MAX_INT_ID,
    MAX_ROOM_LENGTH,
    MAX_TOKEN_LENGTH,
    PROTOCOL_VERSION,
    ROOM_NAME,
    TOKEN_CHARS,
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
    elif not is_text(mid):
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
    if not TOKEN_CHARS.fullmatch(token):
        return "auth token must be visible ASCII (no spaces, control or non-ASCII characters)"
    return None


def _auth_token(obj: dict[str, Any]) -> str:
    token = obj.get("token")
    problem = token_problem(token)
    if problem is not None:
        raise RemoteProtocolError("bad_frame", problem)
    assert isinstance(token, str)
    return token


def name_problem(value: object, what: str, limit: int) -> str | None:
    """Why ``value`` cannot be a client id or an epoch: both are 1 to ``limit`` visible
    ASCII characters, so they are safe in log lines and as database keys."""
    if not isinstance(value, str) or not value:
        return f"{what} must be a non-empty string"
    if len(value) > limit:
        return f"{what} is longer than {limit} characters"
    if not TOKEN_CHARS.fullmatch(value):
        return f"{what} must be visible ASCII (no spaces, control or non-ASCII characters)"
    return None


def room_problem(value: object) -> str | None:
    """Why ``value`` cannot be a room name, or None: 1 to 64 of lower-case ASCII letters,
    digits, ``-``, ``_`` and ``.``, starting with a letter or digit."""
    if not isinstance(value, str) or not value:
        return "room must be a non-empty string"
    if len(value) > MAX_ROOM_LENGTH:
        return f"room name is longer than {MAX_ROOM_LENGTH} characters"
    if not ROOM_NAME.fullmatch(value):
        if value.isascii() and ROOM_NAME.fullmatch(value.lower()):
            return "room names are lower case"
        return ("room name must be lower-case letters, digits, '-', '_' or '.', "
                "starting with a letter or digit")
    return None


def _room(obj: dict[str, Any], mid: MessageId = None) -> str:
    room = obj.get("room")
    if (problem := room_problem(room)) is not None:
        raise RemoteProtocolError("bad_frame", problem, message_id=mid)
    assert isinstance(room, str)
    return room


def _optional_room(obj: dict[str, Any], mid: MessageId = None) -> str | None:
    return None if obj.get("room") is None else _room(obj, mid)


def _seq_value(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT_ID:
        raise RemoteProtocolError("bad_frame", f"{what} must be an integer from 0 to 2**53 - 1")
    return value


def _auth(obj: dict[str, Any]) -> Auth:
    token = _auth_token(obj)
    client = obj.get("client")
    if client is not None and (
            problem := name_problem(client, "auth client", MAX_CLIENT_ID_LENGTH)):
        raise RemoteProtocolError("bad_frame", problem)
    resume = _resume(obj.get("resume"))
    raw_rooms = obj.get("rooms")
    if raw_rooms is None:
        return Auth(token, client, resume)
    if resume is not None:
        raise RemoteProtocolError("bad_frame", "with rooms, each room entry has its resume")
    if not isinstance(raw_rooms, list):
        raise RemoteProtocolError("bad_frame", "auth rooms must be a list")
    if len(raw_rooms) > MAX_AUTH_ROOMS:
        raise RemoteProtocolError("bad_frame", f"auth names more than {MAX_AUTH_ROOMS} rooms; "
                                  "join the others after the welcome")
    rooms = []
    seen = set()
    for entry in raw_rooms:
        join = _join_entry({"room": entry} if isinstance(entry, str) else entry)
        if join.room in seen:
            raise RemoteProtocolError("bad_frame", f"auth names room {join.room!r} twice")
        seen.add(join.room)
        rooms.append(join)
    return Auth(token, client, None, tuple(rooms))


def _resume(raw: object) -> Resume | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RemoteProtocolError("bad_frame", "resume must be an object {epoch, seq}")
    epoch = raw.get("epoch")
    if problem := name_problem(epoch, "resume epoch", MAX_EPOCH_LENGTH):
        raise RemoteProtocolError("bad_frame", problem)
    assert isinstance(epoch, str)
    return Resume(epoch, _seq_value(raw.get("seq"), "resume seq"))


def _join_entry(obj: object) -> JoinRoom:
    if not isinstance(obj, dict):
        raise RemoteProtocolError("bad_frame", "a room entry is a name or {room, resume}")
    return JoinRoom(_room(obj), _resume(obj.get("resume")))


def _history(obj: dict[str, Any]) -> History:
    mid = _message_id(obj)
    try:
        before = obj.get("before")
        after = obj.get("after")
        if before is not None and after is not None:
            raise RemoteProtocolError("bad_frame", "history takes before or after, not both")
        limit = obj.get("limit", DEFAULT_HISTORY_LIMIT)
        if (isinstance(limit, bool) or not isinstance(limit, int)
                or not 1 <= limit <= MAX_HISTORY_LIMIT):
            raise RemoteProtocolError(
                "bad_frame", f"history limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
        return History(
            mid,
            None if before is None else _seq_value(before, "history before"),
            None if after is None else _seq_value(after, "history after"),
            limit,
            _optional_room(obj),
        )
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(exc.code, exc.message, message_id=mid) from None


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
        if not is_text(body):
            # It could not be re-encoded as UTF-8 for the other members.
            raise RemoteProtocolError(
                "bad_frame", "msg body must be valid Unicode (no lone surrogates)",
                message_id=_message_id(obj),
            )
        mid = _message_id(obj)
        return SendMessage(body, mid, _optional_room(obj, mid))
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind == "auth":
        return _auth(obj)
    if kind == "history":
        return _history(obj)
    if kind == "join":
        return _join_entry(obj)
    if kind == "leave":
        return LeaveRoom(_room(obj))
    if kind == "bye":
        return Bye()
    if not isinstance(kind, str):
        raise RemoteProtocolError("bad_frame", "frame needs a string field 'type'")
    raise RemoteProtocolError("unknown_type", f"unknown frame type {kind[:40]!r}")


def _str_field(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not is_text(value):  # a lone surrogate would crash whoever prints or re-encodes it
        raise RemoteProtocolError("bad_frame", f"{obj.get('type')} needs a string {name!r}")
    return value


def _int_field(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RemoteProtocolError("bad_frame", f"{obj.get('type')} needs an integer {name!r}")
    return value


def _optional_int(obj: dict[str, Any], name: str) -> int | None:
    return None if obj.get(name) is None else _int_field(obj, name)


def _message_text(value: object) -> str:
    """A human text field: kept if valid, else shown escaped (never a lone surrogate)."""
    if is_text(value):
        return value
    return ascii(value) if isinstance(value, str) else str(value)


def _number_or_none(obj: dict[str, Any], name: str) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RemoteProtocolError("bad_frame", f"{name!r} must be a number")
    return float(value)


def _room_of(obj: dict[str, Any]) -> str:
    """A server frame's ``room``: "" when absent (a version 2 server)."""
    room = obj.get("room")
    if room is None:
        return ""
    if not is_text(room):
        raise RemoteProtocolError("bad_frame", f"{obj.get('type')} needs a string 'room'")
    return room


def _text_or_empty(value: object) -> str:
    return value if is_text(value) else ""


def _names(obj: dict[str, Any], name: str) -> tuple[str, ...]:
    value = obj.get(name)
    if not isinstance(value, list) or not all(is_text(m) for m in value):
        raise RemoteProtocolError("bad_frame", f"{obj.get('type')} needs a list of names "
                                  f"{name!r}")
    return tuple(value)


def _grants(obj: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    value = obj.get("grants")
    if not isinstance(value, dict) or not all(
            is_text(k) and v in ("rw", "ro") for k, v in value.items()):
        raise RemoteProtocolError("bad_frame", f"{obj.get('type')} grants must map patterns "
                                  "to \"rw\" or \"ro\"")
    return tuple(value.items())


def decode_server_frame(line: bytes) -> ServerFrame:
    """Parse one line the server sent (used by clients). Raises :class:`RemoteProtocolError`."""
    obj = _load_object(line)
    kind = obj.get("type")
    if kind == "msg":
        return Message(
            _str_field(obj, "from"), _str_field(obj, "body"), _int_field(obj, "seq"),
            _str_field(obj, "ts"), room=_room_of(obj),
        )
    if kind == "ack":
        return Ack(_message_id(obj), _int_field(obj, "seq"), obj.get("duplicate") is True,
                   room=_room_of(obj))
    if kind == "caught_up":
        return CaughtUp(
            _int_field(obj, "seq"), _int_field(obj, "replayed"),
            _optional_int(obj, "missing_after"), _optional_int(obj, "missing_before"),
            obj.get("reset") is True, room=_room_of(obj),
        )
    if kind == "history_msg":
        return HistoryMessage(
            _message_id(obj), _str_field(obj, "from"), _str_field(obj, "body"),
            _int_field(obj, "seq"), _str_field(obj, "ts"), room=_room_of(obj),
        )
    if kind == "history_end":
        return HistoryEnd(
            _message_id(obj), _int_field(obj, "count"), obj.get("more") is True,
            _optional_int(obj, "oldest"), _int_field(obj, "latest"), room=_room_of(obj),
        )
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind == "join":
        return Join(_str_field(obj, "user"), room=_room_of(obj))
    if kind == "leave":
        reason = obj.get("reason")
        return Leave(_str_field(obj, "user"), reason if is_text(reason) else "",
                     room=_room_of(obj))
    if kind == "joined":
        return Joined(_str_field(obj, "room"), _names(obj, "members"), _int_field(obj, "seq"),
                      _text_or_empty(obj.get("epoch")))
    if kind == "left":
        return Left(_str_field(obj, "room"), _text_or_empty(obj.get("reason")))
    if kind == "grants":
        return Grants(_grants(obj))
    if kind == "welcome":
        heartbeat = _number_or_none(obj, "heartbeat")
        max_frame = obj.get("max_frame", DEFAULT_MAX_FRAME)
        session = obj.get("session", "")
        room = _room_of(obj)
        protocol = obj.get("protocol", PROTOCOL_VERSION)
        return Welcome(
            user=_str_field(obj, "user"),
            room=room,
            # A version 3 login's welcome describes no room (joined frames follow).
            members=_names(obj, "members") if room else (),
            heartbeat=heartbeat if heartbeat is not None else 0.0,
            seq=_int_field(obj, "seq") if room else 0,
            max_frame=max_frame if isinstance(max_frame, int) else DEFAULT_MAX_FRAME,
            session=session if is_text(session) else "",
            protocol=protocol if isinstance(protocol, int) else PROTOCOL_VERSION,
            epoch=_text_or_empty(obj.get("epoch")),
            rooms=_names(obj, "rooms") if "rooms" in obj else ((room,) if room else ()),
            grants=_grants(obj) if "grants" in obj else (),
        )
    if kind == "bye":
        reason = obj.get("reason")
        return Bye(reason if is_text(reason) else None, _number_or_none(obj, "retry_after"))
    if kind == "error":
        return ErrorFrame(
            _str_field(obj, "code"),
            _message_text(obj.get("message", "")),
            _message_id(obj),
            _number_or_none(obj, "retry_after"),
            _room_of(obj) or None,
        )
    if not isinstance(kind, str):
        raise RemoteProtocolError("bad_frame", "frame needs a string field 'type'")
    raise RemoteProtocolError("unknown_type", f"unknown frame type {kind[:40]!r}")
