"""Log lines with fields: ``event=auth conn=12 peer=127.0.0.1:5555 user=alice`` as text,
or one JSON object per line with ``--log-format json``. Tokens are never logged."""

from __future__ import annotations

import json
import logging
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TextIO

from ..protocol import rfc3339_utc

__all__ = ["ConnectionLog", "JsonFormatter", "LogThrottle", "TextFormatter", "describe_error",
           "log_event", "log_suppressed", "setup_logging"]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def log_event(logger: logging.Logger, level: int, event: str, message: str = "", /,
              **fields: Any) -> None:
    """Log ``event`` with structured ``fields`` (skipped cheaply when the level is off)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"event": event, "fields": fields})


class LogThrottle:
    """At most ``burst`` log lines per ``window`` seconds per key; the rest are counted.

    A peer controls how often it makes us log (a bad frame, a connect, a wrong token),
    so without this one session could write 20,000 lines from 60 KB of input. The
    caller passes the clock (pure arithmetic, like :mod:`securechat.server.limits`) and
    reports what was held back as one "suppressed N similar" line: on the first line
    admitted after the window ends, or via :meth:`pop_suppressed` when the key is done
    (the connection closed). At most ``max_keys`` keys are kept, least recently
    used dropped first. Not thread-safe: callers hold their own lock.
    """

    __slots__ = ("_keys", "burst", "max_keys", "window")

    def __init__(self, burst: int, window: float, max_keys: int = 4096) -> None:
        self.burst = burst
        self.window = window
        self.max_keys = max_keys
        # key -> [window start, lines admitted in this window, lines suppressed]
        self._keys: OrderedDict[object, list[float]] = OrderedDict()

    def admit(self, key: object, now: float) -> int | None:
        """None: drop this line. Otherwise log it, and first report the returned count
        of lines suppressed before it if that is not 0."""
        slot = self._keys.get(key)
        if slot is None:
            self._keys[key] = [now, 1.0, 0.0]
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
            return 0
        self._keys.move_to_end(key)
        if now - slot[0] >= self.window:
            suppressed = int(slot[2])
            slot[0], slot[1], slot[2] = now, 1.0, 0.0
            return suppressed
        if slot[1] < self.burst:
            slot[1] += 1
            return 0
        slot[2] += 1
        return None

    def pop_suppressed(self, key: object) -> int:
        """Forget ``key``; the number of its lines suppressed and not yet reported."""
        slot = self._keys.pop(key, None)
        return 0 if slot is None else int(slot[2])

    def __len__(self) -> int:
        return len(self._keys)


def log_suppressed(logger: logging.Logger, count: int, /, **fields: Any) -> None:
    """The summary line for what a :class:`LogThrottle` held back."""
    if count:
        log_event(logger, logging.INFO, "suppressed", f"suppressed {count} similar",
                  count=count, **fields)


class ConnectionLog:
    """The log lines of one connection whose peer can cause them at will (connects,
    failed logins, errors), under a budget: per client address before auth, through
    ``shared`` (one throttle for the whole server), per connection after. Lines over
    it are counted and reported as one "suppressed N similar" line. ``fields`` (who)
    go on every line; :meth:`identify` adds the user once the token is known."""

    __slots__ = ("_logger", "_own", "_shared", "fields", "ip_key", "user")

    #: Error lines one authenticated session may cause per window; the rest are counted.
    BURST = 5
    WINDOW = 10.0

    def __init__(self, logger: logging.Logger, shared: Callable[[str, float], int | None],
                 ip_key: str, fields: dict[str, Any]) -> None:
        self._logger = logger
        self._shared = shared
        self.ip_key = ip_key
        self.fields = fields
        self.user = ""
        self._own: LogThrottle | None = None  # made on the first throttled line

    def identify(self, user: str, fields: dict[str, Any]) -> None:
        """The token is known: from now on lines carry ``fields`` and the budget is
        this connection's own."""
        self.user = user
        self.fields = fields

    def __call__(self, level: int, event: str, message: str = "", /, *, once: bool = False,
                 **fields: Any) -> None:
        """Log ``event`` under the budget; ``once`` lines (one per connection, such as
        its close) skip the per-connection budget but not the per-address one."""
        logger = self._logger
        if not logger.isEnabledFor(level):
            return
        now = time.monotonic()
        if not self.user:
            suppressed = self._shared(self.ip_key, now)
            if suppressed is None:
                return
            if suppressed:
                log_suppressed(logger, suppressed, ip=self.ip_key)
        elif not once:
            throttle = self._own
            if throttle is None:
                throttle = self._own = LogThrottle(self.BURST, self.WINDOW)
            suppressed = throttle.admit(None, now)
            if suppressed is None:
                return
            if suppressed:
                log_suppressed(logger, suppressed, **self.fields)
        log_event(logger, level, event, message, **fields, **self.fields)

    def flush_suppressed(self) -> None:
        """The connection is closing: report what its own budget still holds back."""
        if self._own is not None:
            log_suppressed(self._logger, self._own.pop_suppressed(None), **self.fields)


def describe_error(exc: BaseException) -> str:
    """A short ``detail=`` for a TLS or socket error (the reason, not a traceback)."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return exc.__class__.__name__


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class TextFormatter(logging.Formatter):
    """``2026-11-26T11:35:06.123Z info event=join conn=3 user=alice - message``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [rfc3339_utc(record.created), record.levelname.lower()]
        event = getattr(record, "event", None)
        if event:
            parts.append(f"event={event}")
        for key, value in _fields(record).items():
            if value is None:
                continue
            text = str(value)
            if not text or any(c.isspace() or c in '"=' for c in text):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        message = record.getMessage()
        if message:
            parts.append(f"- {message}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {"ts": rfc3339_utc(record.created),
                               "level": record.levelname.lower(), "logger": record.name}
        event = getattr(record, "event", None)
        if event:
            obj["event"] = event
        obj.update({k: v for k, v in _fields(record).items() if v is not None})
        message = record.getMessage()
        if message:
            obj["msg"] = message
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the ``securechat`` logger tree (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("securechat")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    root.propagate = False
    # Our lines carry their own context; finding the caller's file and line for every
    # record (a stack walk) was ~4 % of the server's CPU in a connection storm.
    logging._srcfile = None  # documented in the logging HOWTO (Optimization)
