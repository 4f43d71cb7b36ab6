"""The relay: listener and admission, one session per connection, tokens, limits."""

from .listener import Server, client_key

__all__ = ["Server", "client_key"]
