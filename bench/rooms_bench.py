#!/usr/bin/env python3
"""Many rooms at once (issue 10): a steady chat load over 1,000 rooms, and a holder of
idle rooms to put beside another benchmark.

``run``: R sessions and R rooms of M members each. Session i logs in (protocol 3)
with the M rooms ``(i + k * R/M) mod R``, k = 0..M-1, so every room has exactly M
members; it publishes once per period into room i (its own, k = 0), the sessions'
phases spread evenly over the period. The body carries the publisher, its counter and
the send time (this process's monotonic clock, so latency is receive time minus send
time on one clock). After ``--warmup`` seconds comes the measured window
(``--duration``): latency of the messages published in it, the server's CPU over it
(utime + stime from /proc), this driver's own CPU (it must keep up: a publish late
by more than 10 ms is counted). Then publishing stops and the driver waits up to
``--drain`` seconds for every message to reach its M-1 other members. Every delivery
is checked: the room is one the receiver is in and the one the publisher sends to
(else ``wrongRoom``), each publisher's counter only grows per receiver (else
``duplicates``), and after the drain ``missing`` counts what never came.

``hold``: S sessions, each in N rooms of its own (``idle<j>``), that never send: they
answer the server's pings until stdin closes. It prints one JSON line when every
session holds its rooms, so a caller (run_bench.py's ``fanout100idle``) starts its
own load only then.

Same approach as bench/resume_storm.py (whose driver this reuses): one thread,
:mod:`selectors`, non-blocking :mod:`ssl` sockets. Only 127.0.0.1.

    python bench/rooms_bench.py run --port P --ca ca.pem --token T --server-pid PID
    python bench/rooms_bench.py hold --port P --ca ca.pem --token T --sessions 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import selectors
import ssl
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resume_storm import CHUNK, Conn, CpuWindow, Driver, percentiles

MSG = re.compile(rb'"room":"r(\d+)",[^\n]*?"body":"(\d+) (\d+) ([0-9.]+)"')
MSG_HEAD = b'{"type":"msg"'
ACK_HEAD = b'{"type":"ack"'
PING = b'{"type":"ping"}'
PONG = b'{"type":"pong"}\n'
LATE = 0.010  # a publish this late (s) counts as the driver not keeping up


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process in KiB (Linux /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def layout(rooms: int, members: int) -> list[tuple[int, ...]]:
    """Session i's rooms, its own (i) first; every room gets exactly ``members``."""
    step = rooms // members
    return [tuple((i + step * k) % rooms for k in range(members)) for i in range(rooms)]


class RoomConn(Conn):
    """One session: its rooms, and what it received of each publisher."""

    __slots__ = ("acks", "errors", "joined", "last", "names", "numbers", "pongs", "want")

    def __init__(self, index: int, token: str, names: list[str], client: str) -> None:
        super().__init__(index, {"type": "auth", "token": token, "client": client,
                                 "rooms": names})
        self.names = frozenset(names)
        #: the rooms' numbers, for rooms named r<number> (the run's)
        self.numbers = frozenset(int(n[1:]) for n in names if n[:1] == "r" and n[1:].isdigit())
        self.want = len(names)  # joined frames still to come
        self.joined = 0
        self.acks = 0
        self.pongs = 0
        self.errors: dict[str, int] = {}
        self.last: dict[int, int] = {}  # publisher -> the last counter received from it


class RoomsDriver(Driver):
    """resume_storm's connection driver with a line reader for rooms traffic. A
    session counts as set up (``welcome`` set) once all its ``joined`` are in."""

    def __init__(self, port: int, ctx: ssl.SSLContext, servername: str,
                 rooms: list[tuple[int, ...]] | None = None) -> None:
        super().__init__(port, ctx, servername)
        self.rooms = rooms or []
        self.steps = 1.0
        self.receipts: dict[int, int] = {}  # message number -> deliveries
        self.latencies: list[float] = []
        self.measure_from = math.inf  # message numbers at or above this are timed
        self.wrong_room = 0
        self.duplicates = 0
        self.delivered = 0

    def _take(self, c: Conn, data: bytes) -> None:
        assert isinstance(c, RoomConn)
        end = data.rfind(b"\n") + 1
        c.tail = data[end:]
        if not end:
            return
        now = time.perf_counter()
        for line in data[:end].splitlines():
            if line.startswith(MSG_HEAD):
                self._message(c, line, now)
            elif line.startswith(ACK_HEAD):
                c.acks += 1
            elif line == PING:
                c.out += PONG
                c.pongs += 1
            elif line:
                self._control(c, line, now)

    def _message(self, c: RoomConn, line: bytes, now: float) -> None:
        m = MSG.search(line)
        if m is None:
            self.wrong_room += 1  # a msg without our room or body: not ours
            return
        room, pub, n = int(m[1]), int(m[2]), int(m[3])
        if room not in c.numbers or room != pub:
            self.wrong_room += 1
            return
        if c.last.get(pub, -1) >= n:
            self.duplicates += 1
            return
        c.last[pub] = n
        self.delivered += 1
        number = n * len(self.rooms) + pub
        self.receipts[number] = self.receipts.get(number, 0) + 1
        if number >= self.measure_from:
            self.latencies.append(now - float(m[4]))

    def _control(self, c: RoomConn, line: bytes, now: float) -> None:
        frame = json.loads(line)
        kind = frame.get("type")
        if kind == "joined":
            c.joined += 1
        elif kind == "error":
            code = str(frame.get("code"))
            c.errors[code] = c.errors.get(code, 0) + 1
            if frame.get("room") in c.names and c.welcome is None:
                c.want -= 1  # a refused join: the run reports it and fails
        if c.welcome is None and kind in ("welcome", "joined", "error"):
            if kind == "welcome":
                c.phase = "joining"
            if c.joined >= c.want and c.phase == "joining":
                c.welcome, c.welcome_at, c.phase = frame, now, "live"

    def _step(self, c: Conn, until_caught_up: bool) -> None:
        super()._step(c, until_caught_up)
        if c.out and not c.closed and c.phase in ("joining", "live"):
            super()._step(c, until_caught_up)  # a pong queued while reading: send it now

    def _read(self, c: Conn, until_caught_up: bool) -> None:
        """Read what is there, one ``recv`` per TLS record: here most events bring one
        small record, and the base class's extra ``recv`` that ends in SSLWantReadError
        would double the reads. Bytes left in the kernel wake the (level-triggered)
        selector again; OpenSSL reads no further than the record (no read-ahead)."""
        sock = c.sock
        assert sock is not None
        while not c.closed:
            try:
                data = sock.recv(CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            if not data:
                if c.welcome is None:
                    self._fail(c, f"closed by the server in phase {c.phase}")
                else:
                    self.close(c)
                return
            self._take(c, c.tail + data if c.tail else data)
            if not sock.pending():
                return

    def publish(self, c: RoomConn, n: int, room: int) -> None:
        body = f"{room} {n} {time.perf_counter():.6f}"
        c.out += (f'{{"type":"msg","room":"r{room}","body":"{body}","id":{n}}}\n').encode()
        self._step(c, until_caught_up=True)

    def pump(self, timeout: float) -> None:
        for key, _mask in self.sel.select(timeout):
            self._step(key.data, until_caught_up=True)

    def sweep(self, conns: list[RoomConn]) -> None:
        """Read every connection once: select does not see bytes OpenSSL already holds."""
        for c in conns:
            if not c.closed:
                self._step(c, until_caught_up=True)


def _context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def connect_all(driver: RoomsDriver, conns: list[RoomConn], batch: int, timeout: float
                ) -> list[RoomConn]:
    """Log every session in, ``batch`` at a time; the ones that failed."""
    for start in range(0, len(conns), batch):
        driver.run(list(conns[start:start + batch]), until_caught_up=False, timeout=timeout)
    return [c for c in conns if c.welcome is None or c.closed]


def _errors(conns: list[RoomConn]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in conns:
        for code, count in c.errors.items():
            out[code] = out.get(code, 0) + count
        if c.closed and c.error:
            key = c.error[:60]
            out[key] = out.get(key, 0) + 1
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    n_rooms, members = args.rooms, args.members
    rooms = layout(n_rooms, members)
    base: dict[str, Any] = {"scenario": "rooms", "rooms": n_rooms, "members": members,
                            "sessions": n_rooms, "rate": args.rate, "warmup": args.warmup,
                            "duration": args.duration}
    driver = RoomsDriver(args.port, _context(args.ca), args.servername, rooms)
    tag = f"rb{os.getpid()}"
    conns = [RoomConn(i, args.token, [f"r{r}" for r in rooms[i]], f"{tag}-{i}")
             for i in range(n_rooms)]
    t = time.perf_counter()
    failed = connect_all(driver, conns, args.connect_batch, args.timeout)
    setup_s = time.perf_counter() - t
    try:
        if failed:
            return {**base, "ok": False, "errors": _errors(conns),
                    "error": f"{len(failed)} of {n_rooms} sessions not set up: "
                    f"{failed[0].error or failed[0].errors}"}
        driver.sweep(conns)
        rss_setup = rss_kb(args.server_pid) if args.server_pid else None
        step = 1.0 / (args.rate * n_rooms)  # between two publishes, all sessions together
        driver.measure_from = math.ceil(args.warmup / step)
        t0 = time.perf_counter() + 0.05
        window_at, end = t0 + args.warmup, t0 + args.warmup + args.duration
        cpu: CpuWindow | None = None
        j, late, max_lag = 0, 0, 0.0
        now = time.perf_counter()
        while now < end:
            due = t0 + j * step
            while due <= now and due < end:
                lag = now - due
                late += lag > LATE
                max_lag = max(max_lag, lag)
                driver.publish(conns[j % n_rooms], j // n_rooms, j % n_rooms)
                j += 1
                due = t0 + j * step
            if cpu is None and now >= window_at:
                cpu = CpuWindow(args.server_pid)
            driver.pump(max(0.0, min(due, end) - time.perf_counter()))
            now = time.perf_counter()
        cpu_figures = (cpu or CpuWindow(args.server_pid)).stop()
        published = j
        expected = published * (members - 1)
        drain_end = time.perf_counter() + args.drain
        while driver.delivered < expected and time.perf_counter() < drain_end:
            driver.pump(0.05)
            driver.sweep(conns)
        rss_end = rss_kb(args.server_pid) if args.server_pid else None
        missing = sum(max(0, members - 1 - driver.receipts.get(k, 0)) for k in range(published))
        acks = sum(c.acks for c in conns)
        closed = sum(1 for c in conns if c.closed)
        in_window = published - min(published, driver.measure_from)
        wall = cpu_figures.get("wallSec") or args.duration
        ok = (not missing and not driver.wrong_room and not driver.duplicates
              and acks == published and not closed and published > 0)
        return {
            **base, "ok": ok, "published": published, "publishedInWindow": in_window,
            "delivered": driver.delivered, "expected": expected, "missing": missing,
            "wrongRoom": driver.wrong_room, "duplicates": driver.duplicates, "acks": acks,
            "closed": closed, "errors": _errors(conns),
            "deliveredPerSec": round(in_window * (members - 1) / wall) if wall else None,
            "latency": percentiles(driver.latencies), "cpu": cpu_figures,
            "rssSetupKb": rss_setup, "rssEndKb": rss_end, "setupSec": round(setup_s, 3),
            "latePublishes": late, "maxPublishLagMs": round(1000 * max_lag, 3),
        }
    finally:
        for c in conns:
            driver.close(c)


def hold(args: argparse.Namespace) -> int:
    """Hold ``--sessions`` sessions in ``--rooms-each`` idle rooms each until stdin
    closes (or SIGTERM); one JSON line on stdout once every one is in."""
    driver = RoomsDriver(args.port, _context(args.ca), args.servername)
    tag = f"idle{os.getpid()}"
    each = args.rooms_each
    conns = [RoomConn(s, args.token, [f"{args.prefix}{s * each + k}" for k in range(each)],
                      f"{tag}-{s}") for s in range(args.sessions)]
    failed = connect_all(driver, conns, args.connect_batch, args.timeout)
    joined = sum(c.joined for c in conns)
    print(json.dumps({"ok": not failed, "sessions": args.sessions - len(failed),
                      "roomsJoined": joined, "errors": _errors(conns)}), flush=True)
    try:
        if failed:
            return 1
        stdin = sys.stdin.fileno()
        driver.sel.register(stdin, selectors.EVENT_READ, None)
        while True:
            for key, _mask in driver.sel.select(1.0):
                if key.data is None:
                    if not os.read(stdin, 4096):
                        return 0
                else:
                    driver._step(key.data, until_caught_up=True)
            if any(c.closed for c in conns):
                print(json.dumps({"ok": False, "error": "an idle session was closed",
                                  "errors": _errors(conns)}), flush=True)
                return 1
    finally:
        for c in conns:
            driver.close(c)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "hold"):
        s = sub.add_parser(name)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--ca", type=Path, required=True, help="CA certificate (PEM)")
        s.add_argument("--token", required=True, help="a token granted every room")
        s.add_argument("--servername", default="localhost")
        s.add_argument("--timeout", type=float, default=60.0, help="bound on setup, s")
        s.add_argument("--connect-batch", type=int, default=200,
                       help="sessions connecting at once during setup")
    r = sub.choices["run"]
    r.add_argument("--rooms", type=int, default=1000, help="rooms, and sessions")
    r.add_argument("--members", type=int, default=10, help="members per room")
    r.add_argument("--rate", type=float, default=1.0, help="messages per room per second")
    r.add_argument("--warmup", type=float, default=2.0, help="seconds before the window")
    r.add_argument("--duration", type=float, default=10.0, help="measured window, s")
    r.add_argument("--drain", type=float, default=5.0, help="wait for the last deliveries, s")
    r.add_argument("--server-pid", type=int, default=0, help="for the server's CPU and RSS")
    h = sub.choices["hold"]
    h.add_argument("--sessions", type=int, default=100)
    h.add_argument("--rooms-each", type=int, default=10)
    h.add_argument("--prefix", default="idle", help="room names: PREFIX<number>")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hold":
        return hold(args)
    if args.members < 2 or args.rooms < args.members or args.rate <= 0 or args.duration <= 0:
        print("rooms_bench: need --members >= 2, --rooms >= --members, positive --rate and "
              "--duration", file=sys.stderr)
        return 2
    try:
        result = run(args)
    except (OSError, RuntimeError, ssl.SSLError, ValueError) as exc:
        result = {"scenario": "rooms", "ok": False, "error": str(exc)}
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
