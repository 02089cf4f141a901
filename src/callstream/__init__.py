"""callstream: a production recorder for telephony audio streamed over WebSocket."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("callstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
