"""A real ``redis-server`` per test, and several real securechat nodes on it.

``RedisServer`` starts its own redis-server on a free 127.0.0.1 port with its data
under the test's tmp dir (``--save ''``; ``--appendonly`` as asked), waits until PING
answers, and stops it by PID (SIGTERM, then SIGKILL). ``kill``/``restart`` are for
fault tests. No system Redis is ever used. Without redis-server on PATH, the tests
that need it are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import Certs, RunningServer, seconds, wait_for

__all__ = ["RedisServer", "require_redis_server", "user_everywhere"]


def require_redis_server() -> str:
    """The redis-server binary, or skip the test with the reason."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("redis-server not installed: apt-get install redis-server "
                    "(the Redis tests start their own)")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pong(port: int, tls: Certs | None = None) -> bool:
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port),
                                                                timeout=0.5))
            if tls is not None:
                sock = stack.enter_context(tls.client_context().wrap_socket(
                    sock, server_hostname="localhost"))
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:  # ssl.SSLError too
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


class RedisServer:
    """One redis-server process; ``url`` points at it (db 0)."""

    def __init__(self, directory: Path, *, appendonly: bool = False,
                 password: str | None = None, tls: Certs | None = None) -> None:
        """``tls``: serve TLS only (``rediss://``), with that certificate."""
        self.binary = require_redis_server()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://localhost:{self.port}/0?ssl_ca_certs={self.tls.ca_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on a free port (or the one it had, for a restart); retry if taken."""
        keep = self.port
        for _ in range(5):
            self.port = keep or _free_port()
            if self._spawn():
                return
        raise AssertionError(f"redis-server did not start (port {self.port}); see "
                             f"{self.directory / 'redis.log'}")

    def _spawn(self) -> bool:
        ports = ["--port", str(self.port)] if self.tls is None else [
            "--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
            "--tls-cert-file", str(self.tls.cert_path),
            "--tls-key-file", str(self.tls.key_path),
            "--tls-ca-cert-file", str(self.tls.ca_path)]
        argv = [self.binary, *ports, "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--logfile", str(self.directory / "redis.log"), "--daemonize", "no"]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + seconds(10)
        pause = threading.Event()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False  # port taken, most likely
            if _pong(self.port, self.tls):
                return True
            pause.wait(0.02)  # a child process gives no event to wait on
        self.kill()
        return False

    def kill(self) -> None:
        """SIGKILL (the data not on disk is gone) and wait."""
        self._stop(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds; always waits."""
        self._stop(signal.SIGTERM)

    def _stop(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(seconds(5))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(seconds(5))

    def restart(self) -> None:
        """Kill and start again on the same port (with AOF the data comes back)."""
        self.kill()
        self.start()

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, password=self.password,
                                    decode_responses=True, socket_timeout=seconds(5))


def user_everywhere(nodes: list[RunningServer], name: str) -> str:
    """A token for ``name`` in the tokens file the nodes share, loaded by every node."""
    token = nodes[0].add_user(name)
    wanted = nodes[0].server.tokens.ids()
    for node in nodes[1:]:
        server = node.server
        wait_for(lambda: server.tokens.ids() == wanted,  # noqa: B023 - called at once
                 what=f"every node to load {name}'s token")
    return token
