"""The shape the log's background threads share (SQLite's writer, Redis's broker and
presence): one thread, woken through one condition, told to finish with ``_closing``.
Stopping is always: set the flag, wake the thread, join it (unless it is the caller,
as when a callback run on that thread shuts the server down)."""

from __future__ import annotations

import threading

__all__ = ["Worker"]


class Worker:
    """Subclasses implement :meth:`_run` (the loop waits on ``_cond`` and returns once
    ``_closing`` is set and its work is done)."""

    def __init__(self, thread_name: str) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self._thread: threading.Thread | None = None
        self._thread_name = thread_name

    def _run(self) -> None:
        raise NotImplementedError

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._thread_name,
                                        daemon=True)
        self._thread.start()

    def _stop_thread(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
