"""What only the memory log does: it numbers in the caller's thread, keeps a bounded
window, and its epoch is new in every process (so a restart tells clients the log was
reset)."""

from __future__ import annotations

from securechat.store import MemoryLog
from tests.store import item
from tests.support import wait_for


def test_append_numbers_inline_and_a_new_log_has_a_new_epoch() -> None:
    log = MemoryLog()
    one = item("a")
    log.append(one)
    assert log.synchronous and one.seq == 1 and one.ts and one.stored_at > 0
    assert MemoryLog().epoch != log.epoch and len(log.epoch) == 16


def test_history_max_keeps_the_newest_and_seq_goes_on() -> None:
    log = MemoryLog(history_max=10)
    for i in range(2500):  # past the list compaction point
        log.append(item(f"m{i}"))
    assert log.oldest_seq("lobby") == 2491 and log.last_seq("lobby") == 2500
    assert [m.seq for m in log.read_after("lobby", 0, 100)] == list(range(2491, 2501))
    assert [m.seq for m in log.read_before("lobby", 2495, 100)] == list(range(2491, 2495))
    assert [m.body for m in log.read_latest("lobby", 2)] == ["m2498", "m2499"]


def test_history_max_0_means_no_count_limit() -> None:
    log = MemoryLog(history_max=0)
    for i in range(3000):
        log.append(item(f"m{i}"))
    assert log.oldest_seq("lobby") == 1


def test_history_age_prunes_old_messages() -> None:
    log = MemoryLog(history_age=0.05)
    log.append(item("old"))
    wait_for(lambda: log.read_after("lobby", 0, 10) == [], what="the old message to age out")
    log.append(item("new"))
    assert [m.body for m in log.read_after("lobby", 0, 10)] == ["new"]
    assert log.oldest_seq("lobby") == 2 and log.last_seq("lobby") == 2
