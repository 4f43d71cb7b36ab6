"""The reconnect-storm benchmark runs end to end on a tiny storm (so it does not rot)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support import run_command

BENCH = Path(__file__).resolve().parents[2] / "bench" / "reconnect_storm.py"


@pytest.mark.timeout(120)  # above the command's own 90 s deadline (both scaled)
def test_tiny_storm_reports_every_figure(tmp_path: Path) -> None:
    """8 clients, both scenarios: every figure is reported and consistent. Run in a
    temporary directory: the server it starts keeps its default ./data there."""
    done = run_command(
        [sys.executable, str(BENCH), "--clients", "8", "--retry-spread", "0.3", "--down",
         "0.2", "--base", "0.05", "--cap", "0.2", "--max-seconds", "60"], timeout=90,
        cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["clients"] == 8
    assert result["threads"] == 2  # every client on one shared ClientLoop, plus main
    assert [s["scenario"] for s in result["scenarios"]] == ["graceful", "crash"]
    for scenario in result["scenarios"]:
        assert 0 < scenario["p50_s"] <= scenario["p99_s"] <= scenario["all_back_s"]
        assert scenario["attempts"] >= 8 and scenario["peak_attempts_in_1s"] >= 1
    assert "all back after" in done.stderr
