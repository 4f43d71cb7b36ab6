"""Every reason the durable log refuses to open, each naming the file or directory and
why: the lock, damaged or foreign files, a newer schema, unsafe or unwritable dirs,
and a file system where WAL does not work."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from securechat.errors import ConfigError
from securechat.store import SQLiteLog, StoreOpenError
from securechat.store.schema import DB_NAME, LOCK_NAME
from tests.store import Child, item, open_started, store_all


def _refusal(data: Path, **options: object) -> str:
    with pytest.raises(StoreOpenError) as caught:
        SQLiteLog.open(data, **options)  # type: ignore[arg-type]
    assert isinstance(caught.value, ConfigError)
    return str(caught.value)


def _new_log(data: Path, messages: int = 3) -> None:
    log, collector = open_started(data)
    store_all(log, collector, [item(f"m{i}" * 50) for i in range(messages)])
    log.close()


def test_a_second_server_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    child = Child(data)
    try:
        message = _refusal(data)
        assert str(data / LOCK_NAME) in message
        assert f"pid {child.pid}" in message
        child.close_log()
    finally:
        child.kill()
    log = SQLiteLog.open(data)  # the holder has gone: the lock is free
    log.close()


def test_a_second_open_in_the_same_process_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = SQLiteLog.open(data)
    try:
        message = _refusal(data)
        assert f"pid {os.getpid()} (this process)" in message
    finally:
        log.close()
    SQLiteLog.open(data).close()


def test_a_file_of_random_bytes_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / DB_NAME).write_bytes(os.urandom(8192))
    message = _refusal(data)
    assert str(data / DB_NAME) in message
    assert "not a SQLite database" in message and "move it aside" in message
    assert "not a SQLite database" in _refusal(data)  # the lock was released: same refusal
    (data / DB_NAME).rename(data / "aside")  # what the message says to do
    SQLiteLog.open(data).close()


def test_a_truncated_log_is_refused_as_corrupt(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _new_log(data, messages=3000)
    path = data / DB_NAME
    assert not Path(f"{path}-wal").exists()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    message = _refusal(data)
    assert str(path) in message and "corrupt" in message


def test_a_damaged_page_is_found_by_quick_check(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _new_log(data, messages=3000)
    path = data / DB_NAME
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\xff" * 4096)
    message = _refusal(data)
    assert str(path) in message and "corrupt" in message


@pytest.mark.parametrize("app_id", [0, 0x12345678])
def test_a_sqlite_database_of_another_application_is_refused(tmp_path: Path,
                                                              app_id: int) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    with sqlite3.connect(data / DB_NAME) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.execute(f"PRAGMA application_id = {app_id}")
    conn.close()
    message = _refusal(data)
    assert str(data / DB_NAME) in message
    assert "another application" in message and "not a securechat log" in message


def test_a_log_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _new_log(data)
    with sqlite3.connect(data / DB_NAME) as conn:
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    message = _refusal(data)
    assert str(data / DB_NAME) in message
    assert "written by a newer securechat (schema 2, this one reads <= 1)" in message


def test_a_group_writable_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o770)
    message = _refusal(data)
    assert str(data) in message and "group or others may write it" in message
    assert "chmod go-w" in message


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a dir")
    assert "is not a directory" in _refusal(data)


@pytest.mark.skipif(os.geteuid() == 0,
                    reason="root writes through permission bits, so 0500 cannot stop it")
def test_an_unwritable_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o500)
    try:
        message = _refusal(data)
    finally:
        data.chmod(0o700)
    assert str(data) in message and "not writable" in message


def test_a_file_system_without_wal_is_refused(tmp_path: Path) -> None:
    # The unix-dotfile VFS has no shared memory, as on some network file systems.
    message = _refusal(tmp_path / "data", vfs="unix-dotfile")
    assert str(tmp_path / "data" / DB_NAME) in message
    assert "refused WAL" in message
