"""Fixtures: trustme certificates and a real server on 127.0.0.1 port 0 that is always
shut down (and its threads joined) at the end of the test.

SECURECHAT_TEST_SCALE stretches pytest-timeout's limits too (the ini/command-line
timeout and every ``timeout`` marker), so that a slow machine gets more time overall
and not only inside the tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    SCALE,
    Certs,
    LogRecords,
    MakeServer,
    RunningServer,
    make_certs,
    start_server,
    stop_server,
)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Scale the default timeout pytest-timeout has just read (ini, --timeout, env)."""
    base = getattr(config, "_env_timeout", None)
    if SCALE != 1 and base:
        config._env_timeout = base * SCALE  # type: ignore[attr-defined]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Scale every ``@pytest.mark.timeout(N)``: the scaled marker goes first, so it is
    the one pytest-timeout reads."""
    if SCALE == 1:
        return
    for item in items:
        marker = item.get_closest_marker("timeout")
        if marker is None:
            continue
        kwargs = dict(marker.kwargs)
        args = list(marker.args)
        value = kwargs.pop("timeout", args.pop(0) if args else None)
        if value:
            item.add_marker(pytest.mark.timeout(float(value) * SCALE, *args, **kwargs),
                            append=False)


def pytest_report_header() -> str:
    return f"SECURECHAT_TEST_SCALE={SCALE:g} (deadlines and timeouts x{SCALE:g})"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def make_server(tmp_path: Path, certs: Certs) -> Iterator[MakeServer]:
    """Factory: ``make_server(heartbeat=0.2, ...)`` starts a server with those settings."""
    started: list[RunningServer] = []

    def factory(**overrides: Any) -> RunningServer:
        running = start_server(tmp_path, certs, **overrides)
        started.append(running)
        return running

    yield factory
    for running in started:
        stop_server(running)


@pytest.fixture(autouse=True)
def _default_data_dir(tmp_path_factory: pytest.TempPathFactory,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every server a test starts without --data-dir keeps its log in a fresh temporary
    directory, never in ./data of the checkout (SECURECHAT_DATA_DIR, which subprocesses
    inherit and clean_env keeps)."""
    monkeypatch.setenv("SECURECHAT_DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def server_log() -> Iterator[LogRecords]:
    """Capture the securechat logger at INFO (the production default)."""
    handler = LogRecords()
    root = logging.getLogger("securechat")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def server(make_server: MakeServer) -> RunningServer:
    """A server with default settings."""
    return make_server()
