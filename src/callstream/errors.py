"""Typed errors. Each one knows how the edge must answer it: a WebSocket close code (RFC 6455),
which the RingCX front end maps to a gRPC status (`ringcx.session.GRPC_STATUS`)."""

from __future__ import annotations

# WebSocket close codes (RFC 6455 section 7.4.1) used by the recorder.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # drain, idle timeout, maximum duration
CLOSE_UNSUPPORTED_DATA = 1003  # e.g. a content type or sample rate we cannot record
CLOSE_INVALID_PAYLOAD = 1007  # too many malformed messages
CLOSE_POLICY_VIOLATION = 1008  # wrong or missing secret
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011  # e.g. the disk failed under this call
CLOSE_TRY_AGAIN_LATER = 1013  # authenticated in the first message, but --max-calls was reached


class CallstreamError(Exception):
    """Base class of every error this package raises on purpose."""


class ProtocolError(CallstreamError):
    """The peer sent something that ends the call.

    ``code`` is the WebSocket close code the server must send; ``reason`` is a short text
    that is safe to send to the peer and to log (it never contains a secret).
    """

    def __init__(self, reason: str, *, code: int = CLOSE_UNSUPPORTED_DATA) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code

    def __repr__(self) -> str:
        return f"ProtocolError({self.reason!r}, code={self.code})"


class RecordingError(CallstreamError):
    """Writing a recording failed (disk full, permission, I/O error); the call closes with 1011."""

    code = CLOSE_INTERNAL_ERROR


class DiskStalledError(RecordingError):
    """The disk took none of a call's audio for the stall timeout (a hung disk or network file
    system): the call closes with 1011 instead of waiting forever."""
