"""The client's resume and idempotency settings over real TLS against today's server,
which ignores ``client`` and ``resume`` in auth: they must break nothing. What a
server that replays does is in ``resume_e2e_pending.py`` (enabled with that server)."""

from __future__ import annotations

import re

import pytest

from securechat import protocol
from securechat.client import Client
from securechat.errors import ConfigError
from tests.client_support import ClientPool, next_of
from tests.support import RunningServer, seconds

pytest_plugins = ["tests.client_support"]


def test_client_id_and_resume_in_auth_break_nothing(server: RunningServer,
                                                    clients: ClientPool) -> None:
    """A given client id and a saved position from another log: login, send, ack and
    delivery work as without them."""
    alice = clients.make(server.port, server.add_user("alice"), client_id="laptop-1",
                         resume=("some-other-log", 3))
    bob = clients.make(server.port, server.add_user("bob"))
    alice.connect(seconds(5))
    bob.connect(seconds(5))
    assert alice.client_id == "laptop-1"
    seq = alice.send("still works").wait(seconds(5))
    received = next_of(bob, protocol.Message)
    assert (received.body, received.seq, received.replayed) == ("still works", seq, False)


def test_position_is_the_epoch_and_the_last_seq_seen(server: RunningServer,
                                                     clients: ClientPool) -> None:
    """position: None before the first welcome, then (welcome.epoch, last seq)."""
    alice = clients.make(server.port, server.add_user("alice"))
    bob = clients.make(server.port, server.add_user("bob"), start=False)
    assert bob.position is None
    welcome = bob.connect(seconds(5))
    assert bob.position == (welcome.epoch, welcome.seq)
    alice.connect(seconds(5))
    alice.send("one").wait(seconds(5))
    last = alice.send("two").wait(seconds(5))
    assert next_of(bob, protocol.Message).body == "one"
    assert next_of(bob, protocol.Message).body == "two"
    assert bob.position == (welcome.epoch, last)


def test_each_client_instance_gets_its_own_random_id(clients: ClientPool) -> None:
    """Without client_id: 32 hex characters, different for every instance."""
    one = clients.make(1, "sct1.000000000000.x", start=False)
    two = clients.make(1, "sct1.000000000000.x", start=False)
    assert re.fullmatch(r"[0-9a-f]{32}", one.client_id)
    assert one.client_id != two.client_id


@pytest.mark.parametrize("kwargs", [
    {"client_id": "has space"}, {"client_id": "é"}, {"client_id": "x" * 65},
    {"resume": ("", 0)}, {"resume": ("e1", -5)},
])
def test_bad_client_id_or_resume_fails_at_construction(kwargs: dict[str, object]) -> None:
    """Refused before any connection, as a malformed token is."""
    with pytest.raises(ConfigError):
        Client("127.0.0.1", 1, token="sct1.000000000000.x", **kwargs)  # type: ignore[arg-type]


def test_history_arguments_are_checked_in_the_caller(clients: ClientPool) -> None:
    """Client.history: ValueError for a bad range or limit; a request id otherwise."""
    client = clients.make(1, "sct1.000000000000.x", start=False)
    with pytest.raises(ValueError):
        client.history(5, after=1)
    with pytest.raises(ValueError):
        client.history(limit=protocol.MAX_HISTORY_LIMIT + 1)
    first, second = client.history(), client.history(10, limit=5)
    assert isinstance(first, str) and first != second
