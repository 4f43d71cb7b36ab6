"""``/metrics``: Prometheus text that prometheus_client's own parser reads, whose
counters follow real traffic over real TLS (messages, deliveries, bytes, logins,
errors by code, a slow consumer cut), and none of which costs a prometheus_client
call per message."""

from __future__ import annotations

import time

from securechat.server.ops.config import AdminConfig
from tests.ops.admin_support import AdminServer, admin_address, scrape, value
from tests.support import publish, seconds, wait_for, wrong_token


def test_metrics_parse_and_name_every_family(admin_server: AdminServer) -> None:
    """Every family the docs list is there, prefixed securechat_, plus process_*."""
    running = admin_server()
    names = {name for name, _ in scrape(admin_address(running))}
    for family in ("securechat_uptime_seconds", "securechat_connections",
                   "securechat_auth_ok_total", "securechat_messages_in_total",
                   "securechat_deliveries_total", "securechat_bytes_in_total",
                   "securechat_bytes_out_total", "securechat_slow_consumer_cuts_total",
                   "securechat_queued_bytes", "securechat_rooms",
                   "securechat_handshake_seconds_bucket", "securechat_publish_ack_seconds_count",
                   "securechat_store_errors_total", "securechat_store_refusals_total",
                   "securechat_store_write_seconds_bucket", "securechat_ready",
                   "process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert family in names, family
    assert all(n.startswith(("securechat_", "process_")) for n in names), names


def test_counters_follow_messages_deliveries_bytes_and_logins(
        admin_server: AdminServer) -> None:
    """Two members, one publishes 70: 70 in, 70 delivered (not to the sender), bytes
    both ways, two logins, connections active, handshakes and store writes timed,
    and at least one publish-to-ack time sampled (1 in 64)."""
    running = admin_server()
    address = admin_address(running)
    before = scrape(address)
    alice, _ = running.user("alice")
    bob, _ = running.user("bob")
    alice.expect("join")
    acks = publish(alice, [f"hello {i}" for i in range(70)])
    assert len(acks) == 70
    got = [bob.expect("msg")["body"] for _ in range(70)]
    assert got[-1] == "hello 69"
    after = scrape(address)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("securechat_messages_in_total") == 70
    assert moved("securechat_deliveries_total") == 70
    assert moved("securechat_auth_ok_total") == 2
    assert moved("securechat_bytes_in_total") > 70 * len('{"type":"msg","body":"hello 0"}')
    assert moved("securechat_bytes_out_total") > 140 * len('{"type":"ack"}')
    assert value(after, "securechat_connections", state="active") == 2
    assert moved("securechat_handshake_seconds_count") == 2
    assert moved("securechat_store_write_seconds_count") >= 1
    assert moved("securechat_publish_ack_seconds_count") >= 1
    assert value(after, "securechat_rooms") == 1


def test_auth_failures_by_reason_and_errors_by_code(admin_server: AdminServer) -> None:
    """A wrong token counts as auth failure "auth_failed" (and an error sent with that
    code); an unknown frame type after login as error "unknown_type", not as an auth
    failure."""
    running = admin_server()
    address = admin_address(running)
    token = running.add_user("alice")
    wire = running.tls_connect()
    wire.send({"type": "auth", "token": wrong_token(token)})
    assert wire.expect("error")["code"] == "auth_failed"
    wire.expect_closed()
    alice, _ = running.login(token)
    alice.send({"type": "no-such-frame"})
    assert alice.expect("error")["code"] == "unknown_type"
    samples = scrape(address)
    assert value(samples, "securechat_auth_failures_total", reason="auth_failed") == 1
    assert value(samples, "securechat_errors_sent_total", code="auth_failed") == 1
    assert value(samples, "securechat_errors_sent_total", code="unknown_type") == 1
    assert value(samples, "securechat_auth_failures_total", reason="unknown_type") == 0
    assert value(samples, "securechat_auth_ok_total") == 1


def test_a_slow_consumer_cut_is_counted(admin_server: AdminServer) -> None:
    """A member that never reads is cut at --max-pending: slow_consumer_cuts_total 1,
    errors_sent{code=slow_consumer} 1; queued bytes back to 0 once it is gone."""
    running = admin_server(max_pending=64 * 1024, write_timeout=60)
    address = admin_address(running)
    stalled, _ = running.login(running.add_user("stalled"), rcvbuf=4096)
    pub, _ = running.user("pub")
    body = "x" * 4000
    deadline = time.monotonic() + seconds(30)
    sent = 0
    while value(scrape(address), "securechat_slow_consumer_cuts_total") < 1:
        assert time.monotonic() < deadline, "the stalled member was never cut"
        publish(pub, [body] * 20, list(range(sent, sent + 20)))
        sent += 20
    samples = scrape(address)
    assert value(samples, "securechat_errors_sent_total", code="slow_consumer") == 1
    assert value(samples, "securechat_slow_consumer_cuts_total") == 1
    stalled.close()
    wait_for(lambda: value(scrape(address), "securechat_connections", state="active") == 1,
             what="the cut member to be gone")
    assert value(scrape(address), "securechat_queued_bytes") == 0


def test_the_memory_store_has_no_store_check_and_empty_store_metrics(
        admin_server: AdminServer) -> None:
    """--store memory: always writable, no writer to time: store_errors 0, /readyz on."""
    running = admin_server(admin=AdminConfig(listen="127.0.0.1:0"), store="memory")
    alice, _ = running.user("alice")
    publish(alice, ["one"])
    samples = scrape(admin_address(running))
    assert value(samples, "securechat_store_write_seconds_count") == 0
    assert value(samples, "securechat_messages_in_total") == 1
    assert value(samples, "securechat_ready") == 1
    assert "store" not in running.server.readiness.names()
