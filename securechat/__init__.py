"""securechat: a small, self-hosted, TLS-secured, token-authenticated chat relay.

Packages: ``protocol`` (the wire contract, pure), ``client`` (the reconnecting
``Client``), ``server`` (the threaded TLS relay), ``rooms`` and ``store`` (where
messages go and are kept), ``grants`` (which rooms a token may enter), ``io`` (the
loop both sides run on) and ``cli`` (one module per command). docs/architecture.md
draws the map.
"""

from __future__ import annotations

__version__ = "0.1.0"

# After __version__, which securechat.cli.client imports.
from .client import Client, Grants, Join, Joined, Leave, Left

__all__ = ["Client", "Grants", "Join", "Joined", "Leave", "Left", "__version__"]
