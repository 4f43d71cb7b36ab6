"""The durable log's one writer thread: group commit, seq numbering, retention.

Whatever is queued when the thread wakes goes into one transaction (up to
``max_batch`` items), so the cost of a commit is shared by everyone who sent in the
meantime and the I/O loops never wait on the disk. A message is numbered only here,
in the batch that stores it: if the batch fails, nobody saw its numbers and they are
used again by the next batch, so seqs stay gap-free.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..metering import Histogram
from ..protocol import rfc3339_utc
from .base import Durability, Pending, StoreUnavailable
from .schema import connect, set_modes
from .worker import Worker

__all__ = ["OnFailed", "OnStored", "Writer"]

logger = logging.getLogger("securechat.store")

OnStored = Callable[[list[Pending]], None]
OnFailed = Callable[[list[Pending], StoreUnavailable], None]

_INSERT = ("INSERT INTO messages (room, seq, sender, client, msg_id, ts, stored_at, body) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_UPSERT_ROOM = ("INSERT INTO rooms (room, last_seq, last_stored_at) VALUES (?, ?, ?) "
                "ON CONFLICT (room) DO UPDATE SET last_seq = excluded.last_seq, "
                "last_stored_at = excluded.last_stored_at")
#: Errors that mean our own bug (or someone else writing our file), not the disk: the
#: thread dies loudly and the server exits, rather than refusing every batch forever.
_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
#: Rows per retention DELETE: a few milliseconds, the most a commit waits for it.
RETENTION_CHUNK = 500
#: Seconds of retention work between two batches at most: with many rooms a pass is
#: cut into slices, so a commit never waits behind a walk over every room.
RETENTION_SLICE = 0.005
_UNKNOWN = (-1, 0.0)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back (if still open) when anything raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _reason(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL":
        return f"disk full ({exc})"
    if name.startswith("SQLITE_IOERR"):
        return f"disk I/O error ({name}: {exc})"
    return f"{name or type(exc).__name__}: {exc}"


class Writer(Worker):
    """Owns the write connection, the queue and the per-room counters.

    ``last`` (room -> highest stored seq) is read by other threads without a lock: it
    is only ever replaced entry by entry by this thread, which CPython makes atomic.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, durability: Durability, *,
                 vfs: str | None, rooms: dict[str, tuple[int, float]], history_max: int,
                 history_age: float, max_items: int, max_bytes: int, max_batch: int,
                 retry_after: float, retention_interval: float,
                 on_thread_died: Callable[[BaseException], None] | None) -> None:
        super().__init__("securechat-store-writer")
        self._path = path
        self._conn: sqlite3.Connection | None = conn
        self._durability = durability
        self._vfs = vfs
        self.last: dict[str, int] = {room: seq for room, (seq, _) in rooms.items()}
        self._last_at: dict[str, float] = {room: at for room, (_, at) in rooms.items()}
        self._history_max = history_max
        self._history_age = history_age
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._max_batch = max_batch
        self._retry_after = retry_after
        self._retention_interval = retention_interval
        self._on_thread_died = on_thread_died
        self._on_stored: OnStored | None = None
        self._on_failed: OnFailed | None = None
        self._queue: deque[tuple[Pending, int]] = deque()
        self._bytes = 0
        self._dead: str | None = None
        self._retry_at = 0.0  # monotonic; while in the future, publishes are refused
        self._failure: str | None = None  # the reason, during a failure episode
        self._failed_batches = 0
        self._inflight: list[Pending] | None = None  # taken, not yet answered
        #: Per room, (seq, stored_at) of its oldest stored message as this thread last
        #: saw it, None if it holds none: retention reads SQLite only for rooms over a
        #: limit (a room missing here is looked up once).
        self._oldest: dict[str, tuple[int, float] | None] = {}
        self._retain_from = 0  # where a pass cut short goes on
        # /metrics and /readyz (written by the writer thread, read by the admin thread).
        #: Seconds each batch's transaction took, and batches that failed (ever).
        self.write_latency = Histogram()
        self.failed_total = 0
        #: The last readiness probe (request_probe): when it ended, and why it failed.
        self.probe_at = 0.0
        self.probe_error: str | None = None
        self._probe_wanted = False

    # -- any thread -------------------------------------------------------------------

    def start(self, on_stored: OnStored, on_failed: OnFailed) -> None:
        if self._thread is not None:
            raise RuntimeError("the message log writer is already started")
        self._on_stored = on_stored
        self._on_failed = on_failed
        self._start_thread()

    def submit(self, item: Pending) -> None:
        cost = len(item.body) + len(item.sender) + 64  # approximate: str length, not UTF-8
        with self._cond:
            if self._closing:
                raise StoreUnavailable("the message log is closed", self._retry_after)
            if self._dead is not None:
                raise StoreUnavailable(f"the message log writer died: {self._dead}",
                                       self._retry_after)
            if self._retry_at and self._durability != "memory":
                wait = self._retry_at - time.monotonic()
                if wait > 0:
                    raise StoreUnavailable(self._failure or "write failed", wait)
            queue = self._queue
            if len(queue) >= self._max_items or self._bytes + cost > self._max_bytes:
                raise StoreUnavailable(
                    f"the write queue is full ({len(queue)} messages, {self._bytes} bytes)",
                    self._retry_after)
            queue.append((item, cost))
            self._bytes += cost
            if len(queue) == 1:
                self._cond.notify()

    def request_probe(self) -> None:
        """Ask the writer for one small real commit (``meta`` key ``probe``), so that
        readiness is proven by a write, not assumed from no error seen yet."""
        with self._cond:
            self._probe_wanted = True
            self._cond.notify()

    def unwritable(self) -> str | None:
        """Why the log cannot take messages now (dead writer, last commit failed, last
        probe failed), or None. Any thread."""
        if self._dead is not None:
            return f"the message log writer died: {self._dead}"
        if self._closing:
            return "the message log is closed"
        if self._failure is not None:
            return f"the last write failed: {self._failure}"
        return None if self.probe_error is None else f"the probe write failed: {self.probe_error}"

    def close(self) -> None:
        """Refuse new items, let the thread store what is queued, and join it."""
        self._stop_thread()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    # -- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            due = time.monotonic() + self._retention_interval
            while True:
                with self._cond:
                    while not self._queue and not self._closing and not self._probe_wanted:
                        timeout = due - time.monotonic()
                        if timeout <= 0:
                            break
                        self._cond.wait(timeout)
                    if not self._queue and self._closing:
                        return
                    batch = self._take()
                    probe, self._probe_wanted = self._probe_wanted, False
                if batch:
                    self._inflight = batch
                    self._process(batch)
                if probe:
                    self._probe()
                now = time.monotonic()
                if now >= due:
                    more = self._retain()
                    due = now if more else now + self._retention_interval
        except BaseException as exc:
            self._die(exc)

    def _take(self) -> list[Pending]:
        queue = self._queue
        count = min(len(queue), self._max_batch)
        batch = []
        spent = 0
        for _ in range(count):
            item, cost = queue.popleft()
            batch.append(item)
            spent += cost
        self._bytes -= spent
        return batch

    def _process(self, batch: list[Pending]) -> None:
        durable = self._durability != "memory"
        if durable and self._retry_at and time.monotonic() < self._retry_at:
            # Still backing off: queued before the failure was seen; do not touch the disk.
            self._report_failure(batch, self._failure or "write failed", log=False)
            return
        now = time.time()
        ts = rfc3339_utc(now)
        last = self.last
        last_at = self._last_at
        new_last: dict[str, int] = {}
        new_at: dict[str, float] = {}
        first: dict[str, tuple[int, float]] = {}
        rows = []
        for item in batch:
            room = item.room
            seq = new_last.get(room) or last.get(room, 0)
            seq += 1
            at = new_at.get(room) or last_at.get(room, 0.0)
            at = now if now > at else at  # never back within a room: retention walks seq
            new_last[room] = seq
            new_at[room] = at
            if room not in first:
                first[room] = (seq, at)
            item.seq = seq
            item.ts = ts
            item.stored_at = at
            rows.append((room, seq, item.sender, item.client, item.msg_id, ts, at, item.body))
        room_rows = [(room, seq, new_at[room]) for room, seq in new_last.items()]
        oldest = self._oldest
        for room, entry in first.items():
            if room in oldest and oldest[room] is None:
                oldest[room] = entry  # it held none: this is its oldest now
        if not durable:
            # Acknowledge first (the promise of "memory"), then store; the counters move
            # on even if the write fails, so no seq is given out twice in this process.
            self._advance(new_last, new_at)
            self._answered_stored(batch)
        started = time.monotonic()
        try:
            self._write(rows, room_rows)
        except _BUGS:
            raise
        except sqlite3.DatabaseError as exc:
            self.failed_total += 1
            self._drop_connection()
            if durable:
                for item in batch:
                    item.seq, item.ts, item.stored_at = 0, "", 0.0
                self._report_failure(batch, _reason(exc), log=True)
            else:
                self._note_failure(_reason(exc), len(batch))
            return
        self.write_latency.observe(time.monotonic() - started)
        self._recovered()
        if durable:
            self._advance(new_last, new_at)
            self._answered_stored(batch)

    def _answered_stored(self, batch: list[Pending]) -> None:
        self._inflight = None
        assert self._on_stored is not None
        self._on_stored(batch)

    def _advance(self, new_last: dict[str, int], new_at: dict[str, float]) -> None:
        self._last_at.update(new_at)
        self.last.update(new_last)

    def _write(self, rows: Sequence[tuple[object, ...]],
               room_rows: Sequence[tuple[object, ...]]) -> None:
        with _transaction(self._connection()) as conn:
            conn.executemany(_INSERT, rows)
            conn.executemany(_UPSERT_ROOM, room_rows)

    def _probe(self) -> None:
        """The readiness probe: one tiny transaction through the same connection. Its
        success ends a failure episode too, so a server that stopped getting messages
        while the disk was full does not stay unready for want of a message batch."""
        try:
            with _transaction(self._connection()) as conn:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?)",
                             (time.time(),))
        except _BUGS:
            raise
        except sqlite3.DatabaseError as exc:
            self._drop_connection()
            self.probe_error = _reason(exc)
        else:
            self.probe_error = None
            self._recovered()  # the disk takes writes again: publishes need not wait
        self.probe_at = time.monotonic()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self._path, vfs=self._vfs)
            try:
                set_modes(conn, self._path, self._durability)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        """After a failed write the connection may be unusable (an I/O error can leave
        it so): reopen it before the next try; it costs nothing on the happy path."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _note_failure(self, reason: str, count: int) -> None:
        self._failed_batches += 1
        if self._failure is None:
            lost = (f"; {count} acknowledged messages were not stored"
                    if self._durability == "memory" else "")
            then = ("" if self._durability == "memory" else
                    "; publishes are refused until a write succeeds")
            logger.warning("message log %s: writes failing: %s%s%s", self._path, reason,
                           then, lost)
        self._failure = reason

    def _report_failure(self, batch: list[Pending], reason: str, *, log: bool) -> None:
        if log:
            self._note_failure(reason, len(batch))
            self._retry_at = time.monotonic() + self._retry_after
        else:
            self._failed_batches += 1
        wait = max(self._retry_at - time.monotonic(), 0.0) or self._retry_after
        self._inflight = None
        assert self._on_failed is not None
        self._on_failed(batch, StoreUnavailable(reason, wait))

    def _recovered(self) -> None:
        if self._failure is not None:
            logger.info("message log %s: writes succeed again (%d batches failed)",
                        self._path, self._failed_batches)
            self._failure = None
            self._failed_batches = 0
            self._retry_at = 0.0

    def _retain(self) -> bool:
        """One chunk of pruning in each room over its limits; True if more remains.

        Only rooms over ``history_max`` or with messages older than ``history_age`` cost
        a query (the oldest message of each room is remembered), and a pass stops after
        RETENTION_SLICE, going on after the next batch: the cost per commit does not
        grow with the number of rooms."""
        if not (self._history_max or self._history_age):
            return False
        more = False
        cutoff = time.time() - self._history_age
        rooms = list(self.last.items())
        count = len(rooms)
        start = self._retain_from % count if count else 0
        deadline = time.monotonic() + RETENTION_SLICE
        try:
            conn = self._connection()
            for i in range(count):
                if i and time.monotonic() >= deadline:  # at least one room a pass
                    self._retain_from = (start + i) % count
                    return True
                room, last = rooms[(start + i) % count]
                oldest = self._oldest.get(room, _UNKNOWN)
                if oldest is _UNKNOWN:
                    oldest = self._oldest[room] = self._oldest_of(conn, room)
                if oldest is None:
                    continue
                first, first_at = oldest
                over_max = self._history_max and last - first + 1 > self._history_max
                if not over_max and not (self._history_age and first_at < cutoff):
                    continue
                bound = first + RETENTION_CHUNK
                if over_max:
                    bound = min(bound, last - self._history_max + 1)
                    deleted = conn.execute(
                        "DELETE FROM messages WHERE room = ? AND seq < ?", (room, bound)
                    ).rowcount
                else:
                    deleted = conn.execute(
                        "DELETE FROM messages WHERE room = ? AND seq < ? AND stored_at < ?",
                        (room, bound, cutoff)).rowcount
                self._oldest[room] = self._oldest_of(conn, room)
                more = more or deleted >= bound - first
        except _BUGS:
            raise
        except sqlite3.DatabaseError as exc:
            self._drop_connection()
            self._oldest.clear()  # read again once the log works
            logger.warning("message log %s: pruning old messages failed: %s",
                           self._path, _reason(exc))
            return False
        self._retain_from = 0
        return more

    @staticmethod
    def _oldest_of(conn: sqlite3.Connection, room: str) -> tuple[int, float] | None:
        row = conn.execute("SELECT seq, stored_at FROM messages WHERE room = ? "
                           "ORDER BY seq LIMIT 1", (room,)).fetchone()
        return None if row is None else (int(row[0]), float(row[1]))

    def _die(self, exc: BaseException) -> None:
        """Never silently: log, answer what is still waiting, then tell the server."""
        logger.critical("message log %s: the writer thread died", self._path, exc_info=exc)
        with self._cond:
            self._dead = f"{type(exc).__name__}: {exc}"
            waiting = [item for item, _ in self._queue]
            self._queue.clear()
            self._bytes = 0
        unanswered = (self._inflight or []) + waiting
        self._inflight = None
        for item in unanswered:
            item.seq, item.ts, item.stored_at = 0, "", 0.0
        if unanswered and self._on_failed is not None:
            try:
                self._on_failed(unanswered, StoreUnavailable(
                    f"the message log writer died: {self._dead}", self._retry_after))
            except Exception:
                logger.exception("message log %s: on_failed raised", self._path)
        if self._on_thread_died is not None:
            self._on_thread_died(exc)
