"""Pure parts of the client: gap detection, event formatting, option parsing."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from securechat import protocol
from securechat.cli import client as client_cli
from securechat.cli import display
from securechat.client import (
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
from securechat.errors import ClientClosed, GaveUp, TLSVerificationFailed


# --------------------------------------------------------------------------- SeqTracker
# --------------------------------------------------------------------------- formatting
@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_message_line_format(utc: None) -> None:
    """A message prints as HH:MM:SS sender: body in local time."""
    msg = protocol.Message("alice", "hi", 7, "2026-11-26T12:01:03.456Z")
    assert client_cli.event_text(msg) == "12:01:03 alice: hi"


def test_untrusted_text_cannot_drive_the_terminal() -> None:
    """Escape sequences, newlines and bidi overrides in a body are shown, not obeyed."""
    msg = protocol.Message("mallory", "a\x1b[2Jb\nc\u202ed\r", 1, "2026-11-26T12:01:03.456Z")
    line = client_cli.event_text(msg)
    assert line is not None
    assert "\x1b" not in line and "\n" not in line and "\u202e" not in line
    assert "\r" not in line
    assert line.endswith(r"mallory: a\x1b[2Jb\nc\u202ed\r")
    assert display.clean("naïve café 日本") == "naïve café 日本"


EVERY_EVENT: list[Event] = [
    protocol.Message("alice", "hi", 1, "2026-11-26T12:01:03.456Z"),
    protocol.Ack("ab-1", 2),
    protocol.Join("bob"),
    protocol.Leave("bob", "disconnected"),
    protocol.ErrorFrame("rate_limited", "slow down", "ab-2", 0.5),
    protocol.ErrorFrame("bad_frame", "no"),
    Connecting("127.0.0.1:7443", 0),
    Connected(protocol.Welcome("alice", "lobby", ("alice", "bob"), 20.0, 0),
              "127.0.0.1:7443", False),
    Disconnected("connection reset"),
    Reconnecting(1.25, 2, "connection refused", None),
    Gap(3, 6, 2),
    SendFailed("ab-3", "too long", ClientClosed("closed")),
    EventsDropped(4),
    Closed("closed"),
    Closed("x", GaveUp("gave up after 3 retries: connection refused")),
    Closed("x", TLSVerificationFailed("unknown CA")),
]


@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda e: type(e).__name__)
def test_every_event_has_a_json_line(event: Event) -> None:
    """Every event type has a JSON form that round-trips."""
    obj = client_cli.event_json(event)
    assert isinstance(obj["type"], str)
    assert json.loads(json.dumps(obj)) == obj


def test_state_lines() -> None:
    """Connection state changes print as short human lines; acks print nothing."""
    welcome = protocol.Welcome("alice", "lobby", ("alice", "bob"), 20.0, 0)
    assert display.status_text(Connected(welcome, "h:1", True)) == \
        "reconnected to h:1 as alice; here: bob"
    assert display.status_text(Reconnecting(1.25, 2, "connection refused")) == \
        "reconnecting in 1.2 s (attempt 2): connection refused"
    assert display.status_text(Reconnecting(0.031, 1, "x")) == \
        "reconnecting in 0.03 s (attempt 1): x"
    assert display.status_text(Closed("closed")) is None
    gave_up = display.status_text(Closed("x", GaveUp("gave up after 3 retries: refused")))
    assert gave_up == "gave up after 3 retries: refused"
    assert client_cli.event_text(protocol.ErrorFrame("rate_limited", "x", "a", 1.0)) is None
    assert client_cli.event_text(protocol.Leave("bob", "bye")) is not None


# --------------------------------------------------------------------------- options
def parse(argv: list[str], env: dict[str, str] | None = None, *, tty: bool = False
          ) -> client_cli.Options:
    args: argparse.Namespace = client_cli.build_parser().parse_args(argv)
    return client_cli.options_from_args(args, env or {}, stdin_tty=tty)


def test_defaults_and_environment(tmp_path: Path) -> None:
    """Defaults, then environment variables, then flags, in that order of precedence."""
    opts = parse(["--token", "t"])
    assert (opts.host, opts.port, opts.ca, opts.server_name) == ("127.0.0.1", 7443, None, None)
    assert opts.backoff.base == 0.5 and opts.backoff.cap == 30.0
    assert opts.backoff.max_retries is None
    token = tmp_path / "tok"
    token.write_text("  sct1.x.y\n")
    env = {"SECURECHAT_HOST": "chat.lan", "SECURECHAT_PORT": "9000",
           "SECURECHAT_CA": "/ca.pem", "SECURECHAT_SERVER_NAME": "chat",
           "SECURECHAT_TOKEN_FILE": str(token)}
    opts = parse([], env)
    assert (opts.host, opts.port, str(opts.ca), opts.server_name, opts.token) == \
        ("chat.lan", 9000, "/ca.pem", "chat", "sct1.x.y")
    opts = parse(["--host", "h", "--port", "1", "--token", "cli"],
                 {**env, "SECURECHAT_TOKEN": "env"})
    assert (opts.host, opts.port, opts.token) == ("h", 1, "cli")
    assert parse([], {"SECURECHAT_TOKEN": "env"}).token == "env"


def test_mode_selection() -> None:
    """The mode follows the flags and whether stdin is a terminal."""
    assert parse(["--token", "t"], tty=True).mode == "interactive"
    assert parse(["--token", "t"], tty=False).mode == "lines"
    assert parse(["--token", "t", "--json"], tty=True).mode == "lines"
    assert parse(["--token", "t", "--send", "x"], tty=True).mode == "send"
    assert parse(["--token", "t", "--listen"], tty=True).mode == "listen"
    bot = parse(["--token", "t", "--say", "hi", "--every", "2", "--count", "0",
                 "--wait-for", "bob"])
    assert (bot.mode, bot.every, bot.count, bot.wait_for) == ("say", 2.0, 0, "bob")
