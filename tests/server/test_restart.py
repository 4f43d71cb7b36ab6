"""The real ``securechat-server`` killed with SIGKILL and restarted on its data dir:
what was acknowledged is replayed to members who come back, seq goes on and the epoch
stays; with the data dir deleted the epoch is new and old positions are reset."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Certs, ServerProcesses, publish, read_replay


@pytest.fixture
def servers(tmp_path: Path, certs: Certs) -> Iterator[ServerProcesses]:
    procs = ServerProcesses(tmp_path, certs)
    yield procs
    procs.close()


@pytest.mark.parametrize("durability", [None, "fsync"])
def test_acknowledged_messages_survive_kill_9_and_resuming_members_miss_none(
        servers: ServerProcesses, durability: str | None) -> None:
    """100 acked messages, then kill -9 and a restart: bob (read nothing of them) and
    carol (read the first 40 live) resume from where they were and get exactly the rest,
    in order, with their original seq and ts, then caught_up; the epoch is the same and
    the next message is seq 101, live to both."""
    args = () if durability is None else ("--durability", durability)
    alice_t, bob_t, carol_t = (servers.token(n) for n in ("alice", "bob", "carol"))
    first = servers.start(*args)
    _bob, bob_welcome = servers.login(first, bob_t, client_id="bob-1")  # reads nothing
    carol, carol_welcome = servers.login(first, carol_t, client_id="carol-1")
    alice, alice_welcome = servers.login(first, alice_t, client_id="alice-1")
    epoch = alice_welcome["epoch"]
    assert bob_welcome["epoch"] == carol_welcome["epoch"] == epoch
    assert alice_welcome["protocol"] == 3 and bob_welcome["seq"] == 0
    bodies = [f"before the crash {i}" for i in range(100)]
    acks = publish(alice, bodies)
    assert [a["seq"] for a in acks] == list(range(1, 101))
    assert not any(a.get("duplicate") for a in acks)
    live = [carol.expect("msg", skip=("ping", "join")) for _ in range(40)]
    assert [m["seq"] for m in live] == list(range(1, 41))

    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    second = servers.start(*args)

    bob2, welcome = servers.login(second, bob_t, client_id="bob-1", resume=(epoch, 0))
    assert welcome["epoch"] == epoch and welcome["seq"] == 100
    replayed, caught_up = read_replay(bob2)
    assert [m["seq"] for m in replayed] == list(range(1, 101))
    assert [m["body"] for m in replayed] == bodies
    assert {m["from"] for m in replayed} == {"alice"}
    assert caught_up == {"type": "caught_up", "room": "lobby", "seq": 100, "replayed": 100}

    carol2, _ = servers.login(second, carol_t, client_id="carol-1", resume=(epoch, 40))
    replayed, caught_up = read_replay(carol2)
    assert [m["seq"] for m in replayed] == list(range(41, 101))
    assert caught_up == {"type": "caught_up", "room": "lobby", "seq": 100, "replayed": 60}
    assert [m["body"] for m in live + replayed] == bodies  # all 100, once each

    alice2, welcome = servers.login(second, alice_t, client_id="alice-1")
    assert welcome["epoch"] == epoch
    (ack,) = publish(alice2, ["after the restart"], ["next"])
    assert ack["seq"] == 101 and not ack.get("duplicate")
    for member in (bob2, carol2):
        msg = member.expect("msg", skip=("ping", "join", "leave"))
        assert (msg["seq"], msg["body"]) == (101, "after the restart")
    assert second.stop() == 0


def test_a_replay_keeps_the_original_timestamps(servers: ServerProcesses) -> None:
    """The ts a live member saw is the ts replayed after a restart."""
    alice_t, bob_t = servers.token("alice"), servers.token("bob")
    first = servers.start()
    bob, welcome = servers.login(first, bob_t)
    alice, _ = servers.login(first, alice_t)
    publish(alice, [f"m{i}" for i in range(5)])
    seen = [bob.expect("msg", skip=("ping", "join")) for _ in range(5)]
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    second = servers.start()
    bob2, _ = servers.login(second, bob_t, resume=(welcome["epoch"], 0))
    replayed, _ = read_replay(bob2)
    assert replayed == seen


def test_a_deleted_data_dir_is_a_new_epoch_and_old_positions_are_reset(
        servers: ServerProcesses) -> None:
    """Stopped, data dir removed, started again: a new epoch, seq from 1, and a member
    resuming with the old epoch is told caught_up reset:true with nothing replayed."""
    alice_t, bob_t = servers.token("alice"), servers.token("bob")
    first = servers.start()
    alice, welcome = servers.login(first, alice_t)
    old_epoch = welcome["epoch"]
    publish(alice, [f"old {i}" for i in range(5)])
    assert first.stop() == 0
    assert (servers.data_dir / "messages.sqlite3").is_file()
    shutil.rmtree(servers.data_dir)

    second = servers.start()
    bob, welcome = servers.login(second, bob_t, resume=(old_epoch, 5))
    assert welcome["epoch"] != old_epoch and welcome["seq"] == 0
    assert bob.recv() == {"type": "caught_up", "room": "lobby",
                          "seq": 0, "replayed": 0, "reset": True}
    alice2, _ = servers.login(second, alice_t)
    (ack,) = publish(alice2, ["in the new log"])
    assert ack["seq"] == 1
    msg = bob.expect("msg", skip=("ping", "join"))
    assert (msg["seq"], msg["body"]) == (1, "in the new log")  # no replayed frame before
    assert second.stop() == 0
