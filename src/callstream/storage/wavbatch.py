"""Appends of blocks to many WAV files in one C call (``cs_append_batch``, csrc/append.h).

Two kinds of block: the WebSocket front end's pair of mu-law perspectives (`plan`: decoded or
interleaved in C, stereo files), and PCM the call core mixed already (`plan_pcm`: a RingCX
dialog's frames, any channel count, written as they are).

Theory of operation: the disk writer's threads hold Python's GIL around every system call made
from Python, and when the event loop keeps the interpreter busy each re-acquisition can wait a
whole switch interval (5 ms): three system calls per block (decode, write, header) capped a busy
server at a few hundred blocks a second. Here a thread plans a whole batch in Python (offsets
reserved on each `WavWriter`, no system call), then one C call decodes or interleaves, writes
the data and the headers and fsyncs, with the GIL released once. The disk writer plans and
prepares in the event loop (`AppendBatch`: Python work, no system call) and gives its threads only
the C call: measured at 1,000 calls, a thread's planning of ~150 blocks took 0.1-0.8 s of wall
time for a few ms of work, waiting for the GIL. The result is byte for byte what
`WavWriter.write` + `flush` would have written (tests/test_wavbatch.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from callstream.errors import RecordingError
from callstream.native import kernel as _kernel
from callstream.storage.wavfile import CHANNELS as STEREO
from callstream.storage.wavfile import WavEncoding, WavWriter

# the C kernel, or None (not built, or CALLSTREAM_NATIVE drops it); see native.py
_ffi, _lib = _kernel("append")

AVAILABLE: Final = _lib is not None  # False without the C extension: sinks write in Python


@dataclass(slots=True)
class PlannedAppend:
    """One block for one file, its offset reserved on ``writer`` (see `plan`, `plan_pcm`)."""

    writer: WavWriter
    left: Any  # mu-law bytes of the left channel; raw: the file's bytes (a buffer)
    right: bytes  # mu-law bytes of the right channel; raw: empty
    offset: int
    size: int  # bytes of the interleaved block in the file
    raw: bool = False  # `left` is written as it is (`plan_pcm`)
    # run in the writing thread after the batch (rare: a target's own file work that must follow
    # its blocks, e.g. a live sidecar's rewrite); may raise RecordingError
    after: Callable[[], None] | None = None


def plan(writer: WavWriter, left: bytes, right: bytes) -> PlannedAppend:
    """Reserve the place of one block (mu-law ``left``/``right`` of equal length, else
    ValueError; a writer of other than 2 channels: ValueError) at the end of ``writer``'s data.
    Raises RecordingError at the RIFF limit."""
    n = len(left)
    if n != len(right):
        raise ValueError(f"left has {n} samples, right has {len(right)}")
    if writer.channels != STEREO:
        raise ValueError(f"batched appends are stereo; {str(writer.path)!r} has {writer.channels} channels")
    size = n * writer.block_align
    return PlannedAppend(writer, left, right, writer.reserve(size), size)


def plan_pcm(writer: WavWriter, frames: np.ndarray) -> PlannedAppend:
    """Reserve the place of 16-bit PCM ``frames`` (int16, shape (n, writer.channels)) at the end
    of ``writer``'s data, to be written as `WavWriter.write` would (little-endian). ValueError for
    a writer that is not 16-bit PCM or frames of another shape; RecordingError at the RIFF
    limit."""
    if writer.encoding is not WavEncoding.PCM_16:
        raise ValueError(f"{str(writer.path)!r} is not 16-bit PCM")
    if frames.ndim != 2 or frames.shape[1] != writer.channels or frames.dtype != np.int16:
        raise ValueError(f"expected int16 frames of shape (n, {writer.channels}), got {frames.dtype} {frames.shape}")
    data = np.ascontiguousarray(frames, dtype="<i2")
    size = data.nbytes
    return PlannedAppend(writer, data, b"", writer.reserve(size), size, raw=True)


class AppendBatch:
    """Planned appends made ready for one C call: build it in the event loop (`prepare`: no
    system call), `run` it in a worker thread (the GIL is released for the whole call, so the
    thread needs it only to start and end), then take `results` in the event loop again."""

    def __init__(self, plans: list[PlannedAppend], *, fsync: bool = False) -> None:
        """After each file's last plan in ``plans`` its header is written, then (``fsync``) the
        file is fsynced."""
        if _lib is None:
            raise RuntimeError("callstream._mulaw is not built: no batched appends")
        self._plans = plans
        count = len(plans)
        self._jobs = jobs = _ffi.new("cs_append_job[]", max(count, 1))
        self._keep: list[Any] = []  # cffi buffers that must outlive the call
        self._last: dict[int, int] = {id(planned.writer): index for index, planned in enumerate(plans)}
        largest = 0
        pcm, ulaw, raw = _lib.CS_APPEND_PCM16, _lib.CS_APPEND_ULAW, _lib.CS_APPEND_RAW
        for index, planned in enumerate(plans):
            writer = planned.writer
            job = jobs[index]
            job.fd = writer.fileno()
            if planned.raw:
                job.mode = raw
                left = _ffi.from_buffer(planned.left)
                self._keep.append(left)
                job.left, job.samples = left, planned.size
            else:
                job.mode = pcm if writer.encoding is WavEncoding.PCM_16 else ulaw
                left, right = _ffi.from_buffer(planned.left), _ffi.from_buffer(planned.right)
                self._keep += (left, right)
                job.left, job.right = left, right
                job.samples = len(planned.left)
                largest = max(largest, planned.size)
            job.offset = planned.offset
            if self._last[id(writer)] == index:
                header = _ffi.from_buffer(writer.header_for_reserved())
                self._keep.append(header)
                job.header, job.header_size, job.fsync = header, len(header), fsync
        self._scratch = _ffi.new("uint8_t[]", max(largest, 1))
        self._scratch_size = largest
        self._ran = False

    def run(self) -> None:
        """The system calls, in any thread; once."""
        if self._ran:
            raise RuntimeError("the batch already ran")
        self._ran = True
        _lib.cs_append_batch(self._jobs, len(self._plans), self._scratch, self._scratch_size)

    def results(self) -> list[RecordingError | None]:
        """Per plan: None, or the RecordingError that stopped its file (that file's later blocks
        were not written and its reservations are cancelled). Reports to the writers; once."""
        if not self._ran:
            raise RuntimeError("the batch has not run")
        results: list[RecordingError | None] = []
        for index, planned in enumerate(self._plans):
            code = self._jobs[index].error
            if code:
                planned.writer.cancel_reserved()
                results.append(_error(planned.writer, code))
            else:
                planned.writer.appended(planned.size, header=self._last[id(planned.writer)] == index)
                results.append(None)
        self._keep.clear()
        return results


def append_all(plans: list[PlannedAppend], *, fsync: bool = False) -> list[RecordingError | None]:
    """Prepare, run and report a batch in the calling thread (see `AppendBatch`)."""
    if not plans:
        return []
    batch = AppendBatch(plans, fsync=fsync)
    batch.run()
    return batch.results()


def _error(writer: WavWriter, code: int) -> RecordingError:
    return RecordingError(f"cannot write {str(writer.path)!r}: {os.strerror(code)}")
