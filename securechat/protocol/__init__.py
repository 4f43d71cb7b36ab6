"""The securechat wire contract, version 2, as pure code (no sockets, no threads).

A frame is one UTF-8 JSON object on one line, ended by ``\\n``. This package turns
bytes into typed frames and typed frames into bytes; the server and the client
are thin I/O layers over it. ``docs/protocol.md`` is the prose version of this
package; keep them in step.

``frames`` holds the data, ``framing`` splits the stream into lines, ``decode`` and
``encode`` convert; everything is re-exported here, so callers write ``protocol.X``.
"""

from __future__ import annotations

from .decode import (
    decode_client_frame,
    decode_server_frame,
    name_problem,
    token_problem,
)
from .encode import (
    encode,
    encode_error,
    encode_history_message,
    encode_room_message,
    json_string,
    rfc3339_utc,
)
from .frames import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_MAX_FRAME,
    DEFAULT_PORT,
    ERROR_CODES,
    MAX_CLIENT_ID_LENGTH,
    MAX_EPOCH_LENGTH,
    MAX_HISTORY_LIMIT,
    MAX_ID_LENGTH,
    MAX_INT_ID,
    MAX_TOKEN_LENGTH,
    PRE_AUTH_MAX_FRAME,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Bye,
    CaughtUp,
    ClientFrame,
    ErrorFrame,
    ErrorSpec,
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
    closes_connection,
    is_text,
)
from .framing import (
    FrameDecoder,
)

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_PORT",
    "ERROR_CODES",
    "MAX_CLIENT_ID_LENGTH",
    "MAX_EPOCH_LENGTH",
    "MAX_HISTORY_LIMIT",
    "MAX_ID_LENGTH",
    "MAX_INT_ID",
    "MAX_TOKEN_LENGTH",
    "PRE_AUTH_MAX_FRAME",
    "PROTOCOL_VERSION",
    "Ack",
    "Auth",
    "Bye",
    "CaughtUp",
    "ClientFrame",
    "ErrorFrame",
    "ErrorSpec",
    "FrameDecoder",
    "History",
    "HistoryEnd",
    "HistoryMessage",
    "Join",
    "Leave",
    "Message",
    "MessageId",
    "Ping",
    "Pong",
    "Resume",
    "SendMessage",
    "ServerFrame",
    "Welcome",
    "closes_connection",
    "decode_client_frame",
    "decode_server_frame",
    "encode",
    "encode_error",
    "encode_history_message",
    "encode_room_message",
    "is_text",
    "json_string",
    "name_problem",
    "rfc3339_utc",
    "token_problem",
]
