"""Faults of the message log, with the real ``securechat-server``: a data dir it cannot
use, one held by another running server, a corrupt or newer database (each: refuse to
start, exit 1, name the file and say why), and a disk that fills while serving
(publishes refused with store_unavailable and retry_after, nothing acknowledged or
delivered that was not stored, serving goes on when space returns, seq has no hole)."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Certs, ServerProcesses, WireClient, publish

DB = "messages.sqlite3"


@pytest.fixture
def servers(tmp_path: Path, certs: Certs) -> Iterator[ServerProcesses]:
    procs = ServerProcesses(tmp_path, certs)
    yield procs
    procs.close()


def refusal(servers: ServerProcesses, *args: str) -> str:
    """Run a server that must refuse to start: exit status 1; its error line."""
    result = servers.run(*args)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("securechat-server: error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "listening on" not in result.stderr
    return errors[0]


def a_log_with_messages(servers: ServerProcesses, count: int = 300) -> Path:
    """A real log the server made (``count`` messages), the server stopped cleanly."""
    alice = servers.token("alice")
    proc = servers.start()
    wire, _ = servers.login(proc, alice)
    publish(wire, [f"kept {i} " + "k" * 100 for i in range(count)])
    assert proc.stop() == 0
    path = servers.data_dir / DB
    assert path.is_file() and not path.with_name(DB + "-wal").exists()
    return path


# --------------------------------------------------------------------------- the data dir
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any mode bits, so a "
                    "read-only data dir cannot be shown to be refused as root")
def test_a_data_dir_that_is_not_writable_is_refused(servers: ServerProcesses) -> None:
    servers.data_dir.mkdir(mode=0o500)
    try:
        line = refusal(servers)
    finally:
        servers.data_dir.chmod(0o700)
    assert str(servers.data_dir) in line and "not writable" in line


def test_a_data_dir_under_a_regular_file_is_refused(servers: ServerProcesses,
                                                    tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    line = refusal(servers, "--data-dir", str(blocker / "data"))
    assert str(blocker / "data") in line and "cannot create" in line
    assert "Not a directory" in line


def test_a_data_dir_that_is_a_regular_file_is_refused(servers: ServerProcesses,
                                                      tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    line = refusal(servers, "--data-dir", str(blocker))
    assert str(blocker) in line and "not a directory" in line


def test_a_data_dir_others_may_write_is_refused(servers: ServerProcesses) -> None:
    servers.data_dir.mkdir()
    servers.data_dir.chmod(0o777)
    line = refusal(servers)
    assert str(servers.data_dir) in line and "chmod go-w" in line


def test_a_data_dir_in_use_by_another_server_is_refused_and_the_first_serves_on(
        servers: ServerProcesses) -> None:
    """The second server on the same data dir exits 1 naming the lock file and the
    first server's pid; the first goes on storing and delivering."""
    alice_t, bob_t = servers.token("alice"), servers.token("bob")
    first = servers.start()
    alice, _ = servers.login(first, alice_t)
    publish(alice, ["before"])
    line = refusal(servers)
    assert str(servers.data_dir / "server.lock") in line
    assert f"pid {first.proc.pid}" in line and "in use" in line
    bob, _ = servers.login(first, bob_t)
    (ack,) = publish(alice, ["after"])
    assert ack["seq"] == 2 and bob.expect("msg", skip=("ping", "join"))["body"] == "after"
    assert first.stop() == 0


def test_a_restart_after_kill_9_is_not_locked_out(servers: ServerProcesses) -> None:
    """The lock is the kernel's (flock): a killed server's stale lock file is no lock."""
    first = servers.start()
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert (servers.data_dir / "server.lock").read_text().strip() == str(first.proc.pid)
    second = servers.start()
    assert second.stop() == 0


# --------------------------------------------------------------------------- the database
def test_a_file_that_is_not_a_database_is_refused_and_named(
        servers: ServerProcesses) -> None:
    path = a_log_with_messages(servers, 5)
    path.write_bytes(b"this is not a database at all\n" * 200)
    line = refusal(servers)
    assert str(path) in line and "not a SQLite database" in line
    assert path.read_bytes().startswith(b"this is not")  # left as it was, for the operator


def test_a_damaged_database_is_refused_and_named(servers: ServerProcesses) -> None:
    """Pages in the middle of a real log overwritten: the server refuses it, names the
    file and says corrupt, and does not touch it."""
    path = a_log_with_messages(servers)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) >= 6 * page
    data[2 * page:len(data) - page] = b"\xa5" * (len(data) - 3 * page)
    path.write_bytes(bytes(data))
    line = refusal(servers)
    assert str(path) in line and "corrupt" in line
    assert path.read_bytes() == bytes(data)


def test_a_database_of_a_newer_schema_is_refused_and_named(
        servers: ServerProcesses) -> None:
    path = a_log_with_messages(servers, 5)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    finally:
        conn.close()
    line = refusal(servers)
    assert str(path) in line and "newer" in line and "schema 2" in line


# --------------------------------------------------------------------------- a full disk
def sigxfsz_ignored(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGXFSZ (/proc/PID/status SigIgn)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGXFSZ - 1) & 1)
    raise AssertionError("no SigIgn line")  # pragma: no cover


def refused(wire: WireClient, mid: str) -> dict[str, Any]:
    """The next frame for the sender's message ``mid``: an ack or an error."""
    while True:
        frame = wire.recv()
        if frame["type"] == "ping":
            wire.send({"type": "pong"})
        elif frame["type"] in ("ack", "error") and frame.get("id") == mid:
            return frame
        else:
            assert frame["type"] in ("msg", "join", "leave"), frame


def test_a_disk_that_fills_while_serving_refuses_and_recovers(
        servers: ServerProcesses) -> None:
    """The server's file-size limit lowered to 0 from outside (as a full disk): it stays
    up; publishes get store_unavailable with their id and retry_after, no ack, and
    reach nobody; once the limit is back, the resend is stored with the next seq
    (no hole), delivered, and history holds exactly the acknowledged messages."""
    alice_t, bob_t = servers.token("alice"), servers.token("bob")
    proc = servers.start()
    pid = proc.proc.pid
    assert sigxfsz_ignored(pid), "a file-size limit would kill the server, not fail a write"
    alice, _ = servers.login(proc, alice_t, client_id="a1")
    bob, _ = servers.login(proc, bob_t)
    publish(alice, ["one", "two", "three"], ["s1", "s2", "s3"])
    assert [bob.expect("msg", skip=("ping", "join"))["seq"] for _ in range(3)] == [1, 2, 3]

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
    except (PermissionError, OSError) as exc:  # pragma: no cover - a sandbox
        pytest.skip(f"cannot lower the server's RLIMIT_FSIZE: {exc}")
    for mid in ("f1", "f2", "f3"):
        alice.send({"type": "msg", "body": f"while full {mid}", "id": mid})
        answer = refused(alice, mid)
        assert answer["type"] == "error" and answer["code"] == "store_unavailable", answer
        assert isinstance(answer["retry_after"], int | float) and answer["retry_after"] > 0
    assert proc.proc.poll() is None, f"the server died: {proc.proc.returncode}"
    alice.send({"type": "ping"})
    assert alice.expect("pong") == {"type": "pong"}  # the session goes on

    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    pause = threading.Event()
    for _ in range(20):  # refused for retry_after after the failure: wait as told, resend
        alice.send({"type": "msg", "body": "while full f1", "id": "f1"})
        answer = refused(alice, "f1")
        if answer["type"] == "ack":
            break
        assert answer["code"] == "store_unavailable", answer
        pause.wait(float(answer["retry_after"]))
    else:
        raise AssertionError("the server never stored a message again")
    assert answer == {"type": "ack", "room": "lobby", "id": "f1", "seq": 4}  # new, and no hole
    (ack,) = publish(alice, ["later"], ["s4"])
    assert ack["seq"] == 5
    got = [bob.expect("msg", skip=("ping",)) for _ in range(2)]
    assert [(m["seq"], m["body"]) for m in got] == [(4, "while full f1"), (5, "later")]

    alice.send({"type": "history", "id": "h", "after": 0, "limit": 50})
    bodies = []
    while (frame := alice.recv())["type"] != "history_end":
        if frame["type"] == "history_msg":
            bodies.append((frame["seq"], frame["body"]))
    assert bodies == [(1, "one"), (2, "two"), (3, "three"), (4, "while full f1"),
                      (5, "later")]
    assert proc.stop() == 0
