"""Exceptions raised by securechat.

One root, split by who is at fault::

    SecureChatError
    ├── ProtocolError            a frame broke the wire contract
    │   ├── RemoteProtocolError  ... and the peer sent it (we answer with an error frame)
    │   └── LocalProtocolError   ... and we were about to send it (a bug or bad argument)
    ├── ConfigError              an option, file, certificate or key is unusable
    ├── TokenError               the tokens file or a token is malformed
    ├── ServerThreadDied         an essential server thread died of a bug (exit 70)
    └── ClientError              raised by the client API
        ├── AuthRefused          the server refused the token (fatal: not retried)
        ├── TLSVerificationFailed the server's certificate did not verify (fatal)
        ├── GaveUp               reconnect attempts exhausted
        ├── QueueFull            the outgoing queue is full while disconnected
        └── ClientClosed         the client was closed

Errors raised at a socket boundary are chained (``raise ... from exc``) to the OS
or TLS error that caused them.
"""

from __future__ import annotations

__all__ = [
    "AuthRefused",
    "ClientClosed",
    "ClientError",
    "ConfigError",
    "GaveUp",
    "LocalProtocolError",
    "ProtocolError",
    "QueueFull",
    "RemoteProtocolError",
    "SecureChatError",
    "ServerThreadDied",
    "TLSVerificationFailed",
    "TokenError",
]


class SecureChatError(Exception):
    """Root of every securechat exception."""


class ProtocolError(SecureChatError):
    """A frame broke the wire contract; ``code`` is the documented error code.

    ``message_id`` is the ``id`` of the message frame at fault, when it had one.
    """

    def __init__(self, code: str, message: str, *, message_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class RemoteProtocolError(ProtocolError):
    """The peer sent a frame that breaks the contract."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the contract does not allow."""


class ConfigError(SecureChatError):
    """An option, file, certificate or key cannot be used; the message says how to fix it."""


class TokenError(SecureChatError):
    """The tokens file or a token string is malformed."""


class ServerThreadDied(SecureChatError):
    """An essential server thread (accept, an I/O loop) died of a bug. Its traceback is in
    the log; the process should exit non-zero so that a supervisor restarts it."""


class ClientError(SecureChatError):
    """Raised by :class:`securechat.client.Client`."""


class AuthRefused(ClientError):
    """The server refused the token (``auth_failed`` or ``revoked``); retrying cannot help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TLSVerificationFailed(ClientError):
    """The server's certificate failed verification; retrying cannot help."""


class GaveUp(ClientError):
    """The client stopped reconnecting after ``max_retries`` attempts."""


class QueueFull(ClientError):
    """The outgoing queue is full (the server is unreachable and too much was sent)."""


class ClientClosed(ClientError):
    """The client was closed; nothing more can be sent or received."""
