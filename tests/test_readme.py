"""The README cannot rot: every command in its ``sh`` blocks is either run here, as
written (in a scratch directory), or named by the test that runs it for real."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import RunningServer, run_command

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent

#: Commands run for real elsewhere: pattern -> (test file, text that file must contain).
RUN_ELSEWHERE: dict[str, tuple[str, str]] = {
    r"docker compose up|docker-compose up": ("tests/test_compose.py", '"up"'),
    r"docker compose run --rm client": ("tests/test_compose.py", '"run", "--rm"'),
    r"make run": ("tests/test_makefile.py", '"run"'),
    r"make test": (".ci/run", "make test"),
    r"scripts/docker-engine\.sh (start|stop) \S+": ("tests/test_compose.py", "ENGINE"),
    r"export DOCKER_HOST=\S+": ("tests/test_compose.py", "DOCKER_HOST"),
    r"scripts/docker-wheels\.sh": ("tests/test_compose.py", "docker-wheels.sh"),
    r"securechat-client --ca certs/ca\.pem --token-file run/alice\.token":
        ("tests/cli/test_client_interactive.py", "--token-file"),
    r"securechat-client .* --json --listen": ("tests/cli/test_client.py", '"--listen"'),
    r"sqlite3 data/messages\.sqlite3 .*": ("tests/server/test_backup.py", "sqlite3 data/"),
    r"securechat-client .* --say hello --every 5 --count 10 --wait-for alice":
        ("tests/cli/test_client.py", '"--wait-for"'),
    r"securechat-client .* --room general --room '#ops'":
        ("tests/cli/test_client_rooms.py", '"--room", "general"'),
    r"securechat-client .* --room ops --send \"deploy finished\"":
        ("tests/cli/test_client_rooms.py", '"--room", "ops", "--send"'),
    r"securechat-client .* --all-rooms --json --listen":
        ("tests/cli/test_client_rooms.py", '"--all-rooms", "--json", "--listen"'),
}
#: Commands this file runs itself (see the tests below).
RUN_HERE = [
    r"securechat-certs( --new-ca)? --force",
    r"securechat-token (add|list|revoke)( dave)? --tokens run/tokens\.json",
    r"securechat-token (add|grant|ungrant) erin (--rooms '\S+'|ops)( --read-only)?"
    r" --tokens run/tokens\.json",
    r"make bench",
    r'echo "deploy finished" \| securechat-client .*',
    r'securechat-client .* --send "build green"',
]


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_every_readme_command_is_exercised() -> None:
    """A command added to README without a test fails here until one runs it."""
    for command in readme_commands():
        if any(re.fullmatch(p, command) for p in RUN_HERE):
            continue
        matches = [v for p, v in RUN_ELSEWHERE.items() if re.fullmatch(p, command)]
        assert matches, f"README command not exercised by any test: {command!r}"
        path, needle = matches[0]
        assert needle in (ROOT / path).read_text(), f"{path} should run {command!r}"


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    argv[0] = str(BIN / argv[0])
    return run_command(argv, cwd=cwd, timeout=60, env={**os.environ, "SECURECHAT_TOKENS": ""})


def test_operating_commands_work_as_written(tmp_path: Path) -> None:
    """The certificate and token commands from README, in README's order."""
    certs_dir = tmp_path / "certs"
    assert _run("securechat-certs", tmp_path).returncode == 0  # what make run does first
    before = (certs_dir / "ca.pem").read_bytes()
    commands = [c for c in readme_commands()
                if c.startswith(("securechat-certs", "securechat-token"))]
    assert len(commands) >= 5
    (tmp_path / "run").mkdir()
    for command in commands:
        result = _run(command, tmp_path)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        if command.startswith("securechat-token add"):
            assert result.stdout.startswith("sct1.")
        if command.startswith("securechat-token list"):
            assert result.stdout.startswith("dave\t")
        if command.startswith("securechat-token grant erin ops --read-only"):
            assert result.stdout.startswith("erin\t") and "ops:ro" in result.stdout
        if command.startswith("securechat-token ungrant erin ops"):
            assert "ops" not in result.stdout.split("\t")[-1]
        if command == "securechat-certs --force":
            assert (certs_dir / "ca.pem").read_bytes() == before  # same CA
    assert (certs_dir / "ca.pem").read_bytes() != before  # --new-ca made a new one


def test_scripted_client_commands_work_as_written(tmp_path: Path, server: RunningServer) -> None:
    """README's pipe and --send examples, run by a shell against a live server (the
    port comes from SECURECHAT_PORT, which README documents)."""
    (tmp_path / "certs").mkdir()
    shutil.copy(server.certs.ca_path, tmp_path / "certs" / "ca.pem")
    (tmp_path / "ci.token").write_text(server.add_user("ci") + "\n")
    watcher, _ = server.user("watcher")
    commands = [c for c in readme_commands()
                if c.startswith("echo") or c.endswith('--send "build green"')]
    assert len(commands) == 2
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "SECURECHAT_PORT": str(server.port), "SECURECHAT_HOST": "127.0.0.1",
           "SECURECHAT_SERVER_NAME": "localhost"}
    for command in commands:
        result = run_command(["bash", "-c", command], cwd=tmp_path, env=env, timeout=30)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    bodies = [watcher.expect("msg", skip=("ping", "join", "leave"))["body"] for _ in commands]
    assert bodies == ["deploy finished", "build green"]


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("make") is None,
                    reason="make bench needs make and node (>= 20)")
@pytest.mark.timeout(300)
def test_make_bench_runs() -> None:
    """``make bench`` works; run with --quick so it takes seconds, not minutes."""
    result = run_command(
        ["make", "--no-print-directory", "bench",
         "ARGS=--quick --no-pin --only fanout100,storm500"],
        cwd=ROOT, timeout=240, env={**os.environ, "VENV": str(BIN.parent)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "delivered_per_s=" in result.stdout and "all_auth_s=" in result.stdout
