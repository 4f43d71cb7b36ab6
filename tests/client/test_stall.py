"""A client whose process was frozen past the dead-link deadline reads what the server
sent meanwhile before it calls the link dead (found by bench/soak.py)."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

from securechat.client import Client, Disconnected, Event
from securechat.protocol import Message
from tests.client_support import CliProcess, cli_args, token_file
from tests.support import Certs, MakeServer, seconds

pytest_plugins = ["tests.client_support"]


def test_a_bye_that_arrived_while_the_client_was_frozen_is_read(make_server: MakeServer,
                                                               certs: Certs) -> None:
    """Frozen for 4 heartbeats while the server said bye: the client reports the bye."""
    heartbeat = seconds(0.5)
    running = make_server(heartbeat=heartbeat, shutdown_timeout=seconds(3))
    reasons: list[str] = []
    disconnected = threading.Event()
    stopper: list[threading.Thread] = []

    def on_event(event: Event) -> None:
        if isinstance(event, Message) and event.body == "freeze":
            stop = threading.Thread(target=running.server.shutdown)
            stopper.append(stop)
            stop.start()  # the server says bye while this I/O thread is stuck here
            stop.join(seconds(5))
            time.sleep(4 * heartbeat)  # the freeze itself: past 3 heartbeats of silence
        elif isinstance(event, Disconnected):
            reasons.append(event.reason)
            disconnected.set()

    frozen = Client("127.0.0.1", running.port, token=running.add_user("frozen"),
                    cafile=certs.ca_path, server_name="localhost", on_event=on_event,
                    max_events=0)
    sender = Client("127.0.0.1", running.port, token=running.add_user("sender"),
                    cafile=certs.ca_path, server_name="localhost")
    try:
        frozen.connect(seconds(5))
        sender.connect(seconds(5))
        sender.send("freeze").wait(seconds(5))
        assert disconnected.wait(seconds(10)), "the frozen client never reported the link"
        assert "shutting down" in reasons[0], reasons
        assert "heartbeat" not in reasons[0], reasons
    finally:
        frozen.close()
        sender.close()
        for thread in stopper:
            thread.join(seconds(5))


def test_a_client_process_stopped_past_the_deadline_reads_the_bye(
        make_server: MakeServer, certs: Certs, tmp_path: Path,
        procs: list[CliProcess]) -> None:
    """SIGSTOP (a laptop lid) for 4 heartbeats while the server said bye, then SIGCONT:
    the client reports the bye it finds in its socket, not a dead link."""
    heartbeat = seconds(0.5)
    running = make_server(heartbeat=heartbeat, shutdown_timeout=seconds(3))
    token = token_file(tmp_path, running)
    proc = CliProcess(*cli_args(running.port, certs.ca_path, "--token-file", str(token),
                                "--json", "--listen"))
    procs.append(proc)
    proc.read_until(lambda line: '"type": "connected"' in line, timeout=10)
    proc.proc.send_signal(signal.SIGSTOP)
    try:
        assert running.server.shutdown(), "the server could not flush its bye"
        time.sleep(4 * heartbeat)  # the freeze itself: past 3 heartbeats of silence
    finally:
        proc.proc.send_signal(signal.SIGCONT)
    line = proc.read_until(lambda line: '"type": "disconnected"' in line, timeout=10)
    reason = json.loads(line)["reason"]
    assert "shutting down" in reason and "heartbeat" not in reason, reason
