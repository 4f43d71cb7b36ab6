"""The client: a connection that survives the network."""

from .api import *  # noqa: F403
from .api import __all__ as __all__
