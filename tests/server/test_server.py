"""Integration tests: a real server, real TLS on 127.0.0.1, trustme certificates."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from securechat.server import client_key
from tests.support import MakeServer, RunningServer, WireClient, seconds, wrong_token


# ------------------------------------------------------------------ authentication
def test_auth_ok_gets_welcome(server: RunningServer) -> None:
    """A valid token gets a welcome naming the user, the room and the heartbeat."""
    _, welcome = server.user("alice")
    assert welcome["user"] == "alice"
    assert welcome["room"] == "lobby"
    assert welcome["members"] == ["alice"]
    assert welcome["heartbeat"] == 20
    assert welcome["seq"] == 0
    assert welcome["max_frame"] == 65536
    assert welcome["protocol"] == 3
    assert welcome["epoch"] == server.server.room.epoch  # the log's identity
    assert welcome["session"].startswith(server.server.session_prefix + "-")


def test_wrong_token_is_refused_and_closed(server: RunningServer) -> None:
    """A wrong token gets auth_failed, then the connection is closed."""
    token = server.add_user("alice")
    client = server.tls_connect()
    client.send({"type": "auth", "token": wrong_token(token)})
    frames = client.expect_closed()
    assert [f["code"] for f in frames] == ["auth_failed"]
    assert server.server.stats()["auth_failed"] == 1


def test_failed_logins_are_throttled_per_ip(make_server: MakeServer) -> None:
    """After the allowed failures, even a good token from that address is refused for now."""
    server = make_server(auth_failures=3)
    good = server.add_user("alice")
    for _ in range(3):
        client = server.tls_connect()
        client.send({"type": "auth", "token": "sct1.000000000000.nope"})
        assert client.expect_closed()[0]["code"] == "auth_failed"
    client = server.tls_connect()
    client.send({"type": "auth", "token": good})
    frames = client.expect_closed()
    assert frames[0]["code"] == "auth_throttled"
    assert frames[0]["retry_after"] > 0


def test_message_before_auth_is_refused(server: RunningServer) -> None:
    """A msg before auth gets not_authenticated and the connection is closed."""
    client = server.tls_connect()
    client.send({"type": "msg", "body": "hi"})
    assert [f["code"] for f in client.expect_closed()] == ["not_authenticated"]


def test_auth_timeout(make_server: MakeServer) -> None:
    """A client that finishes TLS but never sends auth is told auth_timeout and closed,
    not before the deadline and soon after it."""
    auth_timeout = seconds(0.6)
    server = make_server(handshake_timeout=auth_timeout, auth_timeout=auth_timeout)
    started = time.monotonic()  # before connect: the server's clock starts at accept
    client = server.tls_connect()
    assert [f["code"] for f in client.expect_closed()] == ["auth_timeout"]
    elapsed = time.monotonic() - started
    assert auth_timeout <= elapsed < auth_timeout + seconds(2)


def test_second_auth_is_an_error_not_a_close(server: RunningServer) -> None:
    """A second auth on a live session is refused with an error; the session goes on."""
    token = server.add_user("alice")
    client, _ = server.login(token)
    client.send({"type": "auth", "token": token})
    assert client.expect("error")["code"] == "already_authenticated"
    client.send({"type": "ping"})
    client.expect("pong", skip=())


def test_one_token_several_sessions(server: RunningServer) -> None:
    """Two devices with one token: both join; the second is not announced as a new user."""
    token = server.add_user("alice")
    bob, _ = server.user("bob")
    a1, _ = server.login(token)
    assert bob.expect("join")["user"] == "alice"
    a2, welcome = server.login(token)
    assert welcome["members"] == ["alice", "bob"]
    a1.send({"type": "msg", "body": "from device 1"})
    assert a2.expect("msg")["body"] == "from device 1"  # the sender's other device gets it
    assert bob.expect("msg")["from"] == "alice"


# ------------------------------------------------------------------ messages
def test_ack_seq_and_no_spoofing(server: RunningServer) -> None:
    """The sender gets an ack with the seq; others get the message from the real user."""
    alice, _ = server.user("alice")
    bob, _ = server.user("bob")
    alice.expect("join")
    alice.send({"type": "msg", "body": "hello", "id": "c1", "from": "mallory"})
    ack = alice.expect("ack")
    assert ack == {"type": "ack", "room": "lobby", "id": "c1", "seq": 1}
    msg = bob.expect("msg")
    assert msg["from"] == "alice"
    assert msg["body"] == "hello"
    assert msg["seq"] == 1
    assert msg["ts"].endswith("Z") and "T" in msg["ts"]
    alice.send({"type": "msg", "body": "again"})
    assert alice.expect("ack") == {"type": "ack", "room": "lobby", "id": None, "seq": 2}


def test_resent_id_is_acked_once_and_delivered_once(server: RunningServer) -> None:
    """A client (with a client id) resending after a lost ack does not make others see
    the message twice: the resend's ack carries the original seq and duplicate."""
    alice, _ = server.user("alice", client_id="alice-phone")
    bob, _ = server.user("bob")
    alice.expect("join")
    alice.send({"type": "msg", "body": "once", "id": "dup-1"})
    assert alice.expect("ack") == {"type": "ack", "room": "lobby", "id": "dup-1", "seq": 1}
    alice.send({"type": "msg", "body": "once", "id": "dup-1"})
    assert alice.expect("ack") == {"type": "ack", "room": "lobby",
                                   "id": "dup-1", "seq": 1, "duplicate": True}
    alice.send({"type": "msg", "body": "next", "id": "dup-2"})
    assert alice.expect("ack")["seq"] == 2
    assert [bob.expect("msg")["body"] for _ in range(2)] == ["once", "next"]


@pytest.mark.parametrize("io_threads", [1, 3])
def test_broadcast_exact_counts_and_order(make_server: MakeServer, io_threads: int) -> None:
    """3 publishers x 40 messages into 12 members: every member gets every other
    session's message exactly once, in seq order, with no gap; with 3 I/O threads the
    members are spread over loops, so delivery crosses threads. (The test uses one
    thread: kernel buffers hold what is not read yet, and no SSL object is shared.)"""
    server = make_server(io_threads=io_threads, msg_rate=0)
    members = [server.user(f"u{i}")[0] for i in range(12)]
    for index, member in enumerate(members):  # everyone sees the later joins first
        for _ in range(len(members) - 1 - index):
            member.expect("join")
    publishers = members[:3]
    per_pub = 40
    total = per_pub * len(publishers)
    for n in range(per_pub):
        for p, pub in enumerate(publishers):
            pub.send({"type": "msg", "body": f"p{p}-{n}", "id": n})
    for index, member in enumerate(members):
        own = per_pub if index < len(publishers) else 0
        msgs: list[dict[str, Any]] = []
        acks: list[int] = []
        while len(msgs) < total - own or len(acks) < own:
            frame = member.recv(timeout=10)
            if frame["type"] == "msg":
                msgs.append(frame)
            elif frame["type"] == "ack":
                acks.append(frame["seq"])
            else:
                raise AssertionError(f"unexpected {frame}")
        assert sorted([f["seq"] for f in msgs] + acks) == list(range(1, total + 1))
        assert [f["seq"] for f in msgs] == sorted(f["seq"] for f in msgs)
        for p in range(len(publishers)):
            if p != index:  # each publisher's messages arrive in the order sent
                bodies = [f["body"] for f in msgs if f["body"].startswith(f"p{p}-")]
                assert bodies == [f"p{p}-{n}" for n in range(per_pub)]


def test_presence_join_and_leave(server: RunningServer) -> None:
    """Others see join when a user arrives and leave (with the reason) when they go."""
    alice, _ = server.user("alice")
    bob, welcome = server.user("bob")
    assert welcome["members"] == ["alice", "bob"]
    assert alice.expect("join") == {"type": "join", "room": "lobby", "user": "bob"}
    bob.send({"type": "bye"})
    assert bob.expect_closed() == [{"type": "bye"}]
    assert alice.expect("leave") == {"type": "leave", "room": "lobby",
                                     "user": "bob", "reason": "bye"}
    carol, _ = server.user("carol")
    assert alice.expect("join")["user"] == "carol"
    carol.close()
    assert alice.expect("leave") == {"type": "leave", "room": "lobby",
                                     "user": "carol", "reason": "disconnected"}


def test_ping_pong(server: RunningServer) -> None:
    """A client ping gets a pong."""
    alice, _ = server.user("alice")
    alice.send({"type": "ping"})
    assert alice.recv() == {"type": "pong"}


def test_blank_lines_are_ignored(server: RunningServer) -> None:
    """Empty lines (LF, CRLF, spaces) are no frames and get no error."""
    alice, _ = server.user("alice")
    alice.send(b"\n\r\n   \n")
    alice.send({"type": "ping"})
    assert alice.recv() == {"type": "pong"}


def test_ipv6_listener(make_server: MakeServer) -> None:
    """The server listens on IPv6 too (skipped where the machine has no ::1)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server = make_server(host="::1")
    token = server.add_user("alice")
    raw = socket.create_connection(("::1", server.port), timeout=seconds(5))
    client = WireClient(server.certs.client_context().wrap_socket(raw, server_hostname="::1"))
    server.clients.append(client)
    client.send({"type": "auth", "token": token})
    assert client.expect("welcome")["user"] == "alice"


# ------------------------------------------------------------------ pure helpers
def test_client_key_groups_ipv6_by_64() -> None:
    """Limits key IPv4 by address (mapped forms included) and IPv6 by its /64."""
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
