"""securechat: a small, self-hosted, TLS-secured, token-authenticated chat relay.

Modules: ``protocol`` (the wire contract, pure), ``tokens``, ``limits``, ``room``,
``tlsconfig``, ``server`` / ``session`` / ``ioloop`` (the threaded TLS server),
``client`` (the reconnecting client API) and one ``*_cli`` module per command.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .client import Client  # after __version__, which securechat.cli.client imports

__all__ = ["Client", "__version__"]
