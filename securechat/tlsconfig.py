"""The one place TLS contexts are built, for the server and for clients.

A context is built once at start-up and never mutated while serving.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Final

from .errors import ConfigError

__all__ = ["TLS_VERSIONS", "check_certificate", "client_context", "server_context"]

TLS_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: TLS 1.2 only: forward-secret AEAD suites (the 1.3 suites are AEAD by definition).
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: Key-exchange groups of Mozilla's "modern" profile. OpenSSL 3.0 also offers X448
#: and P-521, which that profile rejects.
MODERN_GROUPS: Final = "X25519:P-256:P-384"
_SSL_CTRL_SET_GROUPS_LIST: Final = 92


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal and hang a daemon.
    raise ConfigError("the private key is encrypted; give securechat an unencrypted key file")


def check_certificate(certfile: Path, *, now: dt.datetime | None = None) -> None:
    """Fail early, in plain words, on a certificate that is missing, unreadable or expired."""
    try:
        pem = certfile.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"certificate file {certfile} does not exist; create one with: securechat-certs"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read certificate file {certfile}: {exc.strerror}") from exc
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover - cryptography is a declared dependency
        return
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ConfigError(f"{certfile} does not hold a PEM certificate") from exc
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise ConfigError(
            f"certificate {certfile} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "make a new one (securechat-certs --force)"
        )
    if cert.not_valid_before_utc > now:
        raise ConfigError(
            f"certificate {certfile} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)"
        )


def server_context(certfile: Path, keyfile: Path, *, tls_min: str = "1.3") -> ssl.SSLContext:
    """TLS 1.3 by default (``tls_min="1.2"`` adds AEAD-only TLS 1.2), no session tickets,
    no compression or renegotiation. Raises :class:`ConfigError` with a fix in the message."""
    if tls_min not in TLS_VERSIONS:
        raise ConfigError(f"--tls-min must be one of {', '.join(TLS_VERSIONS)}, not {tls_min!r}")
    check_certificate(certfile)
    if not keyfile.exists():
        raise ConfigError(f"key file {keyfile} does not exist; create one with: securechat-certs")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[tls_min]
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_NO_TICKET
    )
    # No TLS 1.3 session tickets: chat needs no resumption, and tickets are writes the
    # server would make right after the handshake (design-notes.md section 2).
    ctx.num_tickets = 0
    if tls_min == "1.2":
        ctx.set_ciphers(TLS12_CIPHERS)
    if not _set_groups(ctx, MODERN_GROUPS):
        # P-256 alone is compliant too; clients that offered only X25519 pay one
        # extra round trip (HelloRetryRequest).
        ctx.set_ecdh_curve("prime256v1")
    try:
        ctx.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except ConfigError:
        raise
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(f"key {keyfile} does not belong to certificate {certfile}") from exc
        if "PEM lib" in str(exc) or "NO_START_LINE" in str(exc):
            # check_certificate() already parsed the certificate, so the key is at fault.
            raise ConfigError(f"key file {keyfile} does not hold a PEM private key") from exc
        raise ConfigError(f"cannot load certificate/key {certfile} / {keyfile}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {keyfile}: {exc.strerror}") from exc
    return ctx


def _set_groups(ctx: ssl.SSLContext, groups: str) -> bool:
    """Restrict the key-exchange groups; True if it worked.

    Python 3.11 has no API for a group *list* (``set_ecdh_curve`` sets one curve), so
    this calls OpenSSL's ``SSL_CTX_set1_groups_list`` through ctypes on the context's
    ``SSL_CTX`` pointer, which CPython keeps right after the object header. The pointer
    is checked first (its options must equal ``ctx.options``); any doubt returns False
    and the caller falls back to the stdlib-only setting.
    """
    setter = getattr(ctx, "set_groups", None)  # a future Python may have one
    if setter is not None:  # pragma: no cover - not in 3.11
        setter(groups)
        return True
    try:
        import _ssl
        import ctypes

        if type(ctx).__basicsize__ < object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p):
            return False
        lib = ctypes.CDLL(_ssl.__file__)
        get_options = lib.SSL_CTX_get_options
        get_options.restype = ctypes.c_uint64
        get_options.argtypes = [ctypes.c_void_p]
        pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not pointer or get_options(pointer) != int(ctx.options):
            return False
        ctrl = lib.SSL_CTX_ctrl
        ctrl.restype = ctypes.c_long
        ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        return bool(ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) == 1)
    except (OSError, AttributeError, ValueError, ImportError):
        return False


def client_context(cafile: Path | None = None) -> ssl.SSLContext:
    """Verifying client context: the given CA (or the system store), hostname checked,
    TLS 1.2 or newer."""
    try:
        ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except FileNotFoundError as exc:
        raise ConfigError(f"CA file {cafile} does not exist") from exc
    except ssl.SSLError as exc:
        raise ConfigError(f"CA file {cafile} does not hold a PEM certificate: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
