"""The client with rooms against the rooms server, over real TLS: two rooms with exact
delivery counts, leave, resume of two rooms after a server restart on the same data
dir, and an old-style client unchanged."""

from __future__ import annotations

from collections.abc import Sequence

from securechat import protocol
from securechat.client import Connected
from tests.client_support import ClientPool, collect, next_of, room_token
from tests.support import MakeServer, seconds

pytest_plugins = ["tests.client_support"]


def messages(events: Sequence[object], room: str) -> list[str]:
    return [e.body for e in events if isinstance(e, protocol.Message) and e.room == room]


def test_two_rooms_deliver_each_message_once_to_its_room(make_server: MakeServer,
                                                         clients: ClientPool) -> None:
    """alice in a and b, bob in a only: 5 to a and 3 to b reach exactly who is in them."""
    running = make_server()
    alice = clients.make(running.port, room_token(running, "alice", "*"), rooms=["a", "b"])
    bob = clients.make(running.port, room_token(running, "bob", "*"), rooms=["a"])
    carol = clients.make(running.port, room_token(running, "carol", "*"), rooms=["b"])
    for client, room in ((alice, "a"), (alice, "b"), (bob, "a"), (carol, "b")):
        assert client.wait_joined(room, seconds(5)), f"{room} not joined"
    handles = [alice.send(f"a{i}", room="a") for i in range(5)]
    handles += [alice.send(f"b{i}", room="b") for i in range(3)]
    assert alice.room == "a"
    seqs = [h.wait(seconds(5)) for h in handles]
    assert seqs == [1, 2, 3, 4, 5, 1, 2, 3]  # numbered per room
    bob_got = collect(bob, 0.5)
    carol_got = collect(carol, 0.5)
    assert messages(bob_got, "a") == [f"a{i}" for i in range(5)]
    assert messages(bob_got, "b") == []
    assert messages(carol_got, "b") == [f"b{i}" for i in range(3)]
    assert messages(carol_got, "a") == []
    assert alice.members_of("a") == {"alice", "bob"}
    assert alice.members_of("b") == {"alice", "carol"}
    assert alice.positions == {"a": (alice.positions["a"][0], 5),
                               "b": (alice.positions["b"][0], 3)}


def test_leave_stops_delivery_and_the_room_is_not_rejoined(make_server: MakeServer,
                                                           clients: ClientPool) -> None:
    """After leave("b") (Left event) nothing of b arrives, and rooms no longer lists it."""
    running = make_server()
    alice = clients.make(running.port, room_token(running, "alice", "*"), rooms=["a", "b"])
    bob = clients.make(running.port, room_token(running, "bob", "*"), rooms=["b"])
    assert alice.wait_joined("b", seconds(5)) and bob.wait_joined("b", seconds(5))
    alice.leave("b")
    left = next_of(alice, protocol.Left)
    assert left == protocol.Left("b", "left")
    assert alice.rooms == ("a",)
    bob.send("after leave", room="b").wait(seconds(5))
    assert messages(collect(alice, 0.5), "b") == []


def test_join_while_connected(make_server: MakeServer, clients: ClientPool) -> None:
    """join("ops") on a connected client: Joined, then its traffic."""
    running = make_server()
    alice = clients.make(running.port, room_token(running, "alice", "*"), rooms=[])
    bob = clients.make(running.port, room_token(running, "bob", "*"), rooms=["ops"])
    alice.connect(seconds(5))
    alice.join("ops")
    assert alice.wait_joined("ops", seconds(5))
    assert bob.wait_joined("ops", seconds(5))
    bob.send("hi ops", room="ops").wait(seconds(5))
    got = next_of(alice, protocol.Message)
    assert (got.room, got.body) == ("ops", "hi ops")


def test_two_rooms_are_resumed_after_a_server_restart(make_server: MakeServer,
                                                      clients: ClientPool) -> None:
    """The server stops and starts again on its data dir and port: the client resumes a
    and b from their own positions, each replayed up to its own CaughtUp, no Gap."""
    first = make_server()
    data_dir, port = first.server.config.data_dir, first.port
    bob_token = room_token(first, "bob", "*")
    alice = clients.make(port, room_token(first, "alice", "*"), rooms=["a", "b"])
    assert alice.wait_joined("a", seconds(5)) and alice.wait_joined("b", seconds(5))
    bob = clients.make(port, bob_token, rooms=["a", "b"])
    assert bob.wait_joined("b", seconds(5))
    bob.send("a1", room="a").wait(seconds(5))
    bob.send("b1", room="b").wait(seconds(5))
    assert messages(collect(alice, 0.3), "a") == ["a1"]
    bob.close()
    assert first.server.shutdown()
    second = make_server(data_dir=data_dir, port=port)
    del second  # alice reconnects on her own; bob's token is in the same tokens file
    bob2 = clients.make(port, bob_token, rooms=["a", "b"])
    assert bob2.wait_joined("b", seconds(10))
    next_of(alice, Connected, 15)
    bob2.send("a2", room="a").wait(seconds(5))
    bob2.send("b2", room="b").wait(seconds(5))
    got = collect(alice, 1.0)
    assert messages(got, "a") == ["a2"] and messages(got, "b") == ["b2"]
    assert not [e for e in got if type(e).__name__ == "Gap"]
    assert set(alice.rooms) == {"a", "b"}


def test_an_old_style_client_is_unchanged(make_server: MakeServer,
                                          clients: ClientPool) -> None:
    """No rooms=: the default room from the welcome, sends and members as before."""
    running = make_server()
    old = clients.make(running.port, running.add_user("old"))
    new = clients.make(running.port, running.add_user("new"))
    welcome = old.connect(seconds(5))
    new.connect(seconds(5))
    assert welcome.room == "lobby" and old.room == "lobby" and old.rooms == ("lobby",)
    seq = old.send("hello").wait(seconds(5))
    got = next_of(new, protocol.Message)
    assert (got.body, got.seq, got.room) == ("hello", seq, "lobby")
    assert new.wait_for_member("old", seconds(5))
