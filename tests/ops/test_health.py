"""``/healthz`` and ``/readyz`` against real servers: a wedged I/O loop makes /healthz
503 and name it, and it recovers once the loop turns again; /readyz is 503 while the
server shuts down and while its store cannot write (a file-size limit of 0 set from
outside, as a full disk), and 200 again once writes succeed."""

from __future__ import annotations

import re
import resource
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from securechat.io.loop import IOLoop
from securechat.server.ops.config import AdminConfig
from tests.ops.admin_support import AdminServer, admin_address, request
from tests.support import Certs, ServerProcess, ServerProcesses, publish, seconds, wait_for


def status_of(address: tuple[str, int], path: str) -> tuple[int, str]:
    status, _, body = request(address, path)
    return status, body.decode()


def wedge(loop: IOLoop, release: threading.Event) -> None:
    """The test hook: a call that blocks the loop's thread until ``release`` is set."""
    def blocked() -> None:
        release.wait(seconds(30))
    loop.call_soon(blocked)


def test_healthz_names_a_wedged_loop_and_recovers(admin_server: AdminServer) -> None:
    running = admin_server(admin=AdminConfig(listen="127.0.0.1:0", health_stall=0.5))
    address = admin_address(running)
    assert status_of(address, "/healthz") == (200, "ok\n")
    release = threading.Event()
    try:
        wedge(running.server._loops[0], release)
        wait_for(lambda: status_of(address, "/healthz")[0] == 503, timeout=10,
                 what="/healthz to see the wedged loop")
        status, body = status_of(address, "/healthz")
        assert status == 503 and "securechat-io-0" in body and "no turn for" in body, body
        assert "securechat-accept" not in body  # the accept thread is fine
        assert status_of(address, "/metrics")[0] == 200  # the admin thread is not stuck
    finally:
        release.set()
    wait_for(lambda: status_of(address, "/healthz") == (200, "ok\n"), timeout=10,
             what="/healthz to recover")


def test_readyz_is_503_while_shutting_down(admin_server: AdminServer) -> None:
    """Shutdown waits for a wedged loop to drain: meanwhile /readyz says shutting down
    (and /healthz is unaffected until the loop has stalled past --health-stall)."""
    running = admin_server()
    address = admin_address(running)
    wait_for(lambda: status_of(address, "/readyz") == (200, "ready\n"),
             what="the first probe write")
    release = threading.Event()
    wedge(running.server._loops[0], release)
    stopper = threading.Thread(target=running.server.shutdown, name="test-shutdown")
    stopper.start()
    try:
        wait_for(lambda: status_of(address, "/readyz")[0] == 503, what="/readyz 503")
        status, body = status_of(address, "/readyz")
        assert status == 503 and "shutdown: shutting down" in body, body
    finally:
        release.set()
        stopper.join(seconds(10))
    assert not stopper.is_alive()
    with pytest.raises(OSError):
        request(address, "/readyz")  # the admin endpoint closed last, with the rest


@pytest.fixture
def servers(tmp_path: Path, certs: Certs) -> Iterator[ServerProcesses]:
    procs = ServerProcesses(tmp_path, certs)
    yield procs
    procs.close()


def admin_port(proc: ServerProcess) -> int:
    line = proc.wait_line(lambda s: "admin endpoint on http" in s)
    found = re.search(r"https?://127\.0\.0\.1:(\d+)", line)
    assert found, line
    return int(found.group(1))


def test_readyz_is_503_while_the_store_cannot_write_and_recovers(
        servers: ServerProcesses) -> None:
    """The real command with --admin-listen; its file-size limit lowered to 0: the probe
    write fails and /readyz names the store, and a publish meanwhile is refused; once
    the limit is back /readyz is 200 again through the probe alone (no message needed),
    and the next publish is stored."""
    alice_token = servers.token("alice")
    proc = servers.start("--admin-listen", "127.0.0.1:0")
    address = ("127.0.0.1", admin_port(proc))
    alice, _ = servers.login(proc, alice_token)
    wait_for(lambda: status_of(address, "/readyz") == (200, "ready\n"), what="ready")
    pid = proc.proc.pid
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
    except (PermissionError, OSError) as exc:  # pragma: no cover - a sandbox
        pytest.skip(f"cannot lower the server's RLIMIT_FSIZE: {exc}")
    try:
        wait_for(lambda: status_of(address, "/readyz")[0] == 503, timeout=15,
                 what="/readyz to see the store fail")
        status, body = status_of(address, "/readyz")
        assert status == 503 and "store: " in body and "probe write failed" in body, body
        assert status_of(address, "/healthz")[0] == 200  # alive, just not ready
        alice.send({"type": "msg", "body": "while full", "id": "f1"})
        refused = alice.expect("error", skip=("ping", "join"))
        assert refused["code"] == "store_unavailable", refused
        wait_for(lambda: "last write failed" in status_of(address, "/readyz")[1],
                 what="/readyz to name the failed write")
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    wait_for(lambda: status_of(address, "/readyz") == (200, "ready\n"), timeout=15,
             what="/readyz to recover")
    (ack,) = publish(alice, ["after"], ["s1"])
    assert ack["seq"] == 1
    assert proc.stop() == 0
