"""bench/soak.py: a tiny real run (server subprocess with its durable store, worker
processes, a SIGTERM and a SIGKILL restart, a frozen worker, a cut link), and its
counting rules on made-up data."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from securechat.client import Client, Connected, Disconnected, Gap
from securechat.protocol import CaughtUp, Message, Welcome
from tests.support import seconds

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
#: The soak's promise needs a client that keeps its client id and resumes.
RESUMING_CLIENT = "client_id" in inspect.signature(Client).parameters


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


@pytest.mark.skipif(not RESUMING_CLIENT, reason="securechat.Client does not resume yet "
                    "(no client_id): the soak's promise needs it")
@pytest.mark.timeout(seconds(70))
def test_tiny_soak_across_a_sigterm_and_a_sigkill_loses_nothing_acked(tmp_path: Path) -> None:
    """6 clients, 2 workers, ~15 s, one SIGTERM and one SIGKILL restart, a freeze and a
    cut: exit 0, no acknowledged message lost, duplicated or reordered, one epoch."""
    cmd = [sys.executable, str(SOAK), "--clients", "6", "--procs", "2", "--minutes", "0.25",
           "--rate", "2", "--terms", "1", "--kills", "1", "--freezes", "1", "--cuts", "1",
           "--seed", "7", "--drain-seconds", str(seconds(10)),
           "--catchup-seconds", str(seconds(10)), "--max-seconds", str(seconds(60)),
           "--workdir", str(tmp_path)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True,
                          timeout=seconds(65))
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("soak: clients=")]
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert len(lines) == 1, done.stdout
    got = _fields(lines[0])
    assert got["lost_acked"] == "0" and got["dup"] == "0" and got["reordered"] == "0"
    assert got["restarts_term"] == "1" and got["restarts_kill"] == "1"
    assert got["freezes"] == "1" and got["cuts"] == "1"
    assert got["epochs"] == "1", "the durable log kept its epoch across both restarts"
    assert int(got["sent"]) > 0 and got["acked"] == got["sent"], lines[0]
    assert int(got["checked"]) > 0 and got["behind_at_end"] == "0", lines[0]
    assert (tmp_path / "data").is_dir(), "the server's log lives in the work dir"


# ---------------------------------------------------------------- the count, by hand
def _gen(soak: ModuleType, index: int, how: str) -> Any:
    return soak.Generation(index, 1000 + index, float(index), float(index) + 1.0, how, 0)


def _client(gid: int, first: list[Any] | None, received: dict[str, list[list[int]]],
            canonical: list[list[Any]] | None = None,
            counts: dict[str, int] | None = None,
            anomalies: list[list[Any]] | None = None) -> dict[str, Any]:
    acked = len(canonical or [])
    return {"gid": gid, "sent": acked, "acked": acked, "failed": 0, "unacked": 0,
            "first": first, "received": received, "canonical": canonical or [],
            "counts": counts or {}, "gaps": [], "anomalies": anomalies or [],
            "errors": {}, "ends": {}}


EXTRA = {"faults": {"kill": 1}, "links_cut": 0}


def test_a_client_is_owed_what_was_acked_after_its_first_welcome_and_nothing_before() -> None:
    """Acked seqs 1-5; a member since seq 2 that saw 3 and 5 lost 4, not 1 or 2."""
    soak = _load_soak()
    sender = _client(0, ["E", 0], {"E": [[1, 5]]},
                     canonical=[[i, "E", i] for i in range(1, 6)])
    late = _client(1, ["E", 2], {"E": [[3, 3], [5, 5]]})
    got = soak.analyse([_gen(soak, 0, "kill")], [sender, late], EXTRA)["summary"]
    assert got["lost_acked"] == 1 and got["lost_acked_msgs"] == 1
    assert got["checked"] == 3  # seqs 3, 4, 5
    assert soak.failed(got)


def test_own_messages_are_not_owed_and_a_later_epoch_is_owed_whole() -> None:
    """A sender is not owed its own messages; after a log reset every seq is owed."""
    soak = _load_soak()
    sender = _client(0, ["E", 0], {"E": [[1, 2]]},
                     canonical=[[1, "E", 1], [2, "E", 2], [3, "F", 1]])
    other = _client(1, ["E", 0], {"E": [[1, 2]], "F": []})
    got = soak.analyse([_gen(soak, 0, "term")], [sender, other], EXTRA)["summary"]
    assert got["epochs"] == 2
    assert got["checked"] == 3 and got["lost_acked"] == 1  # F's seq 1
    alone = soak.analyse([_gen(soak, 0, "term")], [sender], EXTRA)["summary"]
    assert alone["checked"] == 0 and not soak.failed(alone)


def test_dups_and_reorders_reported_by_workers_fail_the_run() -> None:
    """Worker-side anomalies are summed into dup and reordered, which fail the run."""
    soak = _load_soak()
    sender = _client(0, ["E", 0], {"E": [[1, 2]]}, canonical=[[1, "E", 1], [2, "E", 2]])
    receiver = _client(1, ["E", 0], {"E": [[1, 2]]}, counts={"dup": 1, "reordered": 2},
                       anomalies=[["dup", 0, 1, "E", 2, "first as seq 1"]])
    result = soak.analyse([_gen(soak, 0, "kill")], [sender, receiver], EXTRA)
    got = result["summary"]
    assert got["lost_acked"] == 0 and got["dup"] == 1 and got["reordered"] == 2
    assert soak.failed(got)
    assert "first as seq 1" in result["examples"]["dup"][0]


def _welcome(seq: int) -> Welcome:
    return Welcome("soak1", "lobby", ("soak0", "soak1"), 2.0, seq, epoch="E")


def _msg(sender: int, counter: int, seq: int, replayed: bool = False) -> Message:
    return Message(f"soak{sender}", f"{sender} {counter} xx", seq, "t", replayed)


def test_the_tracker_counts_live_and_replayed_copies_once_each_and_in_order() -> None:
    """Live, then a replay after a reconnect, then caught_up: one contiguous range, no
    anomaly; a second copy is a dup, an older seq after a newer one is reordered."""
    soak = _load_soak()
    t = soak.Tracker(1)
    t.on_event(Connected(_welcome(0), "a", False))
    t.on_event(_msg(0, 1, 1))
    t.on_event(Disconnected("link lost"))
    t.on_event(Connected(_welcome(3), "a", True))
    t.on_event(_msg(0, 2, 2, replayed=True))
    t.on_event(_msg(1, 1, 3, replayed=True))  # our own, after a lost ack
    t.on_event(CaughtUp(3, 2))
    t.on_event(Gap(3, 5, 1))
    r = t.result()
    assert r["first"] == ["E", 0] and r["received"] == {"E": [[1, 3]]}
    assert r["counts"]["replayed"] == 2 and r["counts"]["own_replayed"] == 1
    assert r["counts"]["caught_up"] == 1 and r["counts"]["gap_missing"] == 1
    assert r["anomalies"] == []
    t.on_event(_msg(0, 2, 4))  # the same (sender, counter) again, with a new seq
    t.on_event(_msg(2, 1, 2))  # seq 2 after seq 4
    kinds = [a[0] for a in t.result()["anomalies"]]
    assert kinds == ["dup", "reordered"]
