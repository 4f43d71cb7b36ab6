"""Certificate rotation without downtime: a new --cert/--key pair (polled, SIGHUP or
``Server.reload_certificates``) serves new connections, live sessions keep theirs, and
a pair that does not load is logged once and the old one kept."""

from __future__ import annotations

import os
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support import (
    Certs,
    LogRecords,
    RunningServer,
    ServerProcesses,
    make_certs,
    publish,
    start_server,
    stop_server,
    tls_connect,
)

pytestmark = pytest.mark.timeout(60)
#: What a member passes over while it waits for someone's msg.
CHATTER = ("ping", "join", "leave")


@pytest.fixture
def own_certs(tmp_path: Path) -> Certs:
    """Certificates of this test only (the session-wide ones must never be rewritten)."""
    directory = tmp_path / "certs"
    directory.mkdir()
    return make_certs(directory)


@pytest.fixture
def running(tmp_path: Path, own_certs: Certs) -> Iterator[RunningServer]:
    server = start_server(tmp_path, own_certs)
    try:
        yield server
    finally:
        stop_server(server)


def new_pair() -> tuple[trustme.CA, trustme.LeafCert]:
    """A server certificate from a brand-new CA (nothing written yet)."""
    ca = trustme.CA()
    return ca, ca.issue_cert("localhost", "127.0.0.1", "::1")


def replace_file(path: Path, data: bytes) -> None:
    """Write beside ``path`` and rename over it, as certbot and securechat-certs do."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def install(certs: Certs, leaf: trustme.LeafCert, *, cert: bool = True, key: bool = True
            ) -> None:
    if cert:
        replace_file(certs.cert_path, b"".join(p.bytes() for p in leaf.cert_chain_pems))
    if key:
        replace_file(certs.key_path, leaf.private_key_pem.bytes())


def mid_install_failures(log: LogRecords, earlier: int = 0) -> list[str]:
    """Failure lines after the first ``earlier`` ones. install() renames the certificate
    before the key, so a poll can land between the two and see the new certificate with
    the old (or broken) key: that half-written pair is a change of its own and may be
    logged once, as operators see during a non-atomic renewal. More is a bug."""
    lines = [r.getMessage() for r in log.named("certs_reload_failed")][earlier:]
    assert len(lines) <= 1, lines
    assert all("keeping the previous certificate" in line for line in lines), lines
    return lines


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def served_der(port: int, ctx: ssl.SSLContext) -> bytes:
    """The certificate a new connection is served (DER), after a verified handshake."""
    wire = tls_connect(port, ctx)
    try:
        der = wire.sock.getpeercert(binary_form=True)
        assert der is not None
        return der
    finally:
        wire.close()


def der_of(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def old_der(certs: Certs) -> bytes:
    return ssl.PEM_cert_to_DER_cert(certs.cert_path.read_text())


def wait_polls(running: RunningServer, tag: str) -> None:
    """Wait until the accept thread has been through at least one full poll (tokens and
    certificates) after this call: two tokens reloads in a row, each seen by the server."""
    running.add_user(f"{tag}-1")
    running.add_user(f"{tag}-2")


def test_polled_rotation_serves_new_clients_and_keeps_live_sessions(
        running: RunningServer, own_certs: Certs, server_log: LogRecords) -> None:
    """A pair renamed over --cert/--key is picked up by the poll: a client trusting only
    the new CA gets the new certificate, sessions opened before keep chatting."""
    alice, _ = running.user("alice")
    bob, _ = running.user("bob")
    ca, leaf = new_pair()
    with pytest.raises(ssl.SSLCertVerificationError):
        served_der(running.port, trusting(ca))
    install(own_certs, leaf)
    running.add_user("carol")  # a tokens reload: the poll after it has run...
    wait_polls(running, "after")  # ...and certainly a certificate poll after the change
    reloaded = server_log.named("certs_reloaded")
    assert len(reloaded) == 1, server_log.events()
    fields = getattr(reloaded[0], "fields", {})
    assert fields.get("subject") and fields.get("not_after"), fields
    assert served_der(running.port, trusting(ca)) == der_of(leaf)
    assert running.server.ssl_context is running.server._admission.ssl_context
    # Clients that still trust only the old CA are now refused by their own check.
    with pytest.raises(ssl.SSLCertVerificationError):
        served_der(running.port, own_certs.client_context())
    # The sessions opened before the reload keep their TLS and exchange messages.
    publish(alice, ["after the rotation"])
    msg = bob.expect("msg", skip=CHATTER)
    assert msg["body"] == "after the rotation"
    publish(bob, ["still here"])
    assert alice.expect("msg", skip=CHATTER)["body"] == "still here"
    mid_install_failures(server_log)


def test_reload_certificates_forces_a_reload_of_unchanged_files(
        running: RunningServer, own_certs: Certs, server_log: LogRecords) -> None:
    """reload_certificates() reloads even when the poll saw nothing new, and says so."""
    assert running.server.reload_certificates() is True
    assert len(server_log.named("certs_reloaded")) == 1
    before = running.server.ssl_context
    assert running.server.reload_certificates() is True
    assert running.server.ssl_context is not before
    assert served_der(running.port, own_certs.client_context()) == old_der(own_certs)


BAD = ["mismatched key", "garbage certificate", "garbage key", "missing key"]


def break_pair(certs: Certs, how: str) -> None:
    if how == "mismatched key":  # half-written: the new certificate, still the old key
        install(certs, new_pair()[1], key=False)
    elif how == "garbage certificate":
        replace_file(certs.cert_path, b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    elif how == "garbage key":
        replace_file(certs.key_path, b"\x00\x01 not a key\n")
    else:
        certs.key_path.unlink()


@pytest.mark.parametrize("how", BAD)
def test_bad_pair_keeps_the_old_certificate_and_logs_once(
        running: RunningServer, own_certs: Certs, server_log: LogRecords, how: str) -> None:
    """A pair that does not load: one certs_reload_failed line however many polls see
    it, the old certificate still served; the next good pair is picked up."""
    before = old_der(own_certs)
    alice, _ = running.user("alice")
    break_pair(own_certs, how)
    running.add_user("carol")
    wait_polls(running, "after")
    failed = server_log.named("certs_reload_failed")
    assert len(failed) == 1, [r.getMessage() for r in failed]
    assert "keeping the previous certificate" in failed[0].getMessage()
    assert not server_log.named("certs_reloaded")
    assert served_der(running.port, own_certs.client_context()) == before
    # An explicit reload of the same bad pair fails, says so once, changes nothing.
    assert running.server.reload_certificates() is False
    assert len(server_log.named("certs_reload_failed")) == 2
    assert served_der(running.port, own_certs.client_context()) == before
    # The live session never noticed.
    publish(alice, ["unaffected"])
    # A later good pair (here: the matching key landing after its certificate) loads.
    ca, leaf = new_pair()
    install(own_certs, leaf)
    running.add_user("dave")
    wait_polls(running, "good")
    assert len(server_log.named("certs_reloaded")) == 1, server_log.events()
    assert served_der(running.port, trusting(ca)) == der_of(leaf)
    mid_install_failures(server_log, earlier=2)


def test_sighup_reloads_the_real_server(tmp_path: Path, own_certs: Certs) -> None:
    """SIGHUP to securechat-server: new connections get the new pair at once (the poll is
    an hour away), the session opened before keeps going, and the server stops cleanly."""
    procs = ServerProcesses(tmp_path, own_certs)
    try:
        token = procs.token("alice")
        proc = procs.start("--log-format", "json", "--tokens-poll", "3600")
        wire, _ = procs.login(proc, token)
        before = old_der(own_certs)
        ca, leaf = new_pair()
        install(own_certs, leaf)
        # Unchanged until the signal: no poll comes within an hour.
        assert served_der(proc.port, own_certs.client_context()) == before
        proc.proc.send_signal(signal.SIGHUP)
        record = proc.wait_event("certs_reloaded")
        assert record.get("not_after") and record.get("subject"), record
        assert served_der(proc.port, trusting(ca)) == der_of(leaf)
        assert publish(wire, ["across the reload"])[0]["id"] == 0
        assert not proc.events("certs_reload_failed")
        # A bad pair and another SIGHUP: one failure line, the new pair stays.
        replace_file(own_certs.key_path, b"garbage")
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_event("certs_reload_failed")
        assert served_der(proc.port, trusting(ca)) == der_of(leaf)
        assert len(proc.events("certs_reload_failed")) == 1
        wire.close()
        assert proc.stop() == 0
    finally:
        procs.close()



def test_a_bug_in_the_reload_keeps_the_old_certificate(
        running: RunningServer, own_certs: Certs, server_log: LogRecords) -> None:
    """An exception inside the reload is logged, the old context stays and the accept
    thread keeps accepting."""
    before = running.server.ssl_context
    running.server._set_test_fault("certs")
    assert running.server.reload_certificates() is False
    assert len(server_log.named("certs_reload_failed")) == 1
    assert running.server.ssl_context is before
    running.server._inject_fault = None
    assert served_der(running.port, own_certs.client_context()) == old_der(own_certs)
    assert not running.server.failed.is_set()
