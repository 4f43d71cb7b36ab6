"""``securechat-client`` in its scripted modes, as a subprocess against a real server."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from securechat import protocol
from securechat.cli import client as client_cli
from securechat.client import Connected
from tests.client_support import (
    ClientPool,
    CliProcess,
    cli_args,
    cli_env,
    closed_port,
    next_of,
    run_cli,
    token_file,
)
from tests.support import (
    Certs,
    MakeServer,
    RunningServer,
    make_certs,
    seconds,
    wrong_token,
)

pytest_plugins = ["tests.client_support"]


def base_args(running: RunningServer, certs: Certs, port: int | None = None) -> list[str]:
    return cli_args(port or running.port, certs.ca_path)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- in process
def test_help_documents_options_env_exit_codes_and_token_risk(
        capsys: pytest.CaptureFixture[str]) -> None:
    """--help lists every option, its environment variable, the exit codes and the --token risk."""
    with pytest.raises(SystemExit) as info:
        client_cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--ca", "--server-name", "--token", "--token-file",
                   "--json", "--send", "--say", "--every", "--count", "--wait-for",
                   "--max-retries", "--quiet", "--listen", "--history"):
        assert option in text, option
    for env in ("SECURECHAT_HOST", "SECURECHAT_PORT", "SECURECHAT_CA", "SECURECHAT_TOKEN",
                "SECURECHAT_TOKEN_FILE", "SECURECHAT_SERVER_NAME"):
        assert env in text, env
    assert "exit codes" in text and "gave up reconnecting" in text
    assert "/proc/PID/cmdline" in text  # why --token is risky
    assert "/quit" in text and "/help" in text and "/history" in text


@pytest.mark.parametrize(("argv", "message"), [
    ([], "no token"),
    (["--token", "t", "--token-file", "f"], "not both"),
    (["--token", "t", "--send", " "], "non-empty"),
    (["--token", "t", "--count", "3"], "go with --say"),
    (["--token", "t", "--send", "x", "--listen"], "choose one"),
    (["--token", "t", "--port", "70000"], "between 1 and 65535"),
    (["--token", "t", "--max-retries", "-1"], "--max-retries"),
    (["--token-file", "/nonexistent/token"], "cannot read token file"),
    (["--token", "t", "--ca", "/nonexistent/ca.pem", "--send", "x"], "does not exist"),
    (["--token", "two words", "--send", "x"], "malformed"),
])
def test_usage_errors_exit_2(argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """Each usage mistake exits 2 with one error line saying what is wrong."""
    for name in ("SECURECHAT_TOKEN", "SECURECHAT_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert client_cli.main(argv) == client_cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    assert err.strip().splitlines()[-1].startswith("securechat-client: error:")


# --------------------------------------------------------------------------- subprocesses
def test_send_waits_for_the_ack(server: RunningServer, certs: Certs, clients: ClientPool,
                                tmp_path: Path) -> None:
    """--send delivers one message, prints its ack with --json, exits 0."""
    bob = clients.make(server.port, server.add_user("bob"))
    bob.connect(seconds(5))
    alice = token_file(tmp_path, server, "alice")
    done = run_cli(*base_args(server, certs), "--token-file", str(alice), "--json",
                   "--send", "hello from the shell")
    assert done.returncode == 0, done.stderr
    acks = json_lines(done.stdout)
    assert len(acks) == 1 and acks[0]["type"] == "ack"
    received = next_of(bob, protocol.Message)
    assert (received.sender, received.body) == ("alice", "hello from the shell")
    assert received.seq == acks[0]["seq"]
    assert "connected to 127.0.0.1" in done.stderr


def test_stdin_lines_are_sent_in_order(server: RunningServer, certs: Certs,
                                       clients: ClientPool) -> None:
    """Not a terminal: one message per line (blank lines skipped), exit 0 once all acked;
    the token comes from SECURECHAT_TOKEN, the address from the environment."""
    bob = clients.make(server.port, server.add_user("bob"))
    bob.connect(seconds(5))
    env = cli_env(SECURECHAT_TOKEN=server.add_user("alice"), SECURECHAT_HOST="127.0.0.1",
                  SECURECHAT_PORT=str(server.port), SECURECHAT_CA=str(certs.ca_path),
                  SECURECHAT_SERVER_NAME="localhost")
    done = run_cli("--quiet", stdin="one\ntwo\n\nthree\r\nfour", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # --quiet
    bodies = [next_of(bob, protocol.Message).body for _ in range(4)]
    assert bodies == ["one", "two", "three", "four"]


def test_auth_refused_exits_3_without_retrying(make_server: MakeServer, certs: Certs) -> None:
    """A wrong token exits 3 after one attempt, with one error line."""
    running = make_server(auth_failures=0)
    token = running.add_user("alice")
    done = run_cli(*base_args(running, certs), "--token", wrong_token(token), "--send", "x")
    assert done.returncode == client_cli.EXIT_AUTH
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == ["securechat-client: error: auth_failed: unknown or revoked token"]
    assert running.server.stats()["auth_failed"] == 1
    assert "reconnecting" not in done.stderr


def test_untrusted_certificate_exits_4(server: RunningServer, tmp_path: Path,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    """A server certificate from another CA exits 4, pointing at --ca."""
    other = make_certs(tmp_path_factory.mktemp("other-ca"))
    alice = token_file(tmp_path, server, "alice")
    done = run_cli(*base_args(server, other), "--token-file", str(alice), "--send", "x")
    assert done.returncode == client_cli.EXIT_TLS
    assert "did not verify" in done.stderr and "--ca" in done.stderr
    assert "reconnecting" not in done.stderr


def test_gives_up_with_exit_5(server: RunningServer, certs: Certs, tmp_path: Path) -> None:
    """Nobody listening and --max-retries 2: two retries, then exit 5."""
    alice = token_file(tmp_path, server, "alice")
    done = run_cli(*base_args(server, certs, port=closed_port()), "--token-file", str(alice),
                   "--max-retries", "2", "--send", "x")
    assert done.returncode == client_cli.EXIT_GAVE_UP
    assert done.stderr.count("reconnecting in") == 2
    assert "gave up after 2 retries: connection refused" in done.stderr


def test_bot_waits_for_its_peer_then_talks(server: RunningServer, certs: Certs,
                                           clients: ClientPool, tmp_path: Path,
                                           procs: list[CliProcess]) -> None:
    """--say/--every/--count/--wait-for: starts once alice is there, sends 'TEXT #i',
    prints what arrives (JSON lines), lingers, exits 0."""
    bot_token = token_file(tmp_path, server, "bot")
    bot = CliProcess(*base_args(server, certs), "--token-file", str(bot_token), "--json",
                     "--say", "beep", "--every", f"{seconds(0.5):g}", "--count", "2",
                     "--wait-for", "alice")
    procs.append(bot)
    bot.read_until(lambda line: '"connected"' in line)
    alice = clients.make(server.port, server.add_user("alice"))
    alice.connect(seconds(5))
    first = next_of(alice, protocol.Message)
    assert (first.sender, first.body) == ("bot", "beep #1")
    alice.send("hello bot").wait(seconds(5))
    assert next_of(alice, protocol.Message).body == "beep #2"
    bot.read_until(lambda line: "hello bot" in line)
    code, rest, err = bot.finish()
    assert code == 0, err
    events = [json.loads(line) for line in bot.lines] + json_lines(rest)
    assert {"type": "join", "user": "alice", "room": "lobby"} in events
    assert events[-1]["type"] == "closed" and events[-1]["exit_code"] == 0


def test_listen_survives_a_server_restart_and_stops_on_sigterm(
        make_server: MakeServer, certs: Certs, clients: ClientPool, tmp_path: Path,
        procs: list[CliProcess]) -> None:
    """--listen prints messages (text lines), shows the reconnect on stderr, and
    SIGTERM makes it say bye and exit 143."""
    first = make_server(retry_spread=0.1)
    port = first.port
    bob = token_file(tmp_path, first, "bob")
    listener = CliProcess(*base_args(first, certs), "--token-file", str(bob), "--listen")
    procs.append(listener)
    alice = clients.make(port, first.add_user("alice"))
    alice.connect(seconds(5))
    alice.wait_for_member("bob", seconds(10))
    alice.send("before").wait(seconds(5))
    line = listener.read_until(lambda text: "before" in text)
    assert line.endswith(" alice: before") and line[2] == ":" and line[5] == ":"
    first.server.shutdown()
    second = make_server(port=port, retry_spread=0.1)
    next_of(alice, Connected, where=lambda e: e.reconnect, timeout=10)
    alice.wait_for_member("bob", seconds(10))
    alice.send("after").wait(seconds(5))
    listener.read_until(lambda text: text.endswith(" alice: after"))
    listener.proc.send_signal(signal.SIGTERM)
    code, _, err = listener.finish()
    assert code == 128 + signal.SIGTERM
    assert "reconnecting in" in err and "reconnected to" in err
    leave = next_of(alice, protocol.Leave)
    assert (leave.user, leave.reason) == ("bob", "bye")
    assert second.server.stats()["authenticated"] == 2


def test_fatal_error_ends_a_waiting_stdin_reader(server: RunningServer, certs: Certs,
                                                 procs: list[CliProcess],
                                                 tmp_path: Path) -> None:
    """Lines mode with a stdin that never ends still exits when the token is revoked."""
    alice = token_file(tmp_path, server, "alice")
    proc = CliProcess(*base_args(server, certs), "--token-file", str(alice), "--json",
                      open_stdin=True)
    procs.append(proc)
    proc.read_until(lambda line: '"connected"' in line)
    server.revoke("alice")
    code, _, err = proc.finish()
    assert code == client_cli.EXIT_AUTH
    assert "revoked" in err


def test_exit_code_mapping() -> None:
    """Each error class maps to its documented exit code."""
    from securechat.errors import (
        AuthRefused,
        ClientError,
        ConfigError,
        GaveUp,
        TLSVerificationFailed,
    )
    assert client_cli.exit_code(None) == 0
    assert client_cli.exit_code(ClientError("x")) == 1
    assert client_cli.exit_code(ConfigError("x")) == 2
    assert client_cli.exit_code(AuthRefused("revoked", "x")) == 3
    assert client_cli.exit_code(TLSVerificationFailed("x")) == 4
    assert client_cli.exit_code(GaveUp("x")) == 5
