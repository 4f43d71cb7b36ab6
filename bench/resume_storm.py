#!/usr/bin/env python3
"""Resume storm driver: N clients that each missed M messages reconnect at once.

1. (not timed) N clients, each with its own client id, connect, note their
   ``welcome`` (epoch, seq) and disconnect;
2. (not timed) one publisher sends M messages and waits for their M acks;
3. (timed) all N reconnect in the same instant with ``resume {epoch, seq}``. The
   figure is the time from the first connect attempt until the last ``caught_up``.
   Each client must receive exactly the M messages after its seq, each once and in
   seq order, then ``caught_up`` with ``replayed`` M and the publisher's last seq,
   and nothing after it (there is no live traffic).

Why Python and not bench/loadgen.mjs (which has the same scenario, ``--scenario
resume``): there the generator was the bottleneck, about 95% of its core for the
whole storm, most of it in Node's per-connection TLS work (``getPeerCertificate``,
which Node calls on every handshake to check the host name). Here one thread drives
every socket with :mod:`selectors`, non-blocking, OpenSSL checks the chain and the
name, and replayed lines are counted with ``bytes.count`` and their seqs read with
one regular expression per chunk, never decoded as JSON one by one.

Prints one JSON object (the fields of loadgen.mjs's resume result). Bounded by
``--timeout`` per phase; every socket is closed at the end. Only 127.0.0.1.

    python bench/resume_storm.py --port P --ca ca.pem --token T [--clients 500] [--messages 1000]

Across nodes (issue 11): ``--resume-port Q`` publishes and resumes on another node
than the first join; with ``--kill-pid PID`` the N clients stay connected after
phase 1 and that node is killed with SIGKILL, so they resume on the survivor after
their node died under them (``sinceKillSec`` adds the publish time to the storm).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import selectors
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

SEQ = re.compile(rb'"seq":(\d+)')
CAUGHT_UP = b'{"type":"caught_up"'
CHUNK = 256 * 1024


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, all threads (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> tuple[int, int]:
    """(busy, total) ticks of the whole machine, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    total = sum(values)
    return total - values[3] - values[4] - values[7], total


class CpuWindow:
    """CPU used by the server, this process and everything else over a stretch of time."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.wall = time.perf_counter()
        self.server = _cpu_seconds(server_pid) if server_pid else None
        self.me = time.process_time()
        self.ticks = _busy_ticks()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall
        server = _cpu_seconds(self.pid) if self.pid else None
        me = time.process_time() - self.me
        busy, total = _busy_ticks()
        used = None if server is None or self.server is None else server - self.server
        out: dict[str, Any] = {
            "wallSec": round(wall, 3),
            "serverCpuSec": None if used is None else round(used, 2),
            "serverCpuPct": None if used is None else round(100 * used / wall, 1),
            "loadgenCpuPct": round(100 * me / wall, 1),
        }
        dt = total - self.ticks[1]
        if dt > 0:
            busy_pct = 100 * (os.cpu_count() or 1) * (busy - self.ticks[0]) / dt
            out["foreignCpuPct"] = round(max(0.0, busy_pct - 100 * ((used or 0) + me) / wall), 1)
        return out


def percentiles(values: list[float]) -> dict[str, Any]:
    """p50/p90/p99/max in milliseconds of seconds ``values``."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))], 3)

    return {"n": len(ordered), "p50ms": at(50), "p90ms": at(90), "p99ms": at(99),
            "maxMs": round(1000 * ordered[-1], 3)}


class Conn:
    """One client connection: connect, TLS handshake, auth line, then the replay."""

    __slots__ = ("auth", "caught_up", "caught_up_at", "closed", "error", "expect", "fd", "got",
                 "index", "misordered", "out", "phase", "raw", "resume_seq", "sock", "tail",
                 "trailing", "welcome", "welcome_at")

    def __init__(self, index: int, auth: dict[str, Any], resume_seq: int = 0) -> None:
        self.index = index
        self.auth = (json.dumps(auth) + "\n").encode()
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.raw.setblocking(False)
        self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # registered by number: wrap_socket detaches ``raw``, whose fileno() is then -1
        self.fd = self.raw.fileno()
        self.resume_seq = resume_seq
        self.sock: ssl.SSLSocket | None = None
        self.phase = "connect"
        self.out = b""
        self.tail = b""
        self.expect = resume_seq + 1  # the next seq this client must receive
        self.got = 0
        self.misordered = False
        self.trailing = 0  # message lines after caught_up
        self.welcome: dict[str, Any] | None = None
        self.caught_up: dict[str, Any] | None = None
        self.welcome_at = 0.0
        self.caught_up_at = 0.0
        self.error = ""
        self.closed = False


class Driver:
    """Every connection of one phase in one selector loop."""

    def __init__(self, port: int, ctx: ssl.SSLContext, servername: str) -> None:
        self.port = port
        self.ctx = ctx
        self.servername = servername
        self.sel = selectors.DefaultSelector()

    def run(self, conns: list[Conn], until_caught_up: bool, timeout: float) -> float:
        """Drive ``conns`` until each has its welcome (or caught_up), or failed;
        returns the monotonic time of the start."""
        start = time.perf_counter()
        for c in conns:
            err = c.raw.connect_ex(("127.0.0.1", self.port))
            if err not in (0, errno.EINPROGRESS):
                self._fail(c, f"connect: {os.strerror(err)}")
                continue
            self.sel.register(c.fd, selectors.EVENT_WRITE, c)
        left = len([c for c in conns if not c.closed])
        deadline = start + timeout
        while left and time.perf_counter() < deadline:
            for key, _mask in self.sel.select(0.1):
                conn: Conn = key.data
                before = self._finished(conn, until_caught_up)
                self._step(conn, until_caught_up)
                if not before and self._finished(conn, until_caught_up):
                    left -= 1
        for c in conns:
            if not self._finished(c, until_caught_up):
                self._fail(c, c.error or f"timeout in phase {c.phase}")
        return start

    @staticmethod
    def _finished(c: Conn, until_caught_up: bool) -> bool:
        return c.closed or (c.caught_up is not None if until_caught_up else c.welcome is not None)

    def _fail(self, c: Conn, why: str) -> None:
        if not c.error:
            c.error = why
        self.close(c)

    def close(self, c: Conn) -> None:
        if c.closed:
            return
        c.closed = True
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.fd)
        (c.sock or c.raw).close()

    def _step(self, c: Conn, until_caught_up: bool) -> None:
        try:
            if c.phase == "connect":
                err = c.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._fail(c, f"connect: {os.strerror(err)}")
                    return
                c.sock = self.ctx.wrap_socket(c.raw, server_hostname=self.servername,
                                              do_handshake_on_connect=False)
                c.phase = "handshake"
            if c.phase == "handshake":
                assert c.sock is not None
                try:
                    c.sock.do_handshake()
                except ssl.SSLWantReadError:
                    self.sel.modify(c.fd, selectors.EVENT_READ, c)
                    return
                except ssl.SSLWantWriteError:
                    self.sel.modify(c.fd, selectors.EVENT_WRITE, c)
                    return
                c.phase = "auth"
                c.out = c.auth
            if c.out:
                assert c.sock is not None
                try:
                    sent = c.sock.send(c.out)
                    c.out = c.out[sent:]
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
                self.sel.modify(c.fd, selectors.EVENT_READ | (
                    selectors.EVENT_WRITE if c.out else 0), c)
                if c.out:
                    return
            self._read(c, until_caught_up)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._fail(c, f"{c.phase}: {exc}")

    def _read(self, c: Conn, until_caught_up: bool) -> None:
        assert c.sock is not None
        while not c.closed:
            try:
                data = c.sock.recv(CHUNK)
            except (ssl.SSLWantReadError, BlockingIOError):
                return
            except ssl.SSLWantWriteError:
                return
            if not data:
                if not self._finished(c, until_caught_up):
                    self._fail(c, f"closed by the server in phase {c.phase}")
                else:
                    self.close(c)
                return
            self._take(c, c.tail + data if c.tail else data)
            if not until_caught_up and c.welcome is not None:
                return

    def _take(self, c: Conn, data: bytes) -> None:
        """Account for complete lines of ``data``; keep the partial last one."""
        end = data.rfind(b"\n") + 1
        c.tail = data[end:]
        if not end:
            return
        pos = 0
        if c.welcome is None:
            nl = data.index(b"\n")
            frame = json.loads(data[:nl])
            if frame.get("type") != "welcome":
                self._fail(c, f"expected welcome, got {data[:nl][:160]!r}")
                return
            c.welcome, c.welcome_at, c.phase = frame, time.perf_counter(), "replay"
            pos = nl + 1
        if c.caught_up is not None:
            c.trailing += data.count(b"\n", pos, end)
            return
        mark = data.find(CAUGHT_UP, pos, end)
        stop = end if mark < 0 else mark
        if stop > pos:
            seqs = SEQ.findall(data, pos, stop)
            lines = data.count(b"\n", pos, stop)
            if len(seqs) != lines or (seqs and (int(seqs[0]) != c.expect or list(
                    map(int, seqs)) != list(range(c.expect, c.expect + lines)))):
                c.misordered = True
            c.expect += lines
            c.got += lines
        if mark >= 0:
            nl = data.index(b"\n", mark)
            c.caught_up, c.caught_up_at = json.loads(data[mark:nl]), time.perf_counter()
            c.phase = "live"
            c.trailing += data.count(b"\n", nl + 1, end)


def publish(port: int, ctx: ssl.SSLContext, servername: str, token: str, client: str,
            messages: int, size: int, timeout: float) -> tuple[int, int]:
    """Send ``messages`` messages and wait for their acks: (first seq, last seq)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=servername) as sock:
        sock.sendall((json.dumps({"type": "auth", "token": token, "client": client}) + "\n")
                     .encode())
        pad = "x" * max(0, size - 16)
        lines = b"".join(json.dumps({"type": "msg", "id": i, "body": f"~R~{i},{pad}"[:size]})
                         .encode() + b"\n" for i in range(messages))
        sock.sendall(lines)
        seqs: list[int] = []
        buf = b""
        while len(seqs) < messages:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(CHUNK)
            if not data:
                raise RuntimeError(f"publisher: closed after {len(seqs)} acks")
            buf += data
            *done, buf = buf.split(b"\n")
            for line in done:
                frame = json.loads(line)
                if frame.get("type") == "ack":
                    seqs.append(int(frame["seq"]))
                elif frame.get("type") == "error":
                    raise RuntimeError(f"publisher: {line[:200]!r}")
        sock.sendall(b'{"type":"bye"}\n')
    if seqs != list(range(seqs[0], seqs[0] + messages)):
        raise RuntimeError(f"publisher: acks not consecutive: {seqs[:3]}..{seqs[-3:]}")
    return seqs[0], seqs[-1]


def storm(args: argparse.Namespace) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(args.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    driver = Driver(args.port, ctx, args.servername)
    tag = f"rs{os.getpid()}"
    n, m = args.clients, args.messages
    base: dict[str, Any] = {"scenario": "resume", "proto": "ndjson", "driver": "python",
                            "clients": n, "messages": m, "size": args.size}
    # 1: join once, note the position, leave.
    t = time.perf_counter()
    first = [Conn(i, {"type": "auth", "token": args.token, "client": f"{tag}-{i}"})
             for i in range(n)]
    driver.run(first, until_caught_up=False, timeout=args.timeout)
    killed_at = None
    if args.kill_pid:
        os.kill(args.kill_pid, signal.SIGKILL)  # the node dies under its live clients
        killed_at = time.perf_counter()
    for c in first:
        driver.close(c)
    failed = [c for c in first if c.welcome is None]
    if failed:
        return {**base, "ok": False, "error": f"{len(failed)} first connects failed: "
                f"{failed[0].error}"}
    join_s = time.perf_counter() - t
    time.sleep(0.3)  # let the server see every leave before the messages
    # 2: M acknowledged messages.
    t = time.perf_counter()
    resume_port = args.resume_port or args.port
    driver.port = resume_port
    first_seq, last_seq = publish(resume_port, ctx, args.servername, args.token, f"{tag}-pub",
                                  m, args.size, args.timeout)
    publish_s = time.perf_counter() - t
    # 3: everyone resumes at once.
    conns = []
    for c in first:
        assert c.welcome is not None
        pos = {"epoch": c.welcome["epoch"], "seq": c.welcome["seq"]}
        conns.append(Conn(c.index, {"type": "auth", "token": args.token,
                                    "client": f"{tag}-{c.index}", "resume": pos},
                          pos["seq"]))
    cpu = CpuWindow(args.server_pid)
    t0 = driver.run(conns, until_caught_up=True, timeout=args.timeout)
    caught = [c for c in conns if c.caught_up is not None]
    last = max((c.caught_up_at for c in caught), default=time.perf_counter())
    cpu_figures = cpu.stop()
    # anything after caught_up would show here (there is no live traffic)
    settle = time.perf_counter() + 0.2
    while time.perf_counter() < settle:
        for key, _mask in driver.sel.select(0.05):
            driver._read(key.data, until_caught_up=True)
    for c in conns:
        driver.close(c)
    wrong = 0
    examples: list[str] = []
    errs: dict[str, int] = {}
    for c in conns:
        want = last_seq - c.resume_seq
        cu = c.caught_up
        if cu is None:
            errs[c.error[:80]] = errs.get(c.error[:80], 0) + 1
            continue
        if (want != m or c.got != want or cu.get("replayed") != want
                or cu.get("seq") != last_seq
                or cu.get("reset") or cu.get("missing_after") is not None):
            wrong += 1
            if len(examples) < 5:
                examples.append(f"client {c.index}: got {c.got} msgs, caught_up {cu}, "
                                f"wanted {want} up to seq {last_seq}")
    misordered = sum(1 for c in conns if c.misordered)
    after = sum(c.trailing for c in conns)
    all_s = last - t0
    replayed = sum(c.got for c in conns)
    return {
        **base, "ok": len(caught) == n and not wrong and not misordered and not after,
        "caughtUp": len(caught), "fails": n - len(caught), "wrong": wrong,
        "misordered": misordered, "afterCaughtUp": after, "errs": errs, "examples": examples,
        "allCaughtUpSec": round(all_s, 3),
        "allAuthSec": round(max((c.welcome_at for c in conns if c.welcome), default=t0) - t0, 3),
        "replayedMsgs": replayed, "replayedPerSec": round(replayed / all_s) if all_s else None,
        "timeToCaughtUp": percentiles([c.caught_up_at - t0 for c in caught]),
        "timeToAuth": percentiles([c.welcome_at - t0 for c in conns if c.welcome]),
        "cpu": cpu_figures, "firstJoinSec": round(join_s, 3), "publishSec": round(publish_s, 3),
        "seqs": [first_seq, last_seq],
        **({"resumePort": resume_port} if resume_port != args.port else {}),
        **({"sinceKillSec": round(last - killed_at, 3)} if killed_at is not None else {}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", type=Path, required=True, help="CA certificate (PEM)")
    p.add_argument("--token", required=True)
    p.add_argument("--servername", default="localhost")
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--size", type=int, default=100, help="message body bytes")
    p.add_argument("--timeout", type=float, default=30.0, help="bound on each phase, s")
    p.add_argument("--server-pid", type=int, default=0, help="for the server's CPU time")
    p.add_argument("--resume-port", type=int, default=0,
                   help="publish and resume on this node (default: --port)")
    p.add_argument("--kill-pid", type=int, default=0,
                   help="SIGKILL this process (the --port node) after the first joins")
    args = p.parse_args(argv)
    if args.clients < 1 or args.messages < 1 or args.size < 16:
        print("resume_storm: --clients and --messages must be positive, --size >= 16",
              file=sys.stderr)
        return 2
    try:
        result = storm(args)
    except (OSError, RuntimeError, ssl.SSLError, ValueError) as exc:
        result = {"scenario": "resume", "driver": "python", "ok": False, "error": str(exc)}
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
