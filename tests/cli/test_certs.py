"""securechat-certs: what the certificates contain, how files are written, and that the
server reports a missing, unreadable, expired or mismatched certificate/key plainly."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from securechat.cli import certs as certs_cli
from securechat.devcerts import (
    CA_CERT,
    CA_KEY,
    DEFAULT_NAMES,
    SERVER_CERT,
    SERVER_KEY,
    Issued,
    generate,
    make_ca,
    make_server_cert,
    parse_names,
    write_file,
)
from securechat.errors import ConfigError
from securechat.io.tls import check_certificate, client_context, server_context
from securechat.server import Server
from securechat.server.config import ServerConfig
from securechat.server.tokens import add_token
from tests.support import run_command, run_server_cli, seconds

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


@pytest.fixture(scope="module")
def leaf(ca: Issued) -> Issued:
    return make_server_cert(ca, DEFAULT_NAMES)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A directory populated by the generator with its defaults."""
    generate(tmp_path, DEFAULT_NAMES)
    return tmp_path


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[
        x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> str:
    """A full TLS handshake in memory (no sockets, no threads); returns the version."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, obj in (("c", cli), ("s", srv)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return str(cli.version())
    raise AssertionError("handshake did not finish")


# ---------------------------------------------------------------------- contents
def test_server_certificate_profile(ca: Issued, leaf: Issued) -> None:
    """ECDSA P-256, SHA-256, 90 days at most, serverAuth, not a CA."""
    cert = leaf.cert
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=90)
    assert cert.not_valid_before_utc <= NOW <= cert.not_valid_after_utc
    assert cert.issuer == ca.cert.subject
    basic = _ext(cert, x509.BasicConstraints)
    assert basic.critical and isinstance(basic.value, x509.BasicConstraints)
    assert not basic.value.ca
    eku = _ext(cert, x509.ExtendedKeyUsage).value
    assert isinstance(eku, x509.ExtendedKeyUsage)
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = _ext(cert, x509.KeyUsage).value
    assert isinstance(usage, x509.KeyUsage)
    assert usage.digital_signature and not usage.key_cert_sign
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    ski = _ext(ca.cert, x509.SubjectKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.digest


def test_subject_alt_name_not_critical_with_typed_entries(leaf: Issued) -> None:
    """Addresses are IPAddress entries (clients match IPs only against those); the SAN
    is not critical, which sslyze's path validation insists on."""
    san = _ext(leaf.cert, x509.SubjectAlternativeName)
    assert not san.critical
    value = san.value
    assert isinstance(value, x509.SubjectAlternativeName)
    assert value.get_values_for_type(x509.DNSName) == ["localhost", "securechat"]
    assert [str(ip) for ip in value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


def test_ca_profile(ca: Issued) -> None:
    """A CA that can sign server certificates and nothing below them."""
    basic = _ext(ca.cert, x509.BasicConstraints)
    assert basic.critical and isinstance(basic.value, x509.BasicConstraints)
    assert basic.value.ca and basic.value.path_length == 0
    usage = _ext(ca.cert, x509.KeyUsage)
    assert usage.critical and isinstance(usage.value, x509.KeyUsage)
    assert usage.value.key_cert_sign
    assert ca.cert.not_valid_after_utc - NOW > dt.timedelta(days=365 * 9)


@pytest.mark.parametrize("days", [0, 91, 365])
def test_server_validity_is_capped(ca: Issued, days: int) -> None:
    """More than 90 days (or none) is refused, not silently clamped."""
    with pytest.raises(ValueError, match="1 to 90 days"):
        make_server_cert(ca, ["localhost"], days=days)


def test_server_cert_cannot_outlive_ca() -> None:
    """A leaf that would outlive its CA is refused (clients would reject it midway)."""
    short = make_ca(days=30)
    with pytest.raises(ValueError, match="make a new CA"):
        make_server_cert(short, ["localhost"], days=90)


def test_parse_names() -> None:
    """IPs (also bracketed IPv6) become IPAddress entries, names are lower-cased, repeats go."""
    entries = parse_names(["Chat.Example.ORG", "[::1]", "10.1.2.3", "chat.example.org", "a-b"])
    assert [type(e).__name__ for e in entries] == ["DNSName", "IPAddress", "IPAddress",
                                                   "DNSName"]
    assert entries[0].value == "chat.example.org"


@pytest.mark.parametrize("bad", ["", "-x", "under_score", "sp ace", "é.example", "a..b"])
def test_parse_names_rejects(bad: str) -> None:
    """Anything neither an IP nor a valid host name is refused with a clear message."""
    with pytest.raises(ValueError, match="neither an IP address nor a host name"):
        parse_names([bad])


@pytest.mark.parametrize("hostname", ["localhost", "securechat", "127.0.0.1", "::1"])
def test_handshake_with_generated_certificates(out: Path, hostname: str) -> None:
    """The server's own context loads the files, and a verifying client (strict X.509
    checks on, as Python 3.13 makes the default) accepts them for every default name."""
    server = server_context(out / SERVER_CERT, out / SERVER_KEY)
    client = client_context(out / CA_CERT)
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    assert _handshake(server, client, hostname) == "TLSv1.3"


def test_handshake_refused_for_other_name(out: Path) -> None:
    """A client asking for a name not in the certificate refuses it."""
    server = server_context(out / SERVER_CERT, out / SERVER_KEY)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(server, client_context(out / CA_CERT), "example.org")


# ---------------------------------------------------------------------- files
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_modes(out: Path) -> None:
    """Keys 0600, certificates 0644, and no temporary file left behind."""
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY])
    assert _mode(out / CA_KEY) == 0o600
    assert _mode(out / SERVER_KEY) == 0o600
    assert _mode(out / CA_CERT) == 0o644
    assert _mode(out / SERVER_CERT) == 0o644


def test_key_mode_does_not_depend_on_umask(tmp_path: Path) -> None:
    """The mode is given at creation, so even umask 0 cannot make a key world-readable."""
    old = os.umask(0)
    try:
        write_file(tmp_path / "k", b"secret", mode=0o600)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k") == 0o600


def test_write_file_never_replaces_without_force(tmp_path: Path) -> None:
    """An existing file is kept unless force; with force it is replaced."""
    target = tmp_path / "k"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_file(target, b"new", mode=0o600)
    assert target.read_bytes() == b"old"
    write_file(target, b"new", mode=0o600, force=True)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_refuses_to_overwrite(out: Path) -> None:
    """Without force nothing is touched and the message says what to do."""
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="already exist; use --force"):
        generate(out, DEFAULT_NAMES)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_force_renews_server_certificate_with_same_ca(out: Path) -> None:
    """Renewal keeps the CA, so clients holding ca.pem need nothing new."""
    ca_before = (out / CA_CERT).read_bytes()
    key_before = (out / SERVER_KEY).read_bytes()
    outcome = generate(out, DEFAULT_NAMES, force=True)
    assert not outcome.new_ca
    assert outcome.written == [out / SERVER_CERT, out / SERVER_KEY]
    assert (out / CA_CERT).read_bytes() == ca_before
    assert (out / SERVER_KEY).read_bytes() != key_before
    _handshake(server_context(out / SERVER_CERT, out / SERVER_KEY),
               client_context(out / CA_CERT), "localhost")


def test_new_ca_needs_force(out: Path) -> None:
    """Replacing the CA needs --new-ca and --force, and then makes a new one."""
    ca_before = (out / CA_CERT).read_bytes()
    with pytest.raises(ConfigError, match="--new-ca --force"):
        generate(out, DEFAULT_NAMES, new_ca=True)
    outcome = generate(out, DEFAULT_NAMES, new_ca=True, force=True)
    assert outcome.new_ca
    assert (out / CA_CERT).read_bytes() != ca_before


def test_half_a_ca_is_not_reused(out: Path) -> None:
    """A CA certificate without its key cannot sign: say so instead of guessing."""
    (out / CA_KEY).unlink()
    with pytest.raises(ConfigError, match=r"ca\.pem already exists; use --force"):
        generate(out, DEFAULT_NAMES, force=False)


def test_if_missing_keeps_valid_files(out: Path) -> None:
    """--if-missing with valid files writes nothing."""
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    outcome = generate(out, DEFAULT_NAMES, if_missing=True)
    assert outcome.server is None and outcome.written == []
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_if_missing_renews_an_expiring_certificate(out: Path) -> None:
    """A development certificate close to its end is replaced, with the same CA."""
    ca_before = (out / CA_CERT).read_bytes()
    later = NOW + dt.timedelta(days=89, hours=12)
    outcome = generate(out, DEFAULT_NAMES, if_missing=True, now=later)
    assert outcome.server is not None and not outcome.new_ca
    assert (out / CA_CERT).read_bytes() == ca_before


def test_if_missing_leaves_a_foreign_certificate_alone(tmp_path: Path, ca: Issued) -> None:
    """A real certificate put in place of the development one (no ca.key beside it)
    is not replaced by ``--if-missing``."""
    own = make_server_cert(ca, ["chat.example.org"])
    (tmp_path / SERVER_CERT).write_bytes(own.cert_pem())
    write_file(tmp_path / SERVER_KEY, own.key_pem(), mode=0o600)
    generate(tmp_path, DEFAULT_NAMES, if_missing=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SERVER_CERT, SERVER_KEY])
    assert (tmp_path / SERVER_CERT).read_bytes() == own.cert_pem()


# ---------------------------------------------------------------------- command line
def test_cli_creates_then_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Creates, then refuses to overwrite, skips with --if-missing, renews with --force."""
    target = tmp_path / "certs"
    assert certs_cli.main(["--out", str(target), "--name", "chat.lan", "--ip", "10.9.8.7"]) == 0
    shown = capsys.readouterr().out
    assert "new development CA" in shown and "chat.lan" in shown and "10.9.8.7" in shown
    san = _ext(x509.load_pem_x509_certificate((target / SERVER_CERT).read_bytes()),
               x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert "chat.lan" in san.get_values_for_type(x509.DNSName)
    assert certs_cli.main(["--out", str(target)]) == 1
    assert "--force" in capsys.readouterr().err
    assert certs_cli.main(["--out", str(target), "--if-missing"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert certs_cli.main(["--out", str(target), "--force"]) == 0
    assert "reused the CA" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--days", "91"], ["--days", "0"], ["--ip", "chat.lan"],
                                  ["--name", "bad name"], ["--no-default-names"],
                                  ["--ca-days", "10", "--days", "30"]])
def test_cli_usage_errors(tmp_path: Path, argv: list[str]) -> None:
    """Bad options exit 2 and create nothing."""
    with pytest.raises(SystemExit) as info:
        certs_cli.main(["--out", str(tmp_path / "c"), *argv])
    assert info.value.code == 2
    assert not (tmp_path / "c").exists()


def test_cli_help_documents_files() -> None:
    """--help names the files, their modes and the renewal options."""
    text = certs_cli.build_parser().format_help()
    for word in ("ca.pem", "server.key", "0600", "--force", "--new-ca", "90 days"):
        assert word in text


# ---------------------------------------------------------------------- server errors
def test_check_certificate_missing(tmp_path: Path) -> None:
    """A missing certificate says how to create one."""
    with pytest.raises(ConfigError, match="does not exist; create one with: securechat-certs"):
        check_certificate(tmp_path / "nope.pem")


def test_check_certificate_unreadable(tmp_path: Path) -> None:
    """A directory stands in for an unreadable file (root reads any mode)."""
    (tmp_path / "dir.pem").mkdir()
    with pytest.raises(ConfigError, match="cannot read certificate file"):
        check_certificate(tmp_path / "dir.pem")


def test_check_certificate_expired(tmp_path: Path, ca: Issued) -> None:
    """An expired certificate says when and how to renew."""
    old = make_server_cert(ca, ["localhost"], days=1, not_before=NOW - dt.timedelta(days=3))
    path = tmp_path / SERVER_CERT
    path.write_bytes(old.cert_pem())
    with pytest.raises(ConfigError, match=r"expired on .*securechat-certs --force"):
        check_certificate(path)


def test_check_certificate_not_yet_valid(tmp_path: Path, ca: Issued) -> None:
    """A certificate from the future says from when it is valid."""
    early = make_server_cert(ca, ["localhost"], days=1, not_before=NOW + dt.timedelta(days=2))
    path = tmp_path / SERVER_CERT
    path.write_bytes(early.cert_pem())
    with pytest.raises(ConfigError, match="not valid before"):
        check_certificate(path)


def test_check_certificate_not_pem(tmp_path: Path) -> None:
    """A file that is not PEM is named as such."""
    path = tmp_path / SERVER_CERT
    path.write_text("hello\n")
    with pytest.raises(ConfigError, match="does not hold a PEM certificate"):
        check_certificate(path)


def test_server_context_mismatched_key(tmp_path: Path, ca: Issued) -> None:
    """A key from another certificate is reported as not belonging to it."""
    one, other = make_server_cert(ca, ["localhost"]), make_server_cert(ca, ["localhost"])
    (tmp_path / SERVER_CERT).write_bytes(one.cert_pem())
    write_file(tmp_path / SERVER_KEY, other.key_pem(), mode=0o600)
    with pytest.raises(ConfigError, match="does not belong to certificate"):
        server_context(tmp_path / SERVER_CERT, tmp_path / SERVER_KEY)


def test_server_context_missing_key(out: Path) -> None:
    """A missing key file is named."""
    (out / SERVER_KEY).unlink()
    with pytest.raises(ConfigError, match=r"key file .* does not exist"):
        server_context(out / SERVER_CERT, out / SERVER_KEY)


def _check_config(directory: Path) -> subprocess.CompletedProcess[str]:
    tokens = directory / "tokens.json"
    if not tokens.exists():
        add_token(tokens, "alice")
    return run_server_cli("--check-config", "--cert", str(directory / SERVER_CERT),
                          "--key", str(directory / SERVER_KEY), "--tokens", str(tokens),
                          timeout=30)


def test_server_cli_accepts_generated_files(out: Path) -> None:
    """``securechat-server --check-config`` with the generator's files: exit 0."""
    result = _check_config(out)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


@pytest.mark.parametrize("problem", ["missing", "unreadable_key", "expired", "mismatched"])
def test_server_cli_reports_bad_certificate(out: Path, ca: Issued, problem: str) -> None:
    """The server exits 1 with one plain line naming the file and the fix, no traceback."""
    if problem == "missing":
        (out / SERVER_CERT).unlink()
        expected = "does not exist; create one with: securechat-certs"
    elif problem == "unreadable_key":
        (out / SERVER_KEY).unlink()
        (out / SERVER_KEY).mkdir()  # root reads any mode; a directory it cannot read
        expected = "cannot read .*server.key"
    elif problem == "expired":
        old = make_server_cert(ca, ["localhost"], days=1, not_before=NOW - dt.timedelta(days=3))
        (out / SERVER_CERT).write_bytes(old.cert_pem())
        write_file(out / SERVER_KEY, old.key_pem(), mode=0o600, force=True)
        expected = "expired on"
    else:
        other = make_server_cert(ca, ["localhost"])
        write_file(out / SERVER_KEY, other.key_pem(), mode=0o600, force=True)
        expected = "does not belong to certificate"
    result = _check_config(out)
    assert result.returncode == 1
    assert re.search(rf"^securechat-server: error: .*{expected}", result.stderr, re.M), \
        result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------- TLS audit
@pytest.fixture
def live_server(out: Path) -> Iterator[tuple[Server, Path]]:
    """The real server on 127.0.0.1 port 0 with the generator's certificates."""
    add_token(out / "tokens.json", "alice")
    config = ServerConfig(host="127.0.0.1", port=0, cert=out / SERVER_CERT,
                          key=out / SERVER_KEY, tokens=out / "tokens.json",
                          data_dir=out / "data", shutdown_timeout=seconds(3.0))
    server = Server(config)
    server.start()
    try:
        yield server, out
    finally:
        assert server.shutdown()


@pytest.mark.skipif(importlib.util.find_spec("sslyze") is None,
                    reason="sslyze is not installed (pip install sslyze)")
@pytest.mark.timeout(120)
def test_sslyze_mozilla_modern_certificate_checks(live_server: tuple[Server, Path]) -> None:
    """sslyze's Mozilla "modern" profile finds nothing wrong with the certificate
    (type, curve, signature, lifespan, path validation against our CA). Findings about
    the server's TLS settings belong to the TLS configuration's own tests."""
    server, out = live_server
    host, port = server.address
    result = run_command(
        [sys.executable, "-W", "ignore", "-m", "sslyze", "--mozilla_config=modern",
         f"--certinfo_ca_file={out / CA_CERT}", f"{host}:{port}"], timeout=100)
    text = result.stdout
    assert "COMPLIANCE AGAINST TLS CONFIGURATION" in text, text[-2000:] + result.stderr
    findings = re.findall(r"^\s+\* (\w+):", text.split("COMPLIANCE AGAINST")[1], re.M)
    assert not [f for f in findings if "certificate" in f or f == "rsa_key_size"], text[-1500:]
    assert re.search(r"Supplied CA file CA Store.*OK - Certificate is trusted", text), text
