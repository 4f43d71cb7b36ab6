"""``securechat-server status``: a short table from a running server's admin endpoint.

Reads ``/metrics`` twice, ``--interval`` seconds apart (for the message rates), and
``/readyz``. Exit status: 0 ready, 1 answering but not ready (the reason is printed),
2 usage error, 3 unreachable or not answering like a securechat admin endpoint
(refused, timed out, 401, no metrics).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..io.tls import client_context

__all__ = ["EXIT_NOT_READY", "EXIT_READY", "EXIT_UNREACHABLE", "main"]

EXIT_READY, EXIT_NOT_READY, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_ADMIN = "http://127.0.0.1:9090"
TIMEOUT = 5.0


class Unreachable(Exception):
    """No usable answer from the admin endpoint (the message says why)."""


@dataclass(frozen=True)
class Scrape:
    at: float
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {dict(key)[label]: v for (n, key), v in self.samples.items()
                if n == name and label in dict(key)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securechat-server status",
        description="Print uptime, connections, rooms, message rates, queued bytes and "
                    "readiness of a running server, read from its admin endpoint.",
        epilog="exit status: 0 ready, 1 not ready, 2 usage error, 3 unreachable "
               "(or 401, or not a securechat admin endpoint)")
    parser.add_argument("--admin", metavar="URL", default=None,
                        help="the admin endpoint (default: SECURECHAT_ADMIN_URL, else "
                             "http:// + SECURECHAT_ADMIN_LISTEN, else " + DEFAULT_ADMIN + ")")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="bearer token for an endpoint that wants one (default: "
                             "SECURECHAT_ADMIN_TOKEN_FILE)")
    parser.add_argument("--ca", type=Path, default=None,
                        help="CA file to verify an https endpoint (default: SECURECHAT_CA, "
                             "else the system's)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between the two scrapes for rates (default: 1)")
    return parser


def _default_url(env: dict[str, str]) -> str:
    if env.get("SECURECHAT_ADMIN_URL"):
        return env["SECURECHAT_ADMIN_URL"]
    listen = env.get("SECURECHAT_ADMIN_LISTEN")
    if listen:
        scheme = "https" if env.get("SECURECHAT_ADMIN_TLS", "").lower() in (
            "1", "true", "yes", "on") else "http"
        return f"{scheme}://{listen}"
    return DEFAULT_ADMIN


class Endpoint:
    def __init__(self, url: str, token: str | None, context: ssl.SSLContext | None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.context = context

    def get(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path)
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT,
                                        context=self.context) as answer:
                return int(answer.status), answer.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            if exc.code == 401:
                raise Unreachable(f"{self.url}{path}: 401 unauthorized (wrong or missing "
                                  "--token-file)") from exc
            return int(exc.code), body
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach {self.url}{path}: {reason}") from exc

    def scrape(self) -> Scrape:
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.get("/metrics")
        if status != 200:
            raise Unreachable(f"{self.url}/metrics answered {status}")
        samples = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        except ValueError as exc:
            raise Unreachable(f"{self.url}/metrics: not Prometheus text: {exc}") from exc
        if ("securechat_uptime_seconds", ()) not in samples:
            raise Unreachable(f"{self.url}/metrics: not a securechat server's metrics")
        return Scrape(time.monotonic(), samples)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def table(first: Scrape, second: Scrape, ready: tuple[int, str]) -> list[str]:
    """The lines printed: one ``name  value`` row each."""
    span = max(second.at - first.at, 1e-6)
    states = second.by_label("securechat_connections", "state")
    total = int(sum(states.values()))
    detail = ", ".join(f"{s} {int(states.get(s, 0))}" for s in
                       ("active", "auth", "handshake", "closing"))
    rate_in = (second.value("securechat_messages_in_total")
               - first.value("securechat_messages_in_total")) / span
    rate_out = (second.value("securechat_deliveries_total")
                - first.value("securechat_deliveries_total")) / span
    status, body = ready
    readiness = "yes" if status == 200 else f"no ({status}): {body.strip()}"
    rows = [("uptime", _duration(second.value("securechat_uptime_seconds"))),
            ("connections", f"{total} ({detail})"),
            ("rooms", f"{int(second.value('securechat_rooms'))}"),
            ("msgs/s", f"{rate_in:.1f} in, {rate_out:.1f} delivered"),
            ("queue bytes", f"{int(second.value('securechat_queued_bytes'))}"),
            ("ready", readiness)]
    return [f"{name:<12} {value}" for name, value in rows]


def main(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    env = dict(os.environ) if env is None else env
    if args.interval < 0:
        parser.error("--interval must not be negative")
    try:
        import prometheus_client  # noqa: F401  (the parser for /metrics)
    except ImportError:
        print("securechat-server status: error: needs prometheus_client: "
              "pip install 'securechat[metrics]'", file=sys.stderr)
        return EXIT_USAGE
    url = args.admin or _default_url(env)
    token_file = args.token_file or (Path(env["SECURECHAT_ADMIN_TOKEN_FILE"])
                                     if env.get("SECURECHAT_ADMIN_TOKEN_FILE") else None)
    try:
        token = token_file.read_text(encoding="utf-8").strip() if token_file else None
    except OSError as exc:
        print(f"securechat-server status: error: --token-file {token_file}: {exc.strerror}",
              file=sys.stderr)
        return EXIT_USAGE
    context = None
    if url.startswith("https://"):
        ca = args.ca or (Path(env["SECURECHAT_CA"]) if env.get("SECURECHAT_CA") else None)
        try:
            context = client_context(ca)
        except ConfigError as exc:
            print(f"securechat-server status: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    endpoint = Endpoint(url, token, context)
    try:
        first = endpoint.scrape()
        threading.Event().wait(args.interval)  # the gap the rates are measured over
        second = endpoint.scrape()
        ready = endpoint.get("/readyz")
    except Unreachable as exc:
        print(f"securechat-server status: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"securechat server at {url}")
    for line in table(first, second, ready):
        print("  " + line)
    return EXIT_READY if ready[0] == 200 else EXIT_NOT_READY


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
