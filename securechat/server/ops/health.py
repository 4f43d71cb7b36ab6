"""Liveness and readiness, standard library only (``/healthz`` and ``/readyz``).

Liveness: every loop the server cannot run without (each I/O loop, the accept thread)
records a monotonic ``last_turn`` on each pass; one that has not turned for
``stall`` seconds is stuck (a handler that blocks, a deadlock) and the process should
be restarted.

Readiness: a list of named checks, each returning None (fine) or a short reason. The
server adds its own (listening, not shutting down, the store writable); a backend adds
more with :meth:`Readiness.add` (e.g. Redis: "publish path", "subscription alive").
A check may come with a probe, run by the admin thread every tick, for checks that
must be proven by doing something (the SQLite writer's probe commit) rather than by
having seen no error yet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["Check", "Readiness", "WriterCheck", "stalled"]

logger = logging.getLogger("securechat.server")

#: None if fine, else why not (one short line).
Check = Callable[[], str | None]


def stalled(turns: Sequence[tuple[str, float, float]], now: float) -> list[str]:
    """``name: why`` for each (name, last turn, allowed seconds) not turned in time."""
    out = []
    for name, last, stall in turns:
        if last <= 0:
            out.append(f"{name}: not running")
        elif now - last > stall:
            out.append(f"{name}: no turn for {now - last:.1f} s")
    return out


class Readiness:
    """Named checks, asked in the order added. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, tuple[Check, Callable[[float], None] | None]] = {}

    def add(self, name: str, check: Check, probe: Callable[[float], None] | None = None
            ) -> None:
        """Add (or replace) check ``name``; ``probe(now)``, if given, runs in the admin
        thread about twice a second (keep it quick and non-blocking)."""
        with self._lock:
            self._checks[name] = (check, probe)

    def remove(self, name: str) -> None:
        with self._lock:
            self._checks.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._checks)

    def problems(self) -> list[str]:
        """``name: reason`` for every check that fails now (a check that raises fails)."""
        with self._lock:
            checks = list(self._checks.items())
        out = []
        for name, (check, _) in checks:
            try:
                reason = check()
            except Exception as exc:
                reason = f"check failed: {type(exc).__name__}: {exc}"
            if reason is not None:
                out.append(f"{name}: {reason}")
        return out

    def run_probes(self, now: float) -> None:
        """Run every probe (admin thread); one that raises is logged, not fatal."""
        with self._lock:
            probes = [(name, probe) for name, (_, probe) in self._checks.items()
                      if probe is not None]
        for name, probe in probes:
            try:
                probe(now)
            except Exception:
                logger.exception("readiness probe %s failed", name)


class _Writer(Protocol):
    probe_at: float

    def request_probe(self) -> None: ...

    def unwritable(self) -> str | None: ...


class WriterCheck:
    """The SQLite writer is ready when it is alive, its last commit did not fail, and
    a probe commit it was asked for within ``every`` seconds came back fine."""

    def __init__(self, writer: _Writer, *, every: float = 1.0, stale: float = 5.0) -> None:
        self._writer = writer
        self._every = every
        self._stale = stale
        self._asked = 0.0

    def probe(self, now: float) -> None:
        if now - self._asked >= self._every:
            self._asked = now
            self._writer.request_probe()

    def check(self) -> str | None:
        reason = self._writer.unwritable()
        if reason is not None:
            return reason
        answered = self._writer.probe_at
        now = time.monotonic()
        if not answered:
            return "no probe write has ended yet"
        if now - answered > self._stale:
            return f"no probe write ended for {now - answered:.1f} s (writer stuck?)"
        return None
