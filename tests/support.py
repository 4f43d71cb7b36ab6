"""Test helpers: a real server on 127.0.0.1 port 0 with trustme certificates, and a
tiny blocking wire client that speaks raw frames (so tests see exactly what the
server sends). Every server started here is shut down and its threads joined."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

from securechat.config import ServerConfig
from securechat.server import Server
from securechat.tlsconfig import server_context
from securechat.tokens import add_token, revoke_tokens

#: Multiply every test deadline by this (slow machines: SECURECHAT_TEST_SCALE=3).
SCALE = float(os.environ.get("SECURECHAT_TEST_SCALE", "1"))


def seconds(value: float) -> float:
    return value * SCALE


@dataclass
class Certs:
    """A trustme CA and a server certificate for localhost/127.0.0.1/::1, as files."""

    ca: trustme.CA
    ca_path: Path
    cert_path: Path
    key_path: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        return ctx


def make_certs(directory: Path, *names: str) -> Certs:
    ca = trustme.CA()
    cert = ca.issue_cert(*(names or ("localhost", "127.0.0.1", "::1")))
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    return Certs(ca, ca_path, cert_path, key_path)


class WireClient:
    """A blocking TLS client used from one test thread only; frames are dicts."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self._buf = b""

    def send(self, frame: dict[str, Any] | bytes) -> None:
        data = frame if isinstance(frame, bytes) else json.dumps(frame).encode() + b"\n"
        self.sock.sendall(data)

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame, or AssertionError on EOF / timeout."""
        line = self.recv_line(timeout)
        if line is None:
            raise AssertionError("connection closed while waiting for a frame")
        obj = json.loads(line)
        assert isinstance(obj, dict)
        return obj

    def recv_line(self, timeout: float = 5.0) -> bytes | None:
        """The next raw line, or None at end of stream."""
        deadline = time.monotonic() + seconds(timeout)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no frame within {timeout} s (buffered {self._buf[:80]!r})")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, ssl.SSLEOFError):
                chunk = b""
            if not chunk:
                if self._buf:
                    raise AssertionError(f"EOF inside a frame: {self._buf[:80]!r}")
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def expect(self, kind: str, timeout: float = 5.0, *, skip: tuple[str, ...] = ("ping",)
               ) -> dict[str, Any]:
        """The next frame of type ``kind``; frames of types in ``skip`` are passed over
        (answering server pings), anything else fails the test."""
        while True:
            frame = self.recv(timeout)
            if frame.get("type") == "ping" and "ping" in skip:
                self.send({"type": "pong"})
                continue
            if frame.get("type") in skip:
                continue
            assert frame.get("type") == kind, f"expected {kind}, got {frame}"
            return frame

    def expect_closed(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Read until end of stream; return the frames seen on the way."""
        frames: list[dict[str, Any]] = []
        while True:
            line = self.recv_line(timeout)
            if line is None:
                return frames
            frames.append(json.loads(line))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class RunningServer:
    server: Server
    certs: Certs
    tokens_path: Path
    clients: list[WireClient] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.server.address[0]

    @property
    def port(self) -> int:
        return self.server.address[1]

    def add_user(self, name: str) -> str:
        """Add a token to the tokens file and wait until the server has re-read it."""
        token, record = add_token(self.tokens_path, name)
        wait_for(lambda: record.id in self.server.tokens, what=f"server to load {name}'s token")
        return token

    def revoke(self, name: str) -> None:
        revoke_tokens(self.tokens_path, name)

    def tls_connect(self, *, server_hostname: str = "localhost",
                    context: ssl.SSLContext | None = None) -> WireClient:
        raw = socket.create_connection((self.host, self.port), timeout=seconds(5))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = context or self.certs.client_context()
        sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        client = WireClient(sock)
        self.clients.append(client)
        return client

    def login(self, token: str) -> tuple[WireClient, dict[str, Any]]:
        """Connect, authenticate, return the client and its welcome frame."""
        client = self.tls_connect()
        client.send({"type": "auth", "token": token})
        return client, client.expect("welcome")

    def user(self, name: str) -> tuple[WireClient, dict[str, Any]]:
        return self.login(self.add_user(name))

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()


def start_server(tmp: Path, certs: Certs, **overrides: Any) -> RunningServer:
    tokens_path = tmp / "tokens.json"
    if not tokens_path.exists():
        add_token(tokens_path, "nobody")
        revoke_tokens(tokens_path, "nobody")
    settings: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "cert": certs.cert_path, "key": certs.key_path,
        "tokens": tokens_path, "tokens_poll": 0.05, "shutdown_timeout": 3.0,
    }
    settings.update(overrides)
    config = ServerConfig(**settings)
    ctx = server_context(config.cert, config.key, tls_min=config.tls_min)
    server = Server(config, ssl_context=ctx)
    server.start()
    return RunningServer(server, certs, tokens_path)


def stop_server(running: RunningServer) -> None:
    running.close_clients()
    assert running.server.shutdown(), "server threads did not stop in time"
    leftover = [t.name for t in running.server.threads() if t.is_alive()]
    assert not leftover, f"threads still running: {leftover}"


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
             ) -> None:
    """Poll a cheap predicate against a deadline (for server-side state that has no event)."""
    deadline = time.monotonic() + seconds(timeout)
    event = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        event.wait(0.005)
