"""The test helpers themselves: a child process with a chatty stderr cannot deadlock
the reader, and SECURECHAT_TEST_SCALE stretches pytest-timeout's limits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from securechat.server.tokens import add_token
from tests.client_support import ClientPool, CliProcess, cli_env
from tests.support import (
    SCALE,
    Certs,
    MakeServer,
    Process,
    ServerProcess,
    free_port,
    seconds,
    server_argv,
    wait_for,
    wrong_token,
)

pytest_plugins = ["tests.client_support"]

CHATTY = ("import sys\n"
          "sys.stderr.write('e' * 1_000_000 + '\\n'); sys.stderr.flush()\n"
          "print('ready', flush=True)\n")


def test_process_drains_stderr_while_reading_stdout() -> None:
    """A child that writes 1 MB to stderr (far more than a pipe holds) before its first
    stdout line is read without blocking, and all of stderr is kept."""
    proc = Process([sys.executable, "-c", CHATTY])
    try:
        assert proc.read_until(lambda line: line == "ready", timeout=10) == "ready"
        code, rest, err = proc.finish()
    finally:
        proc.kill()
    assert code == 0 and rest == ""
    assert len(err) == 1_000_001


def test_cli_process_kill_reaps_and_joins(procs: list[CliProcess]) -> None:
    """kill() ends a client that would wait forever and leaves no reader thread."""
    proc = CliProcess("--host", "127.0.0.1", "--port", str(free_port()), "--token",
                      "sct1.000000000000.x", "--listen", env=cli_env())
    procs.append(proc)
    proc.read_until(lambda line: "reconnecting in" in line, timeout=10, stream="err")
    proc.kill()
    assert proc.proc.returncode is not None
    assert not [r for r in proc._readers if r.is_alive()]
    proc.kill()  # idempotent


def test_cli_process_is_not_blocked_by_a_chatty_stderr(
        make_server: MakeServer, certs: Certs, clients: ClientPool, tmp_path: Path,
        procs: list[CliProcess]) -> None:
    """A client that has written more to stderr than a pipe holds (reconnect lines)
    still connects and prints to stdout: the helper drains stderr as it goes."""
    port = free_port()
    token, _ = add_token(tmp_path / "tokens.json", "bob")  # the server started below uses it
    listener = CliProcess("--host", "127.0.0.1", "--port", str(port), "--ca",
                          str(certs.ca_path), "--server-name", "localhost", "--token", token,
                          "--listen", "--retry-base", "0.0001", "--retry-cap", "0.0002")
    procs.append(listener)
    wait_for(lambda: len(listener.stderr) > 100_000, timeout=30, what="100 kB of stderr")
    running = make_server(port=port)
    alice = clients.make(port, running.add_user("alice"))
    alice.connect(seconds(5))
    assert alice.wait_for_member("bob", seconds(10))
    alice.send("through").wait(seconds(5))
    listener.read_until(lambda line: line.endswith(" alice: through"))


def test_server_process_log_waits_see_lines_already_read(certs: Certs, tmp_path: Path) -> None:
    """ServerProcess searches its log from the start: a line found once (the listen line,
    a tokens reload) is found again, and SIGTERM ends the real server with status 0."""
    tokens = tmp_path / "tokens.json"
    add_token(tokens, "nobody")
    proc = ServerProcess(*server_argv(certs, tokens, "--tokens-poll", "0.05"), env=cli_env())
    try:
        assert proc.port == proc.port > 0
        add_token(tokens, "alice")
        proc.wait_tokens(2)
        proc.wait_tokens(2)
        assert proc.stop() == 0
    finally:
        proc.kill()
    assert any("listening on" in line for line in proc.log_lines())


@pytest.mark.timeout(7)
def test_timeout_markers_are_scaled(request: pytest.FixtureRequest) -> None:
    """The timeout marker pytest-timeout reads is the written one times SCALE."""
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None and float(marker.args[0]) == 7 * SCALE


def test_default_timeout_is_scaled(pytestconfig: pytest.Config) -> None:
    """The ini timeout (60 s) is multiplied by SCALE."""
    assert pytestconfig._env_timeout == pytest.approx(  # type: ignore[attr-defined]
        float(pytestconfig.getini("timeout")) * SCALE)


def test_seconds_scales_and_wrong_token_differs() -> None:
    """seconds() multiplies by SCALE; wrong_token() always changes the token."""
    assert seconds(2) == 2 * SCALE
    for token in ("sct1.abc.xyzA", "sct1.abc.xyzB"):
        wrong = wrong_token(token)
        assert wrong != token and len(wrong) == len(token) and wrong[:-1] == token[:-1]
