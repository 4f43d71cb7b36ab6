"""bench/run_bench.py and bench/resume_storm.py: a quick run on both stores (so they do
not rot), and the comparison and counting rules by hand."""

from __future__ import annotations

import importlib.util
import json
import shutil
import ssl
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import run_command

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("node") is None, reason="node (>= 20) drives the fan-out")
@pytest.mark.timeout(150)
def test_quick_run_on_both_stores_compares_them_and_writes_nothing_here(
        tmp_path: Path) -> None:
    """--quick --store both: each row ran on memory and sqlite, the resume storm counted
    every replayed message, a ratio is shown, and no ./data appeared where it ran."""
    out = tmp_path / "result.json"
    done = run_command([sys.executable, str(BENCH / "run_bench.py"), "--quick", "--store",
                        "both", "--only", "fanout10x4,resume500", "--json", str(out)],
                       timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["stores"] == ["memory", "sqlite"]
    for name in ("fanout10x4", "resume500"):
        entry = result["scenarios"][name]
        assert set(entry["runs"]) == {"memory", "sqlite"}
        assert entry["ratio"] > 0
        assert "verdict" not in entry  # quick sizes are not judged against the targets
    for run in result["scenarios"]["resume500"]["runs"].values():
        assert run[0]["caught_up"] == 20 and run[0]["replayed"] == 20 * 100
        assert run[0]["wrong"] == 0 and run[0]["misordered"] == 0
    assert "sqlite/memory" in done.stdout
    assert not (tmp_path / "data").exists()


def test_runs_interleave_stores_and_sqlite_always_gets_its_own_data_dir() -> None:
    """Stores alternate which goes first; memory gets no data dir, sqlite the given one."""
    rb = _load("run_bench")
    assert rb.run_order(["memory", "sqlite"], 3) == [
        (0, "memory"), (0, "sqlite"), (1, "sqlite"), (1, "memory"), (2, "memory"),
        (2, "sqlite")]
    assert rb.store_args("memory", Path("/x"), "fsync") == ["--store", "memory"]
    assert rb.store_args("sqlite", Path("/x/d"), "fsync") == [
        "--store", "sqlite", "--data-dir", "/x/d", "--durability", "fsync"]


def test_targets_judge_the_ratio_or_the_bound() -> None:
    """>= 90% of memory's msgs/s, or a p99 / caught-up bound on sqlite's own figure."""
    rb = _load("run_bench")
    fanout = rb.TARGETS["fanout100"]
    assert fanout.verdict(91.0, 100.0) == "met" and fanout.verdict(89.0, 100.0) == "MISSED"
    assert rb.TARGETS["chat"].verdict(5.0, 1.0) == "met"
    assert rb.TARGETS["resume500"].verdict(3.2, 1.0) == "MISSED"
    assert fanout.verdict(None, 100.0) == ""
    scenario = next(s for s in rb.SCENARIOS if s.name == "fanout10x4")
    medians = {"memory": {"delivered_per_s": 200}, "sqlite": {"delivered_per_s": 150}}
    got = rb.compare(scenario, medians)
    assert got["ratio"] == 0.75 and got["verdict"] == "met"
    assert "verdict" not in rb.compare(scenario, medians, judge=False)


def test_the_storm_driver_counts_lines_and_catches_a_repeat() -> None:
    """welcome, three msg lines split across reads, caught_up: 3 counted in order; a
    repeated seq marks the client misordered; a line after caught_up is counted."""
    rs = _load("resume_storm")
    driver = rs.Driver(1, ssl.create_default_context(), "localhost")
    good = rs.Conn(0, {"type": "auth"}, resume_seq=10)
    bad = rs.Conn(1, {"type": "auth"}, resume_seq=10)
    try:
        lines = [b'{"type":"welcome","epoch":"E","seq":13}\n'] + [
            b'{"type":"msg","from":"b","body":"x","seq":%d,"ts":"t"}\n' % s
            for s in (11, 12, 13)] + [b'{"type":"caught_up","seq":13,"replayed":3}\n']
        data = b"".join(lines)
        driver._take(good, data[:70])
        driver._take(good, good.tail + data[70:] + lines[1])
        assert good.got == 3 and not good.misordered and good.trailing == 1
        assert good.caught_up == {"type": "caught_up", "seq": 13, "replayed": 3}
        driver._take(bad, b"".join([lines[0], lines[1], lines[1], lines[3], lines[4]]))
        assert bad.got == 3 and bad.misordered
    finally:
        for conn in (good, bad):
            conn.raw.close()
