"""Opening the durable log safely: the data dir, the lock that keeps a second server
out, and the checks that refuse a file that is not ours, is damaged, or is newer.

Every refusal is a :class:`StoreOpenError` naming the file or directory and saying
what to do, because the server refuses to start on it and an operator has to act.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
import stat
import time
from pathlib import Path
from urllib.parse import quote

from .base import Durability, StoreOpenError

__all__ = [
    "APPLICATION_ID",
    "DB_NAME",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "DirLock",
    "connect",
    "open_database",
    "prepare_dir",
    "set_modes",
]

#: ``PRAGMA application_id``: "SCht" in ASCII, so ``file(1)`` and we can tell our file.
APPLICATION_ID = 0x53436874
SCHEMA_VERSION = 1
DB_NAME = "messages.sqlite3"
LOCK_NAME = "server.lock"
_MAGIC = b"SQLite format 3\x00"
_SYNCHRONOUS = {"commit": "NORMAL", "fsync": "FULL", "memory": "NORMAL"}
_ASIDE = "move it aside (the server then starts a new, empty log with a new epoch)"

_SCHEMA = (
    # Body last: reading the other columns never walks a large body's overflow pages.
    """CREATE TABLE messages (
        room TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, client TEXT,
        msg_id, ts TEXT NOT NULL, stored_at REAL NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (room, seq)) WITHOUT ROWID""",
    # A room's last seq outlives its messages (retention may prune them all), so that
    # seq continues after a restart and never numbers two messages alike in one epoch.
    """CREATE TABLE rooms (
        room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, last_stored_at REAL NOT NULL
        ) WITHOUT ROWID""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
)


def prepare_dir(data_dir: Path) -> None:
    """Create ``data_dir`` 0700 if missing; refuse one others could write or we cannot."""
    try:
        if not data_dir.exists():
            data_dir.mkdir(mode=0o700, parents=True)
            os.chmod(data_dir, 0o700)  # mkdir's mode is masked by the umask
        info = data_dir.stat()
    except OSError as exc:
        raise StoreOpenError(f"data dir {data_dir}: cannot create or read it: "
                             f"{exc.strerror or exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise StoreOpenError(f"data dir {data_dir}: exists and is not a directory")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StoreOpenError(
            f"data dir {data_dir}: group or others may write it (mode "
            f"{stat.S_IMODE(info.st_mode):04o}), so they could replace the message log; "
            f"run: chmod go-w {data_dir}")
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise StoreOpenError(f"data dir {data_dir}: not writable by this user "
                             f"(uid {os.geteuid()}); fix its owner or mode, or choose "
                             "another --data-dir")


class DirLock:
    """An exclusive ``flock`` on ``data_dir/server.lock`` for the log's lifetime.

    flock, not the pid alone: the kernel drops it when the holder dies, even by
    ``kill -9``, so a stale file never blocks a restart. It is per open file, so a
    second open in the same process is refused too. The file holds the holder's pid
    for the error message; it is never deleted (deleting a lock file races).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                           0o600)
        except OSError as exc:
            raise StoreOpenError(f"lock file {self.path}: cannot open it: "
                                 f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            self.release()
            mine = " (this process)" if holder == str(os.getpid()) else ""
            raise StoreOpenError(
                f"lock file {self.path}: the message log is in use by a securechat server, "
                f"pid {holder}{mine}; stop it or choose another --data-dir") from None
        except OSError as exc:
            self.release()
            raise StoreOpenError(f"lock file {self.path}: cannot lock it: "
                                 f"{exc.strerror or exc}") from exc
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock


def connect(path: Path, *, readonly: bool = False, vfs: str | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (we write BEGIN/COMMIT ourselves), usable from
    the thread that closes it at shutdown as well as the one that uses it."""
    uri = f"file:{quote(str(path))}?mode={'ro' if readonly else 'rwc'}"
    if vfs:
        uri += f"&vfs={quote(vfs)}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                           cached_statements=32)
    conn.execute("PRAGMA busy_timeout = 2000")  # a backup or sqlite3 shell may hold a lock
    return conn


def _not_ours(path: Path, why: str) -> StoreOpenError:
    return StoreOpenError(f"message log {path}: {why}; {_ASIDE}")


def _check_header(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreOpenError(f"message log {path}: cannot read it: "
                             f"{exc.strerror or exc}") from exc
    if head and head != _MAGIC:
        raise _not_ours(path, "not a SQLite database, so not a securechat log (or corrupt)")


def set_modes(conn: sqlite3.Connection, path: Path, durability: Durability) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreOpenError(
            f"message log {path}: SQLite refused WAL mode here (journal_mode is {mode!r}); "
            "the data dir must be on a local file system that supports shared memory "
            "(not NFS/SMB); choose another --data-dir")
    conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[durability]}")
    # The writer's commits never run a checkpoint themselves: checkpoint.py does, on a
    # thread of its own (SQLite's default would make one commit in ~1000 pages wait).
    conn.execute("PRAGMA wal_autocheckpoint = 0")


def open_database(path: Path, durability: Durability, *, vfs: str | None = None,
                  check: bool = True) -> tuple[sqlite3.Connection, str]:
    """Open (creating if new) and check the log; returns the writer connection and the
    epoch. ``check`` runs ``PRAGMA quick_check`` on an existing file."""
    _check_header(path)
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(path, vfs=vfs)
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        new = app_id == 0 and version == 0 and not tables
        if not new and app_id != APPLICATION_ID:
            raise _not_ours(path, f"a SQLite database of another application "
                                  f"(application_id {app_id:#x}), not a securechat log")
        if version > SCHEMA_VERSION:
            raise StoreOpenError(
                f"message log {path}: written by a newer securechat (schema {version}, "
                f"this one reads <= {SCHEMA_VERSION}); run that version, or {_ASIDE}")
        set_modes(conn, path, durability)
        if new:
            epoch = _create(conn)
        else:
            if version != SCHEMA_VERSION or not {"messages", "rooms", "meta"} <= tables:
                raise _not_ours(path, f"corrupt: securechat schema {version} with tables "
                                      f"{sorted(tables)}")
            if check:
                problems = [" ".join(str(row[0]).split())
                            for row in conn.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise _not_ours(path, "corrupt: quick_check says " + "; ".join(problems))
            row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            if row is None or not isinstance(row[0], str) or not row[0]:
                raise _not_ours(path, "corrupt: it has no epoch")
            epoch = row[0]
        return conn, epoch
    except StoreOpenError:
        if conn is not None:
            conn.close()
        raise
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        name = getattr(exc, "sqlite_errorname", "")
        if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            raise _not_ours(path, f"corrupt or not a securechat log: {exc}") from exc
        raise StoreOpenError(f"message log {path}: cannot open it: {exc}") from exc


def _create(conn: sqlite3.Connection) -> str:
    """A new log: schema, identity and header marks in one transaction."""
    epoch = secrets.token_hex(8)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                         [("epoch", epoch), ("created_at", time.time()),
                          ("schema", SCHEMA_VERSION)])
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return epoch
