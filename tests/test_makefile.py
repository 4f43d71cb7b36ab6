"""The Makefile as a user meets it: ``make run`` in a fresh copy of the repository
(no .venv, no certificates, no tokens) sets everything up, shows alice and bob
talking, and stops cleanly on Ctrl-C; a second run reuses what the first made.

Each test runs on a free port, in a copy of the work tree under a temporary directory,
with every process in its own process group, which is checked to be empty at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, seconds

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]


def _copy_work_tree(target: Path) -> None:
    """What a fresh clone holds: tracked files plus new files that are not ignored, as
    they are now (uncommitted edits included). Falls back to a filtered copy."""
    listed = subprocess.run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, timeout=seconds(60), check=False)
    if listed.returncode != 0:
        shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(
            ".git", ".venv", "run", "*.pem", "*.key", "__pycache__", ".*_cache", "wheels"))
        return
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    copy = tmp_path_factory.mktemp("fresh-clone")
    _copy_work_tree(copy)
    assert not (copy / ".venv").exists() and not (copy / "run").exists()
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


class Make:
    """``make ARGS`` in its own process group, its output collected line by line."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.lines: list[str] = []
        self.seen = threading.Event()
        self._wanted = ""
        self.proc = subprocess.Popen(
            ["make", "--no-print-directory", *args], cwd=cwd, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True, env={**os.environ, "PY": os.environ.get("PY", "python3")})
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="make-reader")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self.lines.append(raw.rstrip("\n"))
                if self._wanted and self._wanted in raw:
                    self.seen.set()

    def wait_for(self, text: str, timeout: float) -> None:
        with self._lock:
            self._wanted = text
            if any(text in line for line in self.lines):
                self.seen.set()
        if not self.seen.wait(seconds(timeout)):
            pytest.fail(f"no {text!r} within {timeout} s:\n{self.output[-4000:]}")

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def exit_code(self, timeout: float) -> int:
        """Wait for make to exit; on timeout fail with what it printed and who is left."""
        try:
            return self.proc.wait(timeout=seconds(timeout))
        except subprocess.TimeoutExpired:
            left = subprocess.run(["ps", "-o", "pid,stat,wchan:20,args", "-g",
                                   str(self.proc.pid)], capture_output=True, text=True,
                                  timeout=seconds(10), check=False).stdout
            pytest.fail(f"make still running after {timeout} s; processes:\n{left}\n"
                        f"output:\n{self.output[-3000:]}")

    def group_gone(self, timeout: float) -> bool:
        """Whether every process of the group has exited (polled against a deadline)."""
        pause = threading.Event()
        deadline = time.monotonic() + seconds(timeout)
        while True:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return True
            if time.monotonic() > deadline:
                return False
            pause.wait(0.05)

    def close(self) -> None:
        if self.proc.poll() is None or not self.group_gone(0.1):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=seconds(30))
        self._reader.join(timeout=seconds(30))
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _said(output: str, listener: str, speaker: str) -> list[int]:
    pattern = re.compile(rf"^{listener} \| .*\b{speaker}: hello from {speaker} #(\d+)$", re.M)
    return sorted(int(n) for n in pattern.findall(output))


def test_make_run_on_a_fresh_copy_then_ctrl_c(fresh_copy: Path) -> None:
    """The README's ``make run``: venv, install, certificates, tokens, then alice and bob
    talk over TLS; Ctrl-C stops the server cleanly and leaves no process behind."""
    make = Make(fresh_copy, "run", f"PORT={free_port()}", "DEMO_COUNT=3")
    try:
        make.wait_for("Ctrl-C stops the server", timeout=400)
        out = make.output
        assert "new development CA certs/ca.pem" in out
        assert _said(out, "alice", "bob") == [1, 2, 3], out[-3000:]
        assert _said(out, "bob", "alice") == [1, 2, 3], out[-3000:]
        assert re.search(r"^server \| .*event=auth .*user=alice", out, re.M)
        os.killpg(make.proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        make.exit_code(timeout=30)
        assert make.group_gone(10), "processes left behind after Ctrl-C"
        assert "event=stopped clean=True" in make.output, make.output[-2000:]
    finally:
        make.close()
    for key in ("certs/ca.key", "certs/server.key", "run/tokens.json", "run/alice.token",
                "run/bob.token", "run/carol.token"):
        assert stat.S_IMODE((fresh_copy / key).stat().st_mode) == 0o600, key


def test_make_demo_again_reuses_certificates_and_tokens(fresh_copy: Path) -> None:
    """A second run makes nothing new, and ``make demo`` ends by itself with exit 0."""
    if not (fresh_copy / "run" / "alice.token").exists():
        pytest.skip("needs the first test's run")
    before = {p: (fresh_copy / p).read_bytes() for p in ("certs/ca.pem", "run/alice.token")}
    make = Make(fresh_copy, "demo", f"PORT={free_port()}", "DEMO_COUNT=2", "DEMO_EVERY=0.2")
    try:
        assert make.exit_code(timeout=120) == 0, make.output[-3000:]
        assert make.group_gone(10)
    finally:
        make.close()
    out = make.output
    assert "nothing to do" in out and "written to" not in out, out[-3000:]
    assert _said(out, "alice", "bob") == [1, 2]
    assert "event=stopped clean=True" in out
    assert before == {p: (fresh_copy / p).read_bytes() for p in before}
