#!/usr/bin/env python3
"""Soak: N clients chat for M minutes while the server restarts, clients freeze and
links are cut; counts what was lost, duplicated or reordered, and prints ONE line.

Set-up: a real ``securechat-server`` subprocess (its own development certificates and
tokens file in a temporary directory, one free loopback port kept across restarts),
and ``--procs`` worker processes (this script with ``--worker``), each running its
share of the ``--clients`` :class:`securechat.Client` objects. ``--users`` names are
shared round-robin (default: one user per client). A ``--relay-fraction`` of the
clients reach the server through a TCP relay in this process, so their links can be
cut. Every message body is ``"<sender> <counter> ..."``: the sending client's index
and its own counter (1, 2, 3...).

Faults, at times drawn from ``--seed``:

- ``term``: SIGTERM; the server says ``bye`` (spread ``retry_after``), flushes and exits;
  a new one starts on the same port;
- ``kill``: SIGKILL; a new server starts ``--down`` seconds after it died;
- ``freeze``: SIGSTOP one worker process for ``--freeze-min``..``--freeze-max`` seconds,
  then SIGCONT (past 3 heartbeats the server cuts its clients with ``idle_timeout``;
  they reconnect: expected);
- ``cut``: the relay resets (RST, both sides) ``--cut-fraction`` of its connections.

At the end the senders stop, every client drains what it still owes (all its
messages acknowledged), then waits until it has seen the last acknowledged seq (a
client that was cut off gets it by resume), the server gets a final SIGTERM, and the
workers write what they saw.

The server runs with its default store (``--store sqlite`` in ``<workdir>/data``,
kept across restarts, ``--durability commit``), and every ``Client`` keeps its client
id and resumes on each reconnect. What is counted, against what issue 9 promises:

- A client is *owed* every message acknowledged to another client (its sender's
  ``SendHandle`` resolved with a ``seq``, a ``duplicate`` ack included) numbered
  after the ``seq`` of the client's FIRST ``welcome``, in that welcome's epoch (and
  every message of a later epoch, should the log be reset). Every client is a member
  from its first welcome to the end: offline, frozen, cut off or across any restart
  (SIGTERM or SIGKILL), it is owed the same.
- ``lost_acked``: (client, owed message) pairs the client never received, live or
  replayed, in any session (``lost_acked_msgs``: distinct messages). ``checked`` is
  how many pairs there were.
- ``dup``: a client received another client's (sender, counter) more than once.
- ``reordered``: a message reached a client with a seq not above the last one it had
  from another client in that epoch, or with a counter below one it already had from
  that sender (so: each owed message exactly once, in order, replayed ones counted).
- Reported, not failed: ``replayed`` (messages flagged replayed), ``gaps`` and
  ``gap_missing`` (Gap events: what the client was told it could not get back),
  ``caught_up`` (and ``caught_up_incomplete``: with ``missing_after`` or ``reset``),
  ``own_replayed`` (a client's own message replayed to it after its ack was lost),
  ``duplicate_acks`` (resends the server recognised), ``epochs`` (1 unless the log
  was reset), ``behind_at_end`` (clients that never reached the last acked seq),
  ``unacked``.

The summary line goes to stdout; details (first examples of each failure, session
end reasons) to stderr. Exit status: 0, or 1 if ``lost_acked``, ``dup`` or
``reordered`` is not 0, or 2 if the soak itself could not run.

    python bench/soak.py --clients 200 --minutes 5
    python bench/soak.py --clients 6 --procs 2 --minutes 0.25 --terms 1 --kills 0

The run is bounded by ``--max-seconds``; every process it starts (server, workers) is
stopped by PID at the end, Ctrl-C and SIGTERM included (a SIGKILL of this script
cannot: its workers then see their stdin close and stop, the server does not).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import heapq
import json
import os
import queue
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from securechat.client import Client, Closed, Connected, Disconnected, Event, Gap, SendHandle
from securechat.client.backoff import BackoffPolicy
from securechat.errors import ClientError
from securechat.io.tls import client_context
from securechat.protocol import Ack, CaughtUp, ErrorFrame, Message

MAX_ANOMALIES = 20000  # per client: enough to classify, bounded if everything breaks
SHUTDOWN_PREFIX = "the server is shutting down"  # securechat.client.parts.bye_reason


class SoakError(Exception):
    """The soak itself could not run (setup failed, a deadline ran out)."""


# ====================================================================== worker side
class Received:
    """The seqs of one epoch a client has seen (messages and its own acks), as ranges:
    the stream is nearly contiguous, so a few ``[lo, hi]`` pairs hold thousands."""

    def __init__(self) -> None:
        self.seqs: set[int] = set()

    def add(self, seq: int) -> None:
        self.seqs.add(seq)

    def ranges(self) -> list[list[int]]:
        out: list[list[int]] = []
        for seq in sorted(self.seqs):
            if out and seq == out[-1][1] + 1:
                out[-1][1] = seq
            else:
                out.append([seq, seq])
        return out


class Tracker:
    """What one client saw over the whole run. ``on_event`` runs in that client's I/O
    thread only; the sender thread only writes ``ids`` and ``handles``.

    Checked here, per client and across all its sessions (live and replayed alike):
    a (sender, counter) of another client seen twice is a ``dup``; one that arrives
    with a seq not above the last one seen in that epoch, or a counter below one
    already seen from that sender, is ``reordered``. What was never seen is found
    by the driver (:func:`analyse`), which knows every acknowledged message."""

    def __init__(self, gid: int) -> None:
        self.gid = gid
        self.epochs: list[str] = []
        self.first: tuple[int, int] | None = None  # (epoch index, seq) of the first welcome
        self.epoch = -1  # of the current session
        self.received: list[Received] = []
        self.last_seq: list[int] = []  # per epoch: the highest seq of another's message
        self.seen: dict[int, array[int]] = {}  # sender -> seq + 1 by counter (0: not yet)
        self.high: dict[int, int] = {}  # sender -> highest counter seen
        self.acks: dict[str, tuple[int, int]] = {}  # message id -> (epoch index, seq)
        self.ids: dict[str, int] = {}  # message id -> counter
        self.handles: list[SendHandle] = []
        self.anomalies: list[list[Any]] = []
        self.counts: Counter[str] = Counter()
        self.gaps: list[list[Any]] = []
        self.errors: Counter[str] = Counter()
        self.ends: Counter[str] = Counter()
        self.pending_code = ""
        self.queue_full = 0
        self.top: dict[str, int] = {}  # epoch -> highest seq seen (read by the worker)

    def _epoch(self, name: str) -> int:
        try:
            return self.epochs.index(name)
        except ValueError:
            self.epochs.append(name)
            self.received.append(Received())
            self.last_seq.append(0)
            return len(self.epochs) - 1

    def on_event(self, event: Event) -> None:
        if isinstance(event, Message):
            self._on_message(event)
        elif isinstance(event, Ack):
            if self.epoch >= 0:
                if event.id is not None:
                    self.acks[str(event.id)] = (self.epoch, event.seq)
                self._saw(event.seq)
            if event.duplicate:
                self.counts["duplicate_acks"] += 1
        elif isinstance(event, Connected):
            w = event.welcome
            self.epoch = self._epoch(w.epoch)
            if self.first is None:
                self.first = (self.epoch, w.seq)
            self.counts["sessions"] += 1
            self.pending_code = ""
        elif isinstance(event, CaughtUp):
            self.counts["caught_up"] += 1
            if event.reset or event.missing_after is not None:
                self.counts["caught_up_incomplete"] += 1
        elif isinstance(event, Gap):
            self.counts["gaps"] += 1
            self.counts["gap_missing"] += event.missing
            if len(self.gaps) < 50:
                self.gaps.append([event.after, event.before, event.missing, event.restarted])
        elif isinstance(event, ErrorFrame):
            self.errors[event.code] += 1
            self.pending_code = event.code
        elif isinstance(event, Disconnected):
            reason = event.reason
            if reason.startswith(SHUTDOWN_PREFIX):
                kind = "bye"
            elif self.pending_code:
                kind = self.pending_code
            elif "heartbeat" in reason:
                kind = "heartbeat"
            else:
                kind = "lost"
            self.ends[kind] += 1
        elif isinstance(event, Closed):
            self.ends["closed"] += 1

    def _saw(self, seq: int) -> None:
        self.received[self.epoch].add(seq)
        name = self.epochs[self.epoch]
        if seq > self.top.get(name, 0):
            self.top[name] = seq

    def _anomaly(self, kind: str, *detail: Any) -> None:
        self.counts[kind] += 1
        if len(self.anomalies) < MAX_ANOMALIES:
            self.anomalies.append([kind, *detail])

    def _on_message(self, msg: Message) -> None:
        self.counts["delivered"] += 1
        if msg.replayed:
            self.counts["replayed"] += 1
        e = self.epoch
        if e < 0:
            self.errors["message_before_welcome"] += 1
            return
        self._saw(msg.seq)
        try:
            head = msg.body.split(" ", 2)
            sender, counter = int(head[0]), int(head[1])
        except (ValueError, IndexError):
            self.errors["foreign_body"] += 1
            return
        if sender == self.gid:
            self.counts["own_replayed"] += 1  # our own message, replayed after a lost ack
            return
        epoch_name = self.epochs[e]
        if msg.seq <= self.last_seq[e]:
            self._anomaly("reordered", sender, counter, epoch_name, msg.seq,
                          f"seq {msg.seq} after seq {self.last_seq[e]}")
        else:
            self.last_seq[e] = msg.seq
        seen = self.seen.get(sender)
        if seen is None:
            seen = self.seen[sender] = array("q")
        if counter >= len(seen):
            seen.frombytes(bytes(8 * (counter + 1 - len(seen))))
        if seen[counter]:
            self._anomaly("dup", sender, counter, epoch_name, msg.seq,
                          f"first as seq {seen[counter] - 1}")
            return
        seen[counter] = msg.seq + 1
        high = self.high.get(sender, 0)
        if counter < high:
            self._anomaly("reordered", sender, counter, epoch_name, msg.seq,
                          f"counter {counter} after counter {high}")
        else:
            self.high[sender] = counter

    def result(self) -> dict[str, Any]:
        acked = []
        for mid, counter in list(self.ids.items()):
            got = self.acks.get(mid)
            if got is not None:
                acked.append([counter, self.epochs[got[0]], got[1]])
        done = [h for h in self.handles if h.done()]
        first = None if self.first is None else [self.epochs[self.first[0]], self.first[1]]
        return {
            "gid": self.gid,
            "sent": len(self.handles),
            "acked": sum(1 for h in done if h.seq is not None),
            "failed": sum(1 for h in done if h.seq is None),
            "unacked": len(self.handles) - len(done),
            "queue_full": self.queue_full,
            "first": first,
            "received": {self.epochs[i]: r.ranges() for i, r in enumerate(self.received)},
            "canonical": acked,
            "counts": dict(self.counts),
            "gaps": self.gaps,
            "anomalies": self.anomalies,
            "errors": dict(self.errors),
            "ends": dict(self.ends),
        }


def _say(out: TextIO, **fields: Any) -> None:
    out.write(json.dumps(fields) + "\n")
    out.flush()


def worker_main() -> int:
    """A worker process: its clients, one sender thread (this one), commands on stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, by PID
    cfg = json.loads(sys.stdin.readline())
    commands: queue.Queue[str] = queue.Queue()

    def read_commands() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("eof")

    threading.Thread(target=read_commands, name="soak-commands", daemon=True).start()
    deadline = time.monotonic() + float(cfg["max_seconds"])
    ctx = client_context(Path(cfg["ca"]))
    policy = BackoffPolicy(base=float(cfg["backoff_base"]), cap=float(cfg["backoff_cap"]))
    trackers: list[Tracker] = []
    clients: list[Client] = []
    for gid, token, port in cfg["clients"]:
        tracker = Tracker(gid)
        client = Client("127.0.0.1", port, token=token, ssl_context=ctx, backoff=policy,
                        max_events=0, on_event=tracker.on_event, close_timeout=1.0,
                        connect_timeout=10.0, name=f"soak-client-{gid}")
        trackers.append(tracker)
        clients.append(client)
    rng = random.Random(cfg["seed"])
    pad = "x" * max(0, int(cfg["size"]) - 24)

    def wait_command(expected: str, until: float) -> str | None:
        """The next command that is ``expected`` (or starts with it and a space)."""
        while (left := until - time.monotonic()) > 0:
            try:
                cmd = commands.get(timeout=left)
            except queue.Empty:
                return None
            if cmd == expected or cmd.startswith(expected + " "):
                return cmd
            if cmd == "eof":
                return None
        return None

    try:
        for client in clients:
            client.start()
        connect_by = time.monotonic() + float(cfg["connect_seconds"])
        ok = 0
        for client in clients:
            with contextlib.suppress(TimeoutError, ClientError):
                client.wait_connected(max(0.0, connect_by - time.monotonic()))
                ok += 1
        _say(sys.stdout, event="ready", connected=ok)
        if not wait_command("go", deadline):
            return 3
        # Send: each client at --rate messages/s, exponential gaps, until "stop".
        rate = float(cfg["rate"])
        now = time.monotonic()
        timers = [(now + rng.expovariate(rate), i) for i in range(len(clients))]
        heapq.heapify(timers)
        counters = [0] * len(clients)
        stopped = False
        while not stopped and time.monotonic() < deadline:
            due, i = timers[0]
            try:
                cmd = commands.get(timeout=max(0.0, due - time.monotonic()))
                stopped = cmd in ("stop", "eof")
                if cmd == "eof":
                    return 3
                continue
            except queue.Empty:
                pass
            heapq.heapreplace(timers, (max(due, time.monotonic() - 1.0)
                                       + rng.expovariate(rate), i))
            tracker, client = trackers[i], clients[i]
            counters[i] += 1
            body = f"{tracker.gid} {counters[i]} {pad}"
            try:
                handle = client.send(body)
            except ClientError:
                counters[i] -= 1
                tracker.queue_full += 1
                continue
            tracker.ids[handle.id] = counters[i]
            tracker.handles.append(handle)
        # Drain: every client gets what it still owes acknowledged (it may be offline).
        drain_by = min(deadline, time.monotonic() + float(cfg["drain_seconds"]))
        for client in clients:
            client.drain(max(0.0, drain_by - time.monotonic()))
        tops: dict[str, int] = {}
        for tracker in trackers:
            for epoch, seq in list(tracker.acks.values()):
                name = tracker.epochs[epoch]
                tops[name] = max(tops.get(name, 0), seq)
        _say(sys.stdout, event="drained",
             unacked=sum(c.stats()["queued"] for c in clients), tops=tops)
        # Catch up: every client gets to the last acknowledged seq (replayed if need be).
        command = wait_command("catchup", deadline)
        if command is None:
            return 3
        want: dict[str, int] = json.loads(command.split(" ", 1)[1])
        catch_by = min(deadline, time.monotonic() + float(cfg["catchup_seconds"]))

        def behind() -> int:
            return sum(1 for t in trackers
                       if any(t.top.get(e, 0) < seq for e, seq in want.items()))

        while behind() and time.monotonic() < catch_by:
            threading.Event().wait(0.05)
        _say(sys.stdout, event="caught", behind=behind())
        if not wait_command("finish", deadline):
            return 3
        # The server has stopped: let every client see its bye, then close.
        seen_by = time.monotonic() + 10.0
        while any(c.connected for c in clients) and time.monotonic() < seen_by:
            threading.Event().wait(0.05)
    finally:
        for client in clients:
            client.close(timeout=0)
        for client in clients:
            client.thread.join(5.0)
    results = [t.result() for t in trackers]
    Path(cfg["out"]).write_text(json.dumps({"clients": results}))
    _say(sys.stdout, event="done")
    return 0


# ====================================================================== the relay
class Relay:
    """A TCP relay on 127.0.0.1 to the server, whose links :meth:`cut` resets.

    One thread owns every socket (selectors); :meth:`cut` only queues a request."""

    LIMIT = 1 << 20  # bytes buffered per direction before the other side is not read

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.peer: dict[socket.socket, socket.socket] = {}
        self.out: dict[socket.socket, bytearray] = {}
        self.events: dict[socket.socket, int] = {}
        self.downs: set[socket.socket] = set()
        self.cuts: queue.Queue[tuple[float, random.Random]] = queue.Queue()
        self.links_cut = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-relay", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def cut(self, fraction: float, rng: random.Random) -> None:
        self.cuts.put((fraction, rng))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self.thread.join(5.0)
        for sock in list(self.peer):
            sock.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self.sel.close()

    def _run(self) -> None:
        while not self.stop.is_set():
            for key, mask in self.sel.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data is None:
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    self._do_cuts()
                elif sock in self.peer:
                    self._on_ready(sock, mask)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                down, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=1.0)
            except OSError:
                _reset(down)  # the server is down: so is the relayed link
                continue
            for sock in (down, up):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.out[sock] = bytearray()
                self.sel.register(sock, selectors.EVENT_READ, "pipe")
                self.events[sock] = selectors.EVENT_READ
            self.peer[down], self.peer[up] = up, down
            self.downs.add(down)

    def _on_ready(self, sock: socket.socket, mask: int) -> None:
        other = self.peer[sock]
        if mask & selectors.EVENT_WRITE and not self._flush(sock):
            return
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._drop(sock)
                return
            self.out[other] += data
            if self._flush(other):
                self._update(sock)

    def _flush(self, sock: socket.socket) -> bool:
        """Write what is buffered for ``sock``; False if the pair was dropped."""
        buf = self.out[sock]
        if buf:
            try:
                sent = sock.send(buf)
                del buf[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(sock)
                return False
        self._update(sock)
        self._update(self.peer[sock])
        return True

    def _update(self, sock: socket.socket) -> None:
        events = 0
        if len(self.out[self.peer[sock]]) < self.LIMIT:
            events |= selectors.EVENT_READ
        if self.out[sock]:
            events |= selectors.EVENT_WRITE
        current = self.events.get(sock, 0)
        if events == current:
            return
        if not events:  # nothing to write, and the peer's buffer is full: park it
            self.sel.unregister(sock)
        elif not current:
            self.sel.register(sock, events, "pipe")
        else:
            self.sel.modify(sock, events, "pipe")
        self.events[sock] = events

    def _drop(self, sock: socket.socket, *, reset: bool = False) -> None:
        other = self.peer.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self.peer.pop(s, None)
            self.out.pop(s, None)
            self.downs.discard(s)
            if self.events.pop(s, 0):
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(s)
            if reset:
                _reset(s)
            else:
                s.close()

    def _do_cuts(self) -> None:
        while True:
            try:
                fraction, rng = self.cuts.get_nowait()
            except queue.Empty:
                return
            downs = sorted(self.downs, key=lambda s: s.fileno())
            if not downs:
                continue
            chosen = rng.sample(downs, max(1, round(len(downs) * fraction)))
            for sock in chosen:
                self._drop(sock, reset=True)
            self.links_cut += len(chosen)


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a middlebox or a lost route would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    sock.close()


# ====================================================================== the driver
@dataclass
class Generation:
    """One server process."""

    index: int
    pid: int
    start: float
    stop: float = 0.0
    how: str = ""  # term, kill, final (a SIGTERM at the end), term_killed
    exit_code: int | None = None


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[str]
    out: Path
    frozen: bool = False


class Soak:
    """Drives one run: server, relay, workers, the fault schedule, the final count."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.deadline: float = time.monotonic() + float(args.max_seconds)
        self.port = _pick_port(random.SystemRandom())  # not the seed: two runs, two ports
        self.server: subprocess.Popen[bytes] | None = None
        self.gens: list[Generation] = []
        self.relay: Relay | None = None
        self.workers: list[Worker] = []
        self.lines: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.readers: list[threading.Thread] = []
        self.faults: Counter[str] = Counter()
        self.frozen: list[list[float]] = []  # [worker, SIGSTOP time, SIGCONT time]

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SoakError(f"--max-seconds {self.args.max_seconds:g} ran out")
        return left

    def pause(self, seconds: float) -> None:
        threading.Event().wait(max(0.0, min(seconds, self.left())))

    # ------------------------------------------------------------------ server
    def prepare(self) -> list[str]:
        subprocess.run([sys.executable, "-m", "securechat.cli.certs", "--if-missing", "--out",
                        str(self.work / "certs")], check=True, capture_output=True,
                       timeout=60)
        from securechat.server.tokens import add_token
        (self.work / "tokens.json").unlink(missing_ok=True)  # a --workdir used before
        users = [add_token(self.work / "tokens.json", f"soak{i}")[0]
                 for i in range(self.args.users)]
        return [users[i % len(users)] for i in range(self.args.clients)]

    def start_server(self) -> None:
        a = self.args
        exe = Path(sys.executable).with_name("securechat-server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "securechat.cli.server"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port),
                "--cert", str(self.work / "certs/server.pem"),
                "--key", str(self.work / "certs/server.key"),
                "--tokens", str(self.work / "tokens.json"),
                "--max-unauth-per-ip", str(a.clients + 64), "--auth-failures", "0",
                "--heartbeat", str(a.heartbeat), "--retry-spread", str(a.retry_spread),
                "--shutdown-timeout", str(a.shutdown_timeout), "--log-level", "warning",
                "--store", a.store]
        if a.store == "sqlite":  # one log for the whole run, kept across restarts
            cmd += ["--data-dir", str(self.work / "data")]
            if a.durability:
                cmd += ["--durability", a.durability]
        for _attempt in range(10):  # the port may be briefly taken while we were down
            log = (self.work / "server.log").open("ab")
            started = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
            log.close()
            self.server = proc
            until = time.monotonic() + min(30.0, self.left())
            while time.monotonic() < until:
                if proc.poll() is not None:
                    break
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", self.port), timeout=0.5):
                    self.gens.append(Generation(len(self.gens), proc.pid, started))
                    return
                self.pause(0.02)
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            self.server = None
            self.pause(0.5)
        tail = (self.work / "server.log").read_text(errors="replace")[-2000:]
        raise SoakError(f"the server did not start on port {self.port}:\n{tail}")

    def stop_server(self, how: str) -> None:
        proc, gen = self.server, self.gens[-1]
        assert proc is not None
        gen.stop = time.monotonic()
        gen.how = how
        proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        try:
            proc.wait(timeout=min(self.args.shutdown_timeout + 15.0, self.left()))
        except subprocess.TimeoutExpired:
            gen.how = "term_killed"
            proc.kill()
            proc.wait(10)
        gen.exit_code = proc.returncode
        self.server = None

    def restart(self, how: str) -> None:
        self.stop_server(how)
        if how == "kill":
            self.pause(self.args.down)
        self.start_server()
        self.faults[how] += 1

    # ------------------------------------------------------------------ workers
    def start_workers(self, tokens: list[str]) -> None:
        a = self.args
        assert self.relay is not None
        relayed = set(self.rng.sample(range(a.clients), round(a.clients * a.relay_fraction)))
        for w in range(a.procs):
            mine = [[gid, tokens[gid], self.relay.port if gid in relayed else self.port]
                    for gid in range(w, a.clients, a.procs)]
            out = self.work / f"worker{w}.json"
            cfg = {"clients": mine, "ca": str(self.work / "certs/ca.pem"), "out": str(out),
                   "rate": a.rate, "size": a.size, "seed": self.rng.randrange(1 << 30),
                   "backoff_base": a.backoff_base, "backoff_cap": a.backoff_cap,
                   "max_seconds": self.left(), "drain_seconds": a.drain_seconds,
                   "catchup_seconds": a.catchup_seconds,
                   "connect_seconds": 30.0 + a.clients / 20}
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    start_new_session=True)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(cfg) + "\n")
            proc.stdin.flush()
            reader = threading.Thread(target=self._read_worker, args=(w, proc.stdout),
                                      name=f"soak-reader-{w}", daemon=True)
            reader.start()
            self.readers.append(reader)
            self.workers.append(Worker(w, proc, out))

    def _read_worker(self, w: int, stream: TextIO) -> None:
        for line in stream:
            with contextlib.suppress(ValueError):
                self.lines.put((w, json.loads(line)))
        self.lines.put((w, {"event": "exit"}))

    def tell(self, command: str) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError, ValueError):
                assert worker.proc.stdin is not None
                worker.proc.stdin.write(command + "\n")
                worker.proc.stdin.flush()

    def wait_all(self, event: str, limit: float) -> list[dict[str, Any]]:
        got: dict[int, dict[str, Any]] = {}
        until = time.monotonic() + min(limit, self.left())
        while len(got) < len(self.workers):
            try:
                w, msg = self.lines.get(timeout=max(0.01, until - time.monotonic()))
            except queue.Empty:
                raise SoakError(f"workers did not report {event!r} in {limit:g} s") from None
            if msg.get("event") == event:
                got[w] = msg
            elif msg.get("event") == "exit" and w not in got:  # after "done" it is normal
                raise SoakError(f"worker {w} exited before {event!r}")
        return list(got.values())

    def freeze(self, w: int, on: bool) -> None:
        worker = self.workers[w]
        if worker.proc.poll() is None and worker.frozen != on:
            os.kill(worker.proc.pid, signal.SIGSTOP if on else signal.SIGCONT)
            worker.frozen = on
            if on:
                self.frozen.append([float(w), time.monotonic(), 0.0])
            else:
                for span in self.frozen:
                    if span[0] == w and not span[2]:
                        span[2] = time.monotonic()

    # ------------------------------------------------------------------ schedule
    def schedule(self, duration: float) -> list[tuple[float, int, str, float]]:
        a, rng = self.args, self.rng
        restarts = ["term"] * a.terms + ["kill"] * a.kills
        rng.shuffle(restarts)
        plan: list[tuple[float, int, str, float]] = []
        slot = duration / (len(restarts) + 1)
        for i, how in enumerate(restarts):
            plan.append((slot * (i + 1) + rng.uniform(-0.25, 0.25) * slot, len(plan), how, 0.0))
        for _ in range(a.freezes):
            plan.append((rng.uniform(0.05, 0.85) * duration, len(plan), "freeze",
                         rng.uniform(a.freeze_min, a.freeze_max)))
        for _ in range(a.cuts):
            plan.append((rng.uniform(0.05, 0.95) * duration, len(plan), "cut", 0.0))
        heapq.heapify(plan)
        return plan

    def run_faults(self, t0: float, duration: float) -> None:
        plan = self.schedule(duration)
        while plan:
            at, _, kind, arg = heapq.heappop(plan)
            self.pause(t0 + at - time.monotonic())
            if kind in ("term", "kill"):
                self.restart(kind)
            elif kind == "freeze":
                idle = [w.index for w in self.workers if not w.frozen]
                if not idle:
                    continue
                w = self.rng.choice(idle)
                self.freeze(w, True)
                self.faults["freeze"] += 1
                heapq.heappush(plan, (at + arg, len(plan) + 1000, "thaw", float(w)))
            elif kind == "thaw":
                self.freeze(int(arg), False)
            elif kind == "cut":
                assert self.relay is not None
                self.relay.cut(self.args.cut_fraction, random.Random(self.rng.random()))
                self.faults["cut"] += 1
        self.pause(t0 + duration - time.monotonic())

    # ------------------------------------------------------------------ one run
    def run(self) -> dict[str, Any]:
        a = self.args
        tokens = self.prepare()
        self.start_server()
        self.relay = Relay(self.port)
        self.relay.start()
        self.start_workers(tokens)
        ready = self.wait_all("ready", 60.0 + a.clients / 5)
        connected = sum(int(r["connected"]) for r in ready)
        if connected < a.clients:
            print(f"soak: only {connected} of {a.clients} clients connected at first",
                  file=sys.stderr)
        self.tell("go")
        duration = a.minutes * 60.0
        self.run_faults(time.monotonic(), duration)
        for worker in self.workers:
            self.freeze(worker.index, False)
        self.tell("stop")
        drained = self.wait_all("drained", a.drain_seconds + 30.0)
        unacked_at_stop = sum(int(d["unacked"]) for d in drained)
        tops: dict[str, int] = {}
        for d in drained:
            for epoch, seq in d.get("tops", {}).items():
                tops[epoch] = max(tops.get(epoch, 0), int(seq))
        self.tell("catchup " + json.dumps(tops))
        caught = self.wait_all("caught", a.catchup_seconds + 30.0)
        behind = sum(int(c["behind"]) for c in caught)
        self.stop_server("final")
        self.tell("finish")
        self.wait_all("done", 60.0)
        for worker in self.workers:
            worker.proc.wait(timeout=min(30.0, self.left()))
        results = [c for w in self.workers
                   for c in json.loads(w.out.read_text())["clients"]]
        assert self.relay is not None
        return analyse(self.gens, results, {
            "faults": dict(self.faults), "links_cut": self.relay.links_cut,
            "frozen": self.frozen, "procs": a.procs, "heartbeat": a.heartbeat,
            "down": a.down, "behind_at_end": behind,
            "unacked_at_stop": unacked_at_stop, "connected_at_start": connected})

    def close(self) -> None:
        """Stop everything this run started, by PID; safe to call at any point."""
        for worker in self.workers:
            with contextlib.suppress(OSError):
                self.freeze(worker.index, False)
            with contextlib.suppress(OSError, ValueError):
                if worker.proc.stdin is not None:
                    worker.proc.stdin.close()  # EOF: the worker closes its clients
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(10)
        if self.server is not None:
            self.server.kill()
            self.server.wait(10)
            self.server = None
        if self.relay is not None:
            self.relay.close()
        for reader in self.readers:
            reader.join(5.0)


# ====================================================================== the count
def owed_from(first: list[Any] | None) -> tuple[str, int] | None:
    """From where a client is owed the room's messages: every acknowledged message
    numbered after its FIRST welcome's seq, in that welcome's epoch (and all of any
    later epoch). Before it joined it was not a member; from then on it is one for the
    whole run, offline or not, across every restart."""
    return None if first is None else (str(first[0]), int(first[1]))


def _missing(seqs: list[int], ranges: list[list[int]]) -> Iterator[int]:
    """The seqs of ``seqs`` (sorted) outside every ``[lo, hi]`` of ``ranges`` (sorted)."""
    i = 0
    for lo, hi in ranges:
        j = bisect.bisect_left(seqs, lo, i)
        yield from seqs[i:j]
        i = bisect.bisect_right(seqs, hi, j)
    yield from seqs[i:]


def analyse(gens: list[Generation], results: list[dict[str, Any]],
            extra: dict[str, Any]) -> dict[str, Any]:
    """Count what issue 9 promises against what every client saw (module docstring)."""
    # Every acknowledged message: (epoch, seq) -> sender.
    by_epoch: dict[str, list[tuple[int, int]]] = {}
    for r in results:
        for _counter, epoch, seq in r["canonical"]:
            by_epoch.setdefault(epoch, []).append((seq, r["gid"]))
    epoch_order: list[str] = []
    for r in results:  # epochs in the order clients first saw them
        for epoch in r["received"]:
            if epoch not in epoch_order:
                epoch_order.append(epoch)
    for epoch in by_epoch:
        if epoch not in epoch_order:
            epoch_order.append(epoch)
    for pairs in by_epoch.values():
        pairs.sort()
    out: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    lost_msgs: set[tuple[str, int]] = set()

    def note(kind: str, text: str, n: int = 1) -> None:
        out[kind] += n
        if len(examples.setdefault(kind, [])) < 5:
            examples[kind].append(text)

    for r in results:
        gid = r["gid"]
        start = owed_from(r.get("first"))
        if start is None:
            out["never_connected"] += 1
            continue
        first_epoch, first_seq = start
        later = epoch_order[epoch_order.index(first_epoch) + 1:] \
            if first_epoch in epoch_order else []
        for epoch in [first_epoch, *later]:
            floor = first_seq if epoch == first_epoch else 0
            owed = [seq for seq, sender in by_epoch.get(epoch, [])
                    if seq > floor and sender != gid]
            out["checked"] += len(owed)
            lost = list(_missing(owed, r["received"].get(epoch, [])))
            if lost:
                lost_msgs.update((epoch, seq) for seq in lost)
                note("lost_acked", f"client {gid} (member from epoch {first_epoch} seq "
                     f"{first_seq}) never got {len(lost)} acked messages of epoch {epoch}: "
                     f"seqs {lost[:5]}{'...' if len(lost) > 5 else ''}", len(lost))
        for kind, sender, counter, epoch, seq, why in r["anomalies"]:
            if len(examples.setdefault(kind, [])) < 5:
                examples[kind].append(f"client {gid} got sender {sender}'s #{counter} "
                                      f"(epoch {epoch} seq {seq}): {why}")
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    for r in results:
        counts.update(r["counts"])
        errors.update(r["errors"])
        ends.update(r["ends"])
        for after, before, missing, restarted in r["gaps"][:2]:
            if len(examples.setdefault("gap", [])) < 5:
                examples["gap"].append(f"client {r['gid']}: Gap after {after} before {before}"
                                       f" missing {missing}{' (restarted)' if restarted else ''}")
    summary = {
        "sent": sum(r["sent"] for r in results),
        "acked": sum(r["acked"] for r in results),
        "delivered": counts["delivered"],
        "replayed": counts["replayed"],
        "lost_acked": out["lost_acked"], "dup": counts["dup"],
        "reordered": counts["reordered"],
        "lost_acked_msgs": len(lost_msgs),
        "checked": out["checked"],
        "gaps": counts["gaps"], "gap_missing": counts["gap_missing"],
        "caught_up": counts["caught_up"],
        "caught_up_incomplete": counts["caught_up_incomplete"],
        "own_replayed": counts["own_replayed"],
        "duplicate_acks": counts["duplicate_acks"],
        "epochs": len(epoch_order),
        "restarts_term": extra["faults"].get("term", 0),
        "restarts_kill": extra["faults"].get("kill", 0),
        "freezes": extra["faults"].get("freeze", 0), "cuts": extra["faults"].get("cut", 0),
        "links_cut": extra["links_cut"],
        "timeouts": ends["heartbeat"] + ends["idle_timeout"],
        "sessions": counts["sessions"],
        "unacked": sum(r["unacked"] + r["failed"] for r in results),
        "behind_at_end": extra.get("behind_at_end", 0),
        "never_connected": out["never_connected"],
    }
    return {"summary": summary, "examples": examples, "ends": dict(ends),
            "errors": dict(errors), "servers": [
                {"how": g.how, "exit": g.exit_code, "up_s": round(g.stop - g.start, 1)}
                for g in gens], **extra}


def failed(summary: dict[str, Any]) -> bool:
    """The pass/fail rule: nothing acknowledged lost, duplicated or reordered."""
    return bool(summary["lost_acked"] or summary["dup"] or summary["reordered"])


def _pick_port(rng: random.Random) -> int:
    """A free loopback port below the kernel's ephemeral range, so that nothing else is
    handed it while our server is down between two runs of it (else: any free port)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(50):
        port = rng.randrange(max(1024, low - 12000), max(1025, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200, help="clients (default: 200)")
    p.add_argument("--users", type=int, default=None,
                   help="distinct users, shared round-robin (default: one per client)")
    p.add_argument("--procs", type=int, default=4, help="worker processes (default: 4)")
    p.add_argument("--minutes", type=float, default=5.0, help="chat time (default: 5)")
    p.add_argument("--rate", type=float, default=0.2,
                   help="messages per second per client (default: 0.2)")
    p.add_argument("--size", type=int, default=64, help="message body bytes (default: 64)")
    p.add_argument("--seed", type=int, default=1, help="fault schedule seed (default: 1)")
    p.add_argument("--terms", type=int, default=None,
                   help="SIGTERM restarts (default: 1 per 75 s, at least 1)")
    p.add_argument("--kills", type=int, default=None,
                   help="SIGKILL restarts (default: 1 per 100 s)")
    p.add_argument("--freezes", type=int, default=None,
                   help="worker SIGSTOP/SIGCONT (default: 1 per 30 s, at least 1)")
    p.add_argument("--cuts", type=int, default=None,
                   help="relay link resets (default: 1 per 40 s)")
    p.add_argument("--freeze-min", type=float, default=1.0, help="seconds (default: 1)")
    p.add_argument("--freeze-max", type=float, default=None,
                   help="seconds (default: 4 heartbeats, past the server's idle timeout)")
    p.add_argument("--cut-fraction", type=float, default=0.5,
                   help="share of relayed links reset per cut (default: 0.5)")
    p.add_argument("--relay-fraction", type=float, default=0.25,
                   help="share of clients connected through the relay (default: 0.25)")
    p.add_argument("--down", type=float, default=1.0,
                   help="seconds between a SIGKILL and the next server (default: 1)")
    p.add_argument("--heartbeat", type=float, default=2.0,
                   help="the server's --heartbeat (default: 2)")
    p.add_argument("--retry-spread", type=float, default=3.0,
                   help="the server's --retry-spread (default: 3)")
    p.add_argument("--shutdown-timeout", type=float, default=5.0,
                   help="the server's --shutdown-timeout (default: 5)")
    p.add_argument("--backoff-base", type=float, default=0.5, help="client backoff base")
    p.add_argument("--backoff-cap", type=float, default=5.0,
                   help="client backoff cap (default: 5)")
    p.add_argument("--drain-seconds", type=float, default=30.0,
                   help="at the end, time for clients to get everything acked (default: 30)")
    p.add_argument("--catchup-seconds", type=float, default=30.0,
                   help="then, time for every client to reach the last acked seq "
                   "(default: 30)")
    p.add_argument("--store", choices=("sqlite", "memory"), default="sqlite",
                   help="the server's --store (default sqlite, the server's default; "
                   "memory forgets the room on restart, so it is expected to fail)")
    p.add_argument("--durability", choices=("commit", "fsync", "memory"), default=None,
                   help="the server's --durability (default: the server's, commit)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="bound on the whole run (default: chat time + 300)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep certificates, server log and worker results here")
    p.add_argument("--json", action="store_true", help="also print the full result as JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker_main()
    seconds = args.minutes * 60.0
    args.users = max(1, min(args.users or args.clients, args.clients))
    args.procs = max(1, min(args.procs, args.clients))
    args.terms = max(1, round(seconds / 75)) if args.terms is None else args.terms
    args.kills = round(seconds / 100) if args.kills is None else args.kills
    args.freezes = max(1, round(seconds / 30)) if args.freezes is None else args.freezes
    args.cuts = round(seconds / 40) if args.cuts is None else args.cuts
    args.freeze_max = 4 * args.heartbeat if args.freeze_max is None else args.freeze_max
    args.max_seconds = seconds + 300.0 if args.max_seconds is None else args.max_seconds
    if args.clients < 1 or args.rate <= 0 or args.minutes <= 0 or args.size < 24:
        print("soak: --clients, --rate and --minutes must be positive, --size >= 24",
              file=sys.stderr)
        return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            work = args.workdir
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        soak = Soak(args, work)
        try:
            result = soak.run()
        except KeyboardInterrupt:
            print("soak: interrupted", file=sys.stderr)
            return 130
        except (SoakError, OSError, subprocess.SubprocessError) as exc:
            print(f"soak: error: {exc}", file=sys.stderr)
            return 2
        finally:
            soak.close()
    s = result["summary"]
    for kind, texts in result["examples"].items():
        for text in texts:
            print(f"soak: {kind}: {text}", file=sys.stderr)
    print(f"soak: session ends {result['ends']}; client errors {result['errors']}; "
          f"servers {result['servers']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result), file=sys.stderr)
    if args.workdir is not None:
        (args.workdir / "result.json").write_text(json.dumps(result))
    fields = " ".join(f"{k}={v}" for k, v in s.items())
    print(f"soak: clients={args.clients} users={args.users} procs={args.procs} "
          f"minutes={args.minutes:g} seed={args.seed} {fields}", flush=True)
    return 1 if failed(s) else 0


if __name__ == "__main__":
    sys.exit(main())
