"""The client API against a real server over real TLS on 127.0.0.1."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from securechat import protocol
from securechat.client import (
    Client,
    Closed,
    Connected,
    Disconnected,
    Event,
    Reconnecting,
)
from securechat.client.backoff import BackoffPolicy
from securechat.errors import (
    AuthRefused,
    ClientClosed,
    GaveUp,
    LocalProtocolError,
    QueueFull,
    TLSVerificationFailed,
)
from tests.client_support import (
    ClientPool,
    Relay,
    closed_port,
    collect,
    next_of,
    relayed_pair,
)
from tests.support import (
    Certs,
    MakeServer,
    RunningServer,
    make_certs,
    seconds,
    wait_for,
    wrong_token,
)

pytest_plugins = ["tests.client_support"]



class Longest(random.Random):
    """Jitter that always picks the longest wait (to order reconnects in a test)."""

    def uniform(self, a: float, b: float) -> float:
        return b


def messages(client: Client, count: int, timeout: float = 5.0) -> list[protocol.Message]:
    return [next_of(client, protocol.Message, timeout) for _ in range(count)]


def test_send_ack_receive_and_close_with_bye(server: RunningServer, clients: ClientPool
                                             ) -> None:
    """A message gets its seq from the ack, the other member receives it, close says bye."""
    alice = clients.make(server.port, server.add_user("alice"))
    bob = clients.make(server.port, server.add_user("bob"))
    assert alice.connect(seconds(5)).user == "alice"
    welcome = bob.connect(seconds(5))
    assert welcome.user == "bob" and "alice" in welcome.members
    next_of(alice, protocol.Join, where=lambda e: e.user == "bob")
    handle = alice.send("hello bob")
    seq = handle.wait(seconds(5))
    assert seq == welcome.seq + 1 and handle.done()
    received = next_of(bob, protocol.Message)
    assert (received.sender, received.body, received.seq) == ("alice", "hello bob", seq)
    alice.close()
    leave = next_of(bob, protocol.Leave)
    assert (leave.user, leave.reason) == ("alice", "bye")
    assert not alice.thread.is_alive()
    assert alice.thread.name.startswith("securechat-client-io")
    events = list(alice.events(timeout=seconds(1.0)))
    assert isinstance(events[-1], Closed) and events[-1].error is None
    alice.close()  # idempotent
    with pytest.raises(ClientClosed):
        alice.send("too late")


def test_reconnects_after_server_restart_and_keeps_receiving(
        make_server: MakeServer, clients: ClientPool) -> None:
    """Stop the server, start another on the same port: both clients come back by themselves."""
    first = make_server(retry_spread=0.2)
    port = first.port
    alice = clients.make(port, first.add_user("alice"))
    bob = clients.make(port, first.add_user("bob"))
    alice.connect(seconds(5))
    bob.connect(seconds(5))
    first.server.shutdown()
    for client in (alice, bob):
        gone = next_of(client, Disconnected)
        assert "shutting down" in gone.reason
    second = make_server(port=port, retry_spread=0.2)
    for client in (alice, bob):
        again = next_of(client, Connected, timeout=10)
        assert again.reconnect
    alice.send("after the restart").wait(seconds(5))
    received = next_of(bob, protocol.Message)
    assert received.body == "after the restart"
    assert second.server.stats()["authenticated"] == 2


def test_messages_typed_during_the_outage_arrive_in_order(
        make_server: MakeServer, clients: ClientPool) -> None:
    """Messages sent while disconnected are queued and delivered after the reconnect."""
    first = make_server(retry_spread=0.1)
    port = first.port
    # Alice waits 2 s (scaled) before coming back, so bob is there to receive; should
    # she still come first, the assertion below says so plainly.
    alice = clients.make(port, first.add_user("alice"), rng=Longest(),
                         backoff=BackoffPolicy(base=seconds(2.0), cap=seconds(2.0)))
    bob = clients.make(port, first.add_user("bob"))
    alice.connect(seconds(5))
    bob.connect(seconds(5))
    first.server.shutdown()
    next_of(alice, Disconnected)
    assert not alice.connected
    handles = [alice.send(f"offline {i}") for i in range(5)]
    assert not any(h.done() for h in handles)
    make_server(port=port, retry_spread=0.1)
    next_of(bob, Connected, timeout=10)
    assert not alice.connected, "alice came back before bob: her backoff was too short"
    seqs = [h.wait(seconds(10)) for h in handles]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    got = messages(bob, 5, timeout=10)
    assert [m.body for m in got] == [f"offline {i}" for i in range(5)]
    assert alice.stats()["queued"] == 0


def test_bye_retry_after_is_honoured(make_server: MakeServer, clients: ClientPool) -> None:
    """After bye/shutdown the client waits at least the server's retry_after."""
    first = make_server(retry_spread=0.6)
    alice = clients.make(first.port, first.add_user("alice"),
                         backoff=BackoffPolicy(base=0.01, cap=0.02))
    alice.connect(seconds(5))
    first.server.shutdown()
    gone = next_of(alice, Reconnecting)
    assert gone.retry_after is not None
    assert gone.retry_after <= gone.delay <= gone.retry_after + 0.01


def test_auth_failure_is_fatal_and_not_retried(server: RunningServer, clients: ClientPool
                                               ) -> None:
    """An unknown token ends the client with AuthRefused after exactly one attempt."""
    token = server.add_user("mallory")
    client = clients.make(server.port, wrong_token(token))
    with pytest.raises(AuthRefused) as info:
        client.connect(seconds(5))
    assert info.value.code == "auth_failed"
    closed = next_of(client, Closed)
    assert isinstance(closed.error, AuthRefused)
    assert client.stats()["attempts"] == 1
    client.thread.join(seconds(5))
    assert not client.thread.is_alive()


def test_revocation_while_connected_is_fatal(server: RunningServer, clients: ClientPool
                                             ) -> None:
    """A token revoked while connected ends the client with AuthRefused, no retry."""
    client = clients.make(server.port, server.add_user("eve"))
    client.connect(seconds(5))
    server.revoke("eve")
    closed = next_of(client, Closed)
    assert isinstance(closed.error, AuthRefused) and closed.error.code == "revoked"
    assert client.stats()["attempts"] == 1


def test_untrusted_certificate_is_fatal(server: RunningServer, clients: ClientPool,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A server certificate from another CA ends the client without retrying."""
    other = make_certs(tmp_path_factory.mktemp("other-ca"))
    client = clients.make(server.port, server.add_user("alice"), cafile=other.ca_path)
    with pytest.raises(TLSVerificationFailed, match="did not verify"):
        client.connect(seconds(5))
    assert client.stats()["attempts"] == 1


def test_wrong_server_name_is_fatal(server: RunningServer, clients: ClientPool) -> None:
    """A certificate that does not name the server ends the client, naming the name."""
    client = clients.make(server.port, server.add_user("alice"), server_name="example.org")
    with pytest.raises(TLSVerificationFailed, match=r"example\.org"):
        client.connect(seconds(5))


def test_gives_up_after_max_retries(clients: ClientPool) -> None:
    """Nobody listening and max_retries=2: three attempts, then GaveUp."""
    client = clients.make(closed_port(), "sct1.000000000000.x",
                          backoff=BackoffPolicy(base=0.01, cap=0.02, max_retries=2))
    with pytest.raises(GaveUp, match="connection refused"):
        client.connect(seconds(5))
    assert client.stats()["attempts"] == 3
    seen: list[Event] = []
    closed = next_of(client, Closed, seen=seen)
    assert isinstance(closed.error, GaveUp)
    assert [e.attempt for e in seen if isinstance(e, Reconnecting)] == [1, 2]


def test_queue_is_bounded_while_offline(clients: ClientPool) -> None:
    """While the server is unreachable, sends queue up to queue_size, then QueueFull."""
    client = clients.make(closed_port(), "sct1.000000000000.x", queue_size=3,
                          backoff=BackoffPolicy(base=5.0, cap=5.0))
    handles = [client.send(f"m{i}") for i in range(3)]
    with pytest.raises(QueueFull, match="3 messages are already waiting"):
        client.send("one too many")
    with pytest.raises(QueueFull):
        client.send("still full", wait=0.05)
    client.close()
    for handle in handles:
        with pytest.raises(ClientClosed):
            handle.wait(seconds(1))


def test_oversized_and_empty_bodies_are_refused_locally(make_server: MakeServer,
                                                        clients: ClientPool) -> None:
    """The server would close the connection for frame_too_large: refuse before sending."""
    running = make_server(max_frame=4096)
    client = clients.make(running.port, running.add_user("alice"))
    assert client.connect(seconds(5)).max_frame == 4096
    with pytest.raises(LocalProtocolError, match="too long"):
        client.send("x" * 5000)
    with pytest.raises(LocalProtocolError):
        client.send("")
    assert client.send("y" * 4000).wait(seconds(5)) > 0
    assert client.connected


def test_rate_limited_messages_are_resent_not_lost(make_server: MakeServer,
                                                   clients: ClientPool) -> None:
    """Messages the server drops with rate_limited are resent after retry_after, in order."""
    running = make_server(msg_rate=20, msg_burst=3)
    alice = clients.make(running.port, running.add_user("alice"))
    bob = clients.make(running.port, running.add_user("bob"))
    alice.connect(seconds(5))
    bob.connect(seconds(5))
    handles = [alice.send(f"burst {i}") for i in range(10)]
    for handle in handles:
        handle.wait(seconds(10))
    assert alice.stats()["rate_limited"] > 0
    got = messages(bob, 10)
    assert [m.body for m in got] == [f"burst {i}" for i in range(10)]


def test_idle_client_keeps_the_link_alive(make_server: MakeServer, clients: ClientPool) -> None:
    """With a 0.2 s heartbeat an idle client pings, so the server never times it out."""
    running = make_server(heartbeat=seconds(0.2))
    client = clients.make(running.port, running.add_user("alice"))
    client.connect(seconds(5))
    stray = collect(client, 1.5)  # over seven heartbeat intervals (both scaled)
    assert not [e for e in stray if isinstance(e, Disconnected | protocol.ErrorFrame)], stray
    assert client.connected
    assert client.stats()["connects"] == 1


@dataclass
class Relayed:
    """A server with a 0.2 s heartbeat; ``relayed`` reaches it through ``relay``,
    ``direct`` does not."""

    relay: Relay
    relayed: Client
    direct: Client


@pytest.fixture
def relayed(make_server: MakeServer, clients: ClientPool) -> Iterator[Relayed]:
    with relayed_pair(make_server, clients, "alice", "bob") as (relay, via_relay, direct):
        yield Relayed(relay, via_relay, direct)


def test_silent_server_is_detected_by_heartbeat(relayed: Relayed) -> None:
    """A relay that stops forwarding (the server 'hangs'): the client declares the link
    dead after 3 heartbeat intervals and reconnects."""
    client = relayed.relayed
    relayed.relay.freeze()
    gone = next_of(client, Disconnected, timeout=5)
    assert "heartbeat" in gone.reason
    again = next_of(client, Connected, timeout=5)
    assert again.reconnect
    assert relayed.relay.accepted == 2


def test_own_heartbeat_pings_and_detects(server: RunningServer, clients: ClientPool) -> None:
    """With the server's default 20 s heartbeat, a client set to 0.2 s pings by itself
    (the pongs keep it alive) and still notices a hung link within a few intervals."""
    relay = Relay((server.host, server.port))
    try:
        client = clients.make(relay.port, server.add_user("alice"), heartbeat=seconds(0.2))
        assert client.connect(seconds(5)).heartbeat == 20.0
        stray = collect(client, 1.0)  # five of its intervals (both scaled): pongs keep it alive
        assert not [e for e in stray if isinstance(e, Disconnected)], stray
        relay.freeze()
        gone = next_of(client, Disconnected, timeout=3)
        assert "heartbeat" in gone.reason
    finally:
        relay.close()


def test_unacked_message_is_resent_after_the_link_dies(relayed: Relayed) -> None:
    """A message swallowed by a hung link is sent again after the reconnect and arrives."""
    alice, bob = relayed.relayed, relayed.direct
    relayed.relay.freeze()
    seq = alice.send("through the outage").wait(seconds(10))
    assert alice.stats()["resent"] >= 1
    received = next_of(bob, protocol.Message)
    assert (received.body, received.seq) == ("through the outage", seq)


def test_lost_ack_resend_is_acknowledged(relayed: Relayed) -> None:
    """The server got the message but the ack was lost: the resend (same id) is acked."""
    alice, bob = relayed.relayed, relayed.direct
    relayed.relay.freeze("to_client")
    handle = alice.send("ack lost")
    assert next_of(bob, protocol.Message).body == "ack lost"
    handle.wait(seconds(10))  # after heartbeat death, reconnect and resend
    assert alice.stats()["resent"] >= 1


def test_members_and_wait_for_member(server: RunningServer, clients: ClientPool) -> None:
    """members follows joins and leaves; wait_for_member waits for a join."""
    alice = clients.make(server.port, server.add_user("alice"))
    alice.connect(seconds(5))
    assert not alice.wait_for_member("bob", 0.05)
    bob = clients.make(server.port, server.add_user("bob"))
    assert alice.wait_for_member("bob", seconds(5))
    assert alice.members == {"alice", "bob"}
    bob.close()
    wait_for(lambda: "bob" not in alice.members, what="bob's leave")


def test_close_before_start_and_while_reconnecting(clients: ClientPool) -> None:
    """close() works in every state and always ends with Closed."""
    idle = clients.make(closed_port(), "sct1.000000000000.x", start=False)
    handle = idle.send("never")
    idle.close()
    assert isinstance(next_of(idle, Closed), Closed)
    with pytest.raises(ClientClosed):
        handle.wait(0)
    waiting = clients.make(closed_port(), "sct1.000000000000.x",
                           backoff=BackoffPolicy(base=30.0, cap=30.0))
    next_of(waiting, Reconnecting)
    waiting.close()
    assert not waiting.thread.is_alive() and not waiting.threads()
    with pytest.raises(ClientClosed):
        waiting.wait_connected(0)


def test_many_clients_reconnect_after_restart(make_server: MakeServer, clients: ClientPool
                                              ) -> None:
    """Thirty clients all come back after a restart (a small storm)."""
    first = make_server(retry_spread=0.3)
    port = first.port
    tokens = [first.add_user(f"user{i}") for i in range(30)]
    group = [clients.make(port, token) for token in tokens]
    for client in group:
        client.connect(seconds(10))
    first.server.shutdown()
    for client in group:
        next_of(client, Disconnected)
    second = make_server(port=port, retry_spread=0.3)
    for client in group:
        client.wait_connected(seconds(10))
    wait_for(lambda: second.server.stats()["authenticated"] == 30, what="30 logins")


def test_context_manager_starts_and_closes(server: RunningServer, certs: Certs) -> None:
    """``with Client(...)`` starts it, and closes and joins it on the way out."""
    with Client("127.0.0.1", server.port, token=server.add_user("alice"),
                cafile=certs.ca_path, server_name="localhost") as client:
        assert client.wait_connected(seconds(5)).user == "alice"
        thread = client.thread
    assert client.closed and not thread.is_alive()
