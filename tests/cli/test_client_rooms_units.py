"""``securechat-client``'s room handling that needs no server: room names, options,
refusal lines, the #room prefix, JSON room fields and the interactive helpers."""

from __future__ import annotations

import pytest

from securechat import protocol
from securechat.cli import client as client_cli
from securechat.cli.display import event_json, event_text, status_text
from securechat.cli.interactive import INTERACTIVE_HELP, next_room, split_command
from securechat.cli.options import (
    EXIT_REFUSED,
    RoomRefused,
    UsageError,
    build_parser,
    exit_code,
    literal_rooms,
    normalize_room,
    options_from_args,
    room_refusal_text,
)
from securechat.client import Connected, SendFailed
from securechat.errors import RemoteProtocolError

TS = "2026-12-02T10:00:00Z"


def opts(*argv: str, tty: bool = False) -> client_cli.Options:
    return options_from_args(build_parser().parse_args(["--token", "t", *argv]), env={},
                             stdin_tty=tty)


@pytest.mark.parametrize(("typed", "name"), [
    ("general", "general"), ("#Ops", "ops"), (" #team-A.eu ", "team-a.eu"), ("a_1", "a_1"),
    ("x" * 64, "x" * 64),
])
def test_room_names_are_folded(typed: str, name: str) -> None:
    """A leading '#' is dropped and the name folded to lower case."""
    assert normalize_room(typed) == name


@pytest.mark.parametrize("typed", ["", "#", "-ops", "o ps", "ops!", "x" * 65, "caf\u00e9"])
def test_bad_room_names_are_usage_errors(typed: str) -> None:
    """A name that can never be a room is refused with the rule."""
    with pytest.raises(UsageError, match=r"bad room name .*lower-case letters"):
        normalize_room(typed)


def test_room_options() -> None:
    """--room is repeatable; the first is where sending modes send; no --room is the
    old login (None), --all-rooms alone logs in to no room."""
    two = opts("--room", "#General", "--room", "ops", "--send", "x")
    assert two.rooms == ("general", "ops")
    assert two.login_rooms == ["general", "ops"] and two.send_room == "general"
    old = opts("--send", "x")
    assert old.login_rooms is None and old.send_room is None
    listener = opts("--all-rooms", "--listen")
    assert listener.all_rooms and listener.login_rooms == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--room", "ops", "--room", "#OPS", "--send", "x"], "--room ops given twice"),
    (["--room", "b@d", "--send", "x"], "bad room name 'b@d'"),
    (["--all-rooms", "--send", "x"], "--all-rooms without --room"),
    (["--all-rooms", "--say", "x"], "--all-rooms without --room"),
])
def test_room_usage_errors(argv: list[str], message: str) -> None:
    """Room option mistakes are usage errors saying what is wrong."""
    with pytest.raises(UsageError, match=message):
        opts(*argv)


def test_bad_room_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Through main(): a bad --room is exit 2 with one error line, before connecting."""
    assert client_cli.main(["--token", "t", "--room", "Not a room", "--send", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("securechat-client: error: bad room name 'Not a room'")


def test_literal_rooms_skip_wildcards() -> None:
    """--all-rooms joins the rooms the grants name, never a pattern."""
    grants = (("general", "rw"), ("ops", "ro"), ("team-*", "rw"), ("a?", "ro"))
    assert literal_rooms(grants) == ["general", "ops"]


def test_refusal_lines_name_the_room() -> None:
    """One readable line per refusal, naming the room and the code."""
    assert room_refusal_text("ops", "forbidden") == (
        "cannot join #ops: forbidden (this token has no grant for it)")
    assert room_refusal_text("ops", "forbidden", sending=True) == (
        "not sent to #ops: forbidden (this token may only read it)")
    assert room_refusal_text("ops", "not_joined", sending=True).startswith(
        "not sent to #ops: not_joined")
    assert room_refusal_text("ops", "not_joined").startswith("cannot leave #ops")
    assert room_refusal_text("big", "room_full").startswith("cannot join #big: room_full (")
    assert room_refusal_text("x", "too_many_rooms").startswith("cannot join #x: too_many_rooms")
    refused = RoomRefused("ops", "forbidden", "no grant")
    assert exit_code(refused) == EXIT_REFUSED == 6
    assert str(refused) == "cannot join #ops: forbidden (this token has no grant for it)"


def test_room_errors_are_one_line() -> None:
    """A room error frame shows as one '!' line naming the room."""
    join = protocol.ErrorFrame("forbidden", "no grant for room ops", room="ops")
    line = event_text(join)
    assert line is not None and line.endswith(" ! cannot join #ops: forbidden "
                                              "(this token has no grant for it)")
    # A refused message: the error frame is quiet, its SendFailed says it once.
    assert event_text(protocol.ErrorFrame("forbidden", "ro", id="a-1", room="general")) is None
    failed = SendFailed("a-1", "hi", RemoteProtocolError("forbidden", "ro"), room="general")
    line = event_text(failed)
    assert line is not None and line.endswith(
        " ! not sent to #general: forbidden (this token may only read it): 'hi'")
    assert event_json(failed)["code"] == "forbidden"
    assert event_json(failed)["room"] == "general"


def test_lines_of_other_rooms_are_prefixed() -> None:
    """The current room's lines are as before; another room's carry its #room;
    current None (one room only) never prefixes, "" always does."""
    msg = protocol.Message("bob", "hi", 3, TS, room="ops")
    here = event_text(msg, "ops")
    there = event_text(msg, "general")
    assert here is not None and here.endswith(" bob: hi") and "#ops" not in here
    assert there is not None and there.endswith(" #ops bob: hi")
    assert "#ops" not in (event_text(msg) or "")
    assert (event_text(msg, "") or "").endswith(" #ops bob: hi")
    join = event_text(protocol.Join("carol", room="ops"), "general")
    assert join is not None and join.endswith(" #ops * carol joined")
    old = event_text(protocol.HistoryMessage("h1", "bob", "old", 1, TS, room="ops"), "x")
    assert old is not None and old.endswith(" #ops [earlier] bob: old")


def test_json_events_carry_their_room() -> None:
    """Every room event has "room"; joined, left and grants are events of their own."""
    assert event_json(protocol.Message("bob", "hi", 3, TS, room="ops"))["room"] == "ops"
    assert event_json(protocol.Ack("a-1", 4, room="ops")) == {
        "type": "ack", "id": "a-1", "seq": 4, "room": "ops"}
    assert event_json(protocol.Join("bob", room="ops"))["room"] == "ops"
    assert event_json(protocol.Leave("bob", "bye", room="ops"))["room"] == "ops"
    assert event_json(protocol.CaughtUp(5, 1, room="ops"))["room"] == "ops"
    assert event_json(protocol.HistoryEnd("h", 0, False, None, 0, room="ops"))["room"] == "ops"
    assert event_json(protocol.Joined("ops", ("alice", "bob"), 41, "9c41")) == {
        "type": "joined", "room": "ops", "members": ["alice", "bob"], "seq": 41,
        "epoch": "9c41"}
    assert event_json(protocol.Left("ops", "forbidden")) == {
        "type": "left", "room": "ops", "reason": "forbidden"}
    assert event_json(protocol.Grants((("general", "rw"), ("ops", "ro")))) == {
        "type": "grants", "grants": [["general", "rw"], ["ops", "ro"]]}
    error = event_json(protocol.ErrorFrame("room_full", "full", room="big"))
    assert (error["code"], error["room"]) == ("room_full", "big")
    assert event_json(protocol.ErrorFrame("bad_frame", "x"))["room"] is None


def test_connected_shows_rooms_and_grants() -> None:
    """A v3 welcome names no room: the connected event lists rooms and grants, and
    the status line claims no presence it does not know."""
    welcome = protocol.Welcome("alice", "", (), 30.0, 0, rooms=("general",),
                               grants=(("general", "rw"),))
    event = Connected(welcome, "127.0.0.1:7443", False)
    obj = event_json(event)
    assert obj["room"] is None and obj["rooms"] == ["general"]
    assert obj["grants"] == [["general", "rw"]]
    assert status_text(event) == "connected to 127.0.0.1:7443 as alice"
    old = protocol.Welcome("alice", "lobby", ("alice", "bob"), 30.0, 0)
    assert event_json(Connected(old, "a:1", False))["room"] == "lobby"
    assert status_text(Connected(old, "a:1", False)) == "connected to a:1 as alice; here: bob"


def test_room_status_lines() -> None:
    """joined, left (asked or grant removed) and grants changes, as state lines."""
    assert status_text(protocol.Joined("ops", ("alice", "bob"), 1, "e")) == (
        "joined #ops; members: alice, bob")
    assert status_text(protocol.Left("ops", "left")) == "left #ops"
    assert status_text(protocol.Left("ops", "forbidden")) == (
        "left #ops: the token's grant for it was removed")
    assert status_text(protocol.Grants((("general", "ro"),))) == (
        "grants changed: general (ro)")


def test_tab_cycles_the_joined_rooms() -> None:
    """Tab goes to the next joined room, round; from nowhere to the first."""
    assert next_room(["general", "ops", "dev"], "general") == "ops"
    assert next_room(["general", "ops", "dev"], "dev") == "general"
    assert next_room(["general"], None) == "general"
    assert next_room(["general", "ops"], "gone") == "general"
    assert next_room([], "general") is None


def test_commands_are_split() -> None:
    """'/Join #ops' is the command /join with '#ops'; '//x' and text are sent."""
    assert split_command("/Join #ops") == ("/join", "#ops")
    assert split_command("/leave") == ("/leave", "")
    assert split_command("//not a command") is None
    assert split_command("hello") is None


def test_help_documents_rooms(capsys: pytest.CaptureFixture[str]) -> None:
    """--help and /help document the room options, commands and exit code 6."""
    with pytest.raises(SystemExit):
        client_cli.main(["--help"])
    text = capsys.readouterr().out
    for needle in ("--room NAME", "--all-rooms", "/join #ROOM", "/leave [#ROOM]",
                   "/switch #ROOM", "/rooms", "Tab", "6  the server refused",
                   "--read-only", '"room"', "[#general] alice>"):
        assert needle in text, needle
    for command in ("/join", "/leave", "/switch", "/rooms", "/who", "/history", "/quit"):
        assert command in INTERACTIVE_HELP
