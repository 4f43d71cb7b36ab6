"""Heartbeats, revocation, shutdown, logs and the server command line."""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
from pathlib import Path

import pytest

from securechat.cli.server import build_parser, config_from_args
from securechat.errors import ConfigError
from securechat.io.tls import server_context
from securechat.server.logs import JsonFormatter, TextFormatter
from securechat.server.tokens import add_token
from tests.support import (
    Certs,
    MakeServer,
    Process,
    RunningServer,
    WireClient,
    run_server_cli,
    seconds,
    server_cli_command,
)


# ------------------------------------------------------------------ heartbeats
def test_server_pings_a_silent_client_and_closes_it_after_three_intervals(
        make_server: MakeServer) -> None:
    """A silent client is pinged, then closed with idle_timeout: not before three
    heartbeat intervals of silence, and soon after."""
    heartbeat = seconds(0.2)
    server = make_server(heartbeat=heartbeat)
    token = server.add_user("alice")
    alice = server.tls_connect()
    started = time.monotonic()  # the server hears alice's last frame (auth) after this
    alice.send({"type": "auth", "token": token})
    alice.expect("welcome", skip=())
    frames = alice.expect_closed(timeout=5)
    elapsed = time.monotonic() - started
    assert [f["type"] for f in frames[:2]] == ["ping", "ping"]
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "idle_timeout"
    # The lower bound is exact, not scaled: silence is counted from the auth frame.
    assert 3 * heartbeat <= elapsed < 3 * heartbeat + seconds(1.5)


def test_a_client_that_answers_pings_stays(make_server: MakeServer) -> None:
    """Answering pings (or sending anything) counts as life: 6 intervals, still connected."""
    heartbeat = seconds(0.2)  # a ping at 1x silence, the cut at 3x: 0.4 s to answer
    server = make_server(heartbeat=heartbeat)
    alice, _ = server.user("alice")
    started = time.monotonic()
    pings = 0
    # Bounded by time passed (six intervals, more than the three that would close it)
    # and by pings answered, whichever comes last; each wait has its own deadline.
    while time.monotonic() - started < 6 * heartbeat or pings < 3:
        frame = alice.recv(timeout=2)
        assert frame == {"type": "ping"}
        pings += 1
        alice.send({"type": "pong"})
    alice.send({"type": "ping"})
    assert alice.expect("pong") == {"type": "pong"}


# ------------------------------------------------------------------ revocation
def test_revoking_a_token_kicks_its_live_sessions(server: RunningServer) -> None:
    """securechat-token revoke (a file change, no signal) closes alice's sessions within
    the tokens poll interval (plus a margin)."""
    alice, _ = server.user("alice")
    bob, _ = server.user("bob")
    alice.expect("join")
    started = time.monotonic()
    server.revoke("alice")
    frames = alice.expect_closed(timeout=5)
    assert frames[-1]["code"] == "revoked"
    assert time.monotonic() - started < server.server.config.tokens_poll + seconds(2)
    assert bob.expect("leave") == {"type": "leave", "room": "lobby",
                                   "user": "alice", "reason": "revoked"}
    bob.send({"type": "ping"})
    assert bob.expect("pong") == {"type": "pong"}


# ------------------------------------------------------------------ shutdown
def test_shutdown_says_bye_with_spread_retry_after(make_server: MakeServer) -> None:
    """Every client gets bye/shutdown with a retry_after inside the spread window, then EOF;
    every server thread is joined (checked by the fixture)."""
    server = make_server(retry_spread=5.0)
    clients = [server.user(f"u{i}")[0] for i in range(12)]
    assert server.server.shutdown()
    hints = []
    for client in clients:
        frames = client.expect_closed()
        byes = [f for f in frames if f["type"] == "bye"]
        assert len(byes) == 1 and byes[0]["reason"] == "shutdown"
        hints.append(byes[0]["retry_after"])
    assert all(0 <= h <= 5.0 for h in hints)
    assert len(set(hints)) > 1, "retry_after should differ between clients"
    assert all(not t.is_alive() for t in server.server.threads())
    assert server.server.shutdown()  # idempotent


# ------------------------------------------------------------------ logs
def test_logs_name_connection_peer_and_user_but_never_the_token(
        server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """Log records carry conn, peer and user, in text and JSON, never the secret."""
    caplog.set_level(logging.DEBUG, logger="securechat")
    token = server.add_user("alice")
    alice, _ = server.login(token)
    bad = server.tls_connect()
    bad.send({"type": "auth", "token": token + "x"})
    bad.expect_closed()
    alice.send({"type": "bye"})
    alice.expect_closed()
    server.server.shutdown()
    text = "\n".join(TextFormatter().format(r) for r in caplog.records)
    jsons = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    secret = token.split(".")[2]
    assert secret not in text and all(secret not in json.dumps(j) for j in jsons)
    events = {j.get("event") for j in jsons}
    assert {"connect", "auth", "join", "leave", "auth_failed", "error"} <= events
    auth = next(j for j in jsons if j.get("event") == "auth")
    assert auth["user"] == "alice" and auth["peer"].startswith("127.0.0.1:")
    assert isinstance(auth["conn"], int)
    assert "event=join" in text and "user=alice" in text


# ------------------------------------------------------------------ command line
def test_help_documents_every_option_default_and_env() -> None:
    """--help shows each option with its default and its environment variable."""
    text = build_parser().format_help()
    for option, default, env in [("--port", "7443", "SECURECHAT_PORT"),
                                 ("--heartbeat", "20.0", "SECURECHAT_HEARTBEAT"),
                                 ("--max-frame", "65536", "SECURECHAT_MAX_FRAME"),
                                 ("--max-pending", "1048576", "SECURECHAT_MAX_PENDING"),
                                 ("--tls-min", "1.3", "SECURECHAT_TLS_MIN")]:
        assert option in text and env in text
        assert f"default: {default}" in " ".join(text.split())


def test_environment_and_flags_precedence() -> None:
    """A flag beats the environment, which beats the default."""
    args = build_parser().parse_args(["--port", "9000"])
    cfg = config_from_args(args, {"SECURECHAT_PORT": "8000", "SECURECHAT_HEARTBEAT": "5",
                                  "SECURECHAT_ROOM": "ops"})
    assert (cfg.port, cfg.heartbeat, cfg.room) == (9000, 5.0, "ops")


def test_cli_reports_config_errors_clearly(tmp_path: Path, certs: Certs) -> None:
    """Bad files exit 1 and bad values exit 2, with one plain line; --check-config exits 0."""
    result = run_server_cli("--cert", str(tmp_path / "missing.pem"), "--key", str(certs.key_path),
                      "--tokens", str(tmp_path / "t.json"))
    assert result.returncode == 1
    assert "missing.pem does not exist" in result.stderr
    add_token(tmp_path / "t.json", "alice")
    result = run_server_cli("--cert", str(certs.cert_path), "--key", str(certs.key_path),
                      "--tokens", str(tmp_path / "t.json"), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    result = run_server_cli("--heartbeat", "0")
    assert result.returncode == 2 and "--heartbeat must be greater than 0" in result.stderr


def test_cli_sigterm_is_a_clean_exit(tmp_path: Path, certs: Certs) -> None:
    """The real command: starts, serves a client, exits 0 on SIGTERM after saying bye."""
    tokens = tmp_path / "t.json"
    token, _ = add_token(tokens, "alice")
    proc = Process(server_cli_command(
        "--port", "0", "--cert", str(certs.cert_path), "--key", str(certs.key_path),
        "--tokens", str(tokens), "--log-format", "json"))
    try:
        line = proc.read_until(lambda text: text.startswith("{") and '"event": "listen"' in text,
                               timeout=15, stream="err")
        port = json.loads(line)["port"]
        raw = socket.create_connection(("127.0.0.1", port), timeout=seconds(5))
        sock = certs.client_context().wrap_socket(raw, server_hostname="localhost")
        sock.sendall(json.dumps({"type": "auth", "token": token}).encode() + b"\n")
        client = WireClient(sock)
        assert client.expect("welcome")["user"] == "alice"
        proc.proc.send_signal(signal.SIGTERM)
        frames = client.expect_closed()
        assert frames[0]["type"] == "bye" and frames[0]["reason"] == "shutdown"
        code, _, err = proc.finish()
        assert code == 0, err
        client.close()
    finally:
        proc.kill()


def test_garbage_key_file_is_named(tmp_path: Path, certs: Certs) -> None:
    """A key file that holds no key is named in the error."""
    key = tmp_path / "server.key"
    key.write_text("not a key\n")
    with pytest.raises(ConfigError, match="does not hold a PEM private key"):
        server_context(certs.cert_path, key)
