"""callstream: a production call recorder for RingCentral's audio streams: Engage Voice
Call Streaming (WebSocket) and RingCX audio streaming (gRPC), one stereo recording per call."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("callstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
