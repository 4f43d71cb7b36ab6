"""bench/rooms_bench.py and run_bench's rooms rows: a tiny rooms1000 against a real
server (every message reaches exactly the other members of its room), fanout100idle
at quick size, and the driver's counting rules by hand."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.bench.test_run_bench import BENCH, _load
from tests.support import run_command


def test_layout_gives_every_room_exactly_its_members_and_each_session_its_own_room() -> None:
    """Session i's first room is room i; each room has M distinct members."""
    rb = _load("rooms_bench")
    for rooms, members in ((1000, 10), (20, 4), (7, 3)):
        lay = rb.layout(rooms, members)
        assert [names[0] for names in lay] == list(range(rooms))
        count = [0] * rooms
        for names in lay:
            assert len(set(names)) == members
            for r in names:
                count[r] += 1
        assert count == [members] * rooms


@pytest.mark.timeout(90)
def test_tiny_rooms_run_delivers_each_message_to_exactly_the_other_members(
        tmp_path: Path) -> None:
    """12 rooms x 3 members, 2 msg/s for 1.2 s after a 0.4 s warm-up, on a real server:
    every published message acknowledged and received by its 2 other members, none
    in a wrong room or twice, latency timed for the window, CPU and RSS read."""
    rbench = _load("run_bench")
    _ca, cert, key, _token = rbench.make_material(tmp_path)
    rooms_token = rbench.rooms_material(tmp_path)
    server = rbench.ServerProcess(tmp_path, cert, key, ["--store", "memory"], False, "warning")
    try:
        done = run_command(
            [sys.executable, str(BENCH / "rooms_bench.py"), "run", "--port", str(server.port),
             "--ca", str(tmp_path / "ca.pem"), "--token", rooms_token, "--server-pid",
             str(server.proc.pid), "--rooms", "12", "--members", "3", "--rate", "2",
             "--warmup", "0.4", "--duration", "1.2", "--drain", "5", "--timeout", "20"],
            timeout=60)
    finally:
        server.stop()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    r = json.loads(done.stdout)
    assert r["ok"] is True
    # 12 sessions x 2/s x 1.6 s, give or take the last publish before the end
    assert 12 * 3 <= r["published"] <= 12 * 4
    assert r["acks"] == r["published"]
    assert r["delivered"] == r["expected"] == 2 * r["published"]
    assert r["missing"] == 0 and r["wrongRoom"] == 0 and r["duplicates"] == 0
    assert r["latency"]["n"] == 2 * r["publishedInWindow"] > 0
    assert 0 < r["latency"]["p50ms"] <= r["latency"]["p99ms"] <= r["latency"]["maxMs"] < 2000
    assert r["rssSetupKb"] > 0 and r["rssEndKb"] > 0
    assert r["cpu"]["serverCpuSec"] is not None and r["cpu"]["loadgenCpuPct"] >= 0


def test_the_rooms_driver_counts_a_wrong_room_a_repeat_and_answers_a_ping() -> None:
    """A msg of a room the session is not in, or whose body names another publisher's
    room, is a wrong-room delivery; a repeated counter a duplicate; a ping queues a pong;
    the session counts as set up only after welcome and all its joined frames."""
    rb = _load("rooms_bench")
    driver = rb.RoomsDriver(1, rb.ssl.create_default_context(), "localhost",
                            rb.layout(4, 2))
    conn = rb.RoomConn(0, "T", ["r0", "r2"], "c")
    try:
        def msg(room: int, pub: int, n: int) -> bytes:
            return (b'{"type":"msg","room":"r%d","from":"u","body":"%d %d 1.0","seq":1,'
                    b'"ts":"t"}\n' % (room, pub, n))

        driver._take(conn, b'{"type":"welcome","user":"u"}\n'
                     b'{"type":"joined","room":"r0","members":[],"seq":0,"epoch":"e"}\n')
        assert conn.welcome is None
        driver._take(conn, b'{"type":"joined","room":"r2","members":[],"seq":0,"epoch":"e"}\n'
                     + msg(2, 2, 0) + msg(2, 2, 0)[:20])
        assert conn.welcome is not None and conn.phase == "live"
        driver._take(conn, conn.tail + msg(2, 2, 0)[20:] + msg(1, 1, 0) + msg(2, 3, 0)
                     + b'{"type":"ping"}\n' + msg(2, 2, 1))
        assert driver.delivered == 2 and driver.receipts == {2: 1, 6: 1}
        assert driver.duplicates == 1 and driver.wrong_room == 2
        assert conn.out == b'{"type":"pong"}\n'
    finally:
        conn.raw.close()


@pytest.mark.skipif(shutil.which("node") is None, reason="node (>= 20) drives the fan-out")
@pytest.mark.timeout(150)
def test_quick_fanout100idle_runs_alone_and_beside_idle_rooms(tmp_path: Path) -> None:
    """--quick --only fanout100idle: one run alone and one beside 30 idle rooms (10
    sessions x 3), both delivering everything, the holder up to the end, a ratio."""
    out = tmp_path / "result.json"
    done = run_command([sys.executable, str(BENCH / "run_bench.py"), "--quick", "--store",
                        "memory", "--only", "fanout100idle", "--no-pin", "--json", str(out)],
                       timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    entry = json.loads(out.read_text())["scenarios"]["fanout100idle"]
    run = entry["runs"]["memory"][0]
    assert run["ok"] is True and run["lost"] == 0 and run["idle_rooms"] == 30
    assert run["delivered_per_s"] > 0 and run["alone_delivered_per_s"] > 0
    assert run["idle_vs_alone"] == round(run["delivered_per_s"]
                                         / run["alone_delivered_per_s"], 3)
    assert "idle_verdict" not in entry  # quick sizes are not judged against the target
    assert "idle_vs_alone" in done.stdout
    assert not (tmp_path / "data").exists()
