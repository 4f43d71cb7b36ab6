"""The test helpers themselves: a child process with a chatty stderr cannot deadlock
the reader, and SECURECHAT_TEST_SCALE stretches pytest-timeout's limits."""

from __future__ import annotations

import sys

import pytest

from tests.client_support import CliProcess, cli_env
from tests.support import SCALE, Process, free_port, seconds, wrong_token

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
