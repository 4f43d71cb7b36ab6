"""PENDING (issue 9): the client's resume, idempotency and history against the issue-9
server, over real TLS. Not collected (the name does not start with ``test_``): rename
it to ``test_resume_e2e.py`` once the server replays, sends ``caught_up``, answers
``history`` and acks recognised resends with ``duplicate``. Written against the wire
contract in the issue; the server's store settings (data dir, ``--store``) may need
passing to ``make_server`` then.

On the same merge, ``test_gap_is_reported_after_an_outage`` in ``test_client.py``
no longer holds (those messages are replayed now, no Gap): delete it, its successor
is :func:`test_outage_is_replayed_without_a_gap` below.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from securechat import protocol
from securechat.client import Client, Connected, Event, Gap
from tests.client_support import (
    ClientPool,
    CliProcess,
    Relay,
    cli_args,
    collect,
    next_of,
    relayed_pair,
    token_file,
)
from tests.support import Certs, MakeServer, RunningServer, seconds

pytest_plugins = ["tests.client_support"]


@dataclass
class Relayed:
    """``bob`` reaches a 0.2 s-heartbeat server through ``relay``; ``alice`` directly."""

    relay: Relay
    bob: Client
    alice: Client


@pytest.fixture
def relayed(make_server: MakeServer, clients: ClientPool) -> Iterator[Relayed]:
    with relayed_pair(make_server, clients, "bob", "alice") as (relay, bob, alice):
        yield Relayed(relay, bob, alice)


def until_caught_up(client: Client, timeout: float = 10.0) -> list[Event]:
    """The events up to and including the next CaughtUp."""
    seen: list[Event] = []
    seen.append(next_of(client, protocol.CaughtUp, timeout, seen=seen))
    return seen


def test_outage_is_replayed_without_a_gap(relayed: Relayed) -> None:
    """A member cut off while 5 messages are sent gets exactly those 5 after the
    reconnect, flagged replayed, in order, then CaughtUp, then live traffic: no Gap."""
    alice, bob = relayed.alice, relayed.bob
    alice.send("seen").wait(seconds(5))
    assert next_of(bob, protocol.Message).body == "seen"
    relayed.relay.freeze()
    sent = [alice.send(f"missed {i}").wait(seconds(5)) for i in range(5)]
    events = until_caught_up(bob)
    replayed = [e for e in events if isinstance(e, protocol.Message)]
    assert [(m.body, m.seq, m.replayed) for m in replayed] == [
        (f"missed {i}", seq, True) for i, seq in enumerate(sent)]
    assert not [e for e in events if isinstance(e, Gap)]
    caught_up = events[-1]
    assert isinstance(caught_up, protocol.CaughtUp) and caught_up.replayed == 5
    live = alice.send("live").wait(seconds(5))
    message = next_of(bob, protocol.Message)
    assert (message.body, message.seq, message.replayed) == ("live", live, False)
    assert not [e for e in collect(bob, 0.5) if isinstance(e, Gap | protocol.Message)]


def test_a_saved_position_gets_the_missed_messages_in_a_new_instance(
        server: RunningServer, clients: ClientPool) -> None:
    """position saved, client closed, 3 messages sent, a new Client(resume=position):
    those 3 come replayed, then CaughtUp."""
    bob_token = server.add_user("bob")
    bob = clients.make(server.port, bob_token)
    bob.connect(seconds(5))
    alice = clients.make(server.port, server.add_user("alice"))
    alice.connect(seconds(5))
    alice.send("before").wait(seconds(5))
    assert next_of(bob, protocol.Message).body == "before"
    saved = bob.position
    assert saved is not None
    bob.close()
    sent = [alice.send(f"while closed {i}").wait(seconds(5)) for i in range(3)]
    again = clients.make(server.port, bob_token, resume=saved)
    events = until_caught_up(again)
    assert [(e.seq, e.replayed) for e in events if isinstance(e, protocol.Message)] == [
        (seq, True) for seq in sent]
    assert again.position == (saved[0], sent[-1])


def test_a_resend_after_a_lost_ack_is_delivered_once(relayed: Relayed) -> None:
    """The server stored the message but its ack was lost: the resend (same client id
    and message id) is acked duplicate with the original seq and not delivered again."""
    alice, bob = relayed.alice, relayed.bob
    relayed.relay.freeze("to_client")
    handle = bob.send("ack lost")
    first = next_of(alice, protocol.Message)
    assert first.body == "ack lost"
    assert handle.wait(seconds(10)) == first.seq
    ack = next_of(bob, protocol.Ack, where=lambda a: a.id == handle.id)
    assert ack.duplicate and ack.seq == first.seq
    assert not [e for e in collect(alice, 0.5)
                if isinstance(e, protocol.Message) and e.body == "ack lost"]


def test_two_clients_of_one_user_with_the_same_ids_are_both_delivered(
        server: RunningServer, clients: ClientPool) -> None:
    """Idempotency is per client instance: two devices numbering alike lose nothing."""
    token = server.add_user("alice")
    laptop = clients.make(server.port, token, client_id="laptop")
    phone = clients.make(server.port, token, client_id="phone")
    bob = clients.make(server.port, server.add_user("bob"))
    for client in (laptop, phone, bob):
        client.connect(seconds(5))
    # Same prefix so that both send the same message ids.
    phone._id_prefix = laptop._id_prefix
    laptop.send("from the laptop").wait(seconds(5))
    phone.send("from the phone").wait(seconds(5))
    bodies = {next_of(bob, protocol.Message).body for _ in range(2)}
    assert bodies == {"from the laptop", "from the phone"}


def test_history_pages_back_through_the_log(server: RunningServer,
                                            clients: ClientPool) -> None:
    """history(): the latest N, then the N before the oldest; more says whether the
    log holds further ones."""
    alice = clients.make(server.port, server.add_user("alice"))
    alice.connect(seconds(5))
    seqs = [alice.send(f"m{i}").wait(seconds(5)) for i in range(5)]
    bob = clients.make(server.port, server.add_user("bob"))
    bob.connect(seconds(5))
    rid = bob.history(limit=3)
    page: list[Event] = []
    end = next_of(bob, protocol.HistoryEnd, where=lambda e: e.id == rid, seen=page)
    got = [e for e in page if isinstance(e, protocol.HistoryMessage)]
    assert [(m.id, m.body, m.seq) for m in got] == [
        (rid, f"m{i}", seqs[i]) for i in range(2, 5)]
    assert (end.count, end.more, end.latest) == (3, True, seqs[-1])
    older = bob.history(got[0].seq, limit=3)
    page = []
    end = next_of(bob, protocol.HistoryEnd, where=lambda e: e.id == older, seen=page)
    assert [e.seq for e in page if isinstance(e, protocol.HistoryMessage)] == seqs[:2]
    assert (end.count, end.more) == (2, False)


def test_cli_history_shows_the_last_messages_on_joining(
        server: RunningServer, certs: Certs, clients: ClientPool, tmp_path: Path,
        procs: list[CliProcess]) -> None:
    """--history 2 --json --listen: the two latest messages as history_msg objects."""
    alice = clients.make(server.port, server.add_user("alice"))
    alice.connect(seconds(5))
    for body in ("one", "two", "three"):
        alice.send(body).wait(seconds(5))
    bob = CliProcess(*cli_args(server.port, certs.ca_path), "--token-file",
                     str(token_file(tmp_path, server, "bob")), "--json", "--listen",
                     "--history", "2")
    procs.append(bob)
    bob.read_until(lambda line: '"history_end"' in line)
    objs = [json.loads(line) for line in bob.lines]
    assert [o["body"] for o in objs if o["type"] == "history_msg"] == ["two", "three"]


def test_connected_comes_before_the_replay(relayed: Relayed) -> None:
    """The order around a reconnect: Connected, replayed messages, CaughtUp."""
    relayed.relay.freeze()
    relayed.alice.send("missed").wait(seconds(5))
    events = until_caught_up(relayed.bob)
    kinds = [type(e) for e in events if isinstance(e, Connected | protocol.Message
                                                    | protocol.CaughtUp)]
    # The first Connected is the fixture's own connect, still in the queue.
    assert kinds == [Connected, Connected, protocol.Message, protocol.CaughtUp]
    assert [e.reconnect for e in events if isinstance(e, Connected)] == [False, True]
