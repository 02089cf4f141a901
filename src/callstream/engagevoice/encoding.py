"""The platform's messages as text frames: for the simulator, the load generator and the tests.

The inverse of `protocol.parse_message` for the shapes the platform sends (see shared
docs/protocol.md); `encode_media` writes exactly the shape the Media fast paths take.
"""

from __future__ import annotations

import binascii
from typing import Any, Final

import msgspec

from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.protocol import DEFAULT_CONTENT_TYPE, DEFAULT_SAMPLE_RATE

__all__ = ["encode_connected", "encode_media", "encode_start", "encode_stop"]

_WIRE_BY_PERSPECTIVE: Final = ("Participant", "Conference")  # indexed by Perspective

_encode_json: Final = msgspec.json.encode


def encode_connected(secret: str | None = None) -> str:
    """The Connected frame; ``secret`` (if given) as a top-level field."""
    msg: dict[str, Any] = {"event": "Connected", "protocol": "AgentSession", "version": "1.0.0"}
    if secret is not None:
        msg["secret"] = secret
    return _encode_json(msg).decode()


def encode_start(
    metadata: dict[str, Any],
    *,
    content_type: str = DEFAULT_CONTENT_TYPE,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    secret: str | None = None,
) -> str:
    """The Start frame: ``metadata`` (values as given: the platform sends some ids as numbers)
    plus ``contentType`` and ``sampleRateHertz``; ``secret`` (if given) as a top-level field."""
    body = {**metadata, "contentType": content_type, "sampleRateHertz": sample_rate}
    msg: dict[str, Any] = {"event": "Start", "metadata": body}
    if secret is not None:
        msg["secret"] = secret
    return _encode_json(msg).decode()


def encode_media(perspective: Perspective, sequence: int, payload: bytes) -> str:
    """A Media frame: ``sequence`` (>= 0) as a decimal string, ``payload`` (mu-law bytes) in
    base64. Raises ValueError for a negative sequence."""
    if sequence < 0:
        raise ValueError(f"sequence must be >= 0, got {sequence}")
    media = binascii.b2a_base64(payload, newline=False).decode("ascii")
    return (
        f'{{"event":"Media","perspective":"{_WIRE_BY_PERSPECTIVE[perspective]}",'
        f'"sequenceId":"{sequence:d}","media":"{media}"}}'
    )


def encode_stop(duration: float, end_time: str) -> str:
    """A Stop frame; ``duration`` in seconds (an integral value is written as an integer),
    ``end_time`` an RFC 3339 timestamp."""
    seconds: float = int(duration) if float(duration).is_integer() else duration
    msg = {"event": "Stop", "metadata": {"duration": seconds, "end_time": end_time}}
    return _encode_json(msg).decode()
