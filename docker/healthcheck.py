#!/usr/bin/env python3
"""Container healthcheck for the server: healthy once something listens on its port.

It reads /proc/net/tcp and /proc/net/tcp6 rather than connecting: a connection
every few seconds would fill the server's log with connect/close lines and count
against its per-address limits. The server listens only after its certificate,
key and tokens file have loaded, so listening means ready.
"""

from __future__ import annotations

import os
import sys

LISTEN = "0A"


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


if __name__ == "__main__":
    sys.exit(0 if listening(int(os.environ.get("SECURECHAT_PORT") or 7443)) else 1)
