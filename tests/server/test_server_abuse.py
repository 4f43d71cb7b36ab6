"""A hostile peer, before and after auth: malformed auth frames count as failed logins,
every frame after auth has a budget, repeated errors end the session, and nothing a
peer sends can flood the server's log. All over real TLS."""

from __future__ import annotations

import contextlib
import socket

import pytest

from tests.support import (
    LogRecords,
    MakeServer,
    RunningServer,
    WireClient,
    error_codes,
    seconds,
    wait_for,
)

# ------------------------------------------------------------------ 4: auth frames
BAD_AUTH = {
    "wrong type": b'{"type":"auth","token":42}\n',
    "null": b'{"type":"auth","token":null}\n',
    "lone surrogate": b'{"type":"auth","token":"\\ud800"}\n',
    "surrogate in a token": b'{"type":"auth","token":"sct1.000000000000.\\udfff\\ud800"}\n',
    "control characters": b'{"type":"auth","token":"sct1.\\u0000\\u001b[2J\\r\\n"}\n',
    "several KiB": b'{"type":"auth","token":"' + b"A" * 3000 + b'"}\n',
    "over the pre-auth frame limit": b'{"type":"auth","token":"' + b"A" * 6000 + b'"}\n',
    "wrong token": b'{"type":"auth","token":"sct1.000000000000.nope"}\n',
}


@pytest.mark.parametrize("payload", list(BAD_AUTH.values()), ids=list(BAD_AUTH))
def test_malformed_auth_is_refused_closed_and_throttled(
        make_server: MakeServer, server_log: LogRecords, payload: bytes) -> None:
    """Each malformed auth frame gets auth_failed/bad_frame/frame_too_large and a close,
    counts as a failed login (so a good token is then auth_throttled), no traceback."""
    server = make_server(auth_failures=3)
    good = server.add_user("alice")
    for _ in range(3):
        client = server.tls_connect()
        client.send(payload)
        codes = error_codes(client.expect_closed())
        assert len(codes) == 1 and codes[0] in ("auth_failed", "bad_frame",
                                                "frame_too_large"), codes
    client = server.tls_connect()
    client.send({"type": "auth", "token": good})
    frames = client.expect_closed()
    assert error_codes(frames) == ["auth_throttled"]
    assert server.server.stats()["auth_failed"] == 3
    assert not [r for r in server_log.records if r.exc_info], "a traceback was logged"


# ------------------------------------------------------------------ 7: frame budget
def test_ping_flood_is_rate_limited_then_cut(make_server: MakeServer) -> None:
    """Pings past the frame burst are dropped with rate_limited; those count as errors,
    so a client that keeps flooding is closed with too_many_errors."""
    server = make_server(frame_rate=1.0, frame_burst=5, max_errors=3)
    alice, _ = server.user("alice")
    alice.send(b'{"type":"ping"}\n' * 50)
    frames = alice.expect_closed()
    assert [f["type"] for f in frames[:5]] == ["pong"] * 5
    assert error_codes(frames) == ["rate_limited"] * 3 + ["too_many_errors"]
    assert all(f["retry_after"] > 0 for f in frames if f.get("code") == "rate_limited")


def test_normal_pings_are_well_inside_the_default_budget(server: RunningServer) -> None:
    """Defaults leave room for any sane client: 50 pings in a row all get pongs."""
    alice, _ = server.user("alice")
    alice.send(b'{"type":"ping"}\n' * 50)
    assert [alice.recv()["type"] for _ in range(50)] == ["pong"] * 50
    alice.send({"type": "msg", "body": "still here", "id": 1})
    assert alice.expect("ack", skip=("ping", "msg"))["id"] == 1


def test_bad_frames_end_the_session_after_max_errors(make_server: MakeServer) -> None:
    """A few bad frames get their error and the session stays; one past --max-errors
    in a minute gets too_many_errors and a close, and only that session is affected."""
    server = make_server(max_errors=3)
    alice, _ = server.user("alice")
    bob, _ = server.user("bob")
    alice.expect("join")
    alice.send(b'{}\n{"type":"teleport"}\n[1]\n')
    assert [alice.recv()["code"] for _ in range(3)] == ["bad_frame", "unknown_type",
                                                        "bad_frame"]
    alice.send({"type": "ping"})
    assert alice.recv() == {"type": "pong"}
    alice.send(b"{}\n" * 100)
    frames = alice.expect_closed()
    assert error_codes(frames) == ["too_many_errors"]
    assert bob.expect("leave") == {"type": "leave", "room": "lobby", "user": "alice",
                                   "reason": "too_many_errors"}
    bob.send({"type": "ping"})
    assert bob.recv() == {"type": "pong"}


def test_repeated_auth_counts_as_an_error(make_server: MakeServer) -> None:
    """auth on a live session is already_authenticated and spends from the error budget."""
    server = make_server(max_errors=2)
    token = server.add_user("alice")
    alice, _ = server.login(token)
    for _ in range(2):
        alice.send({"type": "auth", "token": token})
        assert alice.recv()["code"] == "already_authenticated"
    alice.send({"type": "auth", "token": token})
    assert error_codes(alice.expect_closed()) == ["too_many_errors"]


def test_default_error_budget_cuts_a_garbage_flood(server: RunningServer) -> None:
    """A flood of ``{}`` lines with default settings: 10 bad_frame errors, then the close.
    (One TLS record's worth, so the client is not still writing when the server closes.)"""
    alice, _ = server.user("alice")
    alice.send(b"{}\n" * 5000)
    assert error_codes(alice.expect_closed()) == ["bad_frame"] * 10 + ["too_many_errors"]


# ------------------------------------------------------------------ 8: logs
def test_garbage_flood_logs_a_bounded_number_of_lines(
        make_server: MakeServer, server_log: LogRecords) -> None:
    """Even with the error budget out of the way, 20,000 bad frames from one session
    make a handful of log lines plus one "suppressed N similar" summary at close."""
    server = make_server(max_errors=1_000_000, frame_rate=0)
    alice, _ = server.user("alice")
    alice.send(b"{}\n" * 20000)
    for _ in range(20000):
        assert alice.recv()["code"] == "bad_frame"
    alice.send({"type": "bye"})
    alice.expect_closed()
    wait_for(lambda: server.server.stats()["connections"] == 0, what="the session closed")
    assert len(server_log.records) < 20, server_log.events()
    summaries = [r for r in server_log.records if getattr(r, "event", "") == "suppressed"]
    assert len(summaries) == 1
    assert summaries[0].getMessage() == "suppressed 19995 similar"


def test_failed_logins_from_one_address_log_a_bounded_number_of_lines(
        make_server: MakeServer, server_log: LogRecords) -> None:
    """40 connections with a wrong token from one address: at most the per-address
    burst of lines, not three lines each."""
    server = make_server(auth_failures=0)
    for _ in range(40):
        client = server.tls_connect()
        client.send({"type": "auth", "token": "sct1.000000000000.nope"})
        assert error_codes(client.expect_closed()) == ["auth_failed"]
        client.close()
    assert server.server.stats()["auth_failed"] == 40
    lines = [e for e in server_log.events() if e != "listen"]
    assert len(lines) <= 20, lines


def test_tcp_connect_without_tls_is_not_logged_at_info(
        server: RunningServer, server_log: LogRecords) -> None:
    """Port scans and plain-text probes never reach TLS: nothing at INFO. A real TLS
    client still gets its connect line."""
    for probe in (b"", b"GET / HTTP/1.0\r\n\r\n"):
        raw = socket.create_connection((server.host, server.port), timeout=seconds(5))
        with raw, contextlib.suppress(OSError):  # the server may reset it first
            raw.sendall(probe)
            raw.shutdown(socket.SHUT_WR)
            while raw.recv(4096):
                pass
    wait_for(lambda: server.server.stats()["unauthenticated"] == 0, what="probes gone")
    assert server_log.records == []
    client: WireClient = server.tls_connect()
    client.send({"type": "ping"})
    client.expect_closed()
    assert server_log.events()[0] == "connect"


def test_log_throttle_counts_and_reports_per_key() -> None:
    """Pure: burst lines per window per key; the count held back is reported on the
    first line of the next window, or by pop_suppressed when the key is done."""
    from securechat.server.logs import LogThrottle  # here, so the file imports on older trees

    throttle = LogThrottle(burst=2, window=10.0, max_keys=2)
    assert [throttle.admit("a", 0.0) for _ in range(5)] == [0, 0, None, None, None]
    assert throttle.admit("b", 1.0) == 0  # keys are independent
    assert throttle.admit("a", 10.0) == 3  # new window: report the 3 held back
    assert throttle.admit("a", 10.5) == 0
    assert throttle.admit("a", 11.0) is None
    assert throttle.pop_suppressed("a") == 1
    assert throttle.pop_suppressed("a") == 0
    throttle.admit("c", 12.0)
    throttle.admit("d", 12.0)
    assert len(throttle) == 2  # least recently used forgotten first
