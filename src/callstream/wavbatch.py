"""Appends of stereo blocks to many WAV files in one C call (``cs_append_batch``, csrc/append.h).

Theory of operation: the disk writer's threads hold Python's GIL around every system call made
from Python, and when the event loop keeps the interpreter busy each re-acquisition can wait a
whole switch interval (5 ms): three system calls per block (decode, write, header) capped a busy
server at a few hundred blocks a second. Here a thread plans a whole batch in Python (offsets
reserved on each `WavWriter`, no system call), then one C call decodes or interleaves, writes
the data and the headers and fsyncs, with the GIL released once. The result is byte for byte
what `WavWriter.write` + `flush` would have written (tests/test_wavbatch.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from .errors import RecordingError
from .wavfile import WavEncoding, WavWriter

try:
    from ._mulaw import ffi as _ffi
    from ._mulaw import lib as _lib
except ImportError:  # pragma: no cover - exercised by the numpy-only build
    _ffi = _lib = None

AVAILABLE: Final = _lib is not None  # False without the C extension: sinks write in Python


@dataclass(slots=True)
class PlannedAppend:
    """One block for one file, its offset reserved on ``writer`` (see `plan`)."""

    writer: WavWriter
    left: bytes
    right: bytes
    offset: int
    size: int  # bytes of the interleaved block in the file


def plan(writer: WavWriter, left: bytes, right: bytes) -> PlannedAppend:
    """Reserve the place of one block (mu-law ``left``/``right`` of equal length, else
    ValueError) at the end of ``writer``'s data. Raises RecordingError at the RIFF limit."""
    n = len(left)
    if n != len(right):
        raise ValueError(f"left has {n} samples, right has {len(right)}")
    size = n * writer.encoding.block_align
    return PlannedAppend(writer, left, right, writer.reserve(size), size)


def append_all(plans: list[PlannedAppend], *, fsync: bool = False) -> list[RecordingError | None]:
    """Write every planned block in order; after each file's last block of the batch its header,
    then (``fsync``) fsync it. Returns, per plan, None or the RecordingError that stopped its file
    (that file's later blocks are not written and its reservations are cancelled)."""
    if not plans:
        return []
    if _lib is None:
        raise RuntimeError("callstream._mulaw is not built: no batched appends")
    count = len(plans)
    jobs = _ffi.new("cs_append_job[]", count)
    keep = []  # cffi buffers that must outlive the call
    last: dict[int, int] = {}  # id(writer) -> index of its last plan
    for index, planned in enumerate(plans):
        last[id(planned.writer)] = index
    largest = 0
    for index, planned in enumerate(plans):
        writer = planned.writer
        job = jobs[index]
        job.fd = writer.fileno()
        job.mode = _lib.CS_APPEND_PCM16 if writer.encoding is WavEncoding.PCM_16 else _lib.CS_APPEND_ULAW
        left, right = _ffi.from_buffer(planned.left), _ffi.from_buffer(planned.right)
        keep += (left, right)
        job.left, job.right = left, right
        job.samples = len(planned.left)
        job.offset = planned.offset
        if last[id(writer)] == index:
            header = _ffi.from_buffer(writer.header_for_reserved())
            keep.append(header)
            job.header, job.header_size, job.fsync = header, len(header), fsync
        largest = max(largest, planned.size)
    scratch = _ffi.new("uint8_t[]", max(largest, 1))
    _lib.cs_append_batch(jobs, count, scratch, largest)
    results: list[RecordingError | None] = []
    for index, planned in enumerate(plans):
        code = jobs[index].error
        if code:
            planned.writer.cancel_reserved()
            results.append(_error(planned.writer, code))
        else:
            planned.writer.appended(planned.size, header=last[id(planned.writer)] == index)
            results.append(None)
    return results


def _error(writer: WavWriter, code: int) -> RecordingError:
    return RecordingError(f"cannot write {str(writer.path)!r}: {os.strerror(code)}")
