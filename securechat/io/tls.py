"""The one place TLS contexts are built, for the server and for clients.

A context is never mutated once built. Certificate rotation builds a new one
(:class:`CertificateWatcher`) that only connections accepted afterwards use; live
SSL objects keep a reference to the context they were made from.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import functools
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ..errors import ConfigError

__all__ = [
    "GROUP_LISTS",
    "TLS_VERSIONS",
    "CertificateWatcher",
    "check_certificate",
    "choose_groups",
    "client_context",
    "describe_certificate",
    "server_context",
]

TLS_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: TLS 1.2 only: forward-secret AEAD suites (the 1.3 suites are AEAD by definition).
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: Key-exchange groups of Mozilla's "modern" profile. OpenSSL 3.0 also offers X448
#: and P-521, which that profile rejects.
MODERN_GROUPS: Final = "X25519:P-256:P-384"
#: Hybrid post-quantum key exchange (X25519 + ML-KEM-768), in OpenSSL 3.5 and later:
#: preferred first wherever the linked OpenSSL offers it.
PQ_GROUP: Final = "X25519MLKEM768"
#: Group lists to try, best first; the first one the linked OpenSSL accepts is used.
GROUP_LISTS: Final = (f"{PQ_GROUP}:{MODERN_GROUPS}", MODERN_GROUPS)
_SSL_CTRL_SET_GROUPS_LIST: Final = 92
#: CPython's PySSLContext is PyObject_HEAD followed by ``SSL_CTX *ctx``.
_CTX_OFFSET: Final = object.__basicsize__
#: Bytes at an SSL_CTX pointer that must be mapped before OpenSSL is asked to read it
#: (SSL_CTX_get_options reads ``options``, at byte 312 in OpenSSL 3.0).
_SSL_CTX_SPAN: Final = 1024


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
    groups = choose_groups()
    if groups is None or not _set_groups(ctx, groups):
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


def describe_certificate(certfile: Path) -> dict[str, str]:
    """``not_after`` and ``subject`` of the first certificate in ``certfile`` for a log
    line; empty if it cannot be read (the caller already loaded it, so that is rare)."""
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(certfile.read_bytes())
    except (ImportError, OSError, ValueError):
        return {}
    return {"not_after": f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
            "subject": cert.subject.rfc4514_string()}


#: What identifies one version of a file: mtime, inode, size, ctime (None: missing).
_Signature = tuple[int, int, int, int] | None


def _stat(path: Path) -> _Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size, st.st_ctime_ns)


class CertificateWatcher:
    """Notices when the certificate or key file changes (by polling ``stat``, which also
    sees a rename over the file, as certbot and ``securechat-certs --force`` do) and
    builds a new server context from the pair.

    A pair that does not load (unreadable, garbage, a key of another certificate, a
    certificate written before its key) keeps the caller's context: ``poll`` then
    returns None and sets ``last_error`` once per change, not on every poll, so the
    caller logs it once. The next change is tried again, so a half-written pair is
    picked up as soon as its second file lands. Not thread-safe: one caller at a time.
    """

    def __init__(self, certfile: Path, keyfile: Path, *, tls_min: str = "1.3") -> None:
        self.certfile = certfile
        self.keyfile = keyfile
        self.tls_min = tls_min
        self._signature = self._stat()
        self._reported: tuple[object, str] | None = None
        #: Why the last change could not be loaded; the caller logs it and clears it.
        self.last_error: str | None = None

    def _stat(self) -> tuple[_Signature, _Signature]:
        return (_stat(self.certfile), _stat(self.keyfile))

    def poll(self, *, force: bool = False) -> ssl.SSLContext | None:
        """A new context if either file changed (or ``force``) and the pair loads."""
        signature = self._stat()  # before reading: a write during the load is seen next time
        if signature == self._signature and not force:
            return None
        self._signature = signature
        try:
            ctx = server_context(self.certfile, self.keyfile, tls_min=self.tls_min)
        except ConfigError as exc:
            message = str(exc)
            if force or (signature, message) != self._reported:
                self._reported = (signature, message)
                self.last_error = message
            return None
        self._reported = None
        self.last_error = None
        return ctx


def choose_groups() -> str | None:
    """The first of :data:`GROUP_LISTS` this Python and OpenSSL can set (so
    X25519MLKEM768 leads where OpenSSL has it), tried on a throwaway context; None if
    no group list can be set here."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for groups in GROUP_LISTS:
        if _set_groups(probe, groups):
            return groups
    return None


def _set_groups(ctx: ssl.SSLContext, groups: str) -> bool:
    """Restrict the key-exchange groups to the OpenSSL list ``groups``; True if it worked.

    Python 3.15 has ``SSLContext.set_groups``. Older ones have no API for a group *list*
    (``set_ecdh_curve`` sets one curve), so this calls OpenSSL's
    ``SSL_CTX_set1_groups_list`` through ctypes on the context's ``SSL_CTX`` pointer,
    but only once the layout is proven on a throwaway context
    (:func:`_layout_verified`) and the pointer read from ``ctx`` checks out too
    (:func:`_ctx_pointer`). Any doubt returns False, and the caller falls back to the
    stdlib-only setting: a wrong guess must never crash the server.
    """
    setter = getattr(ctx, "set_groups", None)
    if setter is not None:
        try:
            setter(groups)
        except (ssl.SSLError, ValueError):
            return False
        return True
    if not isinstance(ctx, ssl.SSLContext):
        return False
    lib = _verified_openssl()
    if lib is None:
        return False
    pointer = _ctx_pointer(ctx, lib)
    if pointer is None:
        return False
    if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) == 1:
        return True
    # An unknown group name leaves an error queued; a later, unrelated TLS call in
    # this thread would report it as its own.
    lib.ERR_clear_error()
    return False


@functools.cache
def _verified_openssl() -> ctypes.CDLL | None:
    """The OpenSSL that ``_ssl`` is linked to, if the context layout checks out."""
    lib = _openssl()
    if lib is None or not _layout_verified(lib):
        return None
    return lib


def _openssl() -> ctypes.CDLL | None:
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long,
                                     ctypes.c_char_p]
        lib.ERR_clear_error.restype = None
        lib.ERR_clear_error.argtypes = []
    except (OSError, AttributeError, ImportError):
        return None
    return lib


def _throwaway_context() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


def _layout_verified(lib: ctypes.CDLL, offset: int = _CTX_OFFSET,
                     make: Callable[[], Any] = _throwaway_context) -> bool:
    """Whether the word at ``offset`` in a context really is its ``SSL_CTX *``.

    Proven on a throwaway context from ``make()``: for two different option sets
    (three harmless bits flipped), what OpenSSL's ``SSL_CTX_get_options`` reads
    through the candidate pointer must equal what ``probe.options`` reports.
    """
    probe = make()
    bits = ssl.OP_NO_TICKET | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    seen = set()
    try:
        base = int(probe.options)
        for value in (base | bits, base & ~bits):
            probe.options = value
            if _ctx_pointer(probe, lib, offset) is None:
                return False
            seen.add(int(probe.options))
    except (AttributeError, TypeError, ValueError, OverflowError):
        return False
    return len(seen) == 2


def _ctx_pointer(ctx: Any, lib: ctypes.CDLL, offset: int = _CTX_OFFSET) -> int | None:
    """The ``SSL_CTX *`` stored at ``offset`` in ``ctx`` (any object: tests pass
    impostors), or None unless it is non-null, points to mapped memory, and OpenSSL
    reads the same options through it as ``ctx.options`` reports."""
    if offset < 0 or type(ctx).__basicsize__ < offset + ctypes.sizeof(ctypes.c_void_p):
        return None  # the word would lie outside the object
    pointer = ctypes.c_void_p.from_address(id(ctx) + offset).value
    if not pointer or not _readable(pointer, _SSL_CTX_SPAN):
        return None
    try:
        expected = int(ctx.options)
    except (AttributeError, TypeError, ValueError):
        return None
    if lib.SSL_CTX_get_options(pointer) != expected:
        return None
    return int(pointer)


def _readable(address: int, size: int) -> bool:
    """Whether ``size`` bytes at ``address`` are mapped, asked of the kernel: write(2)
    from an unmapped address to a pipe fails with EFAULT where a read would crash."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        write = libc.write
        write.restype = ctypes.c_ssize_t
        write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        read_end, write_end = os.pipe()
    except (OSError, AttributeError, TypeError):
        return False
    try:
        return bool(write(write_end, address, size) == size)
    finally:
        os.close(read_end)
        os.close(write_end)


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
