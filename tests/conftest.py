"""Fixtures: trustme certificates and a real server on 127.0.0.1 port 0 that is always
shut down (and its threads joined) at the end of the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Certs, RunningServer, make_certs, start_server, stop_server


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def make_server(tmp_path: Path, certs: Certs) -> Iterator[Callable[..., RunningServer]]:
    """Factory: ``make_server(heartbeat=0.2, ...)`` starts a server with those settings."""
    started: list[RunningServer] = []

    def factory(**overrides: Any) -> RunningServer:
        running = start_server(tmp_path, certs, **overrides)
        started.append(running)
        return running

    yield factory
    for running in started:
        stop_server(running)


@pytest.fixture
def server(make_server: Callable[..., RunningServer]) -> RunningServer:
    """A server with default settings."""
    return make_server()
