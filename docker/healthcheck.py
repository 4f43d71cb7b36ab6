#!/usr/bin/env python3
"""Container healthcheck for the server: healthy once its admin endpoint's /readyz
answers 200 (listening, not shutting down, the message log writable).

With SECURECHAT_ADMIN_LISTEN set (compose sets 127.0.0.1:9090) it asks /readyz over
loopback: the admin endpoint logs nothing per request and does not count against the
chat port's per-address limits. Without it, it falls back to what it did before the
admin endpoint existed: reading /proc/net/tcp{,6} for a listener on SECURECHAT_PORT
(no connection, so no connect/close lines in the log). Standard library only.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

LISTEN = "0A"
TIMEOUT = 1.5


def ready(listen: str) -> bool:
    """True if http://LISTEN/readyz answers 200 (503 or no answer: not ready)."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=TIMEOUT) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return False


def listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def main() -> int:
    admin = os.environ.get("SECURECHAT_ADMIN_LISTEN")
    if admin:
        return 0 if ready(admin) else 1
    return 0 if listening(int(os.environ.get("SECURECHAT_PORT") or 7443)) else 1


if __name__ == "__main__":
    sys.exit(main())
