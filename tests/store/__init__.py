"""Helpers for the message log tests: a callback collector that waits on deadlines, a
way to store through either backend, and a child process that drives a real
``SQLiteLog`` from stdin commands (for ``kill -9``, the lock and a full disk)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from securechat.store import MemoryLog, Pending, SQLiteLog, StoreUnavailable
from tests.support import Process, seconds

REPO = Path(__file__).resolve().parents[2]


class Collector:
    """``on_stored`` / ``on_failed`` for ``SQLiteLog.start``, recorded in order."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.stored: list[Pending] = []
        self.failed: list[tuple[list[Pending], StoreUnavailable]] = []
        self.threads: set[str] = set()

    def on_stored(self, batch: list[Pending]) -> None:
        with self.cond:
            self.threads.add(threading.current_thread().name)
            self.stored.extend(batch)
            self.cond.notify_all()

    def on_failed(self, batch: list[Pending], exc: StoreUnavailable) -> None:
        with self.cond:
            self.failed.append((list(batch), exc))
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0,
             what: str = "callbacks") -> None:
        deadline = time.monotonic() + seconds(timeout)
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}: "
                                         f"{len(self.stored)} stored, {len(self.failed)} failed")
                self.cond.wait(left)


def open_started(data_dir: Path, **options: Any) -> tuple[SQLiteLog, Collector]:
    log = SQLiteLog.open(data_dir, **options)
    collector = Collector()
    log.start(collector.on_stored, collector.on_failed)
    return log, collector


def item(body: str, *, room: str = "lobby", sender: str = "alice", client: str | None = "c1",
         msg_id: str | int | None = None) -> Pending:
    return Pending(room, sender, client, msg_id, body)


def store_all(log: MemoryLog | SQLiteLog, collector: Collector | None,
              items: Iterable[Pending]) -> list[Pending]:
    """Store ``items`` through either backend and return them numbered."""
    items = list(items)
    if isinstance(log, MemoryLog):
        for one in items:
            log.append(one)
        return items
    assert collector is not None
    with collector.cond:
        target = len(collector.stored) + len(items)
    for one in items:
        log.submit(one)
    collector.wait(lambda: len(collector.stored) >= target, what=f"{len(items)} stored")
    return items


# --------------------------------------------------------------------------- child process
def child_main() -> None:
    """argv: data_dir durability [kill_after]. Commands on stdin, one a line:
    ``send N PREFIX`` submits N messages; ``close`` closes the log and exits."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # RLIMIT_FSIZE: fail the write, not die
    data_dir, durability = Path(sys.argv[1]), sys.argv[2]
    kill_after = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    out = sys.stdout
    lock = threading.Lock()
    count = 0

    def say(line: str) -> None:
        with lock:
            out.write(line + "\n")
            out.flush()

    def stored(batch: list[Pending]) -> None:
        nonlocal count
        for one in batch:
            say(f"stored {one.seq} {one.body}")
            count += 1
            if count == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    def failed(batch: list[Pending], exc: StoreUnavailable) -> None:
        for one in batch:
            say(f"failed {one.seq} {one.body} {exc.reason}")

    log = SQLiteLog.open(data_dir, durability=durability,  # type: ignore[arg-type]
                         retry_after=0.2)
    log.start(stored, failed)
    say(f"ready {os.getpid()}")
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["send"]:
            for i in range(int(words[1])):
                body = f"{words[2]}-{i}"
                while True:
                    try:
                        log.submit(Pending("lobby", "alice", "c1", i, body))
                        break
                    except StoreUnavailable as exc:
                        if not kill_after:
                            say(f"refused {body} {exc.retry_after:.3f} {exc.reason}")
                            break
                        time.sleep(0.001)  # queue full while racing to the kill
            say(f"sent {words[2]}")
        elif words[:1] == ["close"]:
            log.close()
            say("closed")
            return


class Child(Process):
    """``child_main`` in a subprocess, driven by ``send`` and waited on with deadlines."""

    def __init__(self, data_dir: Path, durability: str = "commit", kill_after: int = 0) -> None:
        code = "from tests.store import child_main; child_main()"
        argv = [sys.executable, "-c", code, str(data_dir), durability]
        if kill_after:
            argv.append(str(kill_after))
        super().__init__(argv, open_stdin=True, cwd=REPO)
        self.pid = int(self.read_until(lambda s: s.startswith("ready ")).split()[1])

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def send(self, count: int, prefix: str) -> list[str]:
        """Submit ``count`` messages; the lines printed until the child says it sent them."""
        start = len(self.lines)
        self.command(f"send {count} {prefix}")
        self.read_until(lambda s: s == f"sent {prefix}")
        return self.lines[start:-1]

    def close_log(self) -> None:
        self.command("close")
        self.read_until(lambda s: s == "closed")
        code, _, err = self.finish()
        assert code == 0, err
