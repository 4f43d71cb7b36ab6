"""Many clients on one ClientLoop, against a real server over real TLS: one thread for
all, bye for all on close, connect slots, and a hung lookup that stalls nobody else."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from securechat import protocol
from securechat.client import (
    ClientLoop,
    Reconnecting,
)
from securechat.errors import ClientClosed
from tests.client_support import ClientPool, next_of
from tests.support import RunningServer, seconds, wait_for


class Longest(random.Random):
    """Jitter that always picks the longest wait (to order reconnects in a test)."""

    def uniform(self, a: float, b: float) -> float:
        return b


pytest_plugins = ["tests.client_support"]


def test_many_clients_share_one_loop_thread(server: RunningServer, clients: ClientPool) -> None:
    """Twenty clients on one ClientLoop: one I/O thread for all, all connected, a message
    reaches every one, closing a client leaves the loop running for the others."""
    shared = clients.loop()
    threads_before = threading.active_count()
    group = [clients.make(server.port, server.add_user(f"user{i}"), loop=shared)
             for i in range(20)]
    for client in group:
        client.wait_connected(seconds(10))
    assert {c.thread for c in group} == {shared.thread}
    assert threading.active_count() <= threads_before + 1
    speaker = group[0]
    speaker.send("to everyone").wait(seconds(5))
    for client in group[1:]:
        assert next_of(client, protocol.Message, timeout=10).body == "to everyone"
    speaker.close()
    assert speaker.closed and shared.thread.is_alive()
    group[1].send("still here").wait(seconds(5))


def test_closing_a_shared_loop_says_bye_for_every_client(server: RunningServer,
                                                         clients: ClientPool) -> None:
    """ClientLoop.close() closes the clients still on it (the server sees their bye),
    ends each with Closed, and joins its thread; new clients on it are refused."""
    watcher = clients.make(server.port, server.add_user("watcher"))
    watcher.connect(seconds(5))
    with ClientLoop("test-closing-loop") as shared:
        members = [clients.make(server.port, server.add_user(f"m{i}"), loop=shared)
                   for i in range(5)]
        for client in members:
            client.wait_connected(seconds(5))
        thread = shared.thread
    assert not thread.is_alive()
    for client in members:
        assert client.wait_closed(0) and client.error is None
    leaves = {next_of(watcher, protocol.Leave, where=lambda e: e.reason == "bye").user
              for _ in members}
    assert leaves == {f"m{i}" for i in range(5)}
    late = clients.make(server.port, server.add_user("late"), loop=shared)
    assert late.closed
    with pytest.raises(ClientClosed):
        late.wait_connected(0)


def test_connects_beyond_the_in_flight_limit_wait_their_turn(server: RunningServer,
                                                             clients: ClientPool) -> None:
    """With one connect slot, six clients on one loop still all get in, one at a time."""
    shared = ClientLoop("test-one-slot", max_connecting=1)
    clients.loops.append(shared)
    group = [clients.make(server.port, server.add_user(f"s{i}"), loop=shared) for i in range(6)]
    for client in group:
        client.wait_connected(seconds(10))
    assert all(c.stats()["attempts"] == 1 for c in group)


def test_a_hung_lookup_does_not_stall_the_other_clients_on_the_loop(
        server: RunningServer, clients: ClientPool) -> None:
    """Name resolution runs off the loop thread: while one client's lookup hangs, another
    on the same loop connects and chats; the hung one times out and closes cleanly."""
    release = threading.Event()

    def hung(host: str, port: int) -> list[tuple[int, Any]]:
        release.wait(seconds(30))
        return []

    shared = clients.loop()
    try:
        stuck = clients.make(server.port, "sct1.000000000000.x", host="chat.invalid",
                          resolver=hung, connect_timeout=seconds(0.5), loop=shared)
        alive = clients.make(server.port, server.add_user("alice"), loop=shared)
        alive.wait_connected(seconds(5))
        assert alive.send("while the other waits").wait(seconds(5)) > 0
        retry = next_of(stuck, Reconnecting)
        assert "resolving" in retry.reason
        assert alive.connected
        stuck.close()
        assert stuck.closed
    finally:
        release.set()
    wait_for(lambda: not stuck.threads(), what="the lookup thread to end")


def test_handing_over_connect_slots_does_not_recurse() -> None:
    """Thousands of queued links that each fail at once when given the slot (socket()
    refused, say) are handed it in a loop, not by recursion."""
    shared = ClientLoop("test-slots", max_connecting=1)

    class FailsAtOnce:
        granted = 0

        def wants_slot(self) -> bool:
            return True

        def slot_granted(self) -> None:
            FailsAtOnce.granted += 1
            shared.release_slot(self)  # type: ignore[arg-type]

    holder, queued = FailsAtOnce(), [FailsAtOnce() for _ in range(5000)]
    assert shared.take_slot(holder)  # type: ignore[arg-type]
    assert not any(shared.take_slot(link) for link in queued)  # type: ignore[arg-type]
    shared.release_slot(holder)  # type: ignore[arg-type]
    assert FailsAtOnce.granted == 5000 and shared.connecting == 0
    assert shared.close()
