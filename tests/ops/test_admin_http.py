"""The admin listener is no weak spot: it serves exactly three paths (GET and HEAD),
closes after each response, refuses oversized heads (431) and slow ones (closed at
the header deadline, however slowly the bytes drip), caps its connections, and keeps
serving other admin clients and the chat meanwhile. Off loopback it needs TLS and a
bearer token (401 otherwise). A crash of its thread exits 70, like any essential
thread's."""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest

from securechat.errors import ConfigError
from securechat.server.ops.config import AdminConfig
from securechat.server.tokens import add_token
from tests.ops.admin_support import (
    AdminServer,
    admin_address,
    open_admin,
    read_all,
    request,
    split_response,
)
from tests.support import (
    Certs,
    RunningServer,
    ServerProcess,
    clean_env,
    publish,
    run_command,
    seconds,
    server_argv,
    server_cli_command,
    wait_for,
)

TOKEN = "s3cret-admin-token-0123456789"


def chat_still_works(running: RunningServer) -> None:
    """A login and a publish over TLS on the chat port, acknowledged."""
    wire, _ = running.user(f"chat{time.monotonic_ns()}")
    assert publish(wire, ["still here"])[0]["type"] == "ack"


def test_three_paths_get_and_head_everything_else_404_or_405(
        admin_server: AdminServer) -> None:
    running = admin_server()
    address = admin_address(running)
    status, headers, body = request(address, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["connection"] == "close" and headers["content-length"] == "3"
    status, headers, body = request(address, "/healthz", method="HEAD")
    assert (status, body) == (200, b"") and headers["content-length"] == "3"
    # A query string is ignored (ready once the store's first probe write ended).
    wait_for(lambda: request(address, "/readyz?verbose=1")[0] == 200, what="ready")
    for path in ("/", "/metrics/", "/admin", "/healthz/../metrics", "/favicon.ico"):
        assert request(address, path)[0] == 404, path
    status, headers, _ = request(address, "/metrics", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert request(address, "/nope", method="DELETE")[0] == 404
    with open_admin(address) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        assert split_response(read_all(sock))[0] == 400


def test_an_oversized_head_gets_431_and_others_are_served_meanwhile(
        admin_server: AdminServer) -> None:
    running = admin_server()
    address = admin_address(running)
    with open_admin(address) as big:
        big.sendall(b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 9000)
        assert request(address, "/healthz")[0] == 200  # served while the big one waits
        with contextlib.suppress(OSError):  # the server may have closed already
            big.sendall(b"a" * 4000)
        status, headers, body = split_response(read_all(big))
    assert status == 431 and headers["connection"] == "close", body
    chat_still_works(running)


def test_slowloris_is_closed_at_the_header_deadline_however_slow_the_drip(
        admin_server: AdminServer) -> None:
    """Five clients that drip a head one byte at a time never finish it: each is
    closed once the 2 s header deadline (from accept, not from the last byte) is past;
    meanwhile a normal admin request and the chat are served."""
    running = admin_server(admin=AdminConfig(listen="127.0.0.1:0", header_timeout=2.0))
    address = admin_address(running)
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 200
    drips = [open_admin(address) for _ in range(5)]
    started = time.monotonic()
    try:
        for sock in drips:
            sock.sendall(head[:1])
        assert request(address, "/healthz")[0] == 200  # served beside them
        chat_still_works(running)
        closed = [False] * len(drips)
        rounds = 0
        while not all(closed):
            assert time.monotonic() - started < seconds(10), "slow clients never closed"
            rounds += 1
            for n, sock in enumerate(drips):
                if closed[n]:
                    continue
                try:
                    sock.sendall(head[rounds % len(head):rounds % len(head) + 1])
                    sock.settimeout(0.05)
                    closed[n] = sock.recv(1) == b""
                except TimeoutError:
                    pass
                except OSError:
                    closed[n] = True
        assert time.monotonic() - started >= 1.9  # not before the deadline
        assert rounds >= 3  # they were still dripping when closed
    finally:
        for sock in drips:
            sock.close()
    assert request(address, "/healthz")[0] == 200


def test_the_connection_cap_closes_extra_connections_at_once(
        admin_server: AdminServer) -> None:
    running = admin_server(admin=AdminConfig(listen="127.0.0.1:0", max_connections=2,
                                             header_timeout=2.0))
    address = admin_address(running)
    idle = [open_admin(address) for _ in range(2)]
    try:
        extra = open_admin(address)
        started = time.monotonic()
        assert read_all(extra, timeout=1.5) == b""  # closed without a word
        assert time.monotonic() - started < 1.5
        extra.close()
        chat_still_works(running)
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + seconds(5)
    while True:  # the idle ones' slots come back once they close
        try:
            if request(address, "/healthz")[0] == 200:
                break
        except (OSError, AssertionError, IndexError):
            pass
        assert time.monotonic() < deadline


# --------------------------------------------------------------------------- off loopback
def test_a_non_loopback_address_needs_tls_and_a_token() -> None:
    for config in ({"listen": "0.0.0.0:9090"}, {"listen": "0.0.0.0:9090", "tls": True},
                   {"listen": "[::]:9090", "token_file": Path("t")},
                   {"listen": "chat.example:9090"}):
        with pytest.raises(ConfigError, match="--admin-tls and --admin-token-file"):
            AdminConfig(**config)
    AdminConfig(listen="0.0.0.0:9090", tls=True, token_file=Path("t"))
    AdminConfig(listen="[::1]:9090")
    AdminConfig(listen="localhost:9090")


def test_the_command_refuses_a_plain_non_loopback_admin_address(
        tmp_path: Path, certs: Certs) -> None:
    """Exit 2 as for any bad option value, one error line, never listening."""
    tokens = tmp_path / "tokens.json"
    add_token(tokens, "nobody")
    result = run_command(server_cli_command(*server_argv(
        certs, tokens, "--admin-listen", "0.0.0.0:0")), env=clean_env())
    assert result.returncode == 2, result.stderr
    assert "not a loopback address" in result.stderr
    assert "--admin-tls and --admin-token-file" in result.stderr
    assert "listening on" not in result.stderr


def test_over_tls_a_wrong_or_missing_token_gets_401(admin_server: AdminServer,
                                                    tmp_path: Path, certs: Certs) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    running = admin_server(admin=AdminConfig(listen="0.0.0.0:0", tls=True,
                                             token_file=token_file))
    _, port = admin_address(running)
    address = ("127.0.0.1", port)
    ctx = certs.client_context()
    status, headers, _ = request(address, "/metrics", context=ctx)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
        assert request(address, "/readyz", context=ctx,
                       headers={"Authorization": wrong})[0] == 401, wrong
    assert request(address, "/nothing", context=ctx)[0] == 401  # nothing without a token
    good = {"Authorization": f"Bearer {TOKEN}"}
    wait_for(lambda: request(address, "/readyz", context=ctx, headers=good)[0] == 200,
             what="ready (once the store's first probe write ended)")
    assert b"securechat_uptime_seconds" in request(address, "/metrics", context=ctx,
                                                   headers=good)[2]
    with socket.create_connection(address, timeout=seconds(5)) as plain:
        plain.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")  # plain HTTP to the TLS port
        assert b"securechat" not in read_all(plain)
    with pytest.raises(ssl.SSLError):
        request(address, "/readyz", context=ssl.create_default_context())  # not our CA


def test_an_unreadable_or_short_token_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        AdminConfig(listen="127.0.0.1:0", token_file=tmp_path / "missing").read_token()
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="at least 16"):
        AdminConfig(listen="127.0.0.1:0", token_file=short).read_token()


# --------------------------------------------------------------------------- faults
@pytest.mark.timeout(60)
def test_a_crash_of_the_admin_thread_exits_70(tmp_path: Path, certs: Certs) -> None:
    tokens = tmp_path / "tokens.json"
    add_token(tokens, "nobody")
    proc = ServerProcess(*server_argv(certs, tokens, "--admin-listen", "127.0.0.1:0"),
                         env=clean_env(SECURECHAT_TEST_FAULT="admin"))
    try:
        code = proc.wait_exit(20)
    finally:
        proc.kill()
    assert code == 70, proc.stderr[-2000:]
    assert "event=thread_died" in proc.stderr and "thread=securechat-admin" in proc.stderr


def test_without_prometheus_client_admin_listen_says_what_to_install(
        tmp_path: Path, certs: Certs) -> None:
    """prometheus_client made unimportable: --admin-listen is a config error (exit 1)
    naming the extra; without --admin-listen the server never imports it."""
    tokens = tmp_path / "tokens.json"
    add_token(tokens, "nobody")
    script = ("import sys; sys.modules['prometheus_client'] = None; "
              "from securechat.cli.server import main; code = main(sys.argv[1:]); "
              "assert 'prometheus_client' not in sys.modules or "
              "sys.modules['prometheus_client'] is None; sys.exit(code)")
    base = server_argv(certs, tokens, "--check-config")
    with_admin = run_command([sys.executable, "-c", script, *base, "--admin-listen",
                              "127.0.0.1:0"], env=clean_env())
    assert with_admin.returncode == 1, with_admin.stderr
    assert "pip install 'securechat[metrics]'" in with_admin.stderr
    without = run_command([sys.executable, "-c", script, *base], env=clean_env())
    assert without.returncode == 0, without.stderr


def test_a_taken_admin_port_or_chat_port_refuses_the_start(tmp_path: Path,
                                                           certs: Certs) -> None:
    """Exit 1 with one error line naming the address, never listening."""
    tokens = tmp_path / "tokens.json"
    add_token(tokens, "nobody")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_command(server_cli_command(*server_argv(
            certs, tokens, "--admin-listen", f"127.0.0.1:{port}")), env=clean_env())
        assert result.returncode == 1, result.stderr
        assert f"cannot listen on admin address 127.0.0.1:{port}" in result.stderr
        argv = server_argv(certs, tokens, "--admin-listen", "127.0.0.1:0")
        argv[argv.index("--port") + 1] = str(port)
        result = run_command(server_cli_command(*argv), env=clean_env())
        assert result.returncode == 1, result.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "listening on" not in result.stderr
