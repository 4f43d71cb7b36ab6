"""The frames of the wire contract: constants, error codes and one dataclass per frame
type (pure data, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, TypeGuard

PROTOCOL_VERSION: Final = 3
DEFAULT_PORT: Final = 7443
DEFAULT_MAX_FRAME: Final = 64 * 1024
#: Before authentication only an ``auth`` frame is expected: a small cap keeps an
#: unauthenticated peer from making the server buffer much.
PRE_AUTH_MAX_FRAME: Final = 4096
#: Real tokens (``sct1.<id>.<secret>``) are 61 characters; anything longer is refused
#: before it reaches the token store.
MAX_TOKEN_LENGTH: Final = 256
MAX_ID_LENGTH: Final = 128
#: A client instance id (``auth.client``) and an epoch are short opaque names.
MAX_CLIENT_ID_LENGTH: Final = 64
MAX_EPOCH_LENGTH: Final = 64
#: The most messages one ``history`` request returns, and the default.
MAX_HISTORY_LIMIT: Final = 500
DEFAULT_HISTORY_LIMIT: Final = 50
#: Integer message ids must be I-JSON safe (RFC 7493): every JSON reader, JavaScript's
#: included, reads them exactly, and an id costs bounded memory in the dedup history.
MAX_INT_ID: Final = 2**53 - 1
#: Room names: 1 to 64 of lower-case ASCII letters, digits, ``-``, ``_`` and ``.``, starting
#: with a letter or digit. Lower case only, so ``Ops`` and ``ops`` can never be two rooms;
#: a client may fold what its user typed (and drop a leading ``#``) before sending.
MAX_ROOM_LENGTH: Final = 64
ROOM_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
#: The most rooms one ``auth`` frame may name (it must also fit in PRE_AUTH_MAX_FRAME);
#: a client in more rooms sends ``join`` frames for the rest after it.
MAX_AUTH_ROOMS: Final = 64
#: A token is visible ASCII: no space, control character, non-ASCII or lone surrogate.
TOKEN_CHARS: Final = re.compile(r"[\x21-\x7e]+")


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
    "forbidden": ErrorSpec(
        False, "the token may not join this room, or may only read it (has room)"),
    "not_joined": ErrorSpec(False, "the session is not in the room the frame names (has room)"),
    "already_joined": ErrorSpec(False, "the session is already in that room (has room)"),
    "room_full": ErrorSpec(False, "the room holds --max-room-members sessions (has room)"),
    "too_many_rooms": ErrorSpec(
        False, "the server holds --max-rooms rooms, or the session is in "
        "--max-rooms-per-session rooms (has room)"),
    "store_unavailable": ErrorSpec(
        False, "the message could not be stored (disk full or a write error) and was not "
        "delivered; resend it after retry_after s"),
}


def closes_connection(code: str) -> bool:
    """Whether the server closes the connection after sending error ``code``."""
    spec = ERROR_CODES.get(code)
    return True if spec is None else spec.closes


# --------------------------------------------------------------------------- frames
MessageId = str | int | None


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a returning client left off: the last ``seq`` it saw in log ``epoch``."""

    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class JoinRoom:
    """Client -> server: join ``room``; with ``resume``, first every message of it after
    that position (``joined``, the replay, ``caught_up``). Also an entry of
    ``Auth.rooms``. ``"join"`` on the wire (the server's ``join`` is presence)."""

    room: str
    resume: Resume | None = None


@dataclass(frozen=True, slots=True)
class LeaveRoom:
    """Client -> server: leave ``room`` (answered with ``left``). ``"leave"`` on the wire."""

    room: str


@dataclass(frozen=True, slots=True)
class Auth:
    """Client -> server: the first frame of every connection.

    ``client`` names one client instance across its reconnects (as an MQTT client id):
    resends are recognised per ``(user, client, id)``, and only when it is set.

    ``rooms`` None is the version 1/2 login: the session is put in the server's default
    room, ``resume`` applies to it, and the welcome describes that room. ``rooms`` set
    (even empty) is version 3: the session joins exactly those rooms, each with its own
    resume, and ``resume`` must not be set.
    """

    token: str
    client: str | None = None
    resume: Resume | None = None
    rooms: tuple[JoinRoom, ...] | None = None


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Client -> server: a message for the room; ``id`` is echoed in the ack."""

    body: str
    id: MessageId = None
    #: None: the server's default room (version 1 and 2 clients never name one).
    room: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    """Client -> server: up to ``limit`` stored messages before ``before``, after
    ``after``, or the latest ones (neither set), as IRCv3 CHATHISTORY BEFORE/AFTER/LATEST."""

    id: MessageId = None
    before: int | None = None
    after: int | None = None
    limit: int = DEFAULT_HISTORY_LIMIT
    #: None: the server's default room.
    room: str | None = None


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
    """Server -> client: authentication succeeded.

    For a version 1/2 login (``auth`` without ``rooms``) it also describes the default
    room the session joined (``room``, ``members``, ``seq``, ``epoch``). For a version 3
    login ``room`` is empty and one ``joined`` frame per room follows. Either way
    ``rooms`` names the rooms the session is in and ``grants`` what the token may join:
    ``(pattern, "rw" | "ro")`` pairs, patterns with ``*`` and ``?`` wildcards.
    """

    user: str
    room: str
    members: tuple[str, ...]
    heartbeat: float
    seq: int
    max_frame: int = DEFAULT_MAX_FRAME
    session: str = ""
    protocol: int = PROTOCOL_VERSION
    #: Names the room's log: seq numbering continues while it stays the same, and a
    #: new epoch means the log was lost or reset and seq started over.
    epoch: str = ""
    rooms: tuple[str, ...] = ()
    grants: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Joined:
    """Server -> client: the session is now in ``room``; every live frame of it that
    follows has ``seq`` > this one (replayed ones, before its ``caught_up``, are older)."""

    room: str
    members: tuple[str, ...]
    seq: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Left:
    """Server -> client: the session is no longer in ``room``: ``left`` (it asked),
    ``forbidden`` (its grant was removed)."""

    room: str
    reason: str


@dataclass(frozen=True, slots=True)
class Grants:
    """Server -> client: the token's grants changed while connected (see Welcome)."""

    grants: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Message:
    """Server -> client: a room message from another session."""

    sender: str  # "from" on the wire
    body: str
    seq: int
    ts: str
    #: Not on the wire: set by a client for a message that arrived in a resume replay
    #: (between ``welcome`` and ``caught_up``), so it is one the user missed.
    replayed: bool = False
    room: str = ""


@dataclass(frozen=True, slots=True)
class Ack:
    """Server -> client: the sender's message is in the room with number ``seq``."""

    id: MessageId
    seq: int
    #: A resend the server recognised: it was stored and delivered the first time.
    duplicate: bool = False
    room: str = ""


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """Server -> client: the end of a resume replay; live frames follow.

    ``replayed`` messages came between ``welcome`` and this frame. If messages after
    the client's position are gone from the log, ``missing_after < seq < missing_before``
    names them; ``reset`` means the client's position is not in this log at all (a new
    epoch), so nothing was replayed.
    """

    seq: int
    replayed: int
    missing_after: int | None = None
    missing_before: int | None = None
    reset: bool = False
    room: str = ""


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    """Server -> client: one stored message answering the :class:`History` request ``id``."""

    id: MessageId
    sender: str  # "from" on the wire
    body: str
    seq: int
    ts: str
    room: str = ""


@dataclass(frozen=True, slots=True)
class HistoryEnd:
    """Server -> client: the end of the answer to request ``id``: ``count`` messages were
    sent; ``more`` if the log holds further ones in the direction asked; ``oldest`` and
    ``latest`` are the seqs the log holds now (``oldest`` is None when it is empty)."""

    id: MessageId
    count: int
    more: bool
    oldest: int | None
    latest: int
    room: str = ""


@dataclass(frozen=True, slots=True)
class Join:
    """Server -> client: ``user`` opened their first session in the room."""

    user: str
    room: str = ""


@dataclass(frozen=True, slots=True)
class Leave:
    """Server -> client: ``user`` closed their last session in the room."""

    user: str
    reason: str
    room: str = ""


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """Server -> client: see :data:`ERROR_CODES`."""

    code: str
    message: str
    id: MessageId = None
    retry_after: float | None = None
    #: The room the error is about, if any.
    room: str | None = None

    @property
    def closes(self) -> bool:
        return closes_connection(self.code)


ClientFrame = Auth | SendMessage | History | JoinRoom | LeaveRoom | Ping | Pong | Bye
ServerFrame = (Welcome | Joined | Left | Grants | Message | Ack | CaughtUp | HistoryMessage
               | HistoryEnd | Join | Leave | Ping | Pong | Bye | ErrorFrame)

def is_text(value: object) -> TypeGuard[str]:
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
