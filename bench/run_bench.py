#!/usr/bin/env python3
"""Benchmark securechat with the same load generator that measured nats-server,
mosquitto and amqtt (bench/loadgen.mjs, Node's built-in tls only).

Each scenario gets a fresh server (so RSS figures start clean), pinned to CPU 0,
with the generator pinned to CPU 1, TLS 1.3 / TLS_AES_256_GCM_SHA384, ECDSA P-256.
The per-IP and per-session limits are raised because every generated client
comes from 127.0.0.1 and publishes as fast as it can.

    python bench/run_bench.py                       # every scenario, ~1.5 min
    python bench/run_bench.py --only fanout100,chat --repeat 3
    python bench/run_bench.py --quick               # tiny figures, seconds (smoke test)
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


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]


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
]


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


class ServerProcess:
    """securechat-server as a child process; always stopped by PID."""

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
        self.proc = subprocess.Popen(pinned(0, argv, pin), stdout=subprocess.DEVNULL,
                                     stderr=self._log)
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
                args: tuple[str, ...], pin: bool, timeout: float) -> dict[str, Any]:
    argv = ["node", str(loadgen), "--proto", "ndjson", "--host", "127.0.0.1", "--port", str(port),
            "--ca", str(ca), "--token", token, "--servername", "localhost",
            "--server-pid", str(server_pid), "--max-runtime", str(int(timeout)), *args]
    result = subprocess.run(pinned(1, argv, pin), capture_output=True, text=True,
                            timeout=timeout + 30, check=False)
    try:
        parsed: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"loadgen failed ({result.returncode}): {result.stderr[-1500:]}"
                           ) from exc
    return parsed


def summarize(name: str, r: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets are about, from one loadgen result."""
    summary = _figures(r)
    cpu = r.get("cpu") or r.get("connectCpu") or {}
    # CPU used by other processes during the run: a noisy neighbour makes figures low.
    summary["foreign_cpu_pct"] = cpu.get("foreignCpuPct")
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
    if r.get("scenario") == "storm":
        return {"authenticated": r.get("authenticated"), "clients": r.get("clients"),
                "all_auth_s": r.get("allAuthSec"),
                "p99_ms": (r.get("timeToAuth") or {}).get("p99ms"),
                "handshakes_per_cpu_s": r.get("perServerCpuSec"), "fails": r.get("fails"),
                "ok": r.get("ok")}
    return {"raw": r}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated scenario names: "
                        + ", ".join(s.name for s in SCENARIOS))
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario (median shown)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--io-threads", type=int, default=None, help="server --io-threads")
    parser.add_argument("--log-level", default="info", help="server log level (default info)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra server argument (repeatable), e.g. --server-arg=--heartbeat=5")
    parser.add_argument("--loadgen", type=Path,
                        default=Path(os.environ.get("SECURECHAT_LOADGEN", DEFAULT_LOADGEN)))
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if not shutil.which("node"):
        print("run_bench: node (>= 20) is needed for the load generator", file=sys.stderr)
        return 2
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    if not chosen:
        print(f"run_bench: no scenario matches {args.only!r}", file=sys.stderr)
        return 2
    pin = not args.no_pin
    extra = list(args.server_arg)
    if args.io_threads:
        extra += ["--io-threads", str(args.io_threads)]
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "cpus": os.cpu_count(), "server_args": extra, "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="securechat-bench-") as tmp:
        directory = Path(tmp)
        ca, cert, key, token = make_material(directory)
        for scenario in chosen:
            runs = []
            for _ in range(args.repeat):
                server = ServerProcess(directory, cert, key, extra, pin, args.log_level)
                drops_before = listen_drops()
                try:
                    raw = run_loadgen(args.loadgen, server.port, ca, token, server.proc.pid,
                                      scenario.quick_args if args.quick else scenario.args,
                                      pin, timeout=120)
                finally:
                    server.stop()
                summary = summarize(scenario.name, raw)
                drops_after = listen_drops()
                if drops_before is not None and drops_after is not None:
                    summary["listen_drops"] = drops_after - drops_before
                runs.append(summary)
                print(f"  {scenario.name}: {json.dumps(summary)}", file=sys.stderr, flush=True)
            results["scenarios"][scenario.name] = {"what": scenario.what, "runs": runs,
                                                   "median": _median(runs)}
    print(f"\nsecurechat benchmark ({'quick' if args.quick else 'full'}; "
          f"server pinned to CPU 0: {pin}; {results['cpus']} CPUs)")
    for name, entry in results["scenarios"].items():
        med = entry["median"]
        shown = ", ".join(f"{k}={v}" for k, v in med.items() if v is not None and k != "ok")
        print(f"  {name:12} {entry['what']}\n               {shown}")
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failed = [n for n, e in results["scenarios"].items() if not all(r.get("ok") for r in e["runs"])]
    return 1 if failed else 0


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        out[key] = statistics.median(numbers) if len(numbers) == len(values) else values[0]
    return out


if __name__ == "__main__":
    sys.exit(main())
