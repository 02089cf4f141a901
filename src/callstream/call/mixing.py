"""`MixWrites`: the segment mixer's G.711 chunks, decoded and added into its mix once per block.

Sans-IO. The mixer (`callstream.call.segments`) decides where each chunk of audio goes; writing
it there -- decoding the G.711 codes and adding them, saturating, into one channel of the
interleaved int16 mix -- waits here until the mix is read (a block cut) or changes shape, and
then happens for every waiting chunk in one call of the C kernel (csrc/mix.c, ``cs_mix_g711``) or
of its numpy twin (`apply_numpy`), in the order the chunks were added.

Why: per chunk, a decode and numpy's copies or adds cost the mixer a few microseconds (half of
its time at 300 real-time dialogs), and each C decode released the GIL to the gRPC thread; here
a chunk costs a list append, and a second of a dialog one call that releases the GIL once.

Adding is the only operation: the mixer writes a chunk where no other chunk of its channel was
(a region the mix holds zeroed) or over another segment's audio on the same channel, and a
saturating add of a chunk onto zeros is the chunk.
"""

from __future__ import annotations

from array import array
from typing import Final

import numpy as np

from callstream import codec
from callstream.native import kernel as _kernel

__all__ = ["ALAW", "AVAILABLE", "ULAW", "MixWrites", "add_clipped", "apply_numpy"]

# the C kernel, or None (not built, or CALLSTREAM_NATIVE drops "mix": the numpy twin runs)
_ffi, _lib = _kernel("mix")
AVAILABLE: Final = _lib is not None

ULAW: Final = 0  # law codes of an op (csrc/mix.h: CS_MIX_ULAW, CS_MIX_ALAW)
ALAW: Final = 1
FIELDS: Final = 5  # int64s per op: offset, length, frame, channel, law
_NUMPY = codec.NumpyBackend()


class MixWrites:
    """Chunks waiting to be added into one mix (a C-contiguous ``(frames, channels)`` int16
    array), in order. Holds a reference to every payload added until `apply`."""

    __slots__ = ("_ops", "_payloads", "_size")

    def __init__(self) -> None:
        self._payloads: list[bytes] = []
        self._ops = array("q")
        self._size = 0  # bytes of the payloads so far: the next one's offset once joined

    def __len__(self) -> int:
        """Chunks waiting."""
        return len(self._payloads)

    def add(self, payload: bytes, law: int, frame: int, channel: int) -> None:
        """Add the G.711 ``payload`` (``law``: ULAW or ALAW; one byte a sample) at row ``frame`` of
        ``channel``, when the mix is next applied. The caller keeps it within the mix."""
        n = len(payload)
        self._payloads.append(payload)
        self._ops.extend((self._size, n, frame, channel, law))
        self._size += n

    def apply(self, mix: np.ndarray) -> None:
        """Add every waiting chunk into ``mix`` (in the order added) and forget them. Raises
        ValueError for a mix that is not C-contiguous int16 of two dimensions (nothing written,
        the chunks still waiting) and for a chunk that does not fit in it (the caller's bug: the
        chunks before it added, every chunk forgotten)."""
        if not self._payloads:
            return
        if mix.dtype != np.int16 or mix.ndim != 2 or not mix.flags.c_contiguous:
            raise ValueError("the mix must be a C-contiguous (frames, channels) int16 array")
        payloads = b"".join(self._payloads)
        ops, count = self._ops, len(self._payloads)
        if _lib is None:
            applied = apply_numpy(mix, payloads, ops)
        else:
            applied = _lib.cs_mix_g711(
                _ffi.from_buffer("int16_t[]", mix, require_writable=True), mix.shape[0], mix.shape[1],
                _ffi.from_buffer(payloads), len(payloads), _ffi.from_buffer("int64_t[]", ops), count,
            )
        self._payloads = []
        self._ops = array("q")
        self._size = 0
        if applied != count:
            raise ValueError(f"chunk {applied} of {count} does not fit in a mix of shape {mix.shape}")


def apply_numpy(mix: np.ndarray, payloads: bytes, ops: array) -> int:
    """The twin of cs_mix_g711 (csrc/mix.h), the same contract: the number of ops applied."""
    frames, channels = mix.shape
    for k in range(len(ops) // FIELDS):
        offset, length, frame, channel, law = ops[FIELDS * k : FIELDS * (k + 1)]
        if (min(offset, length, frame, channel) < 0 or channel >= channels or law not in (ULAW, ALAW)
                or offset + length > len(payloads) or frame + length > frames):
            return k
        codes = payloads[offset : offset + length]
        pcm = _NUMPY.decode_ulaw(codes) if law == ULAW else _NUMPY.decode_alaw(codes)
        add_clipped(mix[frame : frame + length, channel], pcm)
    return len(ops) // FIELDS


def add_clipped(column: np.ndarray, pcm: np.ndarray) -> None:
    """Add ``pcm`` into ``column`` (an int16 view, written in place, the same length): the sum
    taken in 32 bits and clipped to 16, as cs_mix_g711 adds."""
    total = column.astype(np.int32)
    total += pcm
    column[:] = np.clip(total, -32768, 32767)
