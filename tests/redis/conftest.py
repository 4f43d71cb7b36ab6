"""Fixtures of the Redis tests: a real redis-server per test, and nodes on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.redis_support import RedisServer
from tests.support import Certs, MakeServer, RunningServer, ServerProcesses

Nodes = Callable[..., list[RunningServer]]


@pytest.fixture
def redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server (``indirect`` param True: with AOF), stopped at the end."""
    server = RedisServer(tmp_path / "redis", appendonly=bool(getattr(request, "param", False)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nodes(redis: RedisServer, make_server: MakeServer) -> Nodes:
    """``nodes(2)``: that many servers on the one Redis, sharing a tokens file (they
    are stopped before Redis is)."""

    def factory(count: int = 2, **overrides: Any) -> list[RunningServer]:
        return [make_server(store=redis.url, **overrides) for _ in range(count)]

    return factory


@pytest.fixture
def procs(tmp_path: Path, certs: Certs, redis: RedisServer) -> Iterator[ServerProcesses]:
    """Real ``securechat-server`` processes (started by the test, on ``redis``), all
    killed and reaped at the end, before Redis is stopped."""
    running = ServerProcesses(tmp_path, certs)
    try:
        yield running
    finally:
        running.close()
