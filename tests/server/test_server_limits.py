"""Limits that keep one peer, one user or many idle sockets from taking the server from
everyone else: the unauthenticated cap, the bound on server_full refusals in flight,
sessions per user, and the global bound on queued bytes. Real TLS on 127.0.0.1."""

from __future__ import annotations

import contextlib
import gc
import socket
import ssl
import threading
import time
import warnings
from typing import Any

import pytest

from securechat.cli.server import build_parser, config_from_args
from securechat.errors import ConfigError
from securechat.server.config import ServerConfig
from tests.support import MakeServer, RunningServer, WireClient, error_codes, seconds, wait_for


def _closed_without_tls(server: RunningServer) -> bool:
    """Open a TCP connection and say nothing: True if the server closes it at once
    (before any TLS byte), False if it waits for a ClientHello."""
    try:
        raw = socket.create_connection((server.host, server.port), timeout=seconds(5))
    except ConnectionResetError:
        return True
    with raw:
        raw.settimeout(seconds(2))
        try:
            return raw.recv(4096) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def _login_retrying(server: RunningServer, token: str, within: float
                    ) -> tuple[WireClient, dict[str, Any]]:
    """Log in, retrying connections that are refused before TLS, until a deadline."""
    deadline = time.monotonic() + seconds(within)
    pause = threading.Event()
    while True:
        # When the server resets the TCP connection before wrap_socket() has looked at
        # it, CPython raises from inside wrap_socket() and never closes the SSLSocket it
        # made: a ResourceWarning (an error under our filterwarnings), not our leak.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                client = server.tls_connect()
            except (ssl.SSLError, OSError):
                if time.monotonic() > deadline:
                    raise
                client = None
            gc.collect()
        if client is None:
            pause.wait(0.05)  # a retry interval, like a real client's backoff
            continue
        client.send({"type": "auth", "token": token})
        return client, client.expect("welcome")


# ------------------------------------------------------------------ 5: unauthenticated cap
def test_silent_connections_cannot_lock_out_a_real_user(make_server: MakeServer) -> None:
    """Silent TCP connections fill the server-wide unauthenticated cap (all from one
    address, under its per-IP cap); new ones are closed before TLS, yet a real client
    still authenticates by pushing out the oldest silent one, and the authenticated
    sessions keep their room under --max-connections."""
    server = make_server(max_connections=8, max_unauth=3, max_unauth_per_ip=64,
                         handshake_timeout=60, auth_timeout=60)
    alice, _ = server.user("alice")
    token = server.add_user("bob")
    silent = [socket.create_connection((server.host, server.port)) for _ in range(3)]
    try:
        wait_for(lambda: server.server.stats()["pending_auth"] == 3, what="3 pending")
        assert _closed_without_tls(server)  # cap reached, the silent ones are young
        assert server.server.stats()["refused_unauth"] >= 1
        bob, welcome = _login_retrying(server, token, within=10)
        assert welcome["user"] == "bob"
        silent[0].settimeout(seconds(5))
        with contextlib.suppress(ConnectionResetError):
            assert silent[0].recv(4096) == b""  # the oldest one was pushed out
        stats = server.server.stats()
        assert stats["evicted_unauth"] >= 1
        assert stats["pending_auth"] <= 3
        assert stats["connections"] <= 2 + 3
    finally:
        for raw in silent:
            raw.close()
    alice.send({"type": "ping"})
    assert alice.expect("pong", skip=("ping", "join")) == {"type": "pong"}
    bob.send({"type": "ping"})
    assert bob.expect("pong") == {"type": "pong"}
    wait_for(lambda: server.server.stats()["unauthenticated"] == 0, what="silent ones gone")
    stats = server.server.stats()
    assert (stats["connections"], stats["pending_auth"]) == (2, 0)  # no slot leaked


def test_server_full_refusals_in_flight_are_bounded(make_server: MakeServer) -> None:
    """When full, a few newcomers are told server_full over TLS; past --max-refusing of
    those at once, the rest are closed right after accept with no TLS handshake."""
    server = make_server(max_connections=1, max_refusing=2, handshake_timeout=60,
                         auth_timeout=60)
    _alice, _ = server.user("alice")
    waiting = [socket.create_connection((server.host, server.port)) for _ in range(2)]
    try:
        wait_for(lambda: server.server.stats()["refusing"] == 2, what="2 refusals in flight")
        assert _closed_without_tls(server)
        assert server.server.stats()["refused_server_full_at_once"] >= 1
    finally:
        for raw in waiting:
            raw.close()
    wait_for(lambda: server.server.stats()["refusing"] == 0, what="refusals done")
    client = server.tls_connect()
    frames = client.expect_closed()
    assert error_codes(frames) == ["server_full"] and frames[0]["retry_after"] >= 1.0


def test_max_unauth_is_validated_and_defaults_below_max_connections() -> None:
    """--max-unauth must stay below --max-connections; its default (0) means half of
    it, at most 1024."""
    assert ServerConfig().unauth_limit == 1024
    assert ServerConfig(max_connections=100).unauth_limit == 50
    assert ServerConfig(max_connections=100, max_unauth=99).unauth_limit == 99
    with pytest.raises(ConfigError, match="--max-unauth"):
        ServerConfig(max_connections=100, max_unauth=100)
    with pytest.raises(ConfigError, match="--max-refusing"):
        ServerConfig(max_refusing=0)
    with pytest.raises(ConfigError, match="--max-sessions-per-user"):
        ServerConfig(max_sessions_per_user=0)


def test_new_limits_are_flags_and_env_vars() -> None:
    """Every new limit is an option with its default in --help and an environment
    variable, derived from the config field like every other option."""
    text = " ".join(build_parser().format_help().split())
    for option, default, env in [
            ("--max-unauth", "0", "SECURECHAT_MAX_UNAUTH"),
            ("--max-refusing", "64", "SECURECHAT_MAX_REFUSING"),
            ("--max-sessions-per-user", "16", "SECURECHAT_MAX_SESSIONS_PER_USER"),
            ("--max-queued-total", "268435456", "SECURECHAT_MAX_QUEUED_TOTAL"),
            ("--frame-rate", "20.0", "SECURECHAT_FRAME_RATE"),
            ("--frame-burst", "100", "SECURECHAT_FRAME_BURST"),
            ("--max-errors", "10", "SECURECHAT_MAX_ERRORS")]:
        assert option in text and env in text
        assert f"default: {default};" in text, option
    args = build_parser().parse_args(["--max-errors", "4"])
    config = config_from_args(args, {"SECURECHAT_MAX_SESSIONS_PER_USER": "3",
                                     "SECURECHAT_MAX_QUEUED_TOTAL": "1000000"})
    assert (config.max_sessions_per_user, config.max_queued_total, config.max_errors) == (
        3, 1000000, 4)


# ------------------------------------------------------------------ 9: sessions per user
def test_sessions_per_user_are_capped(make_server: MakeServer) -> None:
    """A user's third session with a cap of 2 gets too_many_sessions and a close; once
    one ends, a new one is welcome again. Other users are unaffected."""
    server = make_server(max_sessions_per_user=2)
    token = server.add_user("alice")
    first, _ = server.login(token)
    server.login(token)
    third = server.tls_connect()
    third.send({"type": "auth", "token": token})
    frames = third.expect_closed()
    assert error_codes(frames) == ["too_many_sessions"]
    assert "2 sessions" in frames[0]["message"]
    _bob, welcome = server.user("bob")
    assert welcome["user"] == "bob"
    first.send({"type": "bye"})
    first.expect_closed()
    wait_for(lambda: server.server.stats()["connections"] == 2, what="first session gone")
    _again, welcome = server.login(token)
    assert welcome["user"] == "alice"


def test_default_cap_is_16_sessions_per_user(server: RunningServer) -> None:
    """With defaults, one token holds 16 sessions and the 17th is refused."""
    token = server.add_user("alice")
    for _ in range(16):
        server.login(token)
    extra = server.tls_connect()
    extra.send({"type": "auth", "token": token})
    assert error_codes(extra.expect_closed()) == ["too_many_sessions"]


# ------------------------------------------------------------------ 9: global queued bytes
def _stalled_login(server: RunningServer, name: str, rcvbuf: int | None) -> WireClient:
    """Log in, then never read again (``rcvbuf``: a small receive buffer stalls sooner)."""
    client, _ = server.login(server.add_user(name), rcvbuf=rcvbuf)
    return client


def test_global_queue_bound_cuts_the_largest_queue_first(make_server: MakeServer) -> None:
    """Two readers stall; once all queues together pass --max-queued-total, the one with
    the largest queue is cut (slow_consumer) first, long before its own --max-pending or
    --write-timeout, while a healthy member keeps receiving every message."""
    server = make_server(max_queued_total=512 * 1024, max_pending=64 * 1024 * 1024,
                         write_timeout=60, msg_rate=0)
    # The small buffer absorbs little, so its server-side queue is always the larger.
    small = _stalled_login(server, "small", 4096)
    _big = _stalled_login(server, "big", 1024 * 1024)
    healthy, _ = server.user("healthy")
    pub, _ = server.user("pub")
    assert healthy.expect("join") == {"type": "join", "room": "lobby", "user": "pub"}
    body = "x" * 4000
    sent = 0
    leaves: list[str] = []
    small_frames: list[dict[str, Any]] = []
    big_present_at_first_cut = False
    deadline = time.monotonic() + seconds(30)
    after_cut: float | None = None
    while time.monotonic() < deadline:
        if after_cut is not None and time.monotonic() > after_cut:
            break  # kept publishing for a while after the first cut
        pub.send({"type": "msg", "body": body, "id": sent})
        pub.expect("ack", skip=("ping", "join", "leave"))
        sent += 1
        while True:  # the healthy member keeps up message by message
            frame = healthy.recv()
            if frame["type"] == "msg":
                assert frame["seq"] == sent
                break
            if frame["type"] == "ping":
                healthy.send({"type": "pong"})
                continue
            assert frame["type"] == "leave" and frame["reason"] == "slow_consumer", frame
            if not leaves:
                big_present_at_first_cut = "big" in server.server.room.members()
                # Read what the cut member was still owed right away: the server gives
                # its last frame one CLOSE_LINGER to get through.
                small_frames = small.expect_closed(timeout=10)
                after_cut = time.monotonic() + seconds(0.5)
            leaves.append(frame["user"])
    assert leaves, "no stalled member was cut"
    assert leaves[0] == "small"
    assert big_present_at_first_cut
    errors = [f for f in small_frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["slow_consumer"]
    assert "--max-queued-total" in errors[0]["message"]
    assert server.server.stats()["queued_bytes"] <= 512 * 1024 + 2 * 64 * 1024
    server.close_clients()
    wait_for(lambda: server.server.stats()["connections"] == 0, what="everyone gone")
    assert server.server.stats()["queued_bytes"] == 0  # the running total did not drift
