"""Faults with real processes and a real file-size limit: what was acknowledged
survives ``kill -9``, and a disk that fills refuses writes, numbers nothing it did not
store, and recovers when space returns."""

from __future__ import annotations

import resource
import threading
from pathlib import Path

import pytest

from securechat.store import SQLiteLog
from tests.store import Child


def _stored(lines: list[str]) -> dict[int, str]:
    found = {}
    for line in lines:
        words = line.split()
        if words[0] == "stored":
            found[int(words[1])] = words[2]
    return found


@pytest.mark.parametrize("durability", ["commit", "fsync"])
def test_every_acknowledged_message_survives_kill_9(tmp_path: Path, durability: str) -> None:
    data = tmp_path / "data"
    child = Child(data, durability, kill_after=3000)
    try:
        child.command("send 20000 m")  # more than it will store before it kills itself
        code, rest, err = child.finish(timeout=30)
    finally:
        child.kill()
    assert code == -9, err
    acked = _stored(child.lines + rest.splitlines())
    assert len(acked) == 3000 and sorted(acked) == list(range(1, 3001))
    log = SQLiteLog.open(data)
    try:
        on_disk = {m.seq: m.body for m in log.read_after("lobby", 0, 100_000)}
        assert log.last_seq("lobby") >= 3000
    finally:
        log.close()
    assert {seq: on_disk.get(seq) for seq in acked} == acked


def test_a_full_disk_refuses_numbers_nothing_and_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    child = Child(data)
    try:
        child.send(3, "before")
        child.read_until(lambda s: s.startswith("stored 3 "))
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        try:
            resource.prlimit(child.pid, resource.RLIMIT_FSIZE, (0, hard))
        except (PermissionError, OSError) as exc:
            pytest.skip(f"cannot lower the child's RLIMIT_FSIZE: {exc}")

        child.command("send 5 full")
        failed = child.read_until(lambda s: s.startswith(("failed ", "refused ")))
        assert failed.startswith("failed 0 full-0 disk")  # not numbered; a disk error
        while len(outcomes := [s for s in child.lines if " full-" in s]) < 5:
            child.read_until(lambda s: " full-" in s)
        assert len(outcomes) == 5
        assert all(s.startswith(("failed 0 ", "refused ")) for s in outcomes), outcomes

        resource.prlimit(child.pid, resource.RLIMIT_FSIZE, (soft, hard))
        pause = threading.Event()
        for attempt in range(20):  # refused for retry_after (0.2 s) after the failure
            lines = child.send(1, f"after{attempt}")
            refused = [s for s in lines if s.startswith("refused ")]
            if not refused:
                break
            pause.wait(float(refused[0].split()[2]))  # as a client does: wait retry_after
        else:
            raise AssertionError("the log never took a message again")
        stored = child.read_until(lambda s: s.startswith(("stored ", "failed ")))
        assert stored == f"stored 4 after{attempt}-0"  # seq 4: nothing was consumed
        child.send(2, "later")
        child.read_until(lambda s: s == "stored 6 later-1")
        child.close_log()
    finally:
        child.kill()
    acked = _stored(child.lines)
    assert child.stderr.count("writes failing") == 1  # one warning per episode
    assert sorted(acked) == [1, 2, 3, 4, 5, 6]
    log = SQLiteLog.open(data)
    try:
        assert {m.seq: m.body for m in log.read_after("lobby", 0, 100)} == acked
    finally:
        log.close()
