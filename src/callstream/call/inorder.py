"""The steady state's fast path: a call's two in-order streams, placed in C (sans-IO).

`SteadyLanes` borrows both `reorder.Side`s of a `Timeline` into `cs_lane`s (csrc/inorder.h)
while both are in their steady state (`Side.is_steady`), places scanned batches
(`batch.ScannedMedia`) there in one C call each, and hands the sides back when a frame needs
anything else. csrc/inorder.c is the fast twin of the steady branch of `Timeline.push` (the
placement rule; tests/test_timeline.py compares them state for state): see timeline.py, "Steady
state". It touches a side only through `Side.lend`, `Side.settle` and `Side.take_back`.

While the lanes hold the sides, each side's ``held`` dict keeps its keys (so its length, which
the statistics report, stays right) but stale payloads, and its replay ring is empty; every
counter of the side is kept up to date after each `place`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from callstream.call.batch import ScannedMedia
from callstream.native import kernel as _kernel

# the C kernel, or None (not built, or CALLSTREAM_NATIVE drops it: timelines place every frame in
# Python); see native.py
_ffi, _lib = _kernel("inorder")

if TYPE_CHECKING:
    from callstream.call.reorder import Side

AVAILABLE = _lib is not None


class SteadyLanes:
    """The C lanes of one `Timeline` (needs the C extension: `AVAILABLE`). ``hold_limit`` and
    ``ring_limit``: the timeline's byte budgets (bytes), which size the lanes' pools."""

    def __init__(self, hold_limit: int, ring_limit: int) -> None:
        self._hold_limit = hold_limit
        self._ring_limit = ring_limit
        self._lanes = _ffi.new("cs_lane[2]")
        self._buffers: list[Any] = []  # what the lanes point into: kept alive here
        self._report = _ffi.new("int64_t[16]")
        # read back through a memoryview: its tolist() took 0.6 us where ffi.unpack took 1.4
        self._report_view = memoryview(_ffi.buffer(self._report)).cast("q")
        self._rings: list[memoryview] = []  # the lanes' ring pools, to slice released audio from

    def enter(self, left: Side, right: Side) -> None:
        """Take both sides over: each must be in its steady state (started, learnt, no late
        run, holding exactly ``next .. next + window - 1``, within its byte budgets)."""
        lanes = self._lanes  # (a new lane has window 0: nothing allocated yet)
        if any(lane.window != side.window or lane.ring_size != side.ring_size
               for lane, side in zip(lanes, (left, right), strict=True)):
            self._allocate(left, right)
        for lane, side in zip(lanes, (left, right), strict=True):
            self._load(lane, side)

    def place(self, left: Side, right: Side, items: ScannedMedia, start: int, block: int) -> int:
        """Place ``items[start:]`` as `Timeline.push_run` would, as far as the lanes can (see
        cs_inorder_place); released audio is appended to the sides' ``acc``. Returns the index
        of the first item not placed."""
        i = _lib.cs_inorder_place(
            self._lanes, items.fields, items.sequences, items.payloads, start, items.count,
            self._hold_limit, self._ring_limit, len(left.acc), len(right.acc), block, self._report,
        )
        # per side: its counters, then where the audio it released lies in its circular ring pool
        (nxt, received, placed, committed, held_bytes, ring_bytes, at, length,
         right_nxt, right_received, right_placed, right_committed, right_held_bytes, right_ring_bytes,
         right_at, right_length) = self._report_view.tolist()
        ring = self._rings[0]
        wrapped = at + length - len(ring)
        if wrapped <= 0:
            left.settle(nxt, received, placed, committed, held_bytes, ring_bytes, ring[at : at + length])
        else:
            left.settle(nxt, received, placed, committed, held_bytes, ring_bytes, ring[at:], ring[:wrapped])
        ring = self._rings[1]
        wrapped = right_at + right_length - len(ring)
        if wrapped <= 0:
            right.settle(right_nxt, right_received, right_placed, right_committed, right_held_bytes,
                         right_ring_bytes, ring[right_at : right_at + right_length])
        else:
            right.settle(right_nxt, right_received, right_placed, right_committed, right_held_bytes,
                         right_ring_bytes, ring[right_at:], ring[:wrapped])
        return i

    def leave(self, left: Side, right: Side) -> None:
        """Hand both sides back: their held payloads and replay rings as the lanes left them."""
        for index, side in enumerate((left, right)):
            side.take_back(*self.export(index))

    def export(self, index: int) -> tuple[dict[int, bytes], list[int | None], list[bytes | None]]:
        """Side ``index``'s (0 left, 1 right) held frames and replay ring, built from its lane.
        The lane keeps them."""
        lane = self._lanes[index]
        nxt, window, size = lane.next, lane.window, lane.ring_size
        pool = _rotated(lane.held_pool, lane.held_cap, lane.held_start)
        lengths = _ffi.unpack(lane.held_len, window)
        lengths = lengths[lane.held_head :] + lengths[: lane.held_head]
        held: dict[int, bytes] = {}
        position = 0
        for number, length in enumerate(lengths, nxt):
            held[number] = pool[position : position + length]
            position += length
        pool = _rotated(lane.ring_pool, lane.ring_cap, lane.ring_start)
        # one unpack per array: indexing a cdata array element by element cost most of a leave
        ring_lengths = _ffi.unpack(lane.ring_len, size)
        none = _lib.CS_NO_SEQUENCE
        ring_seq: list[int | None] = [None if n == none else n for n in _ffi.unpack(lane.ring_seq, size)]
        ring_payload: list[bytes | None] = [None] * size
        position = 0
        first = nxt % size
        for slot in [*range(first, size), *range(first)]:
            length = ring_lengths[slot]
            if length >= 0:
                ring_payload[slot] = pool[position : position + length]
                position += length
        return held, ring_seq, ring_payload

    def _allocate(self, left: Side, right: Side) -> None:
        self._buffers = []
        self._rings = []
        for lane, side in zip(self._lanes, (left, right), strict=True):
            buffers = (
                _ffi.new("uint8_t[]", self._hold_limit), _ffi.new("uint32_t[]", side.window),
                _ffi.new("uint8_t[]", self._ring_limit), _ffi.new("int64_t[]", side.ring_size),
                _ffi.new("int32_t[]", side.ring_size),
            )
            lane.held_pool, lane.held_len, lane.ring_pool, lane.ring_seq, lane.ring_len = buffers
            lane.held_cap, lane.ring_cap = self._hold_limit, self._ring_limit
            lane.window, lane.ring_size = side.window, side.ring_size
            self._buffers.append(buffers)
            self._rings.append(memoryview(_ffi.buffer(buffers[2])))

    @staticmethod
    def _load(lane: Any, side: Side) -> None:
        nxt = side.next
        payloads, ring_seq, ring_payload = side.lend()  # the lane holds them from now on
        data = b"".join(payloads)
        _ffi.memmove(lane.held_pool, data, len(data))
        lane.held_len[0 : side.window] = [len(payload) for payload in payloads]
        lane.held_start = lane.held_head = 0
        size = side.ring_size
        first = nxt % size
        slots = [(first + k) % size for k in range(size)]
        data = b"".join(payload for slot in slots if (payload := ring_payload[slot]) is not None)
        _ffi.memmove(lane.ring_pool, data, len(data))
        lane.ring_start = 0
        lane.ring_len[0:size] = [-1 if payload is None else len(payload) for payload in ring_payload]
        lane.ring_seq[0:size] = [_lib.CS_NO_SEQUENCE if number is None else number for number in ring_seq]
        lane.next, lane.received, lane.placed, lane.committed = nxt, side.received, side.placed, side.committed
        lane.held_bytes, lane.ring_bytes, lane.force_limit = side.held_bytes, side.ring_bytes, side.force_limit


def _rotated(pool: Any, capacity: int, start: int) -> bytes:
    """A circular pool's bytes from ``start`` on, as one linear bytes object."""
    data = _ffi.buffer(pool, capacity)[:]
    return data[start:] + data[:start]
