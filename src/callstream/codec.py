"""G.711 codec (PLACEHOLDER: numpy-only; the C backend is being added).

API: decode_ulaw(src, out=None) -> int16 array; decode_ulaw_stereo(left, right, out=None) ->
int16 array of shape (n, 2); encode_ulaw(pcm) -> bytes; A-law twins.
"""

from __future__ import annotations

import numpy as np

BACKEND = "numpy"


def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


_ULAW = _ulaw_table()


def decode_ulaw(src, out=None):
    return _ULAW[np.frombuffer(src, dtype=np.uint8)]


def decode_ulaw_stereo(left, right, out=None):
    lhs = np.frombuffer(left, dtype=np.uint8)
    rhs = np.frombuffer(right, dtype=np.uint8)
    if lhs.size != rhs.size:
        raise ValueError("left and right differ in length")
    result = np.empty((lhs.size, 2), dtype=np.int16)
    result[:, 0] = _ULAW[lhs]
    result[:, 1] = _ULAW[rhs]
    return result


def encode_ulaw(pcm) -> bytes:
    x = np.asarray(pcm, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()
