"""WAL checkpoints on a thread of their own, off the commit path.

Left to SQLite, the connection whose commit pushes the WAL past 1000 pages runs the
checkpoint itself, fsyncs included: that commit (and every message behind it) waits
milliseconds. The writer's connection therefore has ``wal_autocheckpoint = 0``, and
this thread copies the WAL back into the database every ``interval`` seconds with a
PASSIVE checkpoint, which never blocks the writer or the readers.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from .schema import connect

__all__ = ["Checkpointer"]

logger = logging.getLogger("securechat.store")

#: Errors that are bugs, not the disk: they end the thread (and the server says so).
_BUGS = (sqlite3.ProgrammingError, sqlite3.InterfaceError, TypeError, AttributeError)


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval`` seconds until stopped.

    A failed checkpoint (disk full, I/O error) is logged once per episode and tried
    again on the next tick; the WAL only grows meanwhile, nothing is lost."""

    def __init__(self, path: Path, *, interval: float = 1.0, vfs: str | None = None,
                 on_thread_died: Callable[[BaseException], None] | None = None) -> None:
        self._path = path
        self._interval = interval
        self._vfs = vfs
        self._on_thread_died = on_thread_died
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._failing = False
        #: Completed checkpoints (for tests).
        self.done = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="securechat-checkpoint",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._close()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                self._checkpoint()
        except BaseException as exc:
            logger.critical("message log %s: the checkpoint thread died", self._path,
                            exc_info=exc)
            if self._on_thread_died is not None:
                self._on_thread_died(exc)

    def _checkpoint(self) -> None:
        try:
            if self._conn is None:
                self._conn = connect(self._path, vfs=self._vfs)
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except _BUGS:
            raise
        except sqlite3.Error as exc:
            self._close()
            if not self._failing:
                self._failing = True
                logger.warning("message log %s: WAL checkpoint failed: %s (retrying)",
                               self._path, exc)
            return
        if self._failing:
            self._failing = False
            logger.info("message log %s: WAL checkpoints succeed again", self._path)
        self.done += 1

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
