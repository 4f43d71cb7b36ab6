"""The Redis log's data layout and its one Lua script (pure: no connection here).

Every key of a room has the room in a hash tag, so a room lives in one cluster slot
and the script may touch all of them:

- ``securechat:{ROOM}:meta``, a hash: ``epoch`` (the identity of the room's log,
  created by the script or the first reader when absent), ``seq`` (the last seq given
  out) and ``at`` (the last stored_at, in ms: it never goes back within a room).
- ``securechat:{ROOM}:stream``, the history: one entry per message, stream id
  ``<seq>-0`` (so XRANGE/XREVRANGE by seq need no index), fields ``t`` (stored_at,
  ms) and ``m`` (the JSON object :func:`encode_tail` makes). Trimmed to
  ``--history-max`` entries on every add and, for ``--history-age``, from its old
  end on every add.
- ``securechat:{ROOM}:sent:JSON``, one per recent ``(user, client, id)``: the seq it
  got, expiring after ``--resend-window``. A resend to any node finds it.
- the channel ``securechat:{ROOM}:live``: ``seq|at|epoch|tail`` per message.

The script does all of it in one atomic step (de-duplication, seq, history append,
trim, publish), so every node sees one order, the publisher's included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..protocol import rfc3339_utc
from .base import Pending, StoredMessage

__all__ = [
    "PATTERN",
    "SCRIPT",
    "Entry",
    "channel",
    "decode_entry",
    "decode_live",
    "dedup_key",
    "encode_tail",
    "meta_key",
    "room_of",
    "seq_of",
    "stream_key",
]

PREFIX = "securechat:"
#: The one pattern subscription of a node: every room's live channel.
PATTERN = PREFIX + "{*}:live"

#: KEYS: meta, stream[, sent]. ARGV: epoch if new, tail, channel, history max,
#: history age (ms), resend window (s), seq floor. A room with no seq yet (new, or
#: lost by Redis) numbers on from the floor, the last seq the publishing node saw, so
#: members who stay connected across a lost Redis never see seq go back. Returns
#: {1, seq, epoch, at} when stored, or {0, seq, epoch} for a resend that the sent key
#: recognised (nothing stored).
SCRIPT = """
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', meta, 'epoch', epoch)
end
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {0, tonumber(seen), epoch} end
end
if not redis.call('HGET', meta, 'seq') then
  redis.call('HSET', meta, 'seq', tonumber(ARGV[7]))
end
local now = redis.call('TIME')
local at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last = tonumber(redis.call('HGET', meta, 'at') or '0')
if at < last then at = last end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
redis.call('HSET', meta, 'at', at)
local id = seq .. '-0'
local maxlen = tonumber(ARGV[4])
if maxlen > 0 then
  redis.call('XADD', stream, 'MAXLEN', maxlen, id, 't', at, 'm', ARGV[2])
else
  redis.call('XADD', stream, id, 't', at, 'm', ARGV[2])
end
local age = tonumber(ARGV[5])
if age > 0 then
  local cutoff = at - age
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if head[1] and tonumber(head[1][2][2]) < cutoff then
    local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', 500)
    local keep = nil
    for _, entry in ipairs(old) do
      if tonumber(entry[2][2]) >= cutoff then keep = entry[1] break end
    end
    if not keep then
      keep = (tonumber(string.match(old[#old][1], '^(%d+)')) + 1) .. '-0'
    end
    redis.call('XTRIM', stream, 'MINID', keep)
  end
end
if KEYS[3] then redis.call('SET', KEYS[3], seq, 'EX', tonumber(ARGV[6])) end
redis.call('PUBLISH', ARGV[3], seq .. '|' .. at .. '|' .. epoch .. '|' .. ARGV[2])
return {1, seq, epoch, at}
"""


def meta_key(room: str) -> str:
    return f"{PREFIX}{{{room}}}:meta"


def stream_key(room: str) -> str:
    return f"{PREFIX}{{{room}}}:stream"


def channel(room: str) -> str:
    return f"{PREFIX}{{{room}}}:live"


def dedup_key(room: str, user: str, client: str, msg_id: str | int) -> str:
    """JSON of the triple: no user, client or id can make two keys alike."""
    return f"{PREFIX}{{{room}}}:sent:" + json.dumps([user, client, msg_id],
                                                    separators=(",", ":"))


def room_of(key: str) -> str | None:
    """The room of a key or channel name of ours (``securechat:{ROOM}:...``)."""
    if not key.startswith(PREFIX + "{"):
        return None
    end = key.find("}", len(PREFIX) + 1)
    return None if end < 0 else key[len(PREFIX) + 1:end]


def seq_of(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


def encode_tail(item: Pending, origin: str) -> str:
    """What a message carries besides its number: sender, client, id, body, origin."""
    return json.dumps({"s": item.sender, "c": item.client, "i": item.msg_id,
                       "b": item.body, "o": origin}, ensure_ascii=False,
                      separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored message as Redis gives it back (channel or stream), with its origin:
    ``node:counter`` of the node that published it."""

    message: StoredMessage
    epoch: str
    origin: str


def _entry(room: str, seq: int, at_ms: int, epoch: str, tail: str) -> Entry:
    fields: dict[str, Any] = json.loads(tail)
    at = at_ms / 1000.0
    msg_id = fields.get("i")
    if isinstance(msg_id, bool) or not isinstance(msg_id, (str, int)):
        msg_id = None
    client = fields.get("c")
    # at_ms / 1000 may fall just below the millisecond (…0.123 -> …0.12299): the
    # timestamp is formatted from a tenth of a millisecond above it, never below.
    message = StoredMessage(room, seq, str(fields.get("s", "")),
                            client if isinstance(client, str) else None, msg_id,
                            str(fields.get("b", "")), rfc3339_utc((at_ms + 0.1) / 1000), at)
    return Entry(message, epoch, str(fields.get("o", "")))


def decode_live(room: str, payload: str) -> Entry:
    """A message from the live channel (``seq|at|epoch|tail``)."""
    seq, at, epoch, tail = payload.split("|", 3)
    return _entry(room, int(seq), int(at), epoch, tail)


def decode_entry(room: str, epoch: str, stream_id: str, fields: dict[str, str]) -> Entry:
    """A message read from the room's stream."""
    return _entry(room, seq_of(stream_id), int(fields["t"]), epoch, fields["m"])
