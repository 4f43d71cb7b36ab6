"""Log lines with fields: ``event=auth conn=12 peer=127.0.0.1:5555 user=alice`` as text,
or one JSON object per line with ``--log-format json``. Tokens are never logged."""

from __future__ import annotations

import json
import logging
import sys
from collections import OrderedDict
from typing import Any, TextIO

from ..protocol import rfc3339_utc

__all__ = ["JsonFormatter", "LogThrottle", "TextFormatter", "log_event", "log_suppressed",
           "setup_logging"]

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
    caller passes the clock (pure arithmetic, like :mod:`securechat.limits`) and
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
