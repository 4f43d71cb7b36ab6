"""Faults never leave the server half-alive: a bad tokens file, a thread that dies, a bug
in one connection's handler, running out of file descriptors. Real TLS on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from securechat.errors import ServerThreadDied
from securechat.server.session import Session
from securechat.server.tokens import add_token, revoke_tokens
from tests.support import (
    Certs,
    LogRecords,
    MakeServer,
    RunningServer,
    ServerProcess,
    WireClient,
    seconds,
    server_argv,
    tls_connect,
    wait_for,
)


def _replace(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace the file in one step (temp file + rename), so the server sees one change."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


class _PollCounter:
    """Counts the server's polls of the tokens file (a spy around the real watcher)."""

    def __init__(self, running: RunningServer) -> None:
        watcher = running.server._watcher
        assert watcher is not None
        self.count = 0
        real = watcher.poll

        def poll() -> Any:
            self.count += 1
            return real()
        watcher.poll = poll  # type: ignore[method-assign]

    def wait_polls(self, n: int) -> None:
        target = self.count + n
        wait_for(lambda: self.count >= target, what=f"{n} more polls of the tokens file")


# ------------------------------------------------------------------ item 1: bad tokens file
def test_broken_tokens_file_keeps_the_last_good_tokens_and_a_fix_revokes_again(
        make_server: MakeServer, server_log: LogRecords) -> None:
    """Not UTF-8, nested too deep, wrong types: logged once each, new clients still get in
    with the old tokens; once fixed, revoking alice kicks her live session."""
    server = make_server()
    alice, _ = server.user("alice")
    bob_token = server.add_user("bob")
    polls = _PollCounter(server)
    good = server.tokens_path.read_bytes()
    for data, reason in [(b"\xff", "not UTF-8"), (b"[" * 100_000, "nested too deeply"),
                         (b'{"version": 1, "tokens": [1]}', "malformed entry 0"),
                         (json.dumps({"version": 1, "tokens": [{"id": "0123456789ab",
                                      "name": 7, "salt": "00", "hash": "sha256:"}]}).encode(),
                          "'name' must be a string")]:
        server_log.clear()
        _replace(server.tokens_path, data)
        wait_for(lambda: bool(server_log.named("tokens_reload_failed")),
                 what="the reload failure to be logged")
        polls.wait_polls(5)
        failures = server_log.named("tokens_reload_failed")
        assert len(failures) == 1, [r.getMessage() for r in failures]
        assert reason in failures[0].getMessage()
        assert "keeping the previous tokens" in failures[0].getMessage()
        assert not server_log.tracebacks()
        bob, welcome = server.login(bob_token)  # a new client is served, old tokens
        assert welcome["user"] == "bob"
        bob.send({"type": "bye"})
        bob.expect_closed()
    assert server.server._accept_thread is not None
    assert server.server._accept_thread.is_alive()
    _replace(server.tokens_path, good)
    wait_for(lambda: bool(server_log.named("tokens_reloaded")), what="the fixed file to load")
    revoke_tokens(server.tokens_path, "alice")
    frames = alice.expect_closed(timeout=5)
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "revoked"


@pytest.mark.parametrize("mode", [0o660, 0o666], ids=oct)
def test_tokens_file_made_writable_by_others_is_refused_on_reload(
        make_server: MakeServer, server_log: LogRecords, mode: int) -> None:
    """chmod 660/666 while running: the change (a revocation) is refused with the chmod
    hint and alice stays; chmod 600 applies it and alice is kicked."""
    server = make_server()
    alice, _ = server.user("alice")
    server.add_user("bob")
    polls = _PollCounter(server)
    path = server.tokens_path
    revoked = path.with_name("revoked.json")
    _replace(revoked, path.read_bytes())
    revoke_tokens(revoked, "alice")
    _replace(path, revoked.read_bytes(), mode)  # the revocation, in a file with a bad mode
    wait_for(lambda: bool(server_log.named("tokens_reload_failed")),
             what="the refused reload to be logged")
    polls.wait_polls(3)
    failures = server_log.named("tokens_reload_failed")
    assert len(failures) == 1
    text = failures[0].getMessage()
    assert str(path) in text and f"mode {mode:04o}" in text and f"chmod 600 {path}" in text
    alice.send({"type": "ping"})
    assert alice.expect("pong") == {"type": "pong"}  # the last good set is still in force
    path.chmod(0o600)
    frames = alice.expect_closed(timeout=5)
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "revoked"


# ------------------------------------------------------------------ item 2: threads that die
def test_token_watcher_fault_is_logged_once_and_contained(
        make_server: MakeServer, server_log: LogRecords) -> None:
    """A bug in the token watcher: one traceback, accepting goes on, and once the bug is
    gone a revocation still kicks."""
    server = make_server()
    alice, _ = server.user("alice")
    bob_token = server.add_user("bob")
    calls = [0]

    def fault(where: str) -> None:
        if where == "tokens":
            calls[0] += 1
            raise RuntimeError("simulated watcher bug")
    server.server._inject_fault = fault
    wait_for(lambda: calls[0] >= 5, what="5 polls that fail")
    assert len(server_log.tracebacks()) == 1
    assert "token watcher failed" in server_log.tracebacks()[0].getMessage()
    bob, _ = server.login(bob_token)
    server.server._inject_fault = None
    revoke_tokens(server.tokens_path, "alice")
    assert alice.expect_closed(timeout=5)[-1]["code"] == "revoked"
    bob.expect("leave")
    assert not server.server.failed.is_set()


@contextlib.contextmanager
def _serving(running: RunningServer) -> Iterator[list[BaseException | None]]:
    """Run serve_forever() in a thread; yields [exception raised, or None once it returned]."""
    outcome: list[BaseException | None] = []

    def serve() -> None:
        try:
            running.server.serve_forever()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)
    thread = threading.Thread(target=serve, name="test-serve-forever")
    thread.start()
    try:
        yield outcome
    finally:
        running.server.shutdown()
        thread.join(seconds(10))
        assert not thread.is_alive()


@pytest.mark.parametrize("where", ["accept", "io"])
def test_a_dead_thread_makes_serve_forever_raise(
        make_server: MakeServer, server_log: LogRecords, where: str) -> None:
    """A bug in the accept thread or an I/O loop: one traceback, serve_forever raises
    ServerThreadDied at once (the caller exits non-zero), shutdown still joins everything."""
    server = make_server()
    token = server.add_user("alice")
    server.server._set_test_fault(where)
    with _serving(server) as outcome:
        raw = socket.create_connection((server.host, server.port), timeout=seconds(5))
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(raw.close)
            if where == "io":
                with contextlib.suppress(OSError):
                    sock = server.certs.client_context().wrap_socket(
                        raw, server_hostname="localhost")
                    cleanup.callback(sock.close)
                    sock.sendall(json.dumps({"type": "auth", "token": token}).encode() + b"\n")
            wait_for(lambda: bool(outcome), what="serve_forever to give up")
        assert isinstance(outcome[0], ServerThreadDied)
        assert server.server.failed.is_set()
        assert len(server_log.tracebacks()) == 1
        assert len(server_log.named("thread_died")) == 1


def test_serve_forever_returns_on_interrupt(make_server: MakeServer) -> None:
    """interrupt() (what the signal handler calls) makes serve_forever return, no error."""
    server = make_server()
    with _serving(server) as outcome:
        server.server.interrupt()
        wait_for(lambda: bool(outcome), what="serve_forever to return")
        assert outcome == [None]


@pytest.fixture
def server_process(tmp_path: Path, certs: Certs) -> Iterator[Callable[..., ServerProcess]]:
    """Factory for real server processes (JSON log, fast tokens poll); every one is
    stopped and reaped."""
    started: list[ServerProcess] = []
    tokens = tmp_path / "tokens.json"

    def factory(*args: str, env: dict[str, str] | None = None,
                nofile: int | None = None) -> ServerProcess:
        if not tokens.exists():
            add_token(tokens, "nobody")
        proc = ServerProcess(*server_argv(certs, tokens, "--log-format", "json",
                                          "--tokens-poll", "0.05", *args),
                             env={**os.environ, **(env or {})}, nofile=nofile)
        started.append(proc)
        proc.wait_event("listen")  # started, or fail here
        return proc
    yield factory
    for proc in started:
        proc.stop()


def _tls_login(port: int, certs: Certs, token: str) -> WireClient:
    """Connect and send auth (the answer is the test's to read)."""
    client = tls_connect(port, certs.client_context())
    try:
        client.send({"type": "auth", "token": token})
    except BaseException:
        client.close()
        raise
    return client


@pytest.mark.parametrize("where", ["accept", "io"])
def test_server_command_exits_70_when_a_thread_dies(
        server_process: Callable[..., ServerProcess], certs: Certs, tmp_path: Path,
        where: str) -> None:
    """securechat-server whose accept thread or I/O loop dies: one traceback in the log,
    then exit status 70 so that a supervisor restarts it (SECURECHAT_TEST_FAULT)."""
    token, _ = add_token(tmp_path / "tokens.json", "alice")
    proc = server_process(env={"SECURECHAT_TEST_FAULT": where})
    with contextlib.suppress(OSError, AssertionError):
        client = _tls_login(proc.port, certs, token)
        try:
            client.expect_closed(timeout=5)
        finally:
            client.close()
    assert proc.proc.wait(timeout=seconds(10)) == 70
    proc.stop()
    text = proc.stderr
    assert text.count("Traceback") == 1, text
    assert f"injected test fault ({where})" in text
    assert len(proc.events("thread_died")) == 1
    assert "exiting with status 70" in text


def test_server_command_with_a_watcher_fault_keeps_serving(
        server_process: Callable[..., ServerProcess], certs: Certs, tmp_path: Path) -> None:
    """The token watcher failing on every poll is logged once; the server keeps serving
    and exits 0 on SIGTERM."""
    token, _ = add_token(tmp_path / "tokens.json", "alice")
    proc = server_process(env={"SECURECHAT_TEST_FAULT": "tokens"})
    wait_for(lambda: "token watcher failed" in proc.stderr, what="the watcher fault log")
    client = _tls_login(proc.port, certs, token)
    assert client.expect("welcome")["user"] == "alice"
    client.close()
    assert proc.stop() == 0
    assert proc.stderr.count("Traceback") == 1


# ------------------------------------------------------------------ item 3: internal_error
def test_a_bug_handling_one_connection_sends_internal_error_and_closes_cleanly(
        make_server: MakeServer, server_log: LogRecords,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """mallory's message handler raises (a simulated bug): mallory gets error
    internal_error, then close_notify; bob is unaffected and sees her leave."""
    server = make_server()
    bob, _ = server.user("bob")
    token = server.add_user("mallory")
    real = Session._on_message

    def buggy(self: Session, frame: Any) -> None:
        if self.user == "mallory":
            raise RuntimeError("simulated bug")
        real(self, frame)
    monkeypatch.setattr(Session, "_on_message", buggy)
    mallory = server.tls_connect(ragged_eofs=False)
    sock = mallory.sock
    mallory.send({"type": "auth", "token": token})
    mallory.expect("welcome")
    bob.expect("join")
    mallory.send({"type": "msg", "id": 1, "body": "boom"})
    error = mallory.expect("error")
    assert error["code"] == "internal_error" and error["message"]
    # Clean end: close_notify makes recv() return b"" (a bare FIN would raise SSLEOFError).
    sock.settimeout(seconds(5))
    try:
        rest = sock.recv(65536)
    except ssl.SSLEOFError:  # pragma: no cover - the failure this test exists to catch
        pytest.fail("connection ended without close_notify")
    assert rest == b""
    mallory.close()
    assert bob.expect("leave") == {"type": "leave", "room": "lobby", "user": "mallory",
                                   "reason": "internal_error"}
    bob.send({"type": "msg", "id": 7, "body": "still here"})
    assert bob.expect("ack")["id"] == 7
    assert len(server_log.tracebacks()) == 1
    assert "connection handler failed" in server_log.tracebacks()[0].getMessage()
    assert not server.server.failed.is_set()


# ------------------------------------------------------------------ item 6: out of fds
def test_out_of_file_descriptors_pauses_accept_without_spinning(
        server_process: Callable[..., ServerProcess], certs: Certs, tmp_path: Path) -> None:
    """With RLIMIT_NOFILE exhausted by idle connections, the server process uses little CPU
    and logs one line per pause; once the connections go it accepts (and serves) again."""
    token, _ = add_token(tmp_path / "tokens.json", "alice")
    proc = server_process("--max-unauth-per-ip", "1000", "--handshake-timeout", "60",
                          "--auth-timeout", "60", nofile=32)
    held = []
    try:
        for _ in range(50):
            held.append(socket.create_connection(("127.0.0.1", proc.port),
                                                 timeout=seconds(5)))
        first = proc.wait_event("accept_paused")
        assert "out of file descriptors (EMFILE)" in first["msg"]
        cpu_before = proc.cpu_seconds()
        window = 1.5
        threading.Event().wait(window)  # a measurement window, not a synchronisation
        cpu = proc.cpu_seconds() - cpu_before
        pauses = proc.events("accept_paused")
        assert cpu < 0.3, f"server used {cpu:.2f} s of CPU in {window} s while out of fds"
        # pauses of 0.1, 0.2, 0.4, 0.8, then 1 s: a handful of lines, not 10 a second
        assert 1 <= len(pauses) <= 6, pauses
        assert pauses[-1]["failed"] == len(pauses)
    finally:
        for sock in held:
            sock.close()
    proc.wait_event("accept_resumed")
    client = _tls_login(proc.port, certs, token)
    assert client.expect("welcome", timeout=10)["user"] == "alice"
    client.close()
    assert proc.stop() == 0
    assert "Traceback" not in proc.stderr
