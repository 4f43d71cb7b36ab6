"""``securechat-client``'s share of resume and history, without a server: the
``--history`` flag, the [earlier] marker and the JSON objects of the new events."""

from __future__ import annotations

import json

import pytest

from securechat import protocol
from securechat.cli.display import EARLIER, event_json, event_text, status_text
from securechat.cli.options import (
    DEFAULT_INTERACTIVE_HISTORY,
    UsageError,
    build_parser,
    options_from_args,
)

TS = "2026-01-01T12:00:00Z"


def options(*argv: str, tty: bool = False) -> int:
    args = build_parser().parse_args(["--token", "t", *argv])
    return options_from_args(args, {}, stdin_tty=tty).history


def test_history_defaults_to_20_interactive_and_0_scripted() -> None:
    """--history N wins; without it interactive shows 20 and scripted modes none."""
    assert options(tty=True) == DEFAULT_INTERACTIVE_HISTORY == 20
    assert options() == 0
    assert options("--listen", tty=True) == 0
    assert options("--json", tty=True) == 0
    assert options("--history", "5", "--listen") == 5
    assert options("--history", "0", tty=True) == 0


@pytest.mark.parametrize("value", ["-1", str(protocol.MAX_HISTORY_LIMIT + 1)])
def test_history_out_of_range_is_a_usage_error(value: str) -> None:
    """The server answers at most 500 per request: more is refused before connecting."""
    with pytest.raises(UsageError, match="--history"):
        options("--history", value)


def test_replayed_and_history_messages_are_marked_earlier() -> None:
    """Missed (replayed) and history lines carry the marker; live ones do not."""
    live = protocol.Message("bob", "now", 5, TS)
    replayed = protocol.Message("bob", "while away", 4, TS, replayed=True)
    old = protocol.HistoryMessage("h1", "bob", "long ago", 1, TS)
    assert EARLIER not in (event_text(live) or "")
    assert f"{EARLIER} bob: while away" in (event_text(replayed) or "")
    assert f"{EARLIER} bob: long ago" in (event_text(old) or "")
    assert event_text(protocol.HistoryEnd("h1", 1, False, 1, 5)) is None


def test_history_lines_are_made_safe_for_the_terminal() -> None:
    """A stored body is as untrusted as a live one: escapes are shown, not obeyed."""
    old = protocol.HistoryMessage("h1", "bob\x1b[2J", "x\x1b]0;pwned\x07", 1, TS)
    text = event_text(old) or ""
    assert "\x1b" not in text and "\x07" not in text


def test_caught_up_is_a_status_line() -> None:
    """The end of a replay says how many missed messages were shown."""
    line = status_text(protocol.CaughtUp(9, 3))
    assert line == f"caught up: 3 missed messages shown as {EARLIER}"
    assert "1 missed message " in (status_text(protocol.CaughtUp(9, 1)) or "")


def test_json_shows_replayed_caught_up_history_and_duplicate_acks() -> None:
    """--json: replayed messages say so, and the new events have their own objects."""
    assert event_json(protocol.Message("bob", "hi", 4, TS, replayed=True)) == {
        "type": "msg", "from": "bob", "body": "hi", "seq": 4, "ts": TS, "replayed": True}
    assert "replayed" not in event_json(protocol.Message("bob", "hi", 4, TS))
    assert event_json(protocol.CaughtUp(9, 3, missing_after=2, missing_before=6)) == {
        "type": "caught_up", "seq": 9, "replayed": 3, "missing_after": 2,
        "missing_before": 6, "reset": False}
    assert event_json(protocol.HistoryMessage("h1", "bob", "old", 1, TS)) == {
        "type": "history_msg", "id": "h1", "from": "bob", "body": "old", "seq": 1, "ts": TS}
    assert event_json(protocol.HistoryEnd("h1", 1, True, 1, 9)) == {
        "type": "history_end", "id": "h1", "count": 1, "more": True, "oldest": 1, "latest": 9}
    assert event_json(protocol.Ack("m1", 3, duplicate=True)) == {
        "type": "ack", "id": "m1", "seq": 3, "duplicate": True}
    assert event_json(protocol.Ack("m1", 3)) == {"type": "ack", "id": "m1", "seq": 3}
    for event in (protocol.CaughtUp(1, 0, reset=True), protocol.HistoryEnd("h", 0, False, None, 0)):
        json.dumps(event_json(event))  # serialisable as it is
