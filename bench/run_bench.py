#!/usr/bin/env python3
"""Benchmark securechat with the same load generator that measured nats-server,
mosquitto and amqtt (bench/loadgen.mjs, Node's built-in tls only).

Each scenario gets a fresh server (so RSS figures start clean), pinned to CPU 0,
with the generator pinned to CPU 1, TLS 1.3 / TLS_AES_256_GCM_SHA384, ECDSA P-256.
The per-IP and per-session limits are raised because every generated client
comes from 127.0.0.1 and publishes as fast as it can.

``--store`` picks the server's message log: sqlite (the server's default; each
server gets a fresh ``--data-dir`` in a temporary directory, never ./data), memory,
or both: every repeat of a scenario then runs on each store in turn (alternating
which goes first), so the two are compared in the same minutes of a shared machine,
and each row shows the ratio sqlite/memory and the issue-9 target it is held to.

    python bench/run_bench.py                       # every scenario on sqlite, ~2 min
    python bench/run_bench.py --store both --repeat 2 --only targets   # issue 9's rows
    python bench/run_bench.py --only fanout100,chat --repeat 3 --store memory
    python bench/run_bench.py --quick --store both  # tiny figures, seconds (smoke test)
    python bench/run_bench.py --only rooms1000 --store memory  # 1,000 rooms x 10 (issue 10)
    python bench/run_bench.py --only fanout100idle --repeat 3  # beside 1,000 idle rooms

``fanout100idle`` runs fanout100 twice per repeat and store, each on a fresh server:
alone, and with bench/rooms_bench.py holding idle rooms beside it (the order
alternates), and shows the ratio of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_LOADGEN = HERE / "loadgen.mjs"
RESUME_DRIVER = HERE / "resume_storm.py"
ROOMS_DRIVER = HERE / "rooms_bench.py"
#: Issue 10: fanout100 beside idle rooms keeps at least this share of it alone.
IDLE_MIN_RATIO = 0.95


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    #: rooms_bench.py hold arguments: run each repeat alone and beside idle rooms.
    idle_args: tuple[str, ...] = ()
    idle_quick_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """What sqlite must keep of memory's figure (issue 9), or a bound on its own."""

    key: str  # the summary figure compared
    higher_is_better: bool
    min_ratio: float | None = None  # sqlite / memory at least this
    max_value: float | None = None  # sqlite's figure at most this

    def verdict(self, sqlite: float | None, memory: float | None) -> str:
        """"met", "MISSED", or "" when there is nothing to judge."""
        if sqlite is None:
            return ""
        checks: list[bool] = []
        if self.min_ratio is not None and memory:
            checks.append(sqlite / memory >= self.min_ratio)
        if self.max_value is not None:
            checks.append(sqlite <= self.max_value)
        if not checks:
            return ""
        return "met" if all(checks) else "MISSED"

    def describe(self) -> str:
        parts = []
        if self.min_ratio is not None:
            parts.append(f"sqlite >= {self.min_ratio:.0%} of memory")
        if self.max_value is not None:
            parts.append(f"sqlite {self.key} <= {self.max_value:g}")
        return " and ".join(parts)


SCENARIOS = [
    Scenario("fanout100", "fan-out 100 subs, 1 pub, 100 B",
             ("--scenario", "fanout", "--subs", "100", "--pubs", "1", "--size", "100",
              "--duration", "5", "--window", "16"),
             ("--scenario", "fanout", "--subs", "10", "--pubs", "1", "--size", "100",
              "--duration", "1", "--warmup", "0.2", "--window", "16", "--drain", "1")),
    Scenario("fanout500", "fan-out 500 subs, 1 pub, 100 B",
             ("--scenario", "fanout", "--subs", "500", "--pubs", "1", "--size", "100",
              "--duration", "5", "--window", "16"),
             ("--scenario", "fanout", "--subs", "20", "--pubs", "1", "--size", "100",
              "--duration", "1", "--warmup", "0.2", "--window", "16", "--drain", "1")),
    Scenario("fanout100x4", "fan-out 100 subs, 4 pubs, 100 B",
             ("--scenario", "fanout", "--subs", "100", "--pubs", "4", "--size", "100",
              "--duration", "5", "--window", "16"),
             ("--scenario", "fanout", "--subs", "10", "--pubs", "2", "--size", "100",
              "--duration", "1", "--warmup", "0.2", "--window", "16", "--drain", "1")),
    Scenario("fanout10x4", "publisher-heavy: 10 subs, 4 pubs, 100 B",
             ("--scenario", "fanout", "--subs", "10", "--pubs", "4", "--size", "100",
              "--duration", "5", "--window", "16"),
             ("--scenario", "fanout", "--subs", "4", "--pubs", "2", "--size", "100",
              "--duration", "1", "--warmup", "0.2", "--window", "16", "--drain", "1")),
    Scenario("fanout4k", "fan-out 100 subs, 1 pub, 4 KiB",
             ("--scenario", "fanout", "--subs", "100", "--pubs", "1", "--size", "4096",
              "--duration", "5", "--window", "16"),
             ("--scenario", "fanout", "--subs", "10", "--pubs", "1", "--size", "4096",
              "--duration", "1", "--warmup", "0.2", "--window", "16", "--drain", "1")),
    Scenario("chat", "chat load: 100 msg/s into 100 members (latency)",
             ("--scenario", "fanout", "--subs", "100", "--pubs", "1", "--size", "100",
              "--rate", "100", "--window", "1000", "--duration", "5"),
             ("--scenario", "fanout", "--subs", "10", "--pubs", "1", "--size", "100",
              "--rate", "100", "--window", "1000", "--duration", "1", "--warmup", "0.2",
              "--drain", "1")),
    Scenario("conns5000", "5,000 idle authenticated clients with heartbeats",
             ("--scenario", "conns", "--conns", "5000", "--concurrency", "100", "--hold", "8",
              "--hb-interval", "2"),
             ("--scenario", "conns", "--conns", "50", "--concurrency", "10", "--hold", "1",
              "--hb-interval", "0.5", "--settle", "0.5")),
    Scenario("storm500", "500 clients connecting at the same instant",
             ("--scenario", "storm", "--clients", "500"),
             ("--scenario", "storm", "--clients", "20")),
    Scenario("resume500", "resume storm: 500 clients that each missed 1,000 msgs, at once",
             ("--scenario", "resume", "--clients", "500", "--messages", "1000", "--size", "100"),
             ("--scenario", "resume", "--clients", "20", "--messages", "100", "--size", "100")),
    Scenario("rooms1000", "1,000 rooms x 10 members, 1 msg/s per room (latency, CPU, RSS)",
             ("--scenario", "rooms", "--rooms", "1000", "--members", "10", "--rate", "1",
              "--warmup", "2", "--duration", "10", "--drain", "5"),
             ("--scenario", "rooms", "--rooms", "20", "--members", "4", "--rate", "2",
              "--warmup", "0.5", "--duration", "1.5", "--drain", "3")),
    Scenario("fanout100idle", "fanout100 beside 1,000 idle rooms (100 sessions x 10)",
             ("--scenario", "fanout", "--subs", "100", "--pubs", "1", "--size", "100",
              "--duration", "5", "--window", "16"),
             ("--scenario", "fanout", "--subs", "10", "--pubs", "1", "--size", "100",
              "--duration", "1", "--warmup", "0.2", "--window", "16", "--drain", "1"),
             idle_args=("--sessions", "100", "--rooms-each", "10"),
             idle_quick_args=("--sessions", "10", "--rooms-each", "3")),
]

#: Issue 9's targets for the durable store, per scenario.
TARGETS = {
    "fanout100": Target("delivered_per_s", True, min_ratio=0.90),
    "fanout100x4": Target("delivered_per_s", True, min_ratio=0.90),
    "fanout10x4": Target("delivered_per_s", True, min_ratio=0.70),
    "chat": Target("p99_ms", False, max_value=5.0),
    "resume500": Target("all_caught_up_s", False, max_value=3.0),
}
#: The figure a row's sqlite/memory ratio is shown for, where no target names one.
RATIO_KEYS = {"fanout": "delivered_per_s", "conns": "rss_per_conn_kb",
              "storm": "all_auth_s", "resume": "all_caught_up_s", "rooms": "p99_ms"}
STORES = ("memory", "sqlite")


def make_material(directory: Path) -> tuple[Path, Path, Path, str]:
    """A CA, an ECDSA P-256 server certificate for localhost, and one token."""
    import trustme  # a test dependency: pip install -e '.[test]'

    from securechat.server.tokens import add_token

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca.cert_pem.write_to_path(str(ca_path))
    leaf.cert_chain_pems[0].write_to_path(str(cert_path))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(leaf.private_key_pem.bytes())
    token, _ = add_token(directory / "tokens.json", "bench")
    return ca_path, cert_path, key_path, token


def pinned(cpu: int, argv: list[str], pin: bool) -> list[str]:
    if pin and shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def store_args(store: str, data_dir: Path, durability: str | None) -> list[str]:
    """The server options for one store; sqlite always gets its own data dir."""
    if store == "memory":
        return ["--store", "memory"]
    out = ["--store", "sqlite", "--data-dir", str(data_dir)]
    if durability:
        out += ["--durability", durability]
    return out


class ServerProcess:
    """securechat-server as a child process; always stopped by PID.

    It runs in ``directory`` (a temporary one), so that nothing it writes by default
    (the sqlite store's ./data) lands where the bench was started."""

    def __init__(self, directory: Path, cert: Path, key: Path, extra: list[str], pin: bool,
                 log_level: str) -> None:
        self.log_path = directory / "server.log"
        self._log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "securechat.cli.server", "--port", "0",
                "--cert", str(cert), "--key", str(key), "--tokens", str(directory / "tokens.json"),
                "--msg-rate", "0", "--max-unauth-per-ip", "100000", "--auth-failures", "0",
                "--max-connections", "20000", "--max-sessions-per-user", "100000",
                "--log-format", "json", "--log-level", log_level,
                *extra]
        env = dict(os.environ)
        root = str(HERE.parent)  # importable from the temporary cwd, installed or not
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(pinned(0, argv, pin), stdout=subprocess.DEVNULL,
                                     stderr=self._log, cwd=directory, env=env)
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            for line in self.log_path.read_text().splitlines():
                if line.startswith("securechat-server: listening on "):
                    return int(line.rsplit(":", 1)[1].split()[0])
            time.sleep(0.05)
        raise RuntimeError("server did not start listening within 20 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def run_loadgen(loadgen: Path, port: int, ca: Path, token: str, server_pid: int,
                args: tuple[str, ...], pin: bool, timeout: float,
                resume_driver: str = "python") -> dict[str, Any]:
    if args[:2] == ("--scenario", "rooms"):
        argv = [sys.executable, str(ROOMS_DRIVER), "run", "--port", str(port), "--ca", str(ca),
                "--token", token, "--servername", "localhost", "--server-pid", str(server_pid),
                "--timeout", str(int(timeout / 4)), *args[2:]]
    elif args[:2] == ("--scenario", "resume") and resume_driver == "python":
        # bench/resume_storm.py: the generator costs less there (its docstring says why)
        argv = [sys.executable, str(RESUME_DRIVER), "--port", str(port), "--ca", str(ca),
                "--token", token, "--servername", "localhost", "--server-pid", str(server_pid),
                "--timeout", str(int(timeout / 4)), *args[2:]]
    else:
        argv = ["node", str(loadgen), "--proto", "ndjson", "--host", "127.0.0.1",
                "--port", str(port), "--ca", str(ca), "--token", token,
                "--servername", "localhost", "--server-pid", str(server_pid),
                "--max-runtime", str(int(timeout)), *args]
    result = subprocess.run(pinned(1, argv, pin), capture_output=True, text=True,
                            timeout=timeout + 30, check=False)
    try:
        parsed: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"loadgen failed ({result.returncode}): {result.stderr[-1500:]}"
                           ) from exc
    return parsed


class IdleRooms:
    """bench/rooms_bench.py hold: idle sessions in idle rooms, until stopped."""

    def __init__(self, port: int, ca: Path, token: str, args: tuple[str, ...], pin: bool
                 ) -> None:
        argv = [sys.executable, str(ROOMS_DRIVER), "hold", "--port", str(port), "--ca",
                str(ca), "--token", token, "--servername", "localhost", *args]
        self.proc = subprocess.Popen(pinned(1, argv, pin), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded by the holder's own --timeout
        try:
            self.ready: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            self.ready = {"ok": False, "error": f"holder said {line[:200]!r}"}
        if not self.ready.get("ok"):
            self.stop()
            raise RuntimeError(f"idle rooms not set up: {self.ready}")

    def stop(self) -> bool:
        """Stop it; True if it held every session to the end."""
        alive = self.proc.poll() is None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()  # the holder's signal to leave
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc.stdout.close()
        return alive and self.proc.returncode == 0


def summarize_idle(alone: dict[str, Any], idle: dict[str, Any], idle_rooms: int,
                   held: bool) -> dict[str, Any]:
    """One repeat of fanout100idle: the run beside idle rooms against the one alone."""
    def per_cpu(r: dict[str, Any]) -> Any:
        return r.get("deliveredPerServerCpuSec")

    def cpu(r: dict[str, Any]) -> dict[str, Any]:
        return r.get("cpu") or {}

    out: dict[str, Any] = {
        "delivered_per_s": idle.get("deliveredPerSec"),
        "alone_delivered_per_s": alone.get("deliveredPerSec"),
        "idle_vs_alone": _ratio(idle.get("deliveredPerSec"), alone.get("deliveredPerSec")),
        "per_server_cpu_s": per_cpu(idle), "alone_per_server_cpu_s": per_cpu(alone),
        "per_cpu_s_idle_vs_alone": _ratio(per_cpu(idle), per_cpu(alone)),
        "server_cpu_pct": cpu(idle).get("serverCpuPct"),
        "alone_server_cpu_pct": cpu(alone).get("serverCpuPct"),
        "lost": (idle.get("lost") or 0) + (alone.get("lost") or 0),
        "idle_rooms": idle_rooms,
        "foreign_cpu_pct": max(cpu(idle).get("foreignCpuPct") or 0,
                               cpu(alone).get("foreignCpuPct") or 0),
        "ok": bool(idle.get("ok") and alone.get("ok") and held),
    }
    return out


def _ratio(a: Any, b: Any) -> float | None:
    x, y = _number(a), _number(b)
    return round(x / y, 3) if x is not None and y else None


def summarize(name: str, r: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets are about, from one loadgen result."""
    summary = _figures(r)
    cpu = r.get("cpu") or r.get("connectCpu") or {}
    # CPU used by other processes during the run: a noisy neighbour makes figures low.
    summary["foreign_cpu_pct"] = cpu.get("foreignCpuPct")
    # CPU the hypervisor gave to other machines (not counted as foreign above).
    summary["steal_pct"] = cpu.get("machineStealPct")
    return summary


def _figures(r: dict[str, Any]) -> dict[str, Any]:
    if r.get("scenario") == "fanout":
        lat = r.get("latency") or {}
        return {"delivered_per_s": r.get("deliveredPerSec"), "lost": r.get("lost"),
                "misordered": r.get("misordered"), "p50_ms": lat.get("p50ms"),
                "p99_ms": lat.get("p99ms"), "max_ms": lat.get("maxMs"),
                "server_cpu_pct": (r.get("cpu") or {}).get("serverCpuPct"), "ok": r.get("ok")}
    if r.get("scenario") == "conns":
        hb = r.get("heartbeats") or {}
        return {"opened": r.get("opened"), "fails": r.get("fails"),
                "rss_per_conn_kb": r.get("rssPerConnKbAfterHold"),
                "heartbeats_sent": hb.get("sent"), "heartbeats_answered": hb.get("answered"),
                "hb_rtt_p99_ms": (hb.get("rtt") or {}).get("p99ms"),
                "alive_at_end": r.get("aliveAtEnd"), "ok": r.get("ok")}
    if r.get("scenario") == "resume":
        caught = r.get("timeToCaughtUp") or {}
        return {"all_caught_up_s": r.get("allCaughtUpSec"), "all_auth_s": r.get("allAuthSec"),
                "p50_ms": caught.get("p50ms"), "p99_ms": caught.get("p99ms"),
                "caught_up": r.get("caughtUp"), "clients": r.get("clients"),
                "replayed": r.get("replayedMsgs"), "replayed_per_s": r.get("replayedPerSec"),
                "wrong": r.get("wrong"), "misordered": r.get("misordered"),
                "after_caught_up": r.get("afterCaughtUp"), "fails": r.get("fails"),
                "server_cpu_s": (r.get("cpu") or {}).get("serverCpuSec"),
                "loadgen_cpu_pct": (r.get("cpu") or {}).get("loadgenCpuPct"),
                "examples": r.get("examples") or None, "error": r.get("error"),
                "ok": r.get("ok")}
    if r.get("scenario") == "rooms":
        lat = r.get("latency") or {}
        cpu = r.get("cpu") or {}
        return {"p50_ms": lat.get("p50ms"), "p99_ms": lat.get("p99ms"),
                "max_ms": lat.get("maxMs"), "server_cpu_pct": cpu.get("serverCpuPct"),
                "server_cpu_s": cpu.get("serverCpuSec"), "rss_setup_mb": _mb(r.get("rssSetupKb")),
                "rss_end_mb": _mb(r.get("rssEndKb")), "published": r.get("published"),
                "delivered": r.get("delivered"), "wrong_room": r.get("wrongRoom"),
                "missing": r.get("missing"), "duplicates": r.get("duplicates"),
                "driver_cpu_pct": cpu.get("loadgenCpuPct"),
                "late_publishes": r.get("latePublishes"), "setup_s": r.get("setupSec"),
                "errors": r.get("errors") or None, "error": r.get("error"), "ok": r.get("ok")}
    if r.get("scenario") == "storm":
        return {"authenticated": r.get("authenticated"), "clients": r.get("clients"),
                "all_auth_s": r.get("allAuthSec"),
                "p99_ms": (r.get("timeToAuth") or {}).get("p99ms"),
                "handshakes_per_cpu_s": r.get("perServerCpuSec"), "fails": r.get("fails"),
                "ok": r.get("ok")}
    return {"raw": r}


def _mb(kb: Any) -> float | None:
    return round(kb / 1024, 1) if isinstance(kb, int) else None


def listen_drops() -> int | None:
    """Kernel counter of connections dropped because a listen queue was full."""
    try:
        text = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for head, values in zip(text[::2], text[1::2], strict=False):
        if head.startswith("TcpExt:"):
            row = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            return int(row.get("ListenDrops", "0"))
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated scenario names: "
                        + ", ".join(s.name for s in SCENARIOS)
                        + "; 'targets' names the rows issue 9 sets targets for")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per scenario and store (median shown)")
    parser.add_argument("--store", choices=("sqlite", "memory", "both"), default="sqlite",
                        help="the server's message log (default sqlite, the server's "
                        "default); both: each repeat on memory and on sqlite, interleaved")
    parser.add_argument("--durability", choices=("commit", "fsync", "memory"), default=None,
                        help="the sqlite server's --durability (default: the server's, commit)")
    parser.add_argument("--resume-driver", choices=("python", "node"), default="python",
                        help="what drives resume500: bench/resume_storm.py (default) or "
                        "loadgen.mjs --scenario resume")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--io-threads", type=int, default=None, help="server --io-threads")
    parser.add_argument("--log-level", default="info", help="server log level (default info)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra server argument (repeatable), e.g. --server-arg=--heartbeat=5")
    parser.add_argument("--loadgen", type=Path,
                        default=Path(os.environ.get("SECURECHAT_LOADGEN", DEFAULT_LOADGEN)))
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    return parser


def run_order(stores: list[str], repeat: int) -> list[tuple[int, str]]:
    """(repeat, store) in the order they run: stores alternate which goes first, so a
    machine that slows down during a scenario does not always hurt the same one."""
    out: list[tuple[int, str]] = []
    for r in range(repeat):
        for store in (stores if r % 2 == 0 else list(reversed(stores))):
            out.append((r, store))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not shutil.which("node"):
        print("run_bench: node (>= 20) is needed for the load generator", file=sys.stderr)
        return 2
    wanted = set(args.only.split(",")) if args.only else set()
    if "targets" in wanted:
        wanted |= set(TARGETS)
    chosen = [s for s in SCENARIOS if not wanted or s.name in wanted]
    if not chosen:
        print(f"run_bench: no scenario matches {args.only!r}", file=sys.stderr)
        return 2
    stores = list(STORES) if args.store == "both" else [args.store]
    pin = not args.no_pin
    extra = list(args.server_arg)
    if args.io_threads:
        extra += ["--io-threads", str(args.io_threads)]
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "cpus": os.cpu_count(), "server_args": extra, "stores": stores,
                               "durability": args.durability, "quick": args.quick,
                               "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="securechat-bench-") as tmp:
        directory = Path(tmp)
        ca, cert, key, token = make_material(directory)
        rooms_token = rooms_material(directory)
        servers = 0
        for scenario in chosen:
            runs: dict[str, list[dict[str, Any]]] = {store: [] for store in stores}
            for r, store in run_order(stores, args.repeat):
                if scenario.idle_args:
                    runs[store].append(run_idle_pair(
                        scenario, r, store, directory, (ca, cert, key, token, rooms_token),
                        extra, args, pin))
                    print(f"  {scenario.name} [{store}]: {json.dumps(runs[store][-1])}",
                          file=sys.stderr, flush=True)
                    continue
                servers += 1
                data_dir = directory / f"data-{servers}"  # fresh per server
                server = ServerProcess(directory, cert, key,
                                       [*store_args(store, data_dir, args.durability), *extra],
                                       pin, args.log_level)
                drops_before = listen_drops()
                kind_token = rooms_token if _kind(scenario) == "rooms" else token
                try:
                    raw = run_loadgen(args.loadgen, server.port, ca, kind_token,
                                      server.proc.pid,
                                      scenario.quick_args if args.quick else scenario.args,
                                      pin, timeout=180, resume_driver=args.resume_driver)
                finally:
                    server.stop()
                    shutil.rmtree(data_dir, ignore_errors=True)
                summary = summarize(scenario.name, raw)
                drops_after = listen_drops()
                if drops_before is not None and drops_after is not None:
                    summary["listen_drops"] = drops_after - drops_before
                runs[store].append(summary)
                print(f"  {scenario.name} [{store}]: {json.dumps(summary)}", file=sys.stderr,
                      flush=True)
            entry: dict[str, Any] = {"what": scenario.what, "runs": runs,
                                     "median": {st: _median(rs) for st, rs in runs.items()}}
            entry.update(compare(scenario, entry["median"], judge=not args.quick))
            results["scenarios"][scenario.name] = entry
    print(render(results, pin))
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failed = [n for n, e in results["scenarios"].items()
              if not all(r.get("ok") for rs in e["runs"].values() for r in rs)]
    return 1 if failed else 0


def rooms_material(directory: Path) -> str:
    """A second token, granted every room (the rooms rows join rooms by name)."""
    from securechat.grants import Grants
    from securechat.server.tokens import add_token

    token, _ = add_token(directory / "tokens.json", "bench-rooms", grants=Grants([("*", "rw")]))
    return token


def run_idle_pair(scenario: Scenario, repeat: int, store: str, directory: Path,
                  material: tuple[Path, Path, Path, str, str], extra: list[str],
                  args: argparse.Namespace, pin: bool) -> dict[str, Any]:
    """One repeat of a row paired with idle rooms: alone and beside them, each on a
    fresh server (and data dir), alternating which goes first."""
    ca, cert, key, token, rooms_token = material
    load = scenario.quick_args if args.quick else scenario.args
    holder_args = scenario.idle_quick_args if args.quick else scenario.idle_args
    got: dict[bool, dict[str, Any]] = {}
    idle_rooms, held = 0, False
    for with_idle in ((False, True) if repeat % 2 == 0 else (True, False)):
        data_dir = directory / f"data-idle-{store}-{repeat}-{int(with_idle)}"  # fresh
        server = ServerProcess(directory, cert, key,
                               [*store_args(store, data_dir, args.durability), *extra],
                               pin, args.log_level)
        holder: IdleRooms | None = None
        try:
            if with_idle:
                holder = IdleRooms(server.port, ca, rooms_token, holder_args, pin)
                idle_rooms = int(holder.ready.get("roomsJoined") or 0)
            got[with_idle] = run_loadgen(args.loadgen, server.port, ca, token,
                                         server.proc.pid, load, pin, timeout=180)
        finally:
            if holder is not None:
                held = holder.stop()
            server.stop()
            shutil.rmtree(data_dir, ignore_errors=True)
    return summarize_idle(got[False], got[True], idle_rooms, held)


def _kind(scenario: Scenario) -> str:
    return scenario.args[scenario.args.index("--scenario") + 1]


def compare(scenario: Scenario, medians: dict[str, dict[str, Any]],
            judge: bool = True) -> dict[str, Any]:
    """The ratio sqlite/memory of the row's main figure, and the target's verdict
    (``judge``: only at full size; --quick figures say nothing about the targets)."""
    target = TARGETS.get(scenario.name)
    key = target.key if target else RATIO_KEYS.get(_kind(scenario), "")
    sqlite = _number(medians.get("sqlite", {}).get(key))
    memory = _number(medians.get("memory", {}).get(key))
    out: dict[str, Any] = {"key": key}
    if sqlite is not None and memory:
        out["ratio"] = round(sqlite / memory, 3)
    if target is not None and judge:
        out["target"] = target.describe()
        out["verdict"] = target.verdict(sqlite, memory)
    if scenario.idle_args and judge:
        out["idle_target"] = f"beside idle rooms >= {IDLE_MIN_RATIO:.0%} of alone"
        out["idle_verdict"] = {
            store: ("met" if ratio >= IDLE_MIN_RATIO else "MISSED")
            for store, med in medians.items()
            if (ratio := _number(med.get("idle_vs_alone"))) is not None}
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def render(results: dict[str, Any], pin: bool) -> str:
    """The human summary: one block per scenario, one line per store, then the ratio."""
    lines = [f"\nsecurechat benchmark ({'quick' if results['quick'] else 'full'}; "
             f"stores {'+'.join(results['stores'])}"
             f"{'; durability ' + results['durability'] if results['durability'] else ''}; "
             f"server pinned to CPU 0: {pin}; {results['cpus']} CPUs)"]
    hidden = {"ok", "examples", "error", "clients"}
    for name, entry in results["scenarios"].items():
        lines.append(f"  {name:12} {entry['what']}")
        for store, med in entry["median"].items():
            shown = ", ".join(f"{k}={v}" for k, v in med.items()
                              if v is not None and k not in hidden)
            lines.append(f"    {store:7} {shown}")
        if "ratio" in entry:
            lines.append(f"    sqlite/memory {entry['key']}: {entry['ratio']:.3f}")
        if entry.get("verdict"):
            lines.append(f"    target ({entry['target']}): {entry['verdict']}")
        for store, verdict in (entry.get("idle_verdict") or {}).items():
            lines.append(f"    {store} target ({entry['idle_target']}): {verdict}")
    return "\n".join(lines)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) == len(values):
            med = statistics.median(numbers)
            out[key] = int(med) if float(med).is_integer() else round(med, 3)
        else:
            out[key] = values[0]
    return out


if __name__ == "__main__":
    sys.exit(main())
