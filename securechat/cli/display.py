"""How ``securechat-client`` shows events: chat lines and connection state made safe
for a terminal, or one JSON object per event (``--json``). Messages from before we
joined (a resume replay, or history) carry the :data:`EARLIER` marker. A line about a
room other than the one being looked at starts with ``#room``; every JSON object
about a room has ``"room"``."""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Any, TextIO, TypeAlias

from .. import protocol
from ..client.api import (
    Closed,
    Connected,
    Connecting,
    Disconnected,
    Event,
    EventsDropped,
    Gap,
    Reconnecting,
    SendFailed,
)
from ..errors import GaveUp, TLSVerificationFailed
from .options import ROOM_REFUSALS, exit_code, room_refusal_text

__all__ = ["EARLIER", "ShownEvent", "clean", "clock", "event_json", "event_room",
           "event_text", "grants_text", "status_text", "write_line"]

#: Every event the client emits, the room ones (joined, left, grants) included.
ShownEvent: TypeAlias = Event | protocol.Joined | protocol.Left | protocol.Grants

#: Marks a line sent before we (re)joined: missed while away, or loaded history.
EARLIER = "[earlier]"


def clean(text: str) -> str:
    """Make untrusted text safe for a terminal: control and format characters
    (escape sequences, newlines, bidi overrides) are shown as escapes, not obeyed."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif unicodedata.category(ch) in ("Zs",):
            out.append(" ")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def clock(ts: str | None = None) -> str:
    """``HH:MM:SS`` in local time, of a server timestamp or of now."""
    if ts:
        try:
            when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone()
        except ValueError:
            when = dt.datetime.now()
    else:
        when = dt.datetime.now()
    return when.strftime("%H:%M:%S")


def event_room(event: ShownEvent) -> str | None:
    """The room an event is about, if any (None for connection state and grants)."""
    room = getattr(event, "room", None)
    return room if isinstance(room, str) and room else None


def grants_text(grants: tuple[tuple[str, str], ...]) -> str:
    """``general (rw), ops (ro)``, or ``none``."""
    return ", ".join(f"{clean(p)} ({clean(m)})" for p, m in grants) or "none"


def status_text(event: ShownEvent) -> str | None:
    """A connection-state line (for stderr or the interactive screen), else None."""
    if isinstance(event, Connected):
        welcome = event.welcome
        again = "re" if event.reconnect else ""
        if not welcome.room:  # a version 3 login: one joined event per room follows
            return f"{again}connected to {event.address} as {clean(welcome.user)}"
        others = [clean(m) for m in welcome.members if m != welcome.user]
        present = f"; here: {', '.join(others)}" if others else "; nobody else here"
        return f"{again}connected to {event.address} as {clean(welcome.user)}{present}"
    if isinstance(event, protocol.Joined):
        members = ", ".join(clean(m) for m in event.members) or "nobody"
        return f"joined #{clean(event.room)}; members: {members}"
    if isinstance(event, protocol.Left):
        if event.reason == "forbidden":
            return f"left #{clean(event.room)}: the token's grant for it was removed"
        why = "" if event.reason in ("left", "") else f" ({clean(event.reason)})"
        return f"left #{clean(event.room)}{why}"
    if isinstance(event, protocol.Grants):
        return f"grants changed: {grants_text(event.grants)}"
    if isinstance(event, Disconnected):
        return f"disconnected: {clean(event.reason)}"
    if isinstance(event, Reconnecting):
        delay = f"{event.delay:.2f}" if event.delay < 1 else f"{event.delay:.1f}"
        return f"reconnecting in {delay} s (attempt {event.attempt}): {clean(event.reason)}"
    if isinstance(event, protocol.CaughtUp):
        plural = "" if event.replayed == 1 else "s"
        return f"caught up: {event.replayed} missed message{plural} shown as {EARLIER}"
    if isinstance(event, Closed):
        if isinstance(event.error, GaveUp):
            return str(event.error)
        if isinstance(event.error, TLSVerificationFailed):
            return (f"error: {clean(str(event.error))} (is --ca the CA that signed the "
                    "server certificate, and --server-name a name in it?)")
        if event.error is not None:
            return f"error: {clean(str(event.error))}"
        return None
    return None


def event_text(event: ShownEvent, current: str | None = None) -> str | None:
    """The chat line for a content event (``12:01:03 alice: hi``), else None.

    ``current`` is the room being looked at: an event of another room gets its
    ``#room`` after the time (``12:01:03 #ops alice: hi``). None: never prefixed
    (one room only); ``""``: always."""
    room = event_room(event)
    tag = f" #{clean(room)}" if current is not None and room and room != current else ""
    if isinstance(event, protocol.Message | protocol.HistoryMessage):
        earlier = f" {EARLIER}" if isinstance(event, protocol.HistoryMessage) or (
            event.replayed) else ""
        return (f"{clock(event.ts)}{tag}{earlier} {clean(event.sender)}: "
                f"{clean(event.body)}")
    if isinstance(event, protocol.Join):
        return f"{clock()}{tag} * {clean(event.user)} joined"
    if isinstance(event, protocol.Leave):
        reason = f" ({clean(event.reason)})" if event.reason and event.reason != "bye" else ""
        return f"{clock()}{tag} * {clean(event.user)} left{reason}"
    if isinstance(event, Gap):
        plural = "s" if event.missing != 1 else ""
        why = " (the server started a new log)" if event.restarted else ""
        return f"{clock()}{tag} ! {event.missing} message{plural} missed while away{why}"
    if isinstance(event, protocol.ErrorFrame):
        if event.code == "rate_limited":
            return None  # the client resends it; nothing is lost
        if room and event.code in ROOM_REFUSALS:
            if event.id is not None:
                return None  # a refused message: its SendFailed says it, with the text
            return f"{clock()} ! {room_refusal_text(clean(room), event.code)}"
        if event.code == "store_unavailable" and event.id is not None:
            return f"{clock()} ! the server could not store a message; resending it"
        return f"{clock()} ! server: {clean(event.code)}: {clean(event.message)}"
    if isinstance(event, SendFailed):
        code = getattr(event.error, "code", None)
        if room and code in ROOM_REFUSALS:
            refusal = room_refusal_text(clean(room), str(code), sending=True)
            return f"{clock()} ! {refusal}: {clean(event.body)!r}"
        return f"{clock()} ! not delivered: {clean(event.body)!r}: {clean(str(event.error))}"
    if isinstance(event, EventsDropped):
        return f"{clock()} ! {event.count} events dropped (output too slow)"
    return None


def event_json(event: ShownEvent) -> dict[str, Any]:
    """One event as a JSON-ready object; ``type`` names it, and ``room`` the room of
    every event about one."""
    obj = _event_json(event)
    room = event_room(event)
    if room is not None or isinstance(event, protocol.ErrorFrame):
        obj["room"] = room
    return obj


def _event_json(event: ShownEvent) -> dict[str, Any]:
    match event:
        case protocol.Message(sender, body, seq, ts, replayed):
            obj = {"type": "msg", "from": sender, "body": body, "seq": seq, "ts": ts}
            return {**obj, "replayed": True} if replayed else obj
        case protocol.Ack(mid, seq, duplicate):
            ack = {"type": "ack", "id": mid, "seq": seq}
            return {**ack, "duplicate": True} if duplicate else ack
        case protocol.CaughtUp(seq, replayed, missing_after, missing_before, reset):
            return {"type": "caught_up", "seq": seq, "replayed": replayed,
                    "missing_after": missing_after, "missing_before": missing_before,
                    "reset": reset}
        case protocol.HistoryMessage(mid, sender, body, seq, ts):
            return {"type": "history_msg", "id": mid, "from": sender, "body": body,
                    "seq": seq, "ts": ts}
        case protocol.HistoryEnd(mid, count, more, oldest, latest):
            return {"type": "history_end", "id": mid, "count": count, "more": more,
                    "oldest": oldest, "latest": latest}
        case protocol.Join(user):
            return {"type": "join", "user": user}
        case protocol.Leave(user, reason):
            return {"type": "leave", "user": user, "reason": reason}
        case protocol.ErrorFrame(code, message, mid, retry_after):
            return {"type": "error", "code": code, "message": message, "id": mid,
                    "retry_after": retry_after}
        case Connecting(address, attempt):
            return {"type": "connecting", "address": address, "attempt": attempt}
        case protocol.Joined(members=members, seq=seq, epoch=epoch):
            return {"type": "joined", "members": list(members), "seq": seq, "epoch": epoch}
        case protocol.Left(reason=reason):
            return {"type": "left", "reason": reason}
        case protocol.Grants(grants):
            return {"type": "grants", "grants": [list(g) for g in grants]}
        case Connected(welcome, address, reconnect):
            # room: the default room of an old login, None for a v3 login (its rooms
            # come as joined events).
            return {"type": "connected", "address": address, "user": welcome.user,
                    "room": welcome.room or None, "members": list(welcome.members),
                    "session": welcome.session, "reconnect": reconnect,
                    "rooms": list(welcome.rooms), "grants": [list(g) for g in welcome.grants]}
        case Disconnected(reason):
            return {"type": "disconnected", "reason": reason}
        case Reconnecting(delay, attempt, reason, retry_after):
            return {"type": "reconnecting", "delay": round(delay, 3), "attempt": attempt,
                    "reason": reason, "retry_after": retry_after}
        case Gap(after=after, before=before, missing=missing, restarted=restarted):
            return {"type": "gap", "after": after, "before": before, "missing": missing,
                    "restarted": restarted}
        case SendFailed(id=mid, body=body, error=error):
            failed = {"type": "send_failed", "id": mid, "body": body, "error": str(error)}
            why = getattr(error, "code", None)
            return {**failed, "code": why} if isinstance(why, str) else failed
        case EventsDropped(count):
            return {"type": "events_dropped", "count": count}
        case Closed(reason, error):
            return {"type": "closed", "reason": reason,
                    "error": str(error) if error else None, "exit_code": exit_code(error)}
    return {"type": type(event).__name__.lower()}  # pragma: no cover - every event is above



def write_line(stream: TextIO, line: str) -> None:
    """Write one line and flush it (docker logs, pipes); a closed stream is ignored."""
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass  # stdout closed (a pipe reader went away): keep the client running
