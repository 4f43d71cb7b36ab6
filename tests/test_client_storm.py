"""The reconnect-storm benchmark runs end to end on a tiny storm (so it does not rot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import seconds

BENCH = Path(__file__).resolve().parent.parent / "bench" / "reconnect_storm.py"


def test_tiny_storm_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--clients", "8", "--retry-spread", "0.3", "--down",
         "0.2", "--base", "0.05", "--cap", "0.2", "--max-seconds", "60"],
        capture_output=True, text=True, timeout=seconds(90), check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["clients"] == 8
    assert [s["scenario"] for s in result["scenarios"]] == ["graceful", "crash"]
    for scenario in result["scenarios"]:
        assert 0 < scenario["p50_s"] <= scenario["p99_s"] <= scenario["all_back_s"]
        assert scenario["attempts"] >= 8 and scenario["peak_attempts_in_1s"] >= 1
    assert "all back after" in done.stderr
