"""Resends are recognised per (user, client instance, id) only: two devices numbering
alike both get through, a resend after a lost ack is delivered once and acked with its
original seq and ``duplicate`` (also after kill -9: the table is rebuilt from the log),
and without a client id nothing is ever dropped as a duplicate."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    OTHERS,
    Certs,
    MakeServer,
    ServerProcesses,
    WireClient,
    publish,
    read_replay,
)

SKIP = ("ping", "join", "leave")


def received(wire: WireClient, count: int) -> list[tuple[str, str, int]]:
    """The next ``count`` msg frames as (from, body, seq)."""
    return [(m["from"], m["body"], m["seq"])
            for m in (wire.expect("msg", skip=SKIP) for _ in range(count))]


def acks_until(wire: WireClient, last_id: str | int) -> list[dict[str, Any]]:
    """Every ack up to and including the one for ``last_id``."""
    acks = []
    while True:
        ack = wire.expect("ack", skip=OTHERS)
        acks.append(ack)
        if ack["id"] == last_id:
            return acks


def test_two_devices_of_one_user_numbering_alike_are_both_delivered(
        make_server: MakeServer) -> None:
    """phone and laptop of alice both send ids 1, 2, 3 with their own bodies: bob gets
    all six, and every ack is a new seq, none a duplicate."""
    running = make_server(msg_rate=0)
    bob, _ = running.user("bob")
    phone, _ = running.user("alice", client_id="phone")
    laptop, _ = running.user("alice", client_id="laptop")
    acks = []
    for mid in (1, 2, 3):
        acks += publish(phone, [f"phone {mid}"], [mid])
        acks += publish(laptop, [f"laptop {mid}"], [mid])
    assert [a["seq"] for a in acks] == list(range(1, 7))
    assert not any(a.get("duplicate") for a in acks)
    got = received(bob, 6)
    assert [body for _, body, _ in got] == [
        "phone 1", "laptop 1", "phone 2", "laptop 2", "phone 3", "laptop 3"]
    assert {sender for sender, _, _ in got} == {"alice"}


def test_the_same_client_id_of_two_users_is_two_clients(make_server: MakeServer) -> None:
    """Client ids are scoped to the user: alice's and carol's "c1" id 7 both count."""
    running = make_server(msg_rate=0)
    bob, _ = running.user("bob")
    alice, _ = running.user("alice", client_id="c1")
    carol, _ = running.user("carol", client_id="c1")
    (first,) = publish(alice, ["from alice"], [7])
    (second,) = publish(carol, ["from carol"], [7])
    assert (first["seq"], second["seq"]) == (1, 2) and not second.get("duplicate")
    assert [b for _, b, _ in received(bob, 2)] == ["from alice", "from carol"]


def test_a_resend_after_a_lost_ack_is_delivered_once_and_acked_duplicate(
        make_server: MakeServer) -> None:
    """alice sends m1, bob has it, alice's link drops before she read the ack; she
    reconnects with the same client id and resends: acked with the original seq and
    duplicate, bob gets nothing new; her next message is the next seq."""
    running = make_server(msg_rate=0)
    bob, _ = running.user("bob")
    alice, _ = running.user("alice", client_id="laptop-7")
    alice.send({"type": "msg", "body": "hello once", "id": "m1"})
    assert received(bob, 1) == [("alice", "hello once", 1)]  # stored and delivered
    alice.close()  # the ack is never read

    again, _ = running.user("alice", client_id="laptop-7")
    again.send({"type": "msg", "body": "hello once", "id": "m1"})
    assert again.expect("ack", skip=OTHERS) == {
        "type": "ack", "room": "lobby", "id": "m1", "seq": 1, "duplicate": True}
    (ack,) = publish(again, ["and then"], ["m2"])
    assert ack == {"type": "ack", "room": "lobby", "id": "m2", "seq": 2}
    assert received(bob, 1) == [("alice", "and then", 2)]  # nothing came in between


def test_a_resend_racing_its_own_store_is_delivered_once(make_server: MakeServer) -> None:
    """The same id twice in one write (the first possibly still being stored): one
    message for bob; alice hears of seq 1 once, or a second time flagged duplicate."""
    running = make_server(msg_rate=0)
    bob, _ = running.user("bob")
    alice, _ = running.user("alice", client_id="c")
    frame = b'{"type":"msg","body":"racing","id":5}\n'
    alice.send(frame + frame + b'{"type":"msg","body":"marker","id":6}\n')
    acks = acks_until(alice, 6)
    assert acks[0] == {"type": "ack", "room": "lobby", "id": 5, "seq": 1}
    assert acks[1:-1] in ([], [{"type": "ack", "room": "lobby",
                                "id": 5, "seq": 1, "duplicate": True}])
    assert acks[-1] == {"type": "ack", "room": "lobby", "id": 6, "seq": 2}
    assert received(bob, 2) == [("alice", "racing", 1), ("alice", "marker", 2)]


def test_without_a_client_id_the_same_id_is_delivered_every_time(
        make_server: MakeServer) -> None:
    """No client id: id is only a correlation id for the ack, never a reason to drop."""
    running = make_server(msg_rate=0)
    bob, _ = running.user("bob")
    alice, _ = running.user("alice")
    acks = publish(alice, ["one", "two"], ["same", "same"])
    assert [a["seq"] for a in acks] == [1, 2] and not any(a.get("duplicate") for a in acks)
    alice.close()
    again, _ = running.user("alice")
    (ack,) = publish(again, ["three"], ["same"])
    assert ack == {"type": "ack", "room": "lobby", "id": "same", "seq": 3}
    assert [b for _, b, _ in received(bob, 3)] == ["one", "two", "three"]


def test_integer_and_string_ids_are_different_ids(make_server: MakeServer) -> None:
    running = make_server(msg_rate=0)
    bob, _ = running.user("bob")
    alice, _ = running.user("alice", client_id="c")
    acks = publish(alice, ["int", "str"], [1, "1"])
    assert [a["seq"] for a in acks] == [1, 2] and not any(a.get("duplicate") for a in acks)
    assert [b for _, b, _ in received(bob, 2)] == ["int", "str"]


def test_a_zero_resend_window_recognises_nothing(make_server: MakeServer) -> None:
    """--resend-window 0: ids are not remembered, so a resend is a new message."""
    running = make_server(msg_rate=0, resend_window=0)
    bob, _ = running.user("bob")
    alice, _ = running.user("alice", client_id="c")
    acks = publish(alice, ["a", "a again"], ["x", "x"])
    assert [a["seq"] for a in acks] == [1, 2] and not any(a.get("duplicate") for a in acks)
    assert [b for _, b, _ in received(bob, 2)] == ["a", "a again"]


# --------------------------------------------------------------------------- across kill -9
@pytest.fixture
def servers(tmp_path: Path, certs: Certs) -> Iterator[ServerProcesses]:
    procs = ServerProcesses(tmp_path, certs)
    yield procs
    procs.close()


def test_resends_are_recognised_after_kill_9(servers: ServerProcesses) -> None:
    """alice's m1..m3 were stored (bob has them) but their acks died with the server;
    after a restart she resends them with the same client id: all three acked duplicate
    with their original seqs, none delivered again; m4 is seq 4. Her phone, which never
    sent m1, sends its own m1 and it gets through."""
    alice_t, bob_t = servers.token("alice"), servers.token("bob")
    first = servers.start()
    bob, welcome = servers.login(first, bob_t)
    alice, _ = servers.login(first, alice_t, client_id="laptop")
    for i in (1, 2, 3):
        alice.send({"type": "msg", "body": f"body {i}", "id": f"m{i}"})
    assert [s for _, _, s in received(bob, 3)] == [1, 2, 3]
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = servers.start()
    bob2, _ = servers.login(second, bob_t, resume=(welcome["epoch"], 3))
    assert read_replay(bob2) == ([], {"type": "caught_up", "room": "lobby",
                                      "seq": 3, "replayed": 0})
    laptop, _ = servers.login(second, alice_t, client_id="laptop")
    acks = publish(laptop, [f"body {i}" for i in (1, 2, 3, 4)], ["m1", "m2", "m3", "m4"])
    assert acks[:3] == [{"type": "ack", "room": "lobby", "id": f"m{i}", "seq": i, "duplicate": True}
                        for i in (1, 2, 3)]
    assert acks[3] == {"type": "ack", "room": "lobby", "id": "m4", "seq": 4}
    phone, _ = servers.login(second, alice_t, client_id="phone")
    (ack,) = publish(phone, ["phone's own m1"], ["m1"])
    assert ack == {"type": "ack", "room": "lobby", "id": "m1", "seq": 5}
    assert received(bob2, 2) == [("alice", "body 4", 4), ("alice", "phone's own m1", 5)]
    assert second.stop() == 0
