"""bench/cluster_bench.py at quick size: its own redis-server, two Redis nodes and a
memory node; every row runs and its figures hold together (nothing lost or misordered
across nodes, fewer round trips than publishes, every member resumed on the survivor)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.bench.test_run_bench import BENCH
from tests.support import run_command


@pytest.mark.timeout(150)
def test_quick_cluster_run_gives_every_row(tmp_path: Path) -> None:
    for tool in ("node", "redis-server"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the cluster bench needs it")
    out = tmp_path / "cluster.json"
    done = run_command([sys.executable, str(BENCH / "cluster_bench.py"), "--quick",
                        "--no-pin", "--json", str(out)], timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    for name in ("chat2", "fanout2", "fanout1"):
        run = rows[name]["runs"][0]
        assert run["ok"] and run["lost"] == 0 and run["misordered"] == 0, (name, run)
    assert rows["chat2"]["runs"][0]["cross_p99_ms"] is not None
    trips = rows["roundtrips"]["runs"][0]
    assert 0 < trips["per_message"] <= 1, trips
    resume = rows["resume2"]["runs"][0]
    assert resume["ok"] and resume["caught_up"] == resume["clients"] == 20, resume
    assert resume["since_kill_s"] >= resume["all_caught_up_s"]
    assert json.loads(out.read_text())["fanout2_vs_fanout1"] > 0
    assert not list(tmp_path.glob("data*")), "the bench wrote a data dir here"
