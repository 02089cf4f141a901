"""`MixWrites`: the segment mixer's G.711 chunks, decoded and added into its mix once per block.

Sans-IO. The mixer (`callstream.call.segments`) decides where each chunk of audio goes; writing
it there -- decoding the G.711 codes and adding them, saturating, into one channel of the
interleaved int16 mix -- waits here until the mix is read (a block cut) or changes shape, and
then happens for every waiting chunk in one call of the C kernel (csrc/mix.c, ``cs_mix_g711``) or
of its numpy twin (`apply_numpy`), in the order the chunks were added. At a block's cut
(`MixWrites.cut`) the same call (``cs_mix_cut``; twin: `cut_numpy`) cuts the block: what the mix
held before (audio past the last cut, L16) copied out and moved up, and the chunks decoded and
added straight into the block or, past its end, into the mix. At 600 dialogs the mixes do not
stay in the cache, and a cut is mostly memory: applied into the mix, then copied and cleared in
numpy's and memoryviews' steps, it cost 65 us (benchmarks/RESULTS.md, 2026-12-06 19:45 UTC).

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

__all__ = ["ALAW", "AVAILABLE", "ULAW", "MixWrites", "add_clipped", "apply_numpy", "cut_numpy"]

# the C kernel, or None (not built, or CALLSTREAM_NATIVE drops "mix": the numpy twin runs)
_ffi, _lib = _kernel("mix")
AVAILABLE: Final = _lib is not None

ULAW: Final = 0  # law codes of an op (csrc/mix.h: CS_MIX_ULAW, CS_MIX_ALAW)
ALAW: Final = 1
FIELDS: Final = 5  # int64s per op: offset, length, frame, channel, law
_NUMPY = codec.NumpyBackend()


class MixWrites:
    """Chunks waiting to be added into one mix (a C-contiguous ``(frames, channels)`` int16
    array), in order. Holds a reference to every payload added until `apply` or `cut`."""

    __slots__ = ("_ops", "_payloads", "_size", "end")

    def __init__(self) -> None:
        self._payloads: list[bytes] = []
        self._ops = array("q")
        self._size = 0  # bytes of the payloads so far: the next one's offset once joined
        self.end = 0  # the row after the last one a waiting chunk reaches (0: none waits)

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
        if frame + n > self.end:
            self.end = frame + n

    def apply(self, mix: np.ndarray) -> None:
        """Add every waiting chunk into ``mix`` (in the order added) and forget them. Raises
        ValueError for a mix that is not C-contiguous int16 of two dimensions (nothing written,
        the chunks still waiting) and for a chunk that does not fit in it (the caller's bug: the
        chunks before it added, every chunk forgotten)."""
        if self._payloads:
            self._run(mix, None, 0, 0)

    def cut(self, mix: np.ndarray, n: int, dirty: int) -> np.ndarray:
        """A block's cut: `apply`, then the first ``n`` frames of ``mix`` out as a new ``(n,
        channels)`` array (the caller's), and the mix moved up by ``n`` (zero in its last ``n``).
        ``dirty``: the mix is zero from this frame on, but for the waiting chunks (beyond it the
        C kernel neither reads nor clears it: a cut costs the memory of its audio only). Raises
        ValueError as `apply` does, and for ``n`` or ``dirty`` beyond the mix; nothing is
        written then."""
        if not 0 <= n <= len(mix) or not 0 <= dirty <= len(mix):
            raise ValueError(f"cannot cut {n} frames written to {dirty} of a mix of {len(mix)}")
        out = np.empty((n, mix.shape[1]), dtype=np.int16)
        self._run(mix, out, n, dirty)
        return out

    def _run(self, mix: np.ndarray, out: np.ndarray | None, n: int, dirty: int) -> None:
        if mix.dtype != np.int16 or mix.ndim != 2 or not mix.flags.c_contiguous:
            raise ValueError("the mix must be a C-contiguous (frames, channels) int16 array")
        payloads = b"".join(self._payloads)
        ops, count = self._ops, len(self._payloads)
        if _lib is None:
            applied = apply_numpy(mix, payloads, ops) if out is None else cut_numpy(mix, payloads, ops, out, n, dirty)
        elif out is None:
            applied = _lib.cs_mix_g711(
                _ffi.from_buffer("int16_t[]", mix, require_writable=True), mix.shape[0], mix.shape[1],
                _ffi.from_buffer(payloads), len(payloads), _ffi.from_buffer("int64_t[]", ops), count,
            )
        else:  # one call: the block's copies with the writes, the GIL released once
            applied = _lib.cs_mix_cut(
                _ffi.from_buffer("int16_t[]", mix, require_writable=True), mix.shape[0], mix.shape[1],
                _ffi.from_buffer(payloads), len(payloads), _ffi.from_buffer("int64_t[]", ops), count,
                _ffi.from_buffer("int16_t[]", out, require_writable=True), n, dirty,
            )
        self._payloads = []
        self._ops = array("q")
        self._size = 0
        self.end = 0
        if applied != count:
            raise ValueError(f"chunk {applied} of {count} does not fit in a mix of shape {mix.shape}")


def _fits(op: array, frames: int, channels: int, size: int) -> bool:
    offset, length, frame, channel, law = op
    return not (min(offset, length, frame, channel) < 0 or channel >= channels or law not in (ULAW, ALAW)
                or offset + length > size or frame + length > frames)


def apply_numpy(mix: np.ndarray, payloads: bytes, ops: array) -> int:
    """The twin of cs_mix_g711 (csrc/mix.h), the same contract: the number of ops applied."""
    frames, channels = mix.shape
    for k in range(len(ops) // FIELDS):
        offset, length, frame, channel, law = op = ops[FIELDS * k : FIELDS * (k + 1)]
        if not _fits(op, frames, channels, len(payloads)):
            return k
        codes = payloads[offset : offset + length]
        pcm = _NUMPY.decode_ulaw(codes) if law == ULAW else _NUMPY.decode_alaw(codes)
        add_clipped(mix[frame : frame + length, channel], pcm)
    return len(ops) // FIELDS


def cut_numpy(mix: np.ndarray, payloads: bytes, ops: array, out: np.ndarray, n: int, dirty: int) -> int:
    """The twin of cs_mix_cut (csrc/mix.h), the same contract: `apply_numpy`, then `_shift` of
    the frames the mix may hold audio in."""
    frames, channels = mix.shape
    count = len(ops) // FIELDS
    if n > frames or dirty > frames:
        return count + 1
    used = dirty
    for k in range(count):
        op = ops[FIELDS * k : FIELDS * (k + 1)]
        if not _fits(op, frames, channels, len(payloads)):
            return k
        used = max(used, op[2] + op[1])
    apply_numpy(mix, payloads, ops)
    _shift(mix, out, n, used)
    return count


def _shift(mix: np.ndarray, out: np.ndarray, n: int, used: int) -> None:
    """Frames ``[0, n)`` of ``mix`` into ``out``, frames ``[n, used)`` moved to the start, zero
    from ``used - n`` (or 0) to ``used`` (the mix zero from ``used`` on: then it is moved up by
    ``n``). Byte copies through memoryviews: numpy's copies of more than a few hundred elements
    release the GIL, and each release hands it to the gRPC thread for up to a switch interval."""
    if n == 0:
        return
    row = mix.shape[1] * mix.itemsize
    raw = memoryview(mix).cast("B")
    memoryview(out).cast("B")[:] = raw[: n * row]
    if used > n:
        raw[: (used - n) * row] = raw[n * row : used * row]  # overlapping: a memmove
        raw[(used - n) * row : used * row] = bytes(n * row)
    elif used > 0:
        raw[: used * row] = bytes(used * row)


def add_clipped(column: np.ndarray, pcm: np.ndarray) -> None:
    """Add ``pcm`` into ``column`` (an int16 view, written in place, the same length): the sum
    taken in 32 bits and clipped to 16, as cs_mix_g711 adds."""
    total = column.astype(np.int32)
    total += pcm
    column[:] = np.clip(total, -32768, 32767)
