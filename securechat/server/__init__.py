"""The relay: listener, admission, one session per connection, tokens, limits."""

from .admission import client_key
from .listener import Server

__all__ = ["Server", "client_key"]
