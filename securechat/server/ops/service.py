"""The admin endpoint of one server: binds ``--admin-listen``, answers the three paths
and drives the readiness probes, on the admin thread (:mod:`.admin_http`)."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from ...errors import ConfigError
from ..logs import log_event
from .admin_http import AdminHTTP, Handler
from .config import AdminConfig
from .health import WriterCheck, stalled
from .view import ServerView

__all__ = ["AdminService"]

logger = logging.getLogger("securechat.server")

_TEXT = "text/plain; charset=utf-8"
METRICS_MISSING = ("--admin-listen needs prometheus_client for /metrics: "
                   "pip install 'securechat[metrics]'")


class AdminService:
    """Built with the server (a missing prometheus_client or token file is a
    ConfigError then), bound first in ``Server.start`` and started last."""

    def __init__(self, config: AdminConfig, view: ServerView, *,
                 tls: Callable[[], ssl.SSLContext] | None,
                 on_crash: Callable[[str, BaseException], None]) -> None:
        self.config = config
        self.view = view
        self._token = config.read_token()
        try:
            from . import metrics
        except ImportError as exc:
            raise ConfigError(METRICS_MISSING) from exc
        self._metrics: Any = metrics
        self._registry = metrics.make_registry(view)
        self._tls = tls if config.tls else None
        self._on_crash = on_crash
        self._http: AdminHTTP | None = None
        #: Tests only (SECURECHAT_TEST_FAULT=admin): raises in the admin loop.
        self.inject_fault: Callable[[], None] | None = None
        readiness = view.readiness
        readiness.add("listening", view.not_listening)
        readiness.add("shutdown", lambda: "shutting down" if view.stopping.is_set() else None)
        if view.writer is not None:
            store = WriterCheck(view.writer)
            readiness.add("store", store.check, store.probe)

    @property
    def address(self) -> tuple[str, int]:
        if self._http is None:
            raise RuntimeError("admin endpoint not bound")
        return self._http.address

    @property
    def thread(self) -> Any:
        return None if self._http is None else self._http.thread

    def bind(self) -> None:
        """Listen on the admin address (before the chat port: a bad address refuses
        the whole start, as a bad --port does)."""
        host, port = self.config.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family, backlog=64)
        except OSError as exc:
            raise ConfigError(f"cannot listen on admin address {self.config.listen}: "
                              f"{exc.strerror or exc}") from exc
        cfg = self.config
        routes: dict[str, Handler] = {"/metrics": self._get_metrics,
                                      "/healthz": self._get_health,
                                      "/readyz": self._get_ready}
        self._http = AdminHTTP(sock, routes=routes, token=self._token, tls=self._tls,
                               max_connections=cfg.max_connections, max_head=cfg.max_head,
                               header_timeout=cfg.header_timeout,
                               on_tick=self.view.readiness.run_probes,
                               on_crash=self._on_crash)

    def start(self) -> None:
        assert self._http is not None
        self._http._inject_fault = self.inject_fault
        self._http.start()
        host, port = self._http.address
        log_event(logger, logging.INFO, "admin_listen", host=host, port=port,
                  tls=bool(self._tls), token=self._token is not None)

    def stop(self, timeout: float) -> bool:
        if self._http is None:
            return True
        self._http.stop()
        return self._http.join(timeout)

    # ------------------------------------------------------------------ the paths
    def _get_metrics(self) -> tuple[int, bytes, str]:
        return 200, self._metrics.render(self._registry), self._metrics.CONTENT_TYPE_LATEST

    def _get_health(self) -> tuple[int, bytes, str]:
        view = self.view
        stall = self.config.health_stall
        turns = [(loop.name, loop.last_turn, stall) for loop in view.loops]
        turns.append(("securechat-accept", view.accept_turn(), stall + view.accept_sleep))
        problems = stalled(turns, time.monotonic())
        if problems:
            return 503, ("stuck: " + "; ".join(problems) + "\n").encode(), _TEXT
        return 200, b"ok\n", _TEXT

    def _get_ready(self) -> tuple[int, bytes, str]:
        problems = self.view.readiness.problems()
        if problems:
            return 503, ("not ready: " + "; ".join(problems) + "\n").encode(), _TEXT
        return 200, b"ready\n", _TEXT
