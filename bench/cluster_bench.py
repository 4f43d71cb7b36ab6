#!/usr/bin/env python3
"""Several securechat nodes on one Redis (issue 11), against one node in the same run.

Starts its own ``redis-server`` (AOF on, ``appendfsync everysec``, on a free loopback
port, stopped by PID), two ``securechat-server --store redis://...`` nodes and, for
comparison, one ``--store memory`` node, all pinned to CPU 0 with the generator on
CPU 1 (as bench/run_bench.py does). Rows:

- ``chat2``: 100 msgs/s into 100 members spread over the two nodes (the publisher on
  node 1): latency p50/p99 for all deliveries, for members on the publisher's node
  and for members on the other one (target: cross-node p99 <= 10 ms).
- ``fanout2``: F100x1 with the members on both nodes, deliveries per server
  CPU-second (both nodes' CPU summed; Redis's CPU shown beside it), against
  ``fanout1``, the same load on the single memory node, in the same minutes.
- ``roundtrips``: Redis round trips per published message during fanout2, from the
  nodes' own counters (``securechat_redis_round_trips_total`` and
  ``securechat_messages_in_total`` on their admin listeners) when they expose them.
- ``resume2``: 500 members on node 1, node 1 killed with SIGKILL, 1,000 messages
  published on node 2, then all 500 resume there at once: the time until the last
  ``caught_up`` (every client must get exactly its 1,000 messages).

    python bench/cluster_bench.py              # every row, ~1 min
    python bench/cluster_bench.py --quick      # tiny figures, seconds (smoke test)
    python bench/cluster_bench.py --repeat 3 --only fanout2,fanout1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_bench import (  # noqa: E402  (a sibling script, not a package)
    DEFAULT_LOADGEN,
    RESUME_DRIVER,
    ServerProcess,
    make_material,
    pinned,
    summarize,
)

ROWS = ("chat2", "fanout2", "fanout1", "roundtrips", "resume2")
CHAT = ("--scenario", "fanout", "--subs", "100", "--pubs", "1", "--size", "100",
        "--rate", "100", "--window", "1000", "--duration", "5")
CHAT_QUICK = ("--scenario", "fanout", "--subs", "10", "--pubs", "1", "--size", "100",
              "--rate", "100", "--window", "1000", "--duration", "1", "--warmup", "0.2",
              "--drain", "1")
FANOUT = ("--scenario", "fanout", "--subs", "100", "--pubs", "1", "--size", "100",
          "--duration", "5", "--window", "16")
FANOUT_QUICK = ("--scenario", "fanout", "--subs", "10", "--pubs", "1", "--size", "100",
                "--duration", "1", "--warmup", "0.2", "--window", "16", "--drain", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisProcess:
    """redis-server as a child, on a free loopback port; stopped by PID."""

    def __init__(self, directory: Path, pin: bool) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(directory),
                "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(pinned(0, argv, pin), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not answer PING within 10 s")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(port: int | None) -> dict[str, float]:
    """Counter values from a node's /metrics (summed over labels); empty if none."""
    if port is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            out[name] = out.get(name, 0.0) + float(value)
    return out


class Cluster:
    """Redis plus ``nodes`` securechat nodes on it."""

    def __init__(self, directory: Path, material: tuple[Path, Path, Path, str], nodes: int,
                 pin: bool, extra: list[str]) -> None:
        _ca, cert, key, _token = material
        self.redis = RedisProcess(directory / "redis", pin)
        self.nodes: list[ServerProcess] = []
        self.admin_ports: list[int | None] = []
        try:
            for i in range(nodes):
                admin = free_port()
                node_dir = directory / f"node{i + 1}"
                node_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(directory.parent / "tokens.json", node_dir / "tokens.json")
                self.nodes.append(ServerProcess(
                    node_dir, cert, key,
                    ["--store", self.redis.url, "--admin-listen", f"127.0.0.1:{admin}",
                     *extra], pin, "warning"))
                self.admin_ports.append(admin)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.redis.stop()


def loadgen(args: argparse.Namespace, ports: list[int], pids: list[int], ca: Path, token: str,
            scenario: tuple[str, ...], pin: bool) -> dict[str, Any]:
    argv = ["node", str(args.loadgen), "--proto", "ndjson", "--host", "127.0.0.1",
            "--ports", ",".join(map(str, ports)), "--ca", str(ca), "--token", token,
            "--servername", "localhost", "--server-pids", ",".join(map(str, pids)),
            "--max-runtime", "120", *scenario]
    done = subprocess.run(pinned(1, argv, pin), capture_output=True, text=True, timeout=180,
                          check=False)
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-1500:]}") from exc
    return result


def fanout_row(raw: dict[str, Any]) -> dict[str, Any]:
    row = summarize("fanout", raw)
    row["per_server_cpu_s"] = raw.get("deliveredPerServerCpuSec")
    for key, name in (("latencySameNode", "same"), ("latencyCrossNode", "cross")):
        lat = raw.get(key)
        if lat:
            row[f"{name}_p50_ms"] = lat.get("p50ms")
            row[f"{name}_p99_ms"] = lat.get("p99ms")
    return row


def run_cluster_rows(args: argparse.Namespace, directory: Path,
                     material: tuple[Path, Path, Path, str], wanted: set[str], pin: bool
                     ) -> dict[str, dict[str, Any]]:
    ca, _cert, _key, token = material
    rows: dict[str, dict[str, Any]] = {}
    if wanted & {"chat2", "fanout2", "roundtrips"}:
        cluster = Cluster(directory / f"c{time.monotonic_ns()}", material, 2, pin,
                          args.server_arg)
        try:
            ports = [n.port for n in cluster.nodes]
            pids = [n.proc.pid for n in cluster.nodes]
            if "chat2" in wanted:
                rows["chat2"] = fanout_row(loadgen(args, ports, pids, ca, token,
                                                   CHAT_QUICK if args.quick else CHAT, pin))
            if wanted & {"fanout2", "roundtrips"}:
                before = [scrape(p) for p in cluster.admin_ports]
                redis0 = cluster.redis.cpu_seconds()
                raw = loadgen(args, ports, pids, ca, token,
                              FANOUT_QUICK if args.quick else FANOUT, pin)
                redis1 = cluster.redis.cpu_seconds()
                after = [scrape(p) for p in cluster.admin_ports]
                row = fanout_row(raw)
                if redis0 is not None and redis1 is not None:
                    row["redis_cpu_s"] = round(redis1 - redis0, 2)
                rows["fanout2"] = row
                rows["roundtrips"] = round_trips(before, after)
        finally:
            cluster.stop()
    if "resume2" in wanted:
        cluster = Cluster(directory / f"r{time.monotonic_ns()}", material, 2, pin,
                          args.server_arg)
        try:
            a, b = cluster.nodes
            clients, messages = (20, 100) if args.quick else (500, 1000)
            argv = [sys.executable, str(RESUME_DRIVER), "--port", str(a.port),
                    "--resume-port", str(b.port), "--kill-pid", str(a.proc.pid),
                    "--ca", str(ca), "--token", token, "--servername", "localhost",
                    "--server-pid", str(b.proc.pid), "--clients", str(clients),
                    "--messages", str(messages), "--timeout", "60"]
            done = subprocess.run(pinned(1, argv, pin), capture_output=True, text=True,
                                  timeout=300, check=False)
            try:
                raw = json.loads(done.stdout)
            except json.JSONDecodeError:
                raw = {"scenario": "resume", "ok": False,
                       "error": f"driver failed ({done.returncode}): {done.stderr[-800:]}"}
            row = summarize("resume", raw)
            row["since_kill_s"] = raw.get("sinceKillSec")
            rows["resume2"] = row
        finally:
            cluster.stop()
    return rows


def round_trips(before: list[dict[str, float]], after: list[dict[str, float]]
                ) -> dict[str, Any]:
    def delta(name: str) -> float | None:
        total = 0.0
        for b, a in zip(before, after, strict=True):
            if name not in a:
                return None
            total += a[name] - b.get(name, 0.0)
        return total

    trips = delta("securechat_redis_round_trips_total")
    published = delta("securechat_redis_published_total")
    if trips is None or not published:
        return {"ok": True, "note": "the nodes expose no round-trip counter"}
    return {"ok": True, "round_trips": trips, "published": published,
            "per_message": round(trips / published, 3)}


def run_single(args: argparse.Namespace, directory: Path,
               material: tuple[Path, Path, Path, str], pin: bool) -> dict[str, Any]:
    ca, cert, key, token = material
    server = ServerProcess(directory, cert, key, ["--store", "memory", *args.server_arg], pin,
                           "warning")
    try:
        raw = loadgen(args, [server.port], [server.proc.pid], ca, token,
                      FANOUT_QUICK if args.quick else FANOUT, pin)
    finally:
        server.stop()
    return fanout_row(raw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help=f"comma-separated rows of {', '.join(ROWS)}")
    p.add_argument("--repeat", type=int, default=1, help="runs of each row (median shown)")
    p.add_argument("--quick", action="store_true", help="tiny figures (smoke test)")
    p.add_argument("--no-pin", action="store_true", help="do not pin to CPUs 0 and 1")
    p.add_argument("--loadgen", type=Path, default=DEFAULT_LOADGEN)
    p.add_argument("--server-arg", action="append", default=[],
                   help="one more option for every server (repeatable)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="securechat-cluster-bench-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else set(ROWS)
    unknown = wanted - set(ROWS)
    if unknown:
        print(f"cluster_bench: no row {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    for tool in ("node", "redis-server"):
        if not shutil.which(tool):
            print(f"cluster_bench: {tool} is needed", file=sys.stderr)
            return 2
    pin = not args.no_pin
    runs: dict[str, list[dict[str, Any]]] = {row: [] for row in ROWS if row in wanted}
    with workdir() as directory:
        material = make_material(directory)
        for r in range(args.repeat):
            # Alternate which goes first, so drift over the minutes favours neither.
            order = ["single", "cluster"] if r % 2 == 0 else ["cluster", "single"]
            for what in order:
                if what == "single" and "fanout1" in wanted:
                    runs["fanout1"].append(run_single(args, directory, material, pin))
                elif what == "cluster":
                    for name, row in run_cluster_rows(args, directory, material, wanted,
                                                      pin).items():
                        runs[name].append(row)
            print(f"  repeat {r + 1}: {json.dumps({k: v[-1] for k, v in runs.items() if v})}",
                  file=sys.stderr, flush=True)
    results = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "quick": args.quick, "rows": {k: {"runs": v, "median": median(v)}
                                             for k, v in runs.items()}}
    two, one = (results["rows"].get(k, {}).get("median", {}) for k in ("fanout2", "fanout1"))
    if two.get("per_server_cpu_s") and one.get("per_server_cpu_s"):
        results["fanout2_vs_fanout1"] = round(two["per_server_cpu_s"] / one["per_server_cpu_s"],
                                              3)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ok = all(row.get("ok", True) for rows in runs.values() for row in rows)
    return 0 if ok else 1


def median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in {k for row in rows for k in row}:
        values = [row[key] for row in rows if isinstance(row.get(key), int | float)
                  and not isinstance(row.get(key), bool)]
        if values:
            out[key] = statistics.median(values)
    return out


if __name__ == "__main__":
    sys.exit(main())
