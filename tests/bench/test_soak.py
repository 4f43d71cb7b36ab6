"""bench/soak.py: a tiny real run (server subprocess, worker processes, a SIGTERM
restart, a frozen worker, a cut link), and its counting rules on made-up data."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.support import seconds

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get("soak")
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["soak"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


def _fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def test_tiny_soak_with_a_graceful_restart_and_a_freeze_loses_nothing() -> None:
    """6 clients, 2 workers, ~15 s, one SIGTERM restart and one freeze: exit 0, nothing lost."""
    cmd = [sys.executable, str(SOAK), "--clients", "6", "--procs", "2", "--minutes", "0.25",
           "--rate", "2", "--terms", "1", "--kills", "0", "--freezes", "1", "--cuts", "1",
           "--seed", "7", "--drain-seconds", str(seconds(10)), "--max-seconds", str(seconds(50))]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=seconds(55))
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("soak: clients=")]
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert len(lines) == 1, done.stdout
    got = _fields(lines[0])
    assert got["lost_graceful"] == "0" and got["dup"] == "0" and got["reordered"] == "0"
    assert got["restarts_term"] == "1" and got["freezes"] == "1" and got["cuts"] == "1"
    assert int(got["sent"]) > 0 and got["acked"] == got["sent"], lines[0]
    assert int(got["graceful_checked"]) > 0, "no session was checked across a restart"


def _gen(soak: ModuleType, index: int, start: float, stop: float, how: str) -> Any:
    return soak.Generation(index, 1000 + index, start, stop, how, 0)


def _client(gid: int, sessions: list[list[Any]], canonical: list[list[Any]] | None = None,
            anomalies: list[list[Any]] | None = None) -> dict[str, Any]:
    return {"gid": gid, "sent": 0, "acked": 0, "failed": 0, "unacked": 0, "delivered": 0,
            "canonical": canonical or [], "sessions": sessions, "anomalies": anomalies or [],
            "errors": {}, "ends": {}}


EXTRA = {"faults": {}, "links_cut": 0}


def test_a_gap_before_a_graceful_bye_counts_as_lost_and_after_a_cut_does_not() -> None:
    """An acked seq missing from a session that got bye is lost; from a cut session it is not."""
    soak = _load_soak()
    gens = [_gen(soak, 0, 0.0, 10.0, "term"), _gen(soak, 1, 11.0, 20.0, "final")]
    sender = _client(0, [["A", 0, 1.0, 10.0, "bye", 3, [], 0, 0]],
                     canonical=[[1, "A", 1], [2, "A", 2], [3, "A", 3]])
    graceful = _client(1, [["A", 0, 1.0, 10.0, "bye", 3, [[2, 2]], 2, 0]])
    cut = _client(2, [["A", 0, 1.0, 5.0, "lost", 1, [], 1, 0]])
    got = soak.analyse(gens, [sender, graceful, cut], EXTRA)["summary"]
    assert got["lost_graceful"] == 1
    assert got["graceful_checked"] == 6


def test_duplicates_are_failures_unless_a_sigkill_lost_the_first_ack() -> None:
    """A copy republished after a SIGKILL is its cost; one server publishing twice is a dup."""
    soak = _load_soak()
    gens = [_gen(soak, 0, 0.0, 10.0, "kill"), _gen(soak, 1, 11.0, 20.0, "final")]
    sender = _client(0, [["K", 0, 1.0, 10.5, "lost", 5, [], 0, 0],
                         ["F", 0, 12.0, 20.0, "bye", 1, [], 0, 0]],
                     canonical=[[5, "F", 1], [6, "F", 2]])
    receiver = _client(1, [["K", 0, 1.0, 10.5, "lost", 5, [], 5, 0],
                           ["F", 0, 12.0, 20.0, "bye", 2, [], 2, 0]],
                       anomalies=[["dup", 0, 5, ["K", 5], ["F", 1]],
                                  ["dup", 0, 6, ["F", 2], ["F", 3]]])
    got = soak.analyse(gens, [sender, receiver], EXTRA)["summary"]
    assert got["dup_sigkill"] == 1
    assert got["dup"] == 1
