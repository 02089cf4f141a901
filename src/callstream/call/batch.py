"""A batch of Media events as arrays: the call core's input from a front end's fast scan.

`ScannedMedia` holds what a scan of many Media messages found (``engagevoice.mediascan`` fills it
from `cs_media_scan`) without a Python object per message: `Timeline.push_run` places its steady
state from the arrays in C, and it reads as a sequence of ``(perspective, sequence, payload)``
tuples for everything else. Sans-IO.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from typing import overload

__all__ = ["MediaFields", "ScannedMedia"]

MediaFields = tuple[int, int, bytes]  # perspective (0 or 1), sequence number, mu-law payload
_FIELDS = struct.Struct("=3I")  # a ScannedMedia's fields of one message
_SEQUENCE = struct.Struct("=q")


class ScannedMedia(Sequence[MediaFields]):
    """A batch of Media messages as `cs_media_scan` left them (csrc/mediascan.h), owned: item i
    is ``(fields[3i], sequences[i], payloads[fields[3i+1] : fields[3i+1] + fields[3i+2]])``.

    ``fields``: perspective, payload offset and payload length per message, unsigned 32-bit;
    ``sequences``: signed 64-bit; ``payloads``: the decoded payloads back to back (all as
    bytes, in the machine's byte order). `Timeline.push_run` places the steady state of a call
    from these arrays in C; the tuples are only built (once) for whatever needs them."""

    __slots__ = ("_tuples", "count", "fields", "payloads", "sequences")

    def __init__(self, fields: bytes, sequences: bytes, payloads: bytes, count: int) -> None:
        self.fields = fields
        self.sequences = sequences
        self.payloads = payloads
        self.count = count
        self._tuples: list[MediaFields] | None = None

    @classmethod
    def from_tuples(cls, items: Sequence[MediaFields]) -> ScannedMedia:
        """The batch `MediaScanner.scan` would make of these messages (for tests, benchmarks)."""
        fields, payloads, position = array("I"), bytearray(), 0
        for perspective, _, payload in items:
            fields.extend((perspective, position, len(payload)))
            payloads += payload
            position += len(payload)
        numbers = array("q", [sequence for _, sequence, _ in items])
        return cls(fields.tobytes(), numbers.tobytes(), bytes(payloads), len(items))

    def tuples(self) -> list[MediaFields]:
        """The items as a list of plain tuples (built on the first call)."""
        if self._tuples is None:
            fields = array("I", self.fields)
            payloads = self.payloads
            self._tuples = [
                (perspective, number, payloads[start : start + length])
                for perspective, start, length, number in zip(
                    fields[0::3], fields[1::3], fields[2::3], array("q", self.sequences), strict=True
                )
            ]
        return self._tuples

    def __len__(self) -> int:
        return self.count

    @overload
    def __getitem__(self, index: int) -> MediaFields: ...
    @overload
    def __getitem__(self, index: slice) -> list[MediaFields]: ...
    def __getitem__(self, index: int | slice) -> MediaFields | list[MediaFields]:
        if self._tuples is None and type(index) is int and 0 <= index < self.count:
            # one item (the recorder looks at the one push_run stopped before): not the list
            perspective, start, length = _FIELDS.unpack_from(self.fields, 12 * index)
            (sequence,) = _SEQUENCE.unpack_from(self.sequences, 8 * index)
            return perspective, sequence, self.payloads[start : start + length]
        return self.tuples()[index]
