"""``securechat-client`` in several rooms, as a subprocess (and on a pseudo-terminal)
against a real server over real TLS: --room, --all-rooms, refusals, --json's room
field, and the interactive /join /switch /leave /rooms and Tab.

The default room is ``lobby``; tokens made with ``server.add_user`` may enter it only,
and :func:`granted` makes tokens with room grants.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pexpect
import pytest

from securechat import protocol
from securechat.cli import client as client_cli
from securechat.client import Client
from securechat.grants import Grants, Mode
from securechat.server.tokens import add_token
from tests.cli.terminal import Terminals
from tests.client_support import (
    ClientPool,
    CliProcess,
    cli_args,
    collect,
    next_of,
    run_cli,
    token_file,
)
from tests.support import Certs, RunningServer, seconds, wait_for

pytest_plugins = ["tests.client_support"]

#: Read and send in both rooms.
BOTH: dict[str, Mode] = {"general": "rw", "ops": "rw"}


def granted(running: RunningServer, name: str, grants: Mapping[str, Mode]) -> str:
    """A token for ``name`` with room grants (``{"general": "rw", "ops": "ro"}``),
    once the server has loaded it."""
    token, record = add_token(running.tokens_path, name, Grants(grants))
    wait_for(lambda: record.id in running.server.tokens, what=f"{name}'s token")
    return token


def granted_file(directory: Path, running: RunningServer, name: str,
                 grants: Mapping[str, Mode]) -> Path:
    path = directory / f"{name}.token"
    path.write_text(granted(running, name, grants) + "\n")
    path.chmod(0o600)
    return path


def base(running: RunningServer, certs: Certs, token: Path, *extra: str) -> list[str]:
    return cli_args(running.port, certs.ca_path, "--token-file", str(token), *extra)


def events_of(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def in_room(client: Client, room: str) -> None:
    assert client.wait_joined(room, seconds(5)), f"not in #{room}"


# --------------------------------------------------------------------------- default tokens
def test_send_into_the_default_room_by_name(server: RunningServer, certs: Certs,
                                            clients: ClientPool, tmp_path: Path) -> None:
    """--room lobby (as '#Lobby') logs in the v3 way into the default room; the ack
    and the delivered message name it."""
    bob = clients.make(server.port, server.add_user("bob"))
    bob.connect(seconds(5))
    alice = token_file(tmp_path, server, "alice")
    done = run_cli(*base(server, certs, alice, "--room", "#Lobby", "--json", "--send", "hi"))
    assert done.returncode == 0, done.stderr
    (ack,) = events_of(done.stdout)
    assert (ack["type"], ack["room"]) == ("ack", "lobby")
    got = next_of(bob, protocol.Message)
    assert (got.sender, got.body, got.room, got.seq) == ("alice", "hi", "lobby", ack["seq"])


def test_send_into_a_forbidden_room_exits_6(server: RunningServer, certs: Certs,
                                            clients: ClientPool, tmp_path: Path) -> None:
    """A token without a grant for #ops: one error line naming the room, exit 6, not
    retried, nothing delivered anywhere."""
    bob = clients.make(server.port, server.add_user("bob"))
    bob.connect(seconds(5))
    alice = token_file(tmp_path, server, "alice")
    done = run_cli(*base(server, certs, alice, "--room", "ops", "--send", "secret"))
    assert done.returncode == client_cli.EXIT_REFUSED == 6, done.stderr
    assert error_lines(done.stderr) == [
        "securechat-client: error: cannot join #ops: forbidden "
        "(this token has no grant for it)"]
    assert "Traceback" not in done.stderr and "reconnecting" not in done.stderr
    assert not [e for e in collect(bob, 0.3) if isinstance(e, protocol.Message)]


def test_json_listen_gives_every_room_event_its_room(
        server: RunningServer, certs: Certs, clients: ClientPool, tmp_path: Path,
        procs: list[CliProcess]) -> None:
    """--json --room lobby: joined, presence and messages all carry "room"."""
    alice = token_file(tmp_path, server, "alice")
    listener = CliProcess(*base(server, certs, alice, "--room", "lobby", "--json", "--listen"))
    procs.append(listener)
    joined = json.loads(listener.read_until(lambda line: '"joined"' in line))
    assert (joined["room"], joined["members"]) == ("lobby", ["alice"])
    bob = clients.make(server.port, server.add_user("bob"))
    bob.connect(seconds(5))
    bob.wait_for_member("alice", seconds(5))
    bob.send("hello alice").wait(seconds(5))
    msg = json.loads(listener.read_until(lambda line: "hello alice" in line))
    assert (msg["type"], msg["from"], msg["room"]) == ("msg", "bob", "lobby")
    listener.proc.send_signal(signal.SIGTERM)
    code, rest, _ = listener.finish()
    assert code == 128 + signal.SIGTERM
    presence = [json.loads(line) for line in listener.lines] + events_of(rest)
    assert {"type": "join", "user": "bob", "room": "lobby"} in presence


# --------------------------------------------------------------------------- granted tokens
def test_send_into_two_rooms_exactly_once(server: RunningServer, certs: Certs,
                                          clients: ClientPool, tmp_path: Path) -> None:
    """--send --room ops goes to #ops; with two --room it goes to the first; each
    message arrives once, in its room, and nowhere else."""
    bob = clients.make(server.port, granted(server, "bob", BOTH), rooms=["general", "ops"])
    in_room(bob, "general")
    in_room(bob, "ops")
    alice = granted_file(tmp_path, server, "alice", BOTH)
    one = run_cli(*base(server, certs, alice, "--room", "ops", "--send", "to ops"))
    assert one.returncode == 0, one.stderr
    two = run_cli(*base(server, certs, alice, "--room", "general", "--room", "ops",
                        "--json", "--send", "to general"))
    assert two.returncode == 0, two.stderr
    (ack,) = events_of(two.stdout)
    assert ack["room"] == "general"
    got = [e for e in collect(bob, 1.0) if isinstance(e, protocol.Message)]
    assert sorted((m.room, m.body) for m in got) == [("general", "to general"),
                                                     ("ops", "to ops")]


def test_read_only_send_exits_6(server: RunningServer, certs: Certs, tmp_path: Path) -> None:
    """A read-only grant joins but may not send: exit 6, one line saying so."""
    watcher = granted_file(tmp_path, server, "watcher", {"general": "ro"})
    done = run_cli(*base(server, certs, watcher, "--room", "general", "--send", "x"))
    assert done.returncode == client_cli.EXIT_REFUSED, done.stderr
    assert error_lines(done.stderr) == [
        "securechat-client: error: not sent to #general: forbidden "
        "(this token may only read it)"]


def test_all_rooms_joins_every_granted_room(server: RunningServer, certs: Certs,
                                            clients: ClientPool, tmp_path: Path,
                                            procs: list[CliProcess]) -> None:
    """--all-rooms --json --listen joins the rooms its grants name (not patterns),
    shows earlier messages (--history) and live ones, each with its room."""
    alice = clients.make(server.port, granted(server, "alice", BOTH), rooms=["general", "ops"])
    in_room(alice, "ops")
    alice.send("before", room="ops").wait(seconds(5))
    watcher = granted_file(tmp_path, server, "watcher",
                           {"general": "ro", "ops": "ro", "team-*": "ro"})
    proc = CliProcess(*base(server, certs, watcher, "--all-rooms", "--json", "--listen",
                            "--history", "5"))
    procs.append(proc)
    first = json.loads(proc.read_until(lambda line: '"joined"' in line))
    second = json.loads(proc.read_until(lambda line: '"joined"' in line))
    assert {first["room"], second["room"]} == {"general", "ops"}
    earlier = json.loads(proc.read_until(lambda line: '"history_msg"' in line))
    assert (earlier["room"], earlier["body"]) == ("ops", "before")
    alice.wait_for_member("watcher", seconds(5))
    alice.send("live", room="general").wait(seconds(5))
    live = json.loads(proc.read_until(lambda line: '"live"' in line))
    assert (live["type"], live["room"], live["from"]) == ("msg", "general", "alice")
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.finish()[0] == 128 + signal.SIGTERM


def test_bot_talks_in_its_room_once_its_peer_is_there(
        server: RunningServer, certs: Certs, clients: ClientPool, tmp_path: Path,
        procs: list[CliProcess]) -> None:
    """--say --room ops --wait-for alice waits for alice in #ops (not in #general)."""
    alice = clients.make(server.port, granted(server, "alice", BOTH), rooms=["general"])
    in_room(alice, "general")
    bot = granted_file(tmp_path, server, "bot", BOTH)
    proc = CliProcess(*base(server, certs, bot, "--room", "ops", "--room", "general",
                            "--json", "--say", "beep", "--count", "1", "--every", "0",
                            "--wait-for", "alice"))
    procs.append(proc)
    proc.read_until(lambda line: '"joined"' in line and '"ops"' in line)
    assert not [e for e in collect(alice, 0.3) if isinstance(e, protocol.Message)]
    alice.join("ops")
    got = next_of(alice, protocol.Message)
    assert (got.room, got.sender, got.body) == ("ops", "bot", "beep #1")
    assert proc.finish()[0] == 0


# --------------------------------------------------------------------------- interactive
@pytest.fixture
def terminal_as(certs: Certs) -> Iterator[Callable[..., pexpect.spawn]]:
    """Factory: ``securechat-client --token-file TOKEN ARGS`` on a 100x24 pty."""
    ptys = Terminals()

    def start(running: RunningServer, token: Path, *extra: str) -> pexpect.spawn:
        return ptys.spawn(*base(running, certs, token, *extra))

    try:
        yield start
    finally:
        ptys.close()


def test_interactive_refused_join_and_bad_names(
        server: RunningServer, tmp_path: Path,
        terminal_as: Callable[..., pexpect.spawn]) -> None:
    """A default-room token: /join #ops is refused in one line and the prompt stays in
    #lobby; /switch to a room not joined and a bad name say what is wrong."""
    alice = token_file(tmp_path, server, "alice")
    term = terminal_as(server, alice)
    term.expect(r"\[#lobby\] alice>")
    term.send("/join #Ops\r")
    term.expect(r"! cannot join #ops: forbidden \(this token has no grant for it\)")
    term.send("/switch ops\r")
    term.expect(r"not in #ops; /join #ops first")
    term.send("/join b@d\r")
    term.expect("bad room name 'b@d'")
    term.send("/rooms\r")
    term.expect(r"rooms: #lobby \(current\); grants: ")
    term.send("/quit\r")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 0


def test_interactive_join_switch_leave(server: RunningServer, clients: ClientPool,
                                       tmp_path: Path,
                                       terminal_as: Callable[..., pexpect.spawn]) -> None:
    """/join makes the room current (prompt and sends), other rooms' lines are
    prefixed, /switch and Tab change the current room, /leave goes back."""
    bob = clients.make(server.port, granted(server, "bob", BOTH), rooms=["general", "ops"])
    in_room(bob, "ops")
    alice = granted_file(tmp_path, server, "alice", BOTH)
    term = terminal_as(server, alice, "--room", "general")
    term.expect(r"\[#general\] alice>")
    term.send("/join #ops\r")
    term.expect("joined #ops")
    term.expect(r"\[#ops\] alice>")
    term.send("typed in ops\r")
    got = next_of(bob, protocol.Message)
    assert (got.room, got.body) == ("ops", "typed in ops")
    bob.send("hi general", room="general").wait(seconds(5))
    term.expect(r"\d\d:\d\d:\d\d #general bob: hi general")
    term.send("/rooms\r")
    term.expect(r"rooms: #general, #ops \(current\); grants: general \(rw\), ops \(rw\)")
    term.send("/switch #general\r")
    term.expect(r"\[#general\] alice>")
    term.send("\t")
    term.expect(r"\[#ops\] alice>")
    term.send("/who\r")
    term.expect("in #ops: alice, bob")
    term.send("/leave\r")
    term.expect("left #ops")
    term.expect(r"\[#general\] alice>")
    leave = next_of(bob, protocol.Leave)
    assert (leave.user, leave.room) == ("alice", "ops")
    term.send("back in general\r")
    got = next_of(bob, protocol.Message)
    assert (got.room, got.body) == ("general", "back in general")
    term.send("/quit\r")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 0
