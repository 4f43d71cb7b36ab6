"""Development certificates: a private CA and a server certificate signed by it.

What ``securechat-certs`` writes, and why:

- ``ca.pem`` / ``ca.key``: a development CA (ECDSA P-256, 10 years by default).
  Clients trust ``ca.pem`` (``securechat-client --ca ca.pem``). It lives long so
  that renewing the server certificate never forces clients to trust a new CA:
  when ``ca.pem`` and ``ca.key`` exist they are reused unless a new CA is asked for.
- ``server.pem`` / ``server.key``: the server certificate (ECDSA P-256, SHA-256,
  at most 90 days, as Mozilla's "modern" profile and the CA/Browser Forum's
  direction of travel ask) for the names and addresses given. ``server.pem``
  holds the server certificate only: clients must already hold the CA, so
  sending it in every handshake would add bytes and prove nothing.

Keys are created with mode 0600 (``os.open(..., 0o600)``, never write-then-chmod,
so they are never readable by others, not even for a moment). Existing files are
never overwritten unless asked (``force``): a new key silently replacing the one
a deployment uses is a bad surprise.

The functions that make certificates are pure (objects in, objects out); only
:func:`write_file` and :func:`generate` touch the file system.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError

__all__ = [
    "CA_CERT",
    "CA_DAYS",
    "CA_KEY",
    "DEFAULT_NAMES",
    "MAX_SERVER_DAYS",
    "SERVER_CERT",
    "SERVER_KEY",
    "Issued",
    "Outcome",
    "generate",
    "load_issued",
    "make_ca",
    "make_server_cert",
    "parse_names",
    "write_file",
]

#: Names every development certificate carries: this machine, and the host name of
#: the server service in docker-compose.yml, so one certificate serves both.
DEFAULT_NAMES: Final = ("localhost", "securechat", "127.0.0.1", "::1")
MAX_SERVER_DAYS: Final = 90
CA_DAYS: Final = 3650
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.pem", "ca.key", "server.pem", "server.key"
#: Certificates start this long before "now", so a client whose clock is a little
#: behind the machine that made the certificate does not reject it as not yet valid.
BACKDATE: Final = dt.timedelta(minutes=5)

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DNS_RE: Final = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """PKCS#8, unencrypted: the server runs unattended and cannot ask for a passphrase
        (file permissions protect it instead)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())


def parse_names(values: Iterable[str]) -> list[x509.GeneralName]:
    """subjectAltName entries: an IP address becomes an IPAddress entry (clients match
    addresses only against those), anything else a DNSName. Duplicates are dropped,
    order is kept. Raises :class:`ValueError` with the offending value."""
    result: list[x509.GeneralName] = []
    for raw in values:
        value = raw.strip()
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            name = value.lower().rstrip(".")
            if len(name) > 253 or not _DNS_RE.fullmatch(name):
                raise ValueError(
                    f"{raw!r} is neither an IP address nor a host name (letters, digits, "
                    "'-' and dots; non-ASCII names in their xn-- form)") from None
            entry = x509.DNSName(name)
        if entry not in result:
            result.append(entry)
    return result


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "securechat"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
    ])


def _validity(days: int, not_before: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    start = not_before if not_before is not None else dt.datetime.now(dt.UTC) - BACKDATE
    return start, start + dt.timedelta(days=days)


def make_ca(*, days: int = CA_DAYS, common_name: str | None = None,
            not_before: dt.datetime | None = None) -> Issued:
    """A self-signed CA that may sign server certificates and nothing below them."""
    if days < 1:
        raise ValueError("a CA must be valid for at least 1 day")
    key = ec.generate_private_key(ec.SECP256R1())
    # A random suffix tells two developers' CAs (or an old and a new one) apart.
    subject = _name(common_name or f"securechat development CA {secrets.token_hex(3)}")
    start, end = _validity(days, not_before)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(public).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_server_cert(ca: Issued, names: Sequence[str], *, days: int = MAX_SERVER_DAYS,
                     not_before: dt.datetime | None = None) -> Issued:
    """A TLS server certificate for ``names`` (host names and IP addresses), signed by ``ca``.

    ``days`` is at most :data:`MAX_SERVER_DAYS`. ``not_before`` (default: a few
    minutes ago) exists for tests that need a certificate that is already expired.
    The subjectAltName is not critical: the subject is not empty, and some validators
    (sslyze's among them) reject a critical one.
    """
    if not 1 <= days <= MAX_SERVER_DAYS:
        raise ValueError(f"a server certificate is valid for 1 to {MAX_SERVER_DAYS} days, "
                         f"not {days}")
    alt_names = parse_names(names)
    if not alt_names:
        raise ValueError("a server certificate needs at least one name or address")
    start, end = _validity(days, not_before)
    if end > ca.cert.not_valid_after_utc:
        raise ValueError(
            f"the CA expires on {ca.cert.not_valid_after_utc:%Y-%m-%d}, before this server "
            f"certificate would ({end:%Y-%m-%d}): make a new CA")
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(str(alt_names[0].value))).issuer_name(ca.cert.subject)
        .public_key(public).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def load_issued(cert_path: Path, key_path: Path) -> Issued:
    """Read a certificate and its (ECDSA or RSA) key, and check that they belong together."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load {cert_path} / {key_path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"{key_path} is neither an ECDSA nor an RSA key")
    if key.public_key() != cert.public_key():
        raise ConfigError(f"key {key_path} does not belong to certificate {cert_path}")
    return Issued(cert, key)


def write_file(path: Path, data: bytes, *, mode: int, force: bool = False) -> None:
    """Write ``data`` to ``path`` atomically, created with ``mode`` from the start.

    Without ``force`` an existing file is never replaced, even one created a moment
    ago by someone else (``os.link`` fails if the target exists); with ``force`` it
    is replaced in one step (``os.replace``), so a reader never sees half a key.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@dataclass
class Outcome:
    """What :func:`generate` did, for the command line to report."""

    ca: Issued | None
    server: Issued | None
    new_ca: bool
    written: list[Path] = field(default_factory=list)


def _exist(paths: Sequence[Path]) -> str:
    if len(paths) == 1:
        return f"{paths[0]} already exists"
    return f"{', '.join(map(str, paths[:-1]))} and {paths[-1]} already exist"


def _usable(cert_path: Path, key_path: Path, now: dt.datetime, min_left: dt.timedelta) -> bool:
    """Whether an existing server certificate and key can be kept as they are."""
    try:
        issued = load_issued(cert_path, key_path)
    except ConfigError:
        return False
    return issued.cert.not_valid_after_utc - now >= min_left


def generate(out: Path, names: Sequence[str], *, days: int = MAX_SERVER_DAYS,
             ca_days: int = CA_DAYS, new_ca: bool = False, force: bool = False,
             if_missing: bool = False, now: dt.datetime | None = None) -> Outcome:
    """Make (or reuse) the CA and make a server certificate in ``out``.

    - The CA in ``out`` is reused when both its files exist, unless ``new_ca``.
    - Existing files are not overwritten unless ``force``: :class:`ConfigError`
      names them and says how to proceed.
    - ``if_missing``: keep a server certificate and key that exist, belong together
      and are valid for at least one more day, whoever issued them (the outcome then
      holds neither CA nor server); otherwise replace them. Meant for init containers
      and ``make run``: a fresh machine gets certificates, an expired development
      certificate is renewed, and a real one put in its place is left alone.
    """
    now = now or dt.datetime.now(dt.UTC)
    paths = {name: out / name for name in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)}
    ca_files = [paths[CA_CERT], paths[CA_KEY]]
    server_files = [paths[SERVER_CERT], paths[SERVER_KEY]]
    if if_missing and _usable(paths[SERVER_CERT], paths[SERVER_KEY], now, dt.timedelta(days=1)):
        return Outcome(None, None, new_ca=False)
    have_ca = [p for p in ca_files if p.exists()]
    reuse_ca = len(have_ca) == 2 and not new_ca
    if have_ca and not reuse_ca and not force:
        hint = "--new-ca --force to replace it" if len(have_ca) == 2 else "--force"
        raise ConfigError(
            f"{_exist(have_ca)}; use {hint} (clients must then trust the new ca.pem)")
    replace_server = force or if_missing
    clash = [p for p in server_files if p.exists()]
    if clash and not replace_server:
        raise ConfigError(
            f"{_exist(clash)}; use --force to replace "
            "(the CA is kept, so clients need not change anything)")
    out.mkdir(parents=True, exist_ok=True)
    outcome: Outcome
    if reuse_ca:
        ca = load_issued(paths[CA_CERT], paths[CA_KEY])
        if ca.cert.not_valid_after_utc <= now:
            raise ConfigError(f"the CA in {paths[CA_CERT]} has expired; make a new one with "
                              "--new-ca --force (clients must then trust the new ca.pem)")
        outcome = Outcome(ca, None, new_ca=False)
    else:
        ca = make_ca(days=ca_days)
        outcome = Outcome(ca, None, new_ca=True)
    try:
        server = make_server_cert(ca, names, days=days)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if outcome.new_ca:
        write_file(paths[CA_KEY], ca.key_pem(), mode=0o600, force=force)
        write_file(paths[CA_CERT], ca.cert_pem(), mode=0o644, force=force)
        outcome.written += [paths[CA_CERT], paths[CA_KEY]]
    write_file(paths[SERVER_KEY], server.key_pem(), mode=0o600, force=replace_server)
    write_file(paths[SERVER_CERT], server.cert_pem(), mode=0o644, force=replace_server)
    outcome.written += server_files
    outcome.server = server
    return outcome
