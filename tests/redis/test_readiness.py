"""/readyz on a Redis node: not ready while Redis is down, ready again once it is back
(the "redis" check asks the log's health: the publish path and the subscription)."""

from __future__ import annotations

import pytest

from securechat.server.ops.config import AdminConfig
from tests.ops.admin_support import AdminServer, admin_address, admin_server, request
from tests.redis_support import RedisServer
from tests.support import publish, wait_for

__all__ = ["admin_server"]

pytestmark = pytest.mark.timeout(30)


def ready(running: object) -> tuple[int, str]:
    status, _, body = request(admin_address(running), "/readyz")  # type: ignore[arg-type]
    return status, body.decode()


def test_readyz_follows_redis_down_and_back(admin_server: AdminServer,
                                            redis: RedisServer) -> None:
    running = admin_server(admin=AdminConfig(listen="127.0.0.1:0"), store=redis.url)
    wait_for(lambda: ready(running)[0] == 200, what="/readyz to be ready")
    redis.kill()
    wait_for(lambda: ready(running)[0] == 503, what="/readyz to see Redis gone")
    status, body = ready(running)
    assert status == 503
    assert "redis" in body and "Redis" in body, body
    redis.start()
    wait_for(lambda: ready(running)[0] == 200, what="/readyz to be ready again")


def test_readyz_fails_when_the_self_test_message_stops_coming_back(
        admin_server: AdminServer, redis: RedisServer) -> None:
    """Redis up and every connection open, but nothing gets through (CLIENT PAUSE): only
    the self-test can tell, and /readyz says so; once Redis serves again, ready."""
    running = admin_server(admin=AdminConfig(listen="127.0.0.1:0"), store=redis.url)
    wait_for(lambda: ready(running)[0] == 200, what="/readyz to be ready")
    pause_ms = 6000
    redis.client().client_pause(pause_ms)
    wait_for(lambda: ready(running)[0] == 503, timeout=5, what="/readyz to fail the self-test")
    assert "self-test" in ready(running)[1]
    wait_for(lambda: ready(running)[0] == 200, timeout=15, what="/readyz to be ready again")


def test_metrics_count_redis_round_trips_and_publishes(admin_server: AdminServer,
                                                       redis: RedisServer) -> None:
    """/metrics on a Redis node: publishes Redis answered, and the pipelines that carried
    them (at most one per publish)."""
    from prometheus_client.parser import text_string_to_metric_families

    running = admin_server(admin=AdminConfig(listen="127.0.0.1:0"), store=redis.url)
    alice, _ = running.login(running.add_user("alice"))
    publish(alice, [f"m{i}" for i in range(20)])

    def counters() -> dict[str, float]:
        _, _, body = request(admin_address(running), "/metrics")
        return {s.name: s.value for f in text_string_to_metric_families(body.decode())
                for s in f.samples}

    found = counters()
    assert found["securechat_redis_published_total"] >= 20, found
    assert 1 <= found["securechat_redis_round_trips_total"] <= 20, found
    assert found["securechat_redis_subscriptions_total"] == 1
    # The first refresh runs as soon as the subscription is made.
    wait_for(lambda: counters()["securechat_redis_presence_refreshes_total"] >= 1,
             what="the first presence refresh")
