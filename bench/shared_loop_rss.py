#!/usr/bin/env python3
"""The reconnect storm of ``bench/reconnect_storm.py`` with every client on ONE shared loop.

Runs the same server subprocess, scenarios, figures and output as
``reconnect_storm.py`` (RSS per client, time until all are back, attempts and their
peaks), choosing the client implementation:

- ``--impl shared`` (default): :class:`securechat.client_next.Client` objects that all
  run on one :class:`securechat.clientloop.ClientLoop` (one I/O thread);
- ``--impl private``: ``client_next.Client`` with its own loop thread each;
- ``--impl thread``: today's :class:`securechat.client.Client` (one thread each),
  i.e. plain ``reconnect_storm.py``.

    python bench/shared_loop_rss.py --clients 500 --scenario crash
    python bench/shared_loop_rss.py --impl thread --clients 500 --scenario crash

Every other flag is ``reconnect_storm.py``'s. It swaps the storm's client factory
instead of copying the script: once ``client_next`` has replaced ``client.py``,
``reconnect_storm.py`` itself connects on one shared loop (``connect_all`` creates a
``ClientLoop``, passes ``loop=`` to every client, and ``close_clients`` closes the
loop instead of joining one thread per client) and this file can go.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reconnect_storm  # a sibling script, not a package

from securechat import client_next
from securechat.backoff import BackoffPolicy
from securechat.clientloop import ClientLoop
from securechat.tlsconfig import client_context


class SharedStorm(reconnect_storm.Storm):
    """The storm, with client_next clients; on one ClientLoop unless ``private``."""

    private = False

    def connect_all(self, tokens: list[str]) -> float:
        policy = BackoffPolicy(base=self.args.base, cap=self.args.cap)
        context = client_context(self.work / "certs/ca.pem")  # one for all: less memory
        self.recorder = reconnect_storm.Recorder()
        self.loop: ClientLoop | None = None if self.private else ClientLoop("storm-loop")
        clients: list[client_next.Client] = []
        started = time.monotonic()
        for i, token in enumerate(tokens):
            client = client_next.Client(
                "127.0.0.1", self.port, token=token, ssl_context=context, backoff=policy,
                max_events=0, on_event=self.recorder.callback(i), close_timeout=1.0,
                name=f"securechat-client-io-{i}", loop=self.loop)
            clients.append(client)
            client.start()
        for client in clients:
            client.wait_connected(self.left())
        self.clients = clients  # type: ignore[assignment]
        return time.monotonic() - started

    def close_clients(self) -> None:
        clients: list[client_next.Client] = self.clients  # type: ignore[assignment]
        for client in clients:
            client.close(timeout=0)  # ask all at once
        if self.loop is not None:
            self.loop.close(5.0)
            self.loop = None
        for client in clients:
            client.thread.join(5.0)
        self.clients = []


class PrivateStorm(SharedStorm):
    private = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--impl", choices=("shared", "private", "thread"), default="shared")
    args, rest = parser.parse_known_args(argv)
    if args.impl != "thread":
        # The storm's recorder tells events apart by class: use client_next's.
        reconnect_storm.Storm = PrivateStorm if args.impl == "private" else SharedStorm  # type: ignore[misc]
        for name in ("Connecting", "Connected", "Disconnected"):
            setattr(reconnect_storm, name, getattr(client_next, name))
    print(f"shared_loop_rss: client implementation {args.impl}", file=sys.stderr)
    return reconnect_storm.main(rest)


if __name__ == "__main__":
    sys.exit(main())
