"""The durable message log: SQLite in WAL mode, in the data dir, one writer thread.

Files in ``data_dir`` (created 0700):

- ``messages.sqlite3``, the log. Named for what it holds, not ``*.log`` (which
  operators rotate, truncate or delete as text logs); ``.sqlite3`` tells which tool
  opens it. Its ``-wal`` and ``-shm`` companions are part of it: back up with the
  SQLite backup API or ``VACUUM INTO``, never by copying the main file alone.
- ``server.lock``, held with ``flock`` while a server uses the log; it holds the pid.

Durability, exactly (``kill -9`` = the server process dies; power loss = the machine
stops or the kernel crashes):

- ``commit`` (default; WAL, ``synchronous=NORMAL``): a message is acknowledged after
  its transaction has committed to the WAL file in the OS page cache. Survives
  ``kill -9`` of the server. A power loss or kernel crash may lose the last
  acknowledged messages (those not yet checkpointed or written back by the OS); the log
  stays consistent and seq then continues from what survived.
- ``fsync`` (WAL, ``synchronous=FULL``): the WAL is fsynced at every commit before the
  acknowledgement. Survives power loss too, as far as the disk honours fsync.
- ``memory`` (WAL, ``synchronous=NORMAL``): a batch is acknowledged and delivered
  *before* it is written, then written. A crash may lose the tail that was
  acknowledged, and after a restart its seqs are given to other messages. A write
  failure only logs: those acknowledged messages are lost.

Layout: ``messages`` is a WITHOUT ROWID table keyed by (room, seq), body last. Measured
by ``bench/store_bench.py layout``: for chat-sized bodies (100 B) it inserts as fast as
a rowid table with a (room, seq) index and reads a page of history 25-30% faster with
half the cost of a (seq, stored_at) scan; a rowid table is 30-50% faster only for
4-64 KiB bodies, which chat rarely sends. ``rooms`` keeps each room's last seq, so seq
continues even after retention pruned every message of a room.

Retention: at most ``history_max`` messages per room and none older than
``history_age`` seconds; 0 means no limit. It runs in the writer thread every
``retention_interval`` seconds, in DELETEs of 500 rows, so a commit waits at most one
chunk.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .base import Durability, Pending, RecentId, StoredMessage, StoreOpenError, StoreUnavailable
from .checkpoint import Checkpointer
from .schema import DB_NAME, DirLock, connect, open_database, prepare_dir
from .writer import OnFailed, OnStored, Writer

__all__ = ["SQLiteLog"]

_COLUMNS = "room, seq, sender, client, msg_id, body, ts, stored_at"


class SQLiteLog:
    """The durable :class:`~securechat.store.base.MessageLog`. Build it with :meth:`open`.

    Writes: :meth:`submit` from any thread queues a :class:`Pending`; the writer thread
    numbers, commits and calls ``on_stored(batch)`` (or ``on_failed(batch, error)``)
    from its own thread, batches in seq order. :meth:`submit` raises
    :class:`StoreUnavailable` at once when the queue is over ``max_items`` or
    ``max_bytes``, when closed, and, after a failed write, for ``retry_after`` seconds
    (the next batch after that is the probe), so a full disk is not hammered and
    senders hear about it at once. Items submitted before :meth:`start` wait for it.

    Reads: from any thread, each on its own read-only connection (WAL lets them run
    beside the writer); they see what is committed. A read error, or a read after
    :meth:`close`, raises :class:`StoreUnavailable`; stop the readers before closing.
    """

    synchronous = False

    def __init__(self, data_dir: Path, lock: DirLock, epoch: str, writer: Writer,
                 vfs: str | None, checkpointer: Checkpointer) -> None:
        self.data_dir = data_dir
        self.path = data_dir / DB_NAME
        self._lock = lock
        self._epoch = epoch
        self._writer = writer
        self._checkpointer = checkpointer
        self._vfs = vfs
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, data_dir: Path, *, durability: Durability = "commit",
             history_max: int = 100_000, history_age: float = 30 * 86400,
             on_thread_died: Callable[[BaseException], None] | None = None,
             max_items: int = 10_000, max_bytes: int = 64 << 20, max_batch: int = 2000,
             retry_after: float = 1.0, retention_interval: float = 5.0,
             checkpoint_interval: float = 1.0, quick_check: bool = True,
             vfs: str | None = None) -> SQLiteLog:
        """Open or create the log in ``data_dir``; raises :class:`StoreOpenError`.

        ``quick_check=False`` skips ``PRAGMA quick_check`` (it reads the whole file;
        see bench/store_bench.py). ``vfs`` names a SQLite VFS; the tests use
        ``unix-dotfile``, which has no shared memory, to see WAL refused.
        """
        if durability not in ("commit", "fsync", "memory"):
            raise ValueError(f"durability must be commit, fsync or memory, not {durability!r}")
        if history_max < 0 or history_age < 0:
            raise ValueError("history_max and history_age must be >= 0")
        data_dir = Path(data_dir)
        prepare_dir(data_dir)
        lock = DirLock(data_dir)
        try:
            path = data_dir / DB_NAME
            conn, epoch = open_database(path, durability, vfs=vfs, check=quick_check)
            try:
                rooms = {room: (seq, at) for room, seq, at in conn.execute(
                    "SELECT room, last_seq, last_stored_at FROM rooms")}
            except sqlite3.Error as exc:
                conn.close()
                raise StoreOpenError(f"message log {path}: cannot read it: {exc}") from exc
            writer = Writer(path, conn, durability, vfs=vfs, rooms=rooms,
                            history_max=history_max, history_age=history_age,
                            max_items=max_items, max_bytes=max_bytes, max_batch=max_batch,
                            retry_after=retry_after, retention_interval=retention_interval,
                            on_thread_died=on_thread_died)
        except BaseException:
            lock.release()
            raise
        checkpointer = Checkpointer(path, interval=checkpoint_interval, vfs=vfs,
                                    on_thread_died=on_thread_died)
        return cls(data_dir, lock, epoch, writer, vfs, checkpointer)

    @property
    def epoch(self) -> str:
        return self._epoch

    # -- writing ----------------------------------------------------------------------

    def start(self, on_stored: OnStored, on_failed: OnFailed) -> None:
        """Start the writer and checkpoint threads; the callbacks run on the writer
        (keep them short)."""
        self._writer.start(on_stored, on_failed)
        self._checkpointer.start()

    def submit(self, item: Pending) -> None:
        """Queue ``item``; never waits on the disk. Raises :class:`StoreUnavailable`."""
        self._writer.submit(item)

    def close(self) -> None:
        """Refuse new items, store what is queued (callbacks still fire), join the
        writer, close every connection and release the lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._checkpointer.stop()
        # The writer's connection closes last: the last one out checkpoints the WAL
        # into the main file and removes it, so a stopped server leaves one file.
        self._writer.close()
        self._lock.release()

    # -- reading ----------------------------------------------------------------------

    def last_seq(self, room: str) -> int:
        """The highest seq stored in ``room`` (0 if none): no disk read."""
        return self._writer.last.get(room, 0)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise StoreUnavailable("the message log is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = connect(self.path, readonly=True, vfs=self._vfs)
                with self._readers_lock:
                    if self._closed:
                        conn.close()
                        raise StoreUnavailable("the message log is closed")
                    self._readers.append(conn)
                self._local.conn = conn
            yield conn
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"reading {self.path} failed: {exc}") from exc

    def _select(self, sql: str, args: tuple[object, ...]) -> list[StoredMessage]:
        with self._reading() as conn:
            return [StoredMessage(*row) for row in conn.execute(sql, args)]

    def oldest_seq(self, room: str) -> int | None:
        with self._reading() as conn:
            value: int | None = conn.execute(
                "SELECT MIN(seq) FROM messages WHERE room = ?", (room,)).fetchone()[0]
            return value

    def room_names(self) -> list[str]:
        """One index probe per room ever used, not a scan of the messages."""
        with self._reading() as conn:
            return [row[0] for row in conn.execute(
                "SELECT room FROM rooms WHERE EXISTS "
                "(SELECT 1 FROM messages WHERE messages.room = rooms.room) ORDER BY room")]

    def read_after(self, room: str, after_seq: int, limit: int) -> list[StoredMessage]:
        if limit <= 0:
            return []
        return self._select(f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq > ? "
                            "ORDER BY seq LIMIT ?", (room, after_seq, limit))

    def read_before(self, room: str, before_seq: int, limit: int) -> list[StoredMessage]:
        if limit <= 0:
            return []
        found = self._select(f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq < ? "
                             "ORDER BY seq DESC LIMIT ?", (room, before_seq, limit))
        found.reverse()
        return found

    def read_latest(self, room: str, limit: int) -> list[StoredMessage]:
        if limit <= 0:
            return []
        found = self._select(f"SELECT {_COLUMNS} FROM messages WHERE room = ? "
                             "ORDER BY seq DESC LIMIT ?", (room, limit))
        found.reverse()
        return found

    def recent_ids(self, room: str, since: float) -> list[RecentId]:
        """Walks back from the newest and stops at the first older than ``since``
        (stored_at never goes back within a room), so it costs the window, not the log."""
        out: list[RecentId] = []
        with self._reading() as conn:
            rows = conn.execute("SELECT sender, client, msg_id, seq, stored_at FROM messages "
                                "WHERE room = ? ORDER BY seq DESC", (room,))
            for sender, client, msg_id, seq, stored_at in rows:
                if stored_at < since:
                    break
                if client is not None and msg_id is not None:
                    out.append((sender, client, msg_id, seq, stored_at))
        out.reverse()
        return out
