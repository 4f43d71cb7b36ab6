#!/usr/bin/env python3
"""Reconnect storm: N clients on one server, the server restarts, how fast do all come
back and how hard do they hit it meanwhile?

Starts ``securechat-server`` as a subprocess (fresh certificates and one token per
client in a temporary directory), connects N :class:`securechat.client.Client`
objects (all on one shared :class:`~securechat.client.ClientLoop` thread, or with
``--loop private`` one I/O thread each; default reconnect policy: full jitter, base
0.5 s, cap 30 s), then for each scenario:

- ``graceful``: SIGTERM; the server says ``bye`` with a ``retry_after`` spread over
  ``--retry-spread`` seconds; a new server is started on the same port as soon as
  the old one has exited;
- ``crash``: SIGKILL; the clients see the connection drop with no hint; a new
  server is started after ``--down`` seconds.

Measured from the signal: the time until every client is authenticated again
(p50/p99/max per client, and all of them), connection attempts counted on the
client side in 100 ms buckets (peak per second = busiest bucket x 10, and the
busiest sliding second), and the total. A human summary goes to stderr, one JSON
line to stdout.

    python bench/reconnect_storm.py                      # 500 clients, both scenarios
    python bench/reconnect_storm.py --clients 1000 --scenario crash --down 3

Every process it starts is ended by PID; ``--max-seconds`` bounds the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securechat.client import Client, ClientLoop, Connected, Connecting, Disconnected, Event
from securechat.client.backoff import BackoffPolicy
from securechat.io.tls import client_context
from securechat.server.tokens import add_token

BUCKET = 0.1  # seconds per attempt-rate bucket


class Deadline(Exception):
    """--max-seconds ran out."""


@dataclass
class Recorder:
    """Client events, recorded from every client's I/O thread (list.append is atomic)."""

    attempts: list[float] = field(default_factory=list)
    connected: list[tuple[float, int]] = field(default_factory=list)
    lost: list[float] = field(default_factory=list)

    def callback(self, index: int) -> Any:
        attempts, connected, lost = self.attempts, self.connected, self.lost

        def on_event(event: Event) -> None:
            if isinstance(event, Connecting):
                attempts.append(time.monotonic())
            elif isinstance(event, Connected):
                connected.append((time.monotonic(), index))
            elif isinstance(event, Disconnected):
                lost.append(time.monotonic())
        return on_event


class Storm:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.deadline: float = time.monotonic() + args.max_seconds
        self.port = _free_port()
        self.server: subprocess.Popen[bytes] | None = None
        self.clients: list[Client] = []
        self.loop: ClientLoop | None = None
        self.recorder = Recorder()

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Deadline(f"--max-seconds {self.args.max_seconds} ran out")
        return left

    # ------------------------------------------------------------------ server
    def prepare(self) -> list[str]:
        subprocess.run([sys.executable, "-m", "securechat.cli.certs", "--out",
                        str(self.work / "certs")], check=True, capture_output=True,
                       timeout=60)
        users = [add_token(self.work / "tokens.json", f"user{i}")[0]
                 for i in range(self.args.users)]
        return [users[i % len(users)] for i in range(self.args.clients)]

    def start_server(self) -> float:
        """Start the server; returns how long it took until it accepted connections."""
        n = self.args.clients
        cmd = [sys.executable, "-m", "securechat.cli.server", "--host", "127.0.0.1",
               "--port", str(self.port), "--cert", str(self.work / "certs/server.pem"),
               "--key", str(self.work / "certs/server.key"),
               "--tokens", str(self.work / "tokens.json"),
               "--max-unauth-per-ip", str(n + 64), "--auth-failures", "0",
               "--max-unauth", str(n + 64), "--max-connections", str(2 * n + 128),
               "--max-sessions-per-user", str(n),  # --users 1: every client is one user
               "--msg-rate", "0", "--retry-spread", str(self.args.retry_spread),
               "--log-level", "warning",
               # Its own log in the work dir (kept across the restarts), never ./data.
               "--data-dir", str(self.work / "data")]
        started = time.monotonic()
        log = (self.work / "server.log").open("ab")
        self.server = subprocess.Popen(cmd, stdout=log, stderr=log)
        log.close()
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"the server exited with {self.server.returncode}; "
                                   f"see {self.work / 'server.log'}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return time.monotonic() - started
            threading.Event().wait(min(0.02, self.left()))

    def stop_server(self, sig: signal.Signals) -> float:
        """Signal the server and reap it; returns how long it took to exit."""
        assert self.server is not None
        started = time.monotonic()
        self.server.send_signal(sig)
        try:
            self.server.wait(timeout=min(30.0, self.left()))
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait(timeout=10)
        self.server = None
        return time.monotonic() - started

    # ------------------------------------------------------------------ clients
    def connect_all(self, tokens: list[str]) -> float:
        policy = BackoffPolicy(base=self.args.base, cap=self.args.cap)
        context = client_context(self.work / "certs/ca.pem")  # one for all: less memory
        self.recorder = Recorder()
        self.clients = []
        # One I/O thread for every client (--loop shared), or one each (private: what a
        # plain `with Client(...)` does), to compare the two.
        self.loop = ClientLoop("storm-loop") if self.args.loop == "shared" else None
        started = time.monotonic()
        for i, token in enumerate(tokens):
            client = Client("127.0.0.1", self.port, token=token, ssl_context=context,
                            backoff=policy,
                            max_events=0, on_event=self.recorder.callback(i),
                            close_timeout=1.0, name=f"securechat-client-io-{i}",
                            loop=self.loop)
            self.clients.append(client)
            client.start()
        for client in self.clients:
            client.wait_connected(self.left())
        return time.monotonic() - started

    def wait_all_back(self, since: float) -> None:
        n = len(self.clients)
        done = threading.Event()
        while True:
            back = {i for t, i in list(self.recorder.connected) if t >= since}
            if len(back) == n:
                return
            done.wait(min(0.05, self.left()))

    def close_clients(self) -> None:
        for client in self.clients:
            client.close(timeout=0)  # ask all at once, then join each
        if self.loop is not None:
            self.loop.close(5.0)
            self.loop = None
        for client in self.clients:
            client.thread.join(5.0)
        self.clients = []

    def close(self) -> None:
        self.close_clients()
        if self.server is not None:
            self.server.kill()
            self.server.wait(timeout=10)
            self.server = None

    # ------------------------------------------------------------------ a scenario
    def run(self, scenario: str) -> dict[str, Any]:
        t0 = time.monotonic()
        if scenario == "graceful":
            exit_s = self.stop_server(signal.SIGTERM)
        else:
            exit_s = self.stop_server(signal.SIGKILL)
            threading.Event().wait(min(self.args.down, self.left()))
        restart_at = time.monotonic()
        startup_s = self.start_server()
        self.wait_all_back(t0)
        end = time.monotonic()
        first_back: dict[int, float] = {}
        for t, i in list(self.recorder.connected):
            if t >= t0 and i not in first_back:
                first_back[i] = t - t0
        times = sorted(first_back.values())
        lost = sorted(t - t0 for t in list(self.recorder.lost) if t >= t0)
        attempts = [t - t0 for t in list(self.recorder.attempts) if t0 <= t <= end]
        up = restart_at + startup_s - t0  # the new server accepts from here on
        peak, peak_1s = _peaks(attempts)
        peak_up, peak_up_1s = _peaks([t - up for t in attempts if t >= up])
        return {
            "scenario": scenario,
            "server_exit_s": round(exit_s, 3),
            "server_down_s": round(restart_at - t0 + startup_s, 3),
            "lost_detected_p50_s": round(statistics.median(lost), 3) if lost else None,
            "lost_detected_max_s": round(lost[-1], 3) if lost else None,
            "all_back_s": round(times[-1], 3),
            "p50_s": round(statistics.median(times), 3),
            "p99_s": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
            "max_s": round(times[-1], 3),
            "attempts": len(attempts),
            "attempts_per_client": round(len(attempts) / len(times), 2),
            "peak_attempts_per_s": peak,
            "peak_attempts_in_1s": peak_1s,
            "attempts_after_up": sum(1 for t in attempts if t >= up),
            "peak_attempts_per_s_after_up": peak_up,
            "peak_attempts_in_1s_after_up": peak_up_1s,
        }


def _peaks(times: list[float]) -> tuple[int, int]:
    """(busiest 100 ms bucket x 10, busiest sliding second) of event times in seconds."""
    buckets = Counter(int(t / BUCKET) for t in times if t >= 0)
    per_bucket = max(buckets.values(), default=0) * int(1 / BUCKET)
    per_second = max((sum(buckets.get(b + k, 0) for k in range(int(1 / BUCKET)))
                      for b in range(max(buckets, default=0) + 1)), default=0)
    return per_bucket, per_second


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed and (hard == resource.RLIM_INFINITY or hard > soft):
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _summary(result: dict[str, Any]) -> str:
    lines = [f"reconnect storm: {result['clients']} clients as {result['users']} users "
             f"(connected in {result['connect_s']} s; client process RSS "
             f"{result['client_rss_kib']} KiB, {result.get('rss_per_client_kib')} KiB "
             f"per client, {result['threads']} threads, "
             f"fd limit {result['fd_limit']})"]
    for sc in result["scenarios"]:
        lines.append(
            f"  {sc['scenario']:9} server down {sc['server_down_s']:.2f} s | loss seen by all "
            f"after {sc['lost_detected_max_s']} s | all back after "
            f"{sc['all_back_s']:.2f} s (p50 {sc['p50_s']:.2f}, p99 {sc['p99_s']:.2f}) | "
            f"attempts {sc['attempts']} ({sc['attempts_per_client']}/client), peak "
            f"{sc['peak_attempts_per_s']}/s in 100 ms, {sc['peak_attempts_in_1s']} in 1 s; "
            f"once the new server was up: {sc['attempts_after_up']} attempts, peak "
            f"{sc['peak_attempts_per_s_after_up']}/s in 100 ms, "
            f"{sc['peak_attempts_in_1s_after_up']} in 1 s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500, help="clients (default: 500)")
    parser.add_argument("--users", type=int, default=None, help="distinct user names; "
                        "clients share them round-robin (default: one per client). Each user's "
                        "join/leave goes to every client, all in this one process: with "
                        "--users 1 the clients' own CPU no longer slows the storm down")
    parser.add_argument("--scenario", choices=("graceful", "crash", "both"), default="both")
    parser.add_argument("--down", type=float, default=1.0,
                        help="crash: seconds before the new server starts (default: 1)")
    parser.add_argument("--retry-spread", type=float, default=10.0,
                        help="the server's --retry-spread (default: 10, its default)")
    parser.add_argument("--base", type=float, default=0.5, help="client backoff base")
    parser.add_argument("--cap", type=float, default=30.0, help="client backoff cap")
    parser.add_argument("--loop", choices=("shared", "private"), default="shared",
                        help="shared: every client on one ClientLoop thread (default); "
                        "private: one loop thread per client, as a plain Client has")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="give up the whole run after this long (default: 300)")
    args = parser.parse_args(argv)
    args.users = max(1, min(args.users or args.clients, args.clients))
    fd_limit = _raise_fd_limit(args.clients * 6 + 256)
    if fd_limit < args.clients * 4 + 64:
        print(f"reconnect_storm: the open-file limit ({fd_limit}) is too low for "
              f"{args.clients} clients (each uses 4 descriptors); raise ulimit -n",
              file=sys.stderr)
        return 2
    scenarios = ["graceful", "crash"] if args.scenario == "both" else [args.scenario]
    with tempfile.TemporaryDirectory(prefix="securechat-storm-") as tmp:
        storm = Storm(args, Path(tmp))
        result: dict[str, Any] = {
            "bench": "reconnect_storm", "clients": args.clients,
            "users": args.users, "fd_limit": fd_limit,
            "retry_spread": args.retry_spread, "down_s": args.down,
            "backoff": {"base": args.base, "cap": args.cap}, "scenarios": [],
        }
        try:
            tokens = storm.prepare()
            for scenario in scenarios:
                # Fresh server and clients each time: a storm soon after another would
                # start from grown backoff counters (they reset after 30 healthy s).
                if storm.server is None:
                    storm.start_server()
                rss_before = _rss_kib(os.getpid())
                connect_s = storm.connect_all(tokens)
                result.setdefault("connect_s", round(connect_s, 3))
                rss_after = _rss_kib(os.getpid())
                result.setdefault("client_rss_kib", rss_after)
                if rss_before and rss_after:
                    result.setdefault("rss_per_client_kib",
                                      round((rss_after - rss_before) / args.clients, 1))
                result.setdefault("threads", threading.active_count())
                result["scenarios"].append(storm.run(scenario))
                storm.close_clients()
        except Deadline as exc:
            print(f"reconnect_storm: {exc}", file=sys.stderr)
            return 1
        finally:
            storm.close()
    print(_summary(result), file=sys.stderr)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
