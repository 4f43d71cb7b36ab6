"""The durable log on real SQLite files: what survives a restart, the writer thread,
retention, readers beside the writer, and the bounds and faults of the write queue."""

from __future__ import annotations

import shutil
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from securechat.store import Pending, SQLiteLog, StoredMessage, StoreUnavailable
from securechat.store.schema import DB_NAME
from tests.store import Collector, item, open_started, store_all
from tests.support import seconds, wait_for


def test_the_data_dir_is_created_0700_with_its_parents(tmp_path: Path) -> None:
    data = tmp_path / "a" / "b" / "data"
    log = SQLiteLog.open(data)
    try:
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert (data / DB_NAME).is_file()
    finally:
        log.close()


def test_seq_and_messages_continue_across_close_and_reopen(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log, collector = open_started(data)
    store_all(log, collector, [item(f"first-{i}") for i in range(5)])
    epoch = log.epoch
    log.close()
    log, collector = open_started(data)
    try:
        assert log.epoch == epoch
        assert log.last_seq("lobby") == 5
        sent = store_all(log, collector, [item("after")])
        assert sent[0].seq == 6
        assert [m.body for m in log.read_after("lobby", 0, 10)] == [
            *(f"first-{i}" for i in range(5)), "after"]
    finally:
        log.close()


def test_a_deleted_data_dir_gives_a_new_epoch_and_seq_from_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log, collector = open_started(data)
    store_all(log, collector, [item("old")])
    epoch = log.epoch
    log.close()
    shutil.rmtree(data)
    log, collector = open_started(data)
    try:
        assert log.epoch != epoch
        assert len(log.epoch) <= 64 and log.epoch.isascii() and log.epoch.isprintable()
        assert log.last_seq("lobby") == 0
        assert store_all(log, collector, [item("new")])[0].seq == 1
    finally:
        log.close()


def test_close_stores_what_is_queued_and_is_idempotent(tmp_path: Path) -> None:
    log, collector = open_started(tmp_path / "data")
    for i in range(300):
        log.submit(item(f"m{i}"))
    log.close()
    log.close()
    assert [p.seq for p in collector.stored] == list(range(1, 301))
    assert collector.threads == {"securechat-store-writer"}
    with pytest.raises(StoreUnavailable, match="closed"):
        log.submit(item("late"))
    with pytest.raises(StoreUnavailable, match="closed"):
        log.read_latest("lobby", 1)
    assert not (tmp_path / "data" / f"{DB_NAME}-wal").exists()  # checkpointed on close
    reopened = SQLiteLog.open(tmp_path / "data")
    try:
        assert reopened.last_seq("lobby") == 300
    finally:
        reopened.close()


def test_on_stored_batches_come_in_seq_order(tmp_path: Path) -> None:
    log, collector = open_started(tmp_path / "data")
    try:
        def send(room: str) -> None:
            for _ in range(500):
                log.submit(item("x", room=room))

        threads = [threading.Thread(target=send, args=(f"r{n % 2}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        collector.wait(lambda: len(collector.stored) == 2000)
        for room in ("r0", "r1"):
            assert [p.seq for p in collector.stored if p.room == room] == list(range(1, 1001))
    finally:
        log.close()


def test_readers_on_other_threads_see_whole_ascending_pages(tmp_path: Path) -> None:
    log, collector = open_started(tmp_path / "data")
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                latest = log.read_latest("lobby", 50)
                after = log.read_after("lobby", max(log.last_seq("lobby") - 30, 0), 100)
                for page in (latest, after):
                    got = [m.seq for m in page]
                    if got != list(range(got[0], got[0] + len(got))) if got else False:
                        problems.append(f"not contiguous: {got}")
                reads[0] += 1
            except Exception as exc:
                problems.append(repr(exc))
                return

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for n in range(50):
            store_all(log, collector, [item(f"b{n}-{i}") for i in range(40)])
    finally:
        stop.set()
        for thread in threads:
            thread.join(seconds(10))
        log.close()
    assert problems == []
    assert reads[0] > 0


def _age(data: Path, up_to_seq: int, seconds_old: float) -> None:
    """Make the first messages old, as if stored ``seconds_old`` ago (log closed)."""
    with sqlite3.connect(data / DB_NAME) as conn:
        conn.execute("UPDATE messages SET stored_at = stored_at - ? WHERE seq <= ?",
                     (seconds_old, up_to_seq))
        conn.execute("UPDATE rooms SET last_stored_at = last_stored_at - ?", (seconds_old,))
    conn.close()


def test_retention_prunes_by_count_and_age_0_is_no_age_limit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log, collector = open_started(data)
    store_all(log, collector, [item(f"m{i}") for i in range(25)])
    log.close()
    _age(data, 25, 400 * 86400)
    log, collector = open_started(data, history_max=10, history_age=0,
                                  retention_interval=0.01)
    try:
        wait_for(lambda: log.oldest_seq("lobby") == 16, what="pruned to 10 messages")
        assert [m.seq for m in log.read_after("lobby", 0, 100)] == list(range(16, 26))
        assert log.last_seq("lobby") == 25
    finally:
        log.close()


def test_retention_prunes_by_age_and_max_0_is_no_count_limit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log, collector = open_started(data)
    store_all(log, collector, [item(f"m{i}") for i in range(1200)])
    log.close()
    _age(data, 1100, 31 * 86400)
    # Pruned in chunks of 500 from seq 1: if max 0 meant "keep none", oldest would go
    # 501, 1001, None and never be 1101.
    log, collector = open_started(data, history_max=0, history_age=30 * 86400,
                                  retention_interval=0.01)
    try:
        wait_for(lambda: log.oldest_seq("lobby") == 1101, what="old messages pruned")
        assert len(log.read_after("lobby", 0, 500)) == 100
    finally:
        log.close()


def test_retention_in_slices_reaches_every_room_among_many(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a slice too short for even one room, each pass does one room and goes on
    from there the next time: the room over its limit, last of 300, is still pruned,
    and rooms written after they were seen empty are tracked from their first message."""
    from securechat.store import writer

    data = tmp_path / "data"
    log, collector = open_started(data)
    store_all(log, collector, [item("x", room=f"r{i:03}") for i in range(300)])
    store_all(log, collector, [item(f"m{i}", room="r299") for i in range(20)])
    log.close()
    monkeypatch.setattr(writer, "RETENTION_SLICE", 0.0)
    log, collector = open_started(data, history_max=5, history_age=0,
                                  retention_interval=0.01)
    try:
        wait_for(lambda: log.oldest_seq("r299") == 17, what="r299 pruned to 5 messages")
        assert all(log.oldest_seq(f"r{i:03}") == 1 for i in range(0, 299, 37))
        store_all(log, collector, [item(f"n{i}", room="fresh") for i in range(8)])
        wait_for(lambda: log.oldest_seq("fresh") == 4, what="a new room pruned too")
    finally:
        log.close()


def test_a_room_pruned_empty_still_continues_its_seq(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log, collector = open_started(data)
    store_all(log, collector, [item(f"m{i}") for i in range(3)])
    log.close()
    _age(data, 3, 2 * 86400)
    log, collector = open_started(data, history_age=86400, retention_interval=0.01)
    wait_for(lambda: log.oldest_seq("lobby") is None, what="every message pruned")
    log.close()
    log, collector = open_started(data)
    try:
        assert log.last_seq("lobby") == 3
        assert store_all(log, collector, [item("next")])[0].seq == 4
    finally:
        log.close()


def test_submit_refuses_when_the_queue_is_over_its_bounds(tmp_path: Path) -> None:
    log = SQLiteLog.open(tmp_path / "data", max_items=3, max_bytes=10_000)
    collector = Collector()
    try:
        for i in range(3):
            log.submit(item(f"m{i}"))  # queued until start
        with pytest.raises(StoreUnavailable, match="queue is full") as caught:
            log.submit(item("one too many"))
        assert caught.value.retry_after > 0
        log.start(collector.on_stored, collector.on_failed)
        collector.wait(lambda: len(collector.stored) == 3)
        with pytest.raises(StoreUnavailable, match="queue is full"):
            log.submit(item("x" * 20_000))  # over max_bytes alone
    finally:
        log.close()
    assert [p.seq for p in collector.stored] == [1, 2, 3]


def test_a_writer_that_dies_calls_on_thread_died_and_refuses_after(tmp_path: Path) -> None:
    died: list[BaseException] = []
    event = threading.Event()

    def on_thread_died(exc: BaseException) -> None:
        died.append(exc)
        event.set()

    def on_stored(batch: list[Pending]) -> None:
        raise RuntimeError("bug in on_stored")

    collector = Collector()
    log = SQLiteLog.open(tmp_path / "data", on_thread_died=on_thread_died)
    try:
        log.start(on_stored, collector.on_failed)
        log.submit(item("boom"))
        assert event.wait(seconds(10))
        assert isinstance(died[0], RuntimeError) and "bug in on_stored" in str(died[0])
        with pytest.raises(StoreUnavailable, match="writer died"):
            log.submit(item("after"))
    finally:
        log.close()


def test_stored_messages_compare_equal_after_reopen(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log, collector = open_started(data)
    sent = store_all(log, collector, [item("é ü 漢字 🙂", msg_id="ü")])
    log.close()
    log = SQLiteLog.open(data)
    try:
        assert log.read_latest("lobby", 1) == [StoredMessage(
            "lobby", 1, "alice", "c1", "ü", "é ü 漢字 🙂", sent[0].ts, sent[0].stored_at)]
    finally:
        log.close()


def test_reads_are_fast_enough_to_page_a_replay(tmp_path: Path) -> None:
    """A sanity bound, not a benchmark: 1,000 messages read in pages of 100."""
    log, collector = open_started(tmp_path / "data")
    try:
        store_all(log, collector, [item("x" * 200) for _ in range(1000)])
        start = time.perf_counter()
        after = 0
        while page := log.read_after("lobby", after, 100):
            after = page[-1].seq
        assert after == 1000
        assert time.perf_counter() - start < seconds(2)
    finally:
        log.close()


def test_memory_durability_acknowledges_and_still_writes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log, collector = open_started(data, durability="memory")
    sent = store_all(log, collector, [item(f"m{i}") for i in range(50)])
    log.close()
    assert [p.seq for p in sent] == list(range(1, 51))
    log = SQLiteLog.open(data)
    try:
        assert [m.body for m in log.read_after("lobby", 0, 100)] == [f"m{i}" for i in range(50)]
    finally:
        log.close()
