"""WAL checkpoints run on their own thread, never inside a commit: a commit that pushes
the WAL past SQLite's default 1000 pages does not copy it back, the checkpoint thread
does, and closing leaves one file with everything in it."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from securechat.store.schema import DB_NAME
from tests.store import item, open_started, store_all
from tests.support import wait_for


def rows_in_main_file(data: Path) -> int:
    """Messages in the database file itself, ignoring the WAL (what a checkpoint moved)."""
    conn = sqlite3.connect(f"file:{data / DB_NAME}?immutable=1", uri=True)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone():
            return 0  # even the schema is still in the WAL
        return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    finally:
        conn.close()


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "securechat-checkpoint"]


def test_commits_leave_the_wal_to_the_checkpoint_thread(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log, collector = open_started(data, checkpoint_interval=3600.0, history_max=0)
    try:
        body = "x" * 2000
        store_all(log, collector, [item(body, msg_id=i) for i in range(3000)])  # ~6 MB
        assert (data / f"{DB_NAME}-wal").stat().st_size > 1000 * 4096
        assert rows_in_main_file(data) == 0  # no commit ran a checkpoint
    finally:
        log.close()
    assert rows_in_main_file(data) == 3000  # the last connection out checkpointed
    assert not (data / f"{DB_NAME}-wal").exists()
    assert not checkpoint_threads()


def test_the_checkpoint_thread_copies_the_wal_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log, collector = open_started(data, checkpoint_interval=0.05)
    try:
        assert len(checkpoint_threads()) == 1
        store_all(log, collector, [item(f"m{i}", msg_id=i) for i in range(500)])
        wait_for(lambda: rows_in_main_file(data) == 500, what="a checkpoint")
        assert log.read_after("lobby", 495, 10)[0].seq == 496  # reads are unaffected
    finally:
        log.close()
    assert not checkpoint_threads()
