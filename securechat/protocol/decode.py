"""Bytes to frames: validate every field a peer sent, raise RemoteProtocolError."""

from __future__ import annotations

import json
from typing import Any

from ..errors import RemoteProtocolError
from .frames import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_MAX_FRAME,
    MAX_CLIENT_ID_LENGTH,
    MAX_EPOCH_LENGTH,
    MAX_HISTORY_LIMIT,
    MAX_ID_LENGTH,
    MAX_INT_ID,
    MAX_TOKEN_LENGTH,
    PROTOCOL_VERSION,
    TOKEN_CHARS,
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
    raw = obj.get("resume")
    resume = None
    if raw is not None:
        if not isinstance(raw, dict):
            raise RemoteProtocolError("bad_frame", "resume must be an object {epoch, seq}")
        epoch = raw.get("epoch")
        if problem := name_problem(epoch, "resume epoch", MAX_EPOCH_LENGTH):
            raise RemoteProtocolError("bad_frame", problem)
        assert isinstance(epoch, str)
        resume = Resume(epoch, _seq_value(raw.get("seq"), "resume seq"))
    return Auth(token, client, resume)


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
        return SendMessage(body, _message_id(obj))
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind == "auth":
        return _auth(obj)
    if kind == "history":
        return _history(obj)
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
        return Ack(_message_id(obj), _int_field(obj, "seq"), obj.get("duplicate") is True)
    if kind == "caught_up":
        return CaughtUp(
            _int_field(obj, "seq"), _int_field(obj, "replayed"),
            _optional_int(obj, "missing_after"), _optional_int(obj, "missing_before"),
            obj.get("reset") is True,
        )
    if kind == "history_msg":
        return HistoryMessage(
            _message_id(obj), _str_field(obj, "from"), _str_field(obj, "body"),
            _int_field(obj, "seq"), _str_field(obj, "ts"),
        )
    if kind == "history_end":
        return HistoryEnd(
            _message_id(obj), _int_field(obj, "count"), obj.get("more") is True,
            _optional_int(obj, "oldest"), _int_field(obj, "latest"),
        )
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind == "join":
        return Join(_str_field(obj, "user"))
    if kind == "leave":
        reason = obj.get("reason")
        return Leave(_str_field(obj, "user"), reason if is_text(reason) else "")
    if kind == "welcome":
        members = obj.get("members")
        if not isinstance(members, list) or not all(is_text(m) for m in members):
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
            session=session if is_text(session) else "",
            protocol=obj.get("protocol", PROTOCOL_VERSION),
            epoch=epoch if is_text(epoch) else "",
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
        )
    if not isinstance(kind, str):
        raise RemoteProtocolError("bad_frame", "frame needs a string field 'type'")
    raise RemoteProtocolError("unknown_type", f"unknown frame type {kind[:40]!r}")
