"""Helpers for the admin endpoint tests: a real server with ``--admin-listen`` on port 0
(in this process, or the real command), and a tiny HTTP client on raw sockets so a
test sees exactly what the admin thread sends and when it closes."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from securechat.server.ops.config import AdminConfig
from tests.support import Certs, RunningServer, seconds, start_server, stop_server

#: ``admin_server(admin=AdminConfig(...), **server_settings)``.
AdminServer = Callable[..., RunningServer]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def start_admin_server(tmp: Path, certs: Certs, admin: AdminConfig | None = None,
                       **overrides: Any) -> RunningServer:
    """tests.support.start_server, plus the admin endpoint (loopback, port 0)."""
    return start_server(tmp, certs, admin=admin or AdminConfig(listen="127.0.0.1:0"),
                        **{"msg_rate": 0.0, **overrides})


@pytest.fixture
def admin_server(tmp_path: Path, certs: Certs) -> Iterator[AdminServer]:
    started: list[RunningServer] = []

    def factory(admin: AdminConfig | None = None, **overrides: Any) -> RunningServer:
        running = start_admin_server(tmp_path, certs, admin, **overrides)
        started.append(running)
        return running

    yield factory
    for running in started:
        stop_server(running)


def admin_address(running: RunningServer) -> tuple[str, int]:
    admin = running.server._admin
    assert admin is not None, "no --admin-listen"
    address: tuple[str, int] = admin.address
    return address


def open_admin(address: tuple[str, int], context: ssl.SSLContext | None = None
               ) -> socket.socket:
    sock = socket.create_connection(address, timeout=seconds(5))
    if context is not None:
        return context.wrap_socket(sock, server_hostname="localhost")
    return sock


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until the server closes (AssertionError if it does not in time)."""
    sock.settimeout(seconds(timeout))
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the admin endpoint did not close; got {data[:200]!r}"
                                 ) from None
        except (ConnectionResetError, ssl.SSLEOFError):
            return data
        if not chunk:
            return data
        data += chunk


def request(address: tuple[str, int], path: str, *, method: str = "GET",
            headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    """One request; (status, headers lowercased, body). The server must close after it."""
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock = open_admin(address, context)
    with contextlib.closing(sock):
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = read_all(sock)
    return split_response(raw)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 "), raw[:200]
    found = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), found, body


def scrape(address: tuple[str, int], **kwargs: Any) -> Samples:
    """``/metrics`` parsed by prometheus_client's own parser: (name, labels) -> value."""
    status, headers, body = request(address, "/metrics", **kwargs)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
