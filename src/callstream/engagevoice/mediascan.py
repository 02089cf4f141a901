"""The Media fast path for a `TextBatch`: one C call parses every message of a read.

Sans-IO, like protocol.py, which stays the reference: `cs_media_scan` (csrc/mediascan.h)
recognises Media messages in the platform's plain shape and decodes their payloads; every other
message is returned as text for `protocol.parse_message`, which alone decides what it means. So
for every message the result is what `parse_message` would make of it: the same ``(perspective,
sequence, payload)`` for a recognised Media message, or the message itself
(tests/test_mediascan.py checks that on random messages). Parsing a Media message through msgspec
and its Python wrapper cost ~2.5 µs; here it costs a fraction of that (benchmarks/bench_parse.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from callstream.call.batch import MediaFields, ScannedMedia
from callstream.engagevoice.protocol import DEFAULT_MAX_BYTES, MAX_MEDIA_PAYLOAD
from callstream.engagevoice.textbatch import TextBatch
from callstream.native import kernel as _kernel

# the C kernel, or None (not built, or CALLSTREAM_NATIVE drops it: every message takes the general
# parser); see native.py
_ffi, _lib = _kernel("mediascan")

_NOT_MEDIA = 2  # cs_media_scan's mark for a message it leaves to the general parser
# Batches of fewer messages go to the general parser whole: the C call's set-up (~8.5 us here)
# is only won back from about 5 messages on (bench_parse.py on 2026-12-02: 4.97 us per message
# in batches of 2, 0.87 in batches of 50, parse_message 2.43). A real-time call read on every
# arrival (--read-interval 0) brings a pair.
SMALL_BATCH = 6



class MediaScanner:
    """Scans `TextBatch`es (see the module's docstring). One per process is enough: it keeps
    scratch space for the C call between calls (allocating it per batch cost as much as scanning
    a batch of 10 messages), so use it between awaits only, like any sans-IO object.
    ``max_bytes``: as `protocol.parse_message`'s; a longer message is never recognised, so that
    the general parser raises for it. Batches under ``min_batch`` messages are not scanned: every
    message of them is returned as text."""

    def __init__(
        self, *, max_bytes: int = DEFAULT_MAX_BYTES, min_batch: int = SMALL_BATCH, vectors: bool = True
    ) -> None:
        """``min_batch``: smaller batches are left to the general parser whole. ``vectors``:
        False decodes base64 without the CPU's vector instructions (for tests: the same result)."""
        self._max_bytes = max_bytes
        self._vectors = int(vectors)
        self._min_batch = max(1, min_batch)
        self._capacity = 0  # messages the arrays hold
        self._room = 0  # bytes the scratch buffer holds
        if _ffi is not None:
            self._grow(256, 65536)  # a chunk's worth (the websockets adapter reads 64 KiB)
            self._written = _ffi.new("size_t *")

    def scan(self, batch: TextBatch) -> Sequence[MediaFields | str]:
        """One item per message of ``batch``, in order: a recognised Media message as a plain
        tuple ``(perspective, sequence, payload)`` (the fields of `events.Media`), any other
        message as its text, to be given to `protocol.parse_message`. When every message is
        recognised, a `ScannedMedia` (which `Timeline.push_run` places from its arrays), else a
        list. Never raises."""
        count = len(batch)
        if _lib is None or count < self._min_batch:
            return batch.messages()
        buffer = batch.buffer
        if count > self._capacity or len(buffer) > self._room:
            self._grow(count, len(buffer))
        recognised = _lib.cs_media_scan(
            _ffi.from_buffer(buffer), _ffi.from_buffer("uint32_t[]", batch.spans), count, self._max_bytes,
            MAX_MEDIA_PAYLOAD, self._scratch, self._media, self._sequences, self._written, self._vectors,
        )
        if recognised == count:  # the Media stream: no message for the general parser
            return ScannedMedia(
                _ffi.buffer(self._media, 12 * count)[:], _ffi.buffer(self._sequences, 8 * count)[:],
                _ffi.buffer(self._scratch, self._written[0])[:], count,
            )
        fields = _ffi.unpack(self._media, 3 * count)
        numbers = _ffi.unpack(self._sequences, count)
        payloads = _ffi.buffer(self._scratch, self._written[0])[:]
        messages = batch.messages()
        return [
            messages[i] if fields[3 * i] == _NOT_MEDIA
            else (fields[3 * i], numbers[i], payloads[fields[3 * i + 1] : fields[3 * i + 1] + fields[3 * i + 2]])
            for i in range(count)
        ]

    def _grow(self, count: int, size: int) -> None:
        """Room for ``count`` messages of ``size`` bytes in all (a payload is shorter than its
        message's base64, so the decoded payloads fit in as many bytes)."""
        if count > self._capacity:
            self._capacity = count
            self._media = _ffi.new("uint32_t[]", 3 * count)
            self._sequences = _ffi.new("int64_t[]", count)
        if size > self._room:
            self._room = size
            self._scratch = _ffi.new("uint8_t[]", size)
