"""``securechat-server status`` run as the real command against real servers: the table
(uptime, connections, rooms, msgs/s, queue bytes, readiness), exit 1 with the reason
when a readiness check fails (a backend's own check, added through the hook), exit 3
when nothing answers or the token is wrong."""

from __future__ import annotations

import re
from pathlib import Path

from securechat.server.ops.config import AdminConfig
from tests.ops.admin_support import AdminServer, admin_address
from tests.support import (
    RunningServer,
    clean_env,
    free_port,
    run_command,
    server_cli_command,
    wait_for,
)


def status(*args: str) -> tuple[int, str, str]:
    result = run_command(server_cli_command("status", "--interval", "0.2", *args),
                         env=clean_env())
    return result.returncode, result.stdout, result.stderr


def url(running: RunningServer) -> str:
    host, port = admin_address(running)
    return f"http://{host}:{port}"


def test_status_prints_the_table_of_a_ready_server(admin_server: AdminServer) -> None:
    running = admin_server()
    alice, _ = running.user("alice")
    running.user("bob")
    alice.expect("join")
    wait_for(lambda: not running.server.readiness.problems(), what="ready")
    code, out, err = status("--admin", url(running))
    assert code == 0, err
    rows = dict(re.findall(r"^  (\S+(?: \S+)?)\s{2,}(.*)$", out, re.M))
    assert rows["connections"].startswith("2 (active 2"), out
    assert rows["rooms"] == "1"
    assert rows["ready"] == "yes"
    assert re.fullmatch(r"\d+m \d\ds", rows["uptime"]), out
    assert re.fullmatch(r"\d+\.\d in, \d+\.\d delivered", rows["msgs/s"]), out
    assert rows["queue bytes"] == "0"


def test_status_exits_1_with_the_reason_when_a_check_fails(
        admin_server: AdminServer) -> None:
    """The readiness hook a backend uses: a named check that fails is /readyz's 503,
    and status says which and why."""
    running = admin_server(store="memory")
    running.server.readiness.add("publish path", lambda: "held down by the test")
    code, out, _ = status("--admin", url(running))
    assert code == 1
    assert "no (503): not ready: publish path: held down by the test" in out
    running.server.readiness.remove("publish path")
    assert status("--admin", url(running))[0] == 0


def test_status_exits_3_when_unreachable_or_refused(admin_server: AdminServer,
                                                    tmp_path: Path) -> None:
    code, out, err = status("--admin", f"http://127.0.0.1:{free_port()}")
    assert code == 3 and out == ""
    assert "cannot reach" in err and "refused" in err.lower()
    token_file = tmp_path / "admin.token"
    token_file.write_text("a-long-enough-admin-token\n")
    running = admin_server(admin=AdminConfig(listen="127.0.0.1:0", token_file=token_file))
    code, _, err = status("--admin", url(running))
    assert code == 3 and "401" in err and "--token-file" in err
    code, out, _ = status("--admin", url(running), "--token-file", str(token_file))
    assert code in (0, 1) and "uptime" in out  # answers; ready once the first probe ran
