"""Every documented exit code of ``securechat-client``, through the real command against
a real server, ``--json`` included; never 0 without a login the server accepted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from securechat.cli import client as client_cli
from tests.client_support import (
    CliProcess,
    cli_args,
    cli_command,
    cli_env,
    closed_port,
    run_cli,
    token_file,
)
from tests.support import Certs, MakeServer, RunningServer, seconds, wrong_token

pytest_plugins = ["tests.client_support"]

def closed_event(stdout: str) -> dict[str, object]:
    """The ``closed`` JSON event (the last one printed)."""
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    closed = [e for e in events if e.get("type") == "closed"]
    assert closed, f"no closed event in {events}"
    last: dict[str, object] = closed[-1]
    return last


# --------------------------------------------------------------------------- 0
@pytest.mark.parametrize("mode", [["--json"], []], ids=["json", "lines"])
def test_empty_stdin_exits_0_only_after_the_welcome(server: RunningServer, certs: Certs,
                                                    tmp_path: Path, mode: list[str]) -> None:
    """Nothing to send: exit 0 once the server welcomed us."""
    alice = token_file(tmp_path, server)
    done = run_cli(*cli_args(server.port, certs.ca_path, "--token-file", str(alice), *mode),
                   stdin="")
    assert done.returncode == client_cli.EXIT_OK, done.stderr
    assert "connected to" in done.stderr
    if mode:
        assert closed_event(done.stdout)["exit_code"] == 0


def test_json_lines_exit_0_once_every_line_is_acknowledged(
        server: RunningServer, certs: Certs, tmp_path: Path) -> None:
    """--json with input: exit 0 after an ack for every line."""
    alice = token_file(tmp_path, server)
    done = run_cli(*cli_args(server.port, certs.ca_path, "--token-file", str(alice), "--json"),
                   stdin="one\ntwo\n")
    assert done.returncode == client_cli.EXIT_OK, done.stderr
    acks = [e for e in map(json.loads, done.stdout.splitlines()) if e["type"] == "ack"]
    assert len(acks) == 2


# --------------------------------------------------------------------------- 1
@pytest.mark.parametrize("mode", [["--json"], []], ids=["json", "lines"])
def test_unreadable_stdin_exits_1_with_a_clear_error(server: RunningServer, certs: Certs,
                                                     tmp_path: Path, mode: list[str]) -> None:
    """stdin that cannot be read (opened write-only) is exit 1 with a message, no traceback."""
    alice = token_file(tmp_path, server)
    fd = os.open(tmp_path / "stdin", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        done = subprocess.run(
            cli_command(*cli_args(server.port, certs.ca_path, "--token-file", str(alice), *mode)),
            stdin=fd, capture_output=True, text=True, timeout=seconds(20), env=cli_env(),
            check=False)
    finally:
        os.close(fd)
    assert done.returncode == client_cli.EXIT_ERROR, done.stderr
    assert "cannot read standard input: Bad file descriptor" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- 2
@pytest.mark.parametrize(("extra", "message"), [
    ([], "no token"),
    (["--token", "t", "--retry-cap", "0.01"], "--retry-cap must be at least the base"),
    (["--token", "t", "--port", "0"], "--port must be between 1 and 65535"),
    # The server would answer bad_frame, which is retried: refused here instead.
    (["--token", "sct1.t\u00f6ken"], "the token is malformed: auth token must be visible ASCII"),
    (["--token", "x" * 300], "the token is malformed: auth token is longer than 256"),
])
def test_usage_errors_exit_2_in_json_mode(extra: list[str], message: str) -> None:
    """A bad option with --json and empty stdin is exit 2 before any connection."""
    done = run_cli("--json", *extra, stdin="")
    assert done.returncode == client_cli.EXIT_USAGE, done.stderr
    assert message in done.stderr


# --------------------------------------------------------------------------- 3
@pytest.mark.parametrize("mode", [["--json"], [], ["--json", "--listen"], ["--send", "x"]],
                         ids=["json", "lines", "json-listen", "send"])
def test_wrong_token_exits_3(make_server: MakeServer, certs: Certs, mode: list[str]) -> None:
    """A refused token is exit 3 in every scripted mode, even with nothing to send."""
    running = make_server(auth_failures=0)
    wrong = wrong_token(running.add_user("alice"))
    done = run_cli(*cli_args(running.port, certs.ca_path, "--token", wrong, *mode), stdin="")
    assert done.returncode == client_cli.EXIT_AUTH, done.stderr
    assert "auth_failed" in done.stderr and "reconnecting" not in done.stderr
    if "--json" in mode:
        assert closed_event(done.stdout)["exit_code"] == client_cli.EXIT_AUTH


# --------------------------------------------------------------------------- 4
@pytest.mark.parametrize("mode", [["--json"], [], ["--send", "x"]],
                         ids=["json", "lines", "send"])
def test_no_ca_against_a_private_ca_exits_4(server: RunningServer, tmp_path: Path,
                                            mode: list[str]) -> None:
    """Without --ca the system trust store does not know the test CA: exit 4, not retried."""
    alice = token_file(tmp_path, server)
    done = run_cli(*cli_args(server.port, None, "--token-file", str(alice), *mode), stdin="")
    assert done.returncode == client_cli.EXIT_TLS, done.stderr
    assert "did not verify" in done.stderr and "reconnecting" not in done.stderr
    if "--json" in mode:
        assert closed_event(done.stdout)["exit_code"] == client_cli.EXIT_TLS


# --------------------------------------------------------------------------- 5
@pytest.mark.parametrize("mode", [["--json"], [], ["--json", "--listen"]],
                         ids=["json", "lines", "json-listen"])
def test_server_down_with_max_retries_exits_5(certs: Certs, mode: list[str]) -> None:
    """Nobody listening and --max-retries 2: two retries, then exit 5."""
    done = run_cli(*cli_args(closed_port(), certs.ca_path, "--token", "t", "--max-retries", "2",
                             *mode), stdin="")
    assert done.returncode == client_cli.EXIT_GAVE_UP, done.stderr
    assert done.stderr.count("reconnecting in") == 2
    assert "gave up after 2 retries: connection refused" in done.stderr
    if "--json" in mode:
        assert closed_event(done.stdout)["exit_code"] == client_cli.EXIT_GAVE_UP


# --------------------------------------------------------------------------- 128+N
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_exits_128_plus_n(server: RunningServer, certs: Certs, tmp_path: Path,
                                   procs: list[CliProcess], signum: signal.Signals) -> None:
    """SIGTERM/SIGINT while connected in --json mode with stdin open: exit 128+N."""
    alice = token_file(tmp_path, server)
    proc = CliProcess(*cli_args(server.port, certs.ca_path, "--token-file", str(alice), "--json"),
                      open_stdin=True)
    procs.append(proc)
    proc.read_until(lambda line: '"type": "connected"' in line, timeout=10)
    proc.proc.send_signal(signum)
    code, _, err = proc.finish(timeout=10)
    assert code == 128 + signum, err
