"""The server's TLS configuration against Mozilla's profiles, as sslyze checks them.

Test certificates are made by trustme (long-lived, subjectAltName marked critical),
so the two certificate findings are expected here; tests/cli/test_certs.py checks the
certificates securechat-certs makes. Everything else must be clean."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from tests.support import MakeServer, RunningServer, run_command

TEST_CERT_FINDINGS = {"certificate_path_validation", "maximum_certificate_lifespan"}

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("sslyze") is None,
                       reason="sslyze is not installed (pip install -e '.[dev]')"),
    pytest.mark.timeout(120),
]


def sslyze_findings(server: RunningServer, profile: str) -> set[str]:
    result = run_command(
        [sys.executable, "-W", "ignore", "-m", "sslyze", f"--mozilla_config={profile}",
         f"{server.host}:{server.port}"], timeout=100)
    text = result.stdout
    assert "COMPLIANCE AGAINST" in text, text[-2000:] + result.stderr[-2000:]
    compliance = text.split("COMPLIANCE AGAINST", 1)[1]
    return set(re.findall(r"^\s+\* (\w+):", compliance, re.M))


def test_default_configuration_is_mozilla_modern(server: RunningServer) -> None:
    """TLS 1.3 only, its three AEAD suites, groups X25519/P-256/P-384, no compression."""
    assert sslyze_findings(server, "modern") <= TEST_CERT_FINDINGS


def test_tls12_configuration_is_mozilla_intermediate(make_server: MakeServer) -> None:
    """--tls-min 1.2 adds only forward-secret AEAD TLS 1.2 suites."""
    server = make_server(tls_min="1.2")
    assert sslyze_findings(server, "intermediate") <= TEST_CERT_FINDINGS
