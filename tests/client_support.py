"""Helpers for the client tests: a pool of clients that is always closed and joined,
event waits with deadlines, a port nobody listens on, a TCP relay the test can
freeze to play a server that stops answering without closing anything, and the CLI
as a subprocess. Test modules load the fixtures with
``pytest_plugins = ["tests.client_support"]``.

PYTEST_DONT_REWRITE: the test modules import this module before pytest registers it
as a plugin, too late for assertion rewriting (and the warning would be an error)."""

from __future__ import annotations

import contextlib
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from securechat.client import Client, ClientLoop, Event
from securechat.client.backoff import BackoffPolicy
from tests.support import (
    Certs,
    MakeServer,
    Process,
    RunningServer,
    clean_env,
    free_port,
    run_command,
    seconds,
)

E = TypeVar("E")

#: Small waits so that reconnect tests take a fraction of a second.
FAST = BackoffPolicy(base=0.05, cap=0.2, reset_after=30.0)


class ClientPool:
    """Clients made by a test; :meth:`close_all` closes them and checks their threads ended."""

    def __init__(self, ca: Path) -> None:
        self.ca = ca
        self.clients: list[Client] = []
        self.loops: list[ClientLoop] = []

    def make(self, port: int, token: str, *, host: str = "127.0.0.1", start: bool = True,
             **kwargs: Any) -> Client:
        kwargs.setdefault("cafile", self.ca)
        kwargs.setdefault("backoff", FAST)
        kwargs.setdefault("server_name", "localhost")
        kwargs.setdefault("connect_timeout", seconds(5))
        client = Client(host, port, token=token, **kwargs)
        self.clients.append(client)
        if start:
            client.start()
        return client

    def loop(self) -> ClientLoop:
        """A shared loop for ``make(..., loop=...)``, closed (and joined) by close_all."""
        shared = ClientLoop("test-shared-loop")
        self.loops.append(shared)
        return shared

    def close_all(self) -> None:
        for client in self.clients:
            client.close()
        for shared in self.loops:
            assert shared.close(seconds(5)), "shared loop did not stop"
        alive = [t.name for c in self.clients for t in c.threads()]
        alive += [s.thread.name for s in self.loops if s.thread.is_alive()]
        assert not alive, f"client threads still running: {alive}"


@pytest.fixture
def clients(certs: Certs) -> Iterator[ClientPool]:
    """Make clients with ``clients.make(port, token)``; all are closed and joined after."""
    pool = ClientPool(certs.ca_path)
    yield pool
    pool.close_all()


def next_of(client: Client, kind: type[E], timeout: float = 5.0,
            where: Callable[[E], bool] = lambda e: True,
            seen: list[Event] | None = None) -> E:
    """The next event of type ``kind`` (matching ``where``); others are skipped but
    appended to ``seen``. AssertionError if none comes in time."""
    deadline = time.monotonic() + seconds(timeout)
    skipped: list[Event] = []
    while (left := deadline - time.monotonic()) > 0:
        event = client.next_event(left)
        if event is None:
            break
        if isinstance(event, kind) and where(event):
            return event
        skipped.append(event)
        if seen is not None:
            seen.append(event)
    raise AssertionError(f"no {kind.__name__} within {timeout} s; got {skipped}")


def collect(client: Client, duration: float) -> list[Event]:
    """Every event that arrives within ``duration`` seconds, stretched by
    SECURECHAT_TEST_SCALE like the server settings it is compared with (waits on the queue)."""
    deadline = time.monotonic() + seconds(duration)
    got: list[Event] = []
    while (left := deadline - time.monotonic()) > 0:
        event = client.next_event(left)
        if event is not None:
            got.append(event)
    return got


def closed_port() -> int:
    """A localhost port with no listener (connections are refused)."""
    return free_port()


class Relay:
    """A plain TCP forwarder from 127.0.0.1:``port`` to ``target``, on one thread.

    :meth:`freeze` stops forwarding on the connections open at that moment while
    keeping their sockets open: to the client the server is alive at the TCP level
    but says nothing (only an application heartbeat notices). Connections made
    afterwards are forwarded normally, so the client can reconnect through it.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._peer: dict[socket.socket, socket.socket] = {}
        self._frozen: set[socket.socket] = set()
        self._freeze_requests: list[tuple[str, threading.Event]] = []
        self._stop = False
        self.accepted = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="test-relay", daemon=True)
        self._thread.start()

    def freeze(self, direction: str = "both") -> None:
        """Stop forwarding on current connections: ``both``, or ``to_client`` only
        (the server still gets what the client sends, the client hears nothing)."""
        applied = threading.Event()
        with self._lock:
            self._freeze_requests.append((direction, applied))
        self._wake_w.send(b"f")
        # Synchronous: nothing is forwarded on those connections once this returns.
        assert applied.wait(seconds(5)), "the relay did not freeze in time"

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(seconds(5))
        assert not self._thread.is_alive(), "relay thread did not stop"

    def _run(self) -> None:
        try:
            while not self._stop:
                for key, _ in self._sel.select(1.0):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._wake_r.recv(4096)
                        self._apply_freezes()
                    else:
                        self._forward(key.fileobj)  # type: ignore[arg-type]
        finally:
            for sock in list(self._peer):
                sock.close()
            self._sel.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        upstream = socket.create_connection(self.target, timeout=seconds(5))
        client.setblocking(False)
        upstream.setblocking(False)
        self._peer[client] = upstream
        self._peer[upstream] = client
        self._sel.register(client, selectors.EVENT_READ, "client")
        self._sel.register(upstream, selectors.EVENT_READ, "upstream")
        self.accepted += 1

    def _apply_freezes(self) -> None:
        with self._lock:
            requests, self._freeze_requests = self._freeze_requests, []
        for direction, applied in requests:
            self._freeze(direction)
            applied.set()

    def _freeze(self, direction: str) -> None:
        for sock in list(self._peer):
            key = self._sel.get_map().get(sock)
            if key is None:
                continue
            if direction == "both" or key.data == "upstream":
                self._sel.unregister(sock)
                self._frozen.add(sock)

    def _forward(self, sock: socket.socket) -> None:
        if sock in self._frozen:
            return  # readable in the same select() batch as the freeze request
        other = self._peer.get(sock)
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data or other is None:
            self._drop(sock)
            return
        try:
            other.setblocking(True)  # test traffic is small; a blocking send is fine here
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        other = self._peer.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peer.pop(s, None)
            if s not in self._frozen:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(s)
            s.close()


# --------------------------------------------------------------------------- the CLI
#: The client tests' name for :func:`tests.support.clean_env`.
cli_env = clean_env


@contextlib.contextmanager
def relayed_pair(make_server: MakeServer, clients: ClientPool, via_user: str,
                 direct_user: str) -> Iterator[tuple[Relay, Client, Client]]:
    """A server with a 0.2 s heartbeat, a :class:`Relay` to it, a connected client of
    ``via_user`` through the relay and one of ``direct_user`` straight to the server."""
    running = make_server(heartbeat=seconds(0.2))
    relay = Relay((running.host, running.port))
    try:
        via = clients.make(relay.port, running.add_user(via_user))
        direct = clients.make(running.port, running.add_user(direct_user))
        via.connect(seconds(5))
        direct.connect(seconds(5))
        yield relay, via, direct
    finally:
        relay.close()


def cli_args(port: int, ca: Path | None, *extra: str) -> list[str]:
    """``securechat-client`` arguments for 127.0.0.1:``port`` with fast retries;
    ``ca=None`` leaves out --ca (the system trust store)."""
    return ["--host", "127.0.0.1", "--port", str(port),
            *(["--ca", str(ca)] if ca is not None else []), "--server-name", "localhost",
            "--retry-base", "0.05", "--retry-cap", "0.2", *extra]


def token_file(directory: Path, running: RunningServer, name: str = "alice") -> Path:
    """A new token for ``name`` (loaded by the server), in a 0600 file for --token-file."""
    path = directory / f"{name}.token"
    path.write_text(running.add_user(name) + "\n")
    path.chmod(0o600)
    return path


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "securechat.cli.client", *args]


def run_cli(*args: str, stdin: str = "", timeout: float = 20.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``securechat-client ARGS`` to completion with a deadline."""
    return run_command(cli_command(*args), stdin=stdin, timeout=timeout, env=env or cli_env())


class CliProcess(Process):
    """A running ``securechat-client``; stdout and stderr are drained by threads (a
    chatty stderr cannot block it), stdout lines are read against deadlines."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 open_stdin: bool = False) -> None:
        """``open_stdin``: give it a pipe that stays open and silent (no end of input)."""
        super().__init__(cli_command(*args), env=env or cli_env(), open_stdin=open_stdin)


@pytest.fixture
def procs() -> Iterator[list[CliProcess]]:
    """Append every :class:`CliProcess` a test starts; they are killed and reaped after."""
    started: list[CliProcess] = []
    yield started
    for proc in started:
        proc.kill()


def room_token(running: RunningServer, name: str, *patterns: str) -> str:
    """A new token for ``name`` granted ``rw`` on ``patterns`` (glob room patterns)."""
    return running.add_user(name, dict.fromkeys(patterns, "rw"))
