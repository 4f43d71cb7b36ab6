"""The interactive client driven through a pseudo-terminal (pexpect): an incoming
message is printed above the prompt and the half-typed line survives intact."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from securechat import protocol
from tests.cli.terminal import Terminals
from tests.client_support import ClientPool, cli_args, next_of
from tests.support import Certs, MakeServer, RunningServer, seconds, wait_for

pytest_plugins = ["tests.client_support"]


@pytest.fixture
def spawn(certs: Certs, tmp_path: Path) -> Iterator[Callable[[RunningServer], pexpect.spawn]]:
    """Factory: ``securechat-client`` as alice on a 100x24 pseudo-terminal."""
    ptys = Terminals()

    def start(running: RunningServer) -> pexpect.spawn:
        token = tmp_path / "alice.token"
        token.write_text(running.add_user("alice"))
        return ptys.spawn(*cli_args(running.port, certs.ca_path, "--token-file",
                                    str(token)))

    try:
        yield start
    finally:
        ptys.close()


@pytest.fixture
def terminal(server: RunningServer, spawn: Callable[[RunningServer], pexpect.spawn]
             ) -> pexpect.spawn:
    return spawn(server)


def test_incoming_message_does_not_corrupt_the_typed_line(
        terminal: pexpect.spawn, server: RunningServer, clients: ClientPool) -> None:
    """A message arriving mid-typing prints above the prompt and the typed text survives."""
    terminal.expect("connected to 127.0.0.1")
    terminal.expect("alice>")
    terminal.send("hello wor")
    terminal.expect("hello wor")
    bob = clients.make(server.port, server.add_user("bob"))
    bob.connect(seconds(5))
    terminal.expect(r"\* bob joined")
    bob.send("incoming!").wait(seconds(5))
    # HH:MM:SS bob: incoming! on its own line, then the prompt redrawn with the typed text.
    terminal.expect(r"\d\d:\d\d:\d\d bob: incoming!\r\n")
    terminal.expect(r"alice>[^\n]*hello wor")
    terminal.send("ld\r")
    received = next_of(bob, protocol.Message)
    assert (received.sender, received.body) == ("alice", "hello world")


def test_commands_and_quit(terminal: pexpect.spawn, server: RunningServer,
                           clients: ClientPool) -> None:
    """/help lists the commands, /who the members of the current room (the server's
    default one: #lobby, also in the prompt), /quit says bye and exits 0."""
    bob = clients.make(server.port, server.add_user("bob"))
    bob.connect(seconds(5))
    terminal.expect("connected to 127.0.0.1")
    terminal.expect(r"\[#lobby\] alice>")
    terminal.send("/help\r")
    terminal.expect("/quit")
    terminal.send("/who\r")
    terminal.expect("in #lobby: alice, bob")
    terminal.send("//not a command\r")
    assert next_of(bob, protocol.Message).body == "/not a command"
    terminal.send("/quit\r")
    terminal.expect(pexpect.EOF)
    terminal.close()
    assert terminal.exitstatus == 0
    leave = next_of(bob, protocol.Leave)
    assert (leave.user, leave.reason) == ("alice", "bye")


def test_shows_reconnecting_and_offline_state(
        make_server: MakeServer,
        spawn: Callable[[RunningServer], pexpect.spawn]) -> None:
    """A server restart is shown: disconnected, reconnecting in N s, an offline prompt,
    a line typed meanwhile is queued, then reconnected."""
    first = make_server(retry_spread=0.3)
    port = first.port
    terminal = spawn(first)
    terminal.expect("connected to 127.0.0.1")
    terminal.expect("alice>")
    first.server.shutdown()
    terminal.expect("disconnected: the server is shutting down")
    terminal.expect(r"reconnecting in \d+\.\d+ s \(attempt 1\)")
    terminal.expect(r"alice \(offline\)>")
    terminal.send("typed while offline\r")
    terminal.expect("queued, it will be sent once reconnected")
    second = make_server(port=port, retry_spread=0.3)
    terminal.expect("reconnected to 127.0.0.1")
    wait_for(lambda: len(second.server.room.history()) == 1, what="the queued line")
    assert b'"body":"typed while offline"' in second.server.room.history()[0].frame


def test_fatal_error_ends_the_session(terminal: pexpect.spawn, server: RunningServer) -> None:
    """A revoked token is fatal: the reason is shown and the client exits 3."""
    terminal.expect("connected to 127.0.0.1")
    terminal.expect("alice>")
    server.revoke("alice")
    terminal.expect("revoked")
    terminal.expect(pexpect.EOF)
    terminal.close()
    assert terminal.exitstatus == 3
