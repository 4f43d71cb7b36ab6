"""How ``securechat-client`` shows events: chat lines and connection state made safe
for a terminal, or one JSON object per event (``--json``). Messages from before we
joined (a resume replay, or history) carry the :data:`EARLIER` marker."""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Any, TextIO

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
from .options import exit_code

__all__ = ["EARLIER", "clean", "clock", "event_json", "event_text", "status_text",
           "write_line"]

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


def status_text(event: Event) -> str | None:
    """A connection-state line (for stderr or the interactive screen), else None."""
    if isinstance(event, Connected):
        welcome = event.welcome
        others = [clean(m) for m in welcome.members if m != welcome.user]
        present = f"; here: {', '.join(others)}" if others else "; nobody else here"
        again = "re" if event.reconnect else ""
        return f"{again}connected to {event.address} as {clean(welcome.user)}{present}"
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


def event_text(event: Event) -> str | None:
    """The chat line for a content event (``12:01:03 alice: hi``), else None."""
    if isinstance(event, protocol.Message | protocol.HistoryMessage):
        earlier = f" {EARLIER}" if isinstance(event, protocol.HistoryMessage) or (
            event.replayed) else ""
        return f"{clock(event.ts)}{earlier} {clean(event.sender)}: {clean(event.body)}"
    if isinstance(event, protocol.Join):
        return f"{clock()} * {clean(event.user)} joined"
    if isinstance(event, protocol.Leave):
        reason = f" ({clean(event.reason)})" if event.reason and event.reason != "bye" else ""
        return f"{clock()} * {clean(event.user)} left{reason}"
    if isinstance(event, Gap):
        plural = "s" if event.missing != 1 else ""
        why = " (the server started a new log)" if event.restarted else ""
        return f"{clock()} ! {event.missing} message{plural} missed while away{why}"
    if isinstance(event, protocol.ErrorFrame):
        if event.code == "rate_limited":
            return None  # the client resends it; nothing is lost
        if event.code == "store_unavailable" and event.id is not None:
            return f"{clock()} ! the server could not store a message; resending it"
        return f"{clock()} ! server: {clean(event.code)}: {clean(event.message)}"
    if isinstance(event, SendFailed):
        return f"{clock()} ! not delivered: {clean(event.body)!r}: {clean(str(event.error))}"
    if isinstance(event, EventsDropped):
        return f"{clock()} ! {event.count} events dropped (output too slow)"
    return None


def event_json(event: Event) -> dict[str, Any]:
    """One event as a JSON-ready object; ``type`` names it."""
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
        case Connected(welcome, address, reconnect):
            return {"type": "connected", "address": address, "user": welcome.user,
                    "room": welcome.room, "members": list(welcome.members),
                    "session": welcome.session, "reconnect": reconnect}
        case Disconnected(reason):
            return {"type": "disconnected", "reason": reason}
        case Reconnecting(delay, attempt, reason, retry_after):
            return {"type": "reconnecting", "delay": round(delay, 3), "attempt": attempt,
                    "reason": reason, "retry_after": retry_after}
        case Gap(after, before, missing, restarted):
            return {"type": "gap", "after": after, "before": before, "missing": missing,
                    "restarted": restarted}
        case SendFailed(mid, body, error):
            return {"type": "send_failed", "id": mid, "body": body, "error": str(error)}
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
