"""Pure parts of the admin endpoint, without sockets: request heads, responses, the
bucket histograms, stall detection, the readiness checks, the address rule."""

from __future__ import annotations

import pytest

from securechat.errors import ConfigError
from securechat.metering import Histogram, LoopStats
from securechat.server.ops.config import parse_address
from securechat.server.ops.health import Readiness, stalled
from securechat.server.ops.httpwire import HeadError, find_head, parse_head, response


def test_find_head_waits_for_the_blank_line_and_caps_the_size() -> None:
    assert find_head(b"GET / HTTP/1.1\r\nHost: x\r\n", 100) == -1
    assert find_head(b"GET / HTTP/1.1\r\n\r\nrest", 100) == 18
    assert find_head(b"GET / HTTP/1.1\n\n", 100) == 16
    with pytest.raises(HeadError) as caught:
        find_head(b"G" * 101, 100)
    assert caught.value.status == 431


def test_parse_head_takes_method_path_and_headers() -> None:
    request = parse_head(b"HEAD /metrics?x=1 HTTP/1.1\r\nAuthorization: Bearer t\r\n"
                         b"X-A:  b \r\n\r\n")
    assert (request.method, request.path) == ("HEAD", "/metrics")
    assert request.headers == {"authorization": "Bearer t", "x-a": "b"}
    for bad in (b"GET /\r\n\r\n", b"GET metrics HTTP/1.1\r\n\r\n",
                b"GET / HTTP/2\r\n\r\n", b"G@T / HTTP/1.1\r\n\r\n",
                b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b"GET / HTTP/1.1\r\n: v\r\n\r\n"):
        with pytest.raises(HeadError) as caught:
            parse_head(bad)
        assert caught.value.status == 400, bad


def test_response_closes_and_head_keeps_the_length() -> None:
    full = response(200, b"ok\n")
    assert full.startswith(b"HTTP/1.1 200 OK\r\n") and full.endswith(b"\r\n\r\nok\n")
    assert b"Connection: close\r\n" in full and b"Content-Length: 3\r\n" in full
    head = response(200, b"ok\n", head_only=True)
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: 3\r\n" in head


def test_histogram_buckets_are_cumulative_and_merge() -> None:
    one = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        one.observe(value)
    assert one.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert one.count == 4 and one.total == pytest.approx(3.65)
    two = Histogram((0.1, 1.0))
    two.observe(0.2)
    both = Histogram.merged([one, two], (0.1, 1.0))
    assert both.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]


def test_loop_stats_count_errors_and_auth_failures_apart() -> None:
    stats = LoopStats()
    stats.error("rate_limited")
    stats.error("auth_failed", before_auth=True)
    assert stats.errors == {"rate_limited": 1, "auth_failed": 1}
    assert stats.auth_failures == {"auth_failed": 1}


def test_stalled_names_loops_past_their_allowance() -> None:
    turns = [("io-0", 100.0, 5.0), ("io-1", 90.0, 5.0), ("accept", 94.0, 5.5),
             ("io-2", 0.0, 5.0)]
    assert stalled(turns, 100.0) == ["io-1: no turn for 10.0 s", "accept: no turn for 6.0 s",
                                     "io-2: not running"]


def test_readiness_asks_every_check_and_a_raising_check_fails() -> None:
    ready = Readiness()
    assert ready.problems() == []
    probes: list[float] = []
    ready.add("a", lambda: None, probe=probes.append)
    ready.add("b", lambda: "down")

    def broken() -> str | None:
        raise RuntimeError("bug")

    ready.add("c", broken)
    assert ready.problems() == ["b: down", "c: check failed: RuntimeError: bug"]
    ready.run_probes(1.5)
    assert probes == [1.5]

    def raising_probe(now: float) -> None:
        raise RuntimeError("probe bug")

    ready.add("d", lambda: None, probe=raising_probe)
    ready.run_probes(2.0)  # logged, not raised: the admin thread goes on
    assert probes == [1.5, 2.0]
    ready.remove("d")
    ready.remove("b")
    ready.remove("c")
    assert ready.problems() == [] and ready.names() == ["a"]


def test_parse_address_forms() -> None:
    assert parse_address("127.0.0.1:9090") == ("127.0.0.1", 9090)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("9090", ":9090", "host:port", "h:70000"):
        with pytest.raises(ConfigError):
            parse_address(bad)
