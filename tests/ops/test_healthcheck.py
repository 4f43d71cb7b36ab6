"""docker/healthcheck.py, the compose service's healthcheck, run as a real command: with
SECURECHAT_ADMIN_LISTEN it is healthy exactly when /readyz answers 200."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.ops.admin_support import AdminServer, admin_address
from tests.support import clean_env, free_port, run_command, wait_for

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"


def healthcheck(listen: str) -> int:
    result = run_command([sys.executable, str(SCRIPT)],
                         env=clean_env(SECURECHAT_ADMIN_LISTEN=listen))
    return result.returncode


def test_healthy_only_while_ready(admin_server: AdminServer) -> None:
    running = admin_server()
    host, port = admin_address(running)
    wait_for(lambda: not running.server.readiness.problems(), what="ready")
    assert healthcheck(f"{host}:{port}") == 0
    running.server.readiness.add("test", lambda: "held down by the test")
    assert healthcheck(f"{host}:{port}") == 1
    assert healthcheck(f"127.0.0.1:{free_port()}") == 1  # nothing answers
