"""Key-exchange groups: the ctypes route is taken only once the context layout is proven
(impostors and wrong offsets fall back, never crash), X25519MLKEM768 leads where OpenSSL
has it, and real TLS 1.3 handshakes agree only on the allowed groups."""

from __future__ import annotations

import ctypes
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from securechat.io import tls as tlsconfig
from tests.support import RunningServer, seconds

needs_ctypes_route = pytest.mark.skipif(
    hasattr(ssl.SSLContext, "set_groups") or sys.implementation.name != "cpython",
    reason="this Python sets groups through the standard API")


def _lib() -> ctypes.CDLL:
    lib = tlsconfig._openssl()
    assert lib is not None
    return lib


class SlotImpostor:
    """Options like a context, and a real, readable object where SSL_CTX * would be."""

    __slots__ = ("options", "target")

    def __init__(self, target: object) -> None:
        self.target = target  # stored right after the object header, like SSL_CTX *
        self.options = int(ssl.OP_ALL)


class IntImpostor(int):
    """An int posing as a context: the word after its header is a digit count, not a pointer."""

    options = 0


class Bare:
    """Nothing after the object header at all."""

    __slots__ = ("options",)


# ------------------------------------------------------------------ the layout check
@needs_ctypes_route
def test_layout_is_verified_on_this_python() -> None:
    """On CPython 3.11 the SSL_CTX * right after the header round-trips two option sets."""
    assert tlsconfig._layout_verified(_lib())
    assert tlsconfig._verified_openssl() is not None


@needs_ctypes_route
def test_wrong_offsets_fall_back() -> None:
    """Every other word of a real context (refcount, type, other fields) is rejected."""
    lib = _lib()
    size = ctypes.sizeof(ctypes.c_void_p)
    for offset in range(0, ssl.SSLContext.__basicsize__ - size + 1, size):
        if offset != tlsconfig._CTX_OFFSET:
            assert not tlsconfig._layout_verified(lib, offset), offset
    assert not tlsconfig._layout_verified(lib, ssl.SSLContext.__basicsize__)  # outside


@pytest.mark.parametrize("make", [
    lambda: SlotImpostor(bytes(4096)),  # points at 4 KiB of zeros: mapped, but not SSL_CTX
    lambda: SlotImpostor(None),
    lambda: SlotImpostor(SlotImpostor(0)),
    lambda: IntImpostor(1),  # the "pointer" is 1: unmapped, reading it would crash
    lambda: IntImpostor(2**70),
    Bare,  # too small to hold a pointer
], ids=["zeros", "none", "object", "int-1", "int-big", "bare"])
def test_context_like_objects_with_the_wrong_layout_fall_back(make: Callable[[], Any]) -> None:
    """Impostors with options but no SSL_CTX * where expected: rejected, no crash."""
    lib = _lib()
    assert not tlsconfig._layout_verified(lib, make=make)
    assert tlsconfig._ctx_pointer(make(), lib) is None


def test_set_groups_on_an_impostor_falls_back_in_a_fresh_process() -> None:
    """_set_groups on an int posing as a context returns False (main dereferenced the
    digit count as a pointer and died with SIGSEGV)."""
    code = textwrap.dedent("""
        from securechat.io import tls as tlsconfig
        class IntImpostor(int):
            options = 0
        print(tlsconfig._set_groups(IntImpostor(1), "X25519"))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=seconds(30), check=False)
    assert (result.returncode, result.stdout.strip()) == (0, "False"), result.stderr


def test_unmapped_memory_is_not_readable() -> None:
    """The mapped-memory probe says no, without crashing, for null page and kernel space."""
    obj = bytes(64)
    assert tlsconfig._readable(id(obj), 64)
    assert not tlsconfig._readable(8, 8)
    assert not tlsconfig._readable(2**63, 8)


# ------------------------------------------------------------------ which groups
def test_post_quantum_group_first_iff_openssl_has_it() -> None:
    """X25519MLKEM768 leads the list exactly when the linked OpenSSL (>= 3.5) has it."""
    groups = tlsconfig.choose_groups()
    assert groups is not None
    names = groups.split(":")
    has_pq = ssl.OPENSSL_VERSION_INFO >= (3, 5)
    assert (names[0] == "X25519MLKEM768") is has_pq, (ssl.OPENSSL_VERSION, groups)
    assert names[int(has_pq):] == ["X25519", "P-256", "P-384"]


@needs_ctypes_route
def test_an_unknown_group_fails_cleanly() -> None:
    """A list OpenSSL refuses returns False and leaves no error queued for later calls."""
    lib = _lib()
    lib.ERR_peek_error.restype = ctypes.c_ulong
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert not tlsconfig._set_groups(probe, "NO-SUCH-GROUP:X25519")
    assert lib.ERR_peek_error() == 0
    assert tlsconfig._set_groups(probe, "X25519")


# ------------------------------------------------------------------ real handshakes
def _client_with_only(server: RunningServer, curve: str) -> ssl.SSLContext:
    ctx = server.certs.client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ecdh_curve(curve)  # on OpenSSL 3 this sets the client's only group
    return ctx


def _handshake(server: RunningServer, curve: str) -> str | None:
    """The TLS version agreed by a client that offers only ``curve``."""
    ctx = _client_with_only(server, curve)
    client = server.tls_connect(context=ctx)
    try:
        return client.sock.version()
    finally:
        client.close()


@pytest.mark.parametrize("curve", ["X25519", "prime256v1", "secp384r1"])
def test_allowed_groups_complete_a_tls13_handshake(server: RunningServer, curve: str) -> None:
    """A client offering only X25519, P-256 or P-384 connects (X25519 would fail if the
    server had fallen back to P-256 alone)."""
    assert _handshake(server, curve) == "TLSv1.3"


@pytest.mark.parametrize("curve", ["secp521r1", "X448"])
def test_other_groups_are_refused(server: RunningServer, curve: str) -> None:
    """A client offering only P-521 or X448 (OpenSSL defaults, outside Mozilla modern)
    fails the handshake, and the server keeps serving others."""
    with pytest.raises(ssl.SSLError):
        _handshake(server, curve)
    _, welcome = server.user("alice")
    assert welcome["user"] == "alice"
