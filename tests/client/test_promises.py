"""Client promises from README.md that no other test exercised: ``--quiet`` still says
why the client stopped, no ``--ca`` against a private CA exits 4, and
``Client.send`` is safe from several threads at once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from securechat import protocol
from securechat.cli import client as client_cli
from securechat.client import SendHandle
from tests.client_support import ClientPool, cli_args, cli_env, closed_port, next_of, run_cli
from tests.support import Certs, MakeServer, RunningServer, make_certs, seconds, wrong_token

pytest_plugins = ["tests.client_support"]

#: Lines --quiet hides: connection state changes.
STATE_WORDS = ("connected to", "reconnecting in", "disconnected:")


# --------------------------------------------------------------------------- --quiet
@pytest.mark.parametrize("case", ["auth_failed", "untrusted", "gave_up"])
def test_quiet_still_says_why_the_client_stopped(
        make_server: MakeServer, certs: Certs, tmp_path_factory: pytest.TempPathFactory,
        case: str) -> None:
    """--quiet hides connection changes but still says why the client stopped (3, 4, 5)."""
    running = make_server(auth_failures=0)
    token = running.add_user("alice")
    ca: Path = certs.ca_path
    port = running.port
    if case == "auth_failed":
        token = wrong_token(token)
        expected, reason = client_cli.EXIT_AUTH, "auth_failed: unknown or revoked token"
    elif case == "untrusted":
        ca = make_certs(tmp_path_factory.mktemp("other-ca")).ca_path
        expected, reason = client_cli.EXIT_TLS, "did not verify"
    else:
        port = closed_port()
        expected, reason = client_cli.EXIT_GAVE_UP, "gave up after 2 retries"
    done = run_cli(*cli_args(port, ca), "--max-retries", "2", "--quiet", "--send", "x",
                   env=cli_env(SECURECHAT_TOKEN=token))
    assert done.returncode == expected, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines, "--quiet printed nothing about why it stopped"
    assert any(reason in line for line in lines), lines
    assert all(line.startswith("securechat-client: ") for line in lines), lines
    assert not any(word in line for line in lines for word in STATE_WORDS), lines
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("mode", "stdin"), [
    ([], "hello\n"), (["--json"], "hello\n"), (["--listen"], ""),
    (["--say", "hi", "--every", "0"], ""),
])
def test_quiet_says_why_in_every_scripted_mode(make_server: MakeServer, certs: Certs,
                                               mode: list[str], stdin: str) -> None:
    """In every scripted mode, --quiet still prints why the token was refused; exit 3."""
    running = make_server(auth_failures=0)
    wrong = wrong_token(running.add_user("alice"))
    done = run_cli(*cli_args(running.port, certs.ca_path), "--quiet", *mode, stdin=stdin,
                   env=cli_env(SECURECHAT_TOKEN=wrong))
    assert done.returncode == client_cli.EXIT_AUTH, done.stderr
    assert done.stderr == "securechat-client: error: auth_failed: unknown or revoked token\n"


def test_quiet_is_silent_when_all_goes_well(server: RunningServer, certs: Certs) -> None:
    """The other half of the promise: a successful --quiet run prints nothing on stderr."""
    done = run_cli(*cli_args(server.port, certs.ca_path), "--quiet", "--send", "x",
                   env=cli_env(SECURECHAT_TOKEN=server.add_user("alice")))
    assert (done.returncode, done.stderr) == (0, "")


# --------------------------------------------------------------------------- no --ca
def test_no_ca_against_a_private_ca_exits_4(server: RunningServer) -> None:
    """No --ca: the system store rejects a private CA's certificate; exit 4, no retry."""
    env = cli_env(SECURECHAT_TOKEN=server.add_user("alice"))
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):  # the system store, nothing else
        env.pop(name, None)
    done = run_cli(*cli_args(server.port, None), "--send", "x", env=env)
    assert done.returncode == client_cli.EXIT_TLS, done.stderr
    assert "did not verify" in done.stderr and "--ca" in done.stderr
    assert "reconnecting" not in done.stderr
    assert server.server.stats().get("authenticated", 0) == 0


# --------------------------------------------------------------------------- Client.send
@pytest.mark.parametrize(("threads", "per_thread", "msg_rate"), [
    (8, 60, 0.0),  # no rate limit: as fast as the threads can go
    (4, 40, 50.0),  # the default rate limit: a third is refused and resent
])
def test_send_from_several_threads_at_once(make_server: MakeServer, clients: ClientPool,
                                           threads: int, per_thread: int,
                                           msg_rate: float) -> None:
    """send() from N threads at once: each acked once, delivered once, in thread order."""
    running = make_server(msg_rate=msg_rate)
    sender = clients.make(running.port, running.add_user("alice"))
    reader = clients.make(running.port, running.add_user("bob"))
    sender.wait_connected(seconds(5))
    reader.wait_connected(seconds(5))
    assert sender.wait_for_member("bob", seconds(5))
    start = threading.Barrier(threads)
    handles: list[list[SendHandle]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            start.wait(seconds(5))
            for i in range(per_thread):
                handles[t].append(sender.send(f"t{t}-{i}", wait=seconds(10)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,), name=f"test-sender-{t}")
               for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds(20))
    assert not any(worker.is_alive() for worker in workers), "a sender thread hung"
    assert not errors, errors
    seqs = [[h.wait(seconds(10)) for h in mine] for mine in handles]
    total = threads * per_thread
    flat = [s for per in seqs for s in per]
    assert sorted(flat) == list(range(1, total + 1)), "a seq was skipped or given twice"
    for per in seqs:
        assert per == sorted(per), "a thread's messages were numbered out of order"
    assert len({h.id for per in handles for h in per}) == total, "two messages share an id"
    got = [next_of(reader, protocol.Message, timeout=10) for _ in range(total)]
    assert sorted(m.seq for m in got) == sorted(flat)
    assert [m.seq for m in got] == sorted(m.seq for m in got)
    by_body = {m.body: m.seq for m in got}
    assert len(by_body) == total, "a message arrived twice"
    for t, mine in enumerate(handles):
        assert [by_body[f"t{t}-{i}"] for i in range(per_thread)] == seqs[t]
        assert [h.body for h in mine] == [f"t{t}-{i}" for i in range(per_thread)]
    stats = sender.stats()
    assert stats["acked"] == total and stats["resent"] == 0
    if msg_rate:
        assert stats["rate_limited"] > 0, "the rate limit was never reached"
    assert sender.drain(seconds(5))
