"""The segment mixer's writes: csrc/mix.c (``cs_mix_g711``, and ``cs_mix_cut``, which cuts a
block after them) against their numpy twins (`mixing.apply_numpy`, `mixing.cut_numpy`) and
against G.711, a saturating add and a cut written out here; `MixWrites` with whichever runs in
this process."""

from __future__ import annotations

from array import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream import codec
from callstream.call import mixing
from callstream.call.mixing import ALAW, ULAW, MixWrites, apply_numpy, cut_numpy

NUMPY = codec.NumpyBackend()
needs_c = pytest.mark.skipif(not mixing.AVAILABLE, reason="callstream._mulaw is not built")


def apply_c(mix: np.ndarray, payloads: bytes, ops: array) -> int:
    ffi, lib = mixing._ffi, mixing._lib
    return lib.cs_mix_g711(ffi.from_buffer("int16_t[]", mix, require_writable=True), mix.shape[0], mix.shape[1],
                           ffi.from_buffer(payloads), len(payloads), ffi.from_buffer("int64_t[]", ops),
                           len(ops) // mixing.FIELDS)


def cut_c(mix: np.ndarray, payloads: bytes, ops: array, out: np.ndarray, n: int, used: int) -> int:
    ffi, lib = mixing._ffi, mixing._lib
    return lib.cs_mix_cut(ffi.from_buffer("int16_t[]", mix, require_writable=True), mix.shape[0], mix.shape[1],
                          ffi.from_buffer(payloads), len(payloads), ffi.from_buffer("int64_t[]", ops),
                          len(ops) // mixing.FIELDS, ffi.from_buffer("int16_t[]", out, require_writable=True),
                          n, used)


def reference_cut(mix: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the block, the mix after it): the first ``n`` frames, and the rest moved up, zero behind."""
    after = np.zeros_like(mix)
    after[: len(mix) - n] = mix[n:]
    return mix[:n].copy(), after


def reference(mix: np.ndarray, payloads: bytes, ops: array) -> None:
    """Each op's samples decoded and added one by one, in Python integers, clipped to 16 bits."""
    for k in range(len(ops) // mixing.FIELDS):
        offset, length, frame, channel, law = ops[mixing.FIELDS * k : mixing.FIELDS * (k + 1)]
        codes = payloads[offset : offset + length]
        pcm = NUMPY.decode_ulaw(codes) if law == ULAW else NUMPY.decode_alaw(codes)
        for i, sample in enumerate(pcm.tolist()):
            mix[frame + i, channel] = min(32767, max(-32768, int(mix[frame + i, channel]) + sample))


@st.composite
def mixes(draw: st.DrawFn) -> tuple[np.ndarray, bytes, array]:
    """A mix (some of it loud already) and ops that fit in it: chunks of any length (a piece of
    the C's 512 and more), overlapping on a channel, either law; extreme codes make the sums clip."""
    channels = draw(st.integers(1, 4))
    frames = draw(st.integers(1, 1400))
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))  # the bulk from a seed: quick to draw
    loud = np.array([-32768, -32000, -1, 0, 1, 32000, 32767], dtype=np.int16)
    mix = rng.choice(loud, (frames, channels)) if draw(st.booleans()) else np.zeros((frames, channels), np.int16)
    extreme = np.array([0x00, 0x80, 0x2A, 0xAA, 0xFF], dtype=np.uint8)
    payloads, ops = b"", array("q")
    for _ in range(draw(st.integers(0, 6))):
        frame = draw(st.integers(0, frames - 1))
        length = draw(st.integers(0, frames - frame))
        codes = rng.choice(extreme, length) if draw(st.booleans()) else rng.integers(0, 256, length, np.uint8)
        chunk = codes.tobytes()
        ops.extend((len(payloads), len(chunk), frame, draw(st.integers(0, channels - 1)),
                    draw(st.sampled_from([ULAW, ALAW]))))
        payloads += chunk
    return mix, payloads, ops


@settings(max_examples=150, deadline=None)
@given(mixes())
def test_the_twin_adds_every_chunk_saturating_in_order(case: tuple[np.ndarray, bytes, array]) -> None:
    mix, payloads, ops = case
    expected = mix.copy()
    reference(expected, payloads, ops)
    assert apply_numpy(mix, payloads, ops) == len(ops) // mixing.FIELDS
    np.testing.assert_array_equal(mix, expected)


@needs_c
@settings(max_examples=300, deadline=None)
@given(mixes())
def test_the_kernel_is_its_twin(case: tuple[np.ndarray, bytes, array]) -> None:
    mix, payloads, ops = case
    twin = mix.copy()
    assert apply_numpy(twin, payloads, ops) == apply_c(mix, payloads, ops) == len(ops) // mixing.FIELDS
    np.testing.assert_array_equal(mix, twin)


BAD_OPS = [  # one field at a time out of a 10-frame stereo mix and 8 bytes of payload
    (0, 8, 3, 0, ULAW),  # past the mix's end
    (4, 5, 0, 0, ULAW),  # past the payloads' end
    (0, 4, 0, 2, ULAW),  # no such channel
    (0, 4, 0, 0, 2),  # no such law
    (-1, 4, 0, 0, ULAW), (0, -1, 0, 0, ULAW), (0, 4, -1, 0, ULAW), (0, 4, 0, -1, ULAW),
]


@pytest.mark.parametrize("bad", BAD_OPS)
@pytest.mark.parametrize("apply", [apply_numpy, pytest.param(apply_c, marks=needs_c)])
def test_an_op_out_of_bounds_stops_before_it(apply, bad: tuple[int, ...]) -> None:
    mix = np.zeros((10, 2), dtype=np.int16)
    ops = array("q", (0, 2, 0, 1, ULAW, *bad, 2, 2, 5, 0, ULAW))
    assert apply(mix, bytes(range(1, 9)), ops) == 1  # the first applied, the bad one and the next not
    expected = np.zeros((10, 2), dtype=np.int16)
    expected[0:2, 1] = NUMPY.decode_ulaw(bytes((1, 2)))
    np.testing.assert_array_equal(mix, expected)


def test_mix_writes_wait_until_applied_then_forget() -> None:
    mix = np.zeros((6, 2), dtype=np.int16)
    writes = MixWrites()
    writes.add(bytes((0x00, 0x00)), ULAW, 1, 0)  # -32124 twice
    writes.add(bytes((0x00,)), ULAW, 2, 0)  # onto the second: clipped
    writes.add(bytes((0xD5, 0xD5, 0xD5)), ALAW, 3, 1)
    assert len(writes) == 3 and not mix.any()
    writes.apply(mix)
    assert len(writes) == 0
    np.testing.assert_array_equal(mix, [[0, 0], [-32124, 0], [-32768, 0], [0, 8], [0, 8], [0, 8]])
    writes.apply(mix)  # nothing waits: nothing added twice
    assert mix[1, 0] == -32124


def test_mix_writes_refuse_a_mix_they_cannot_write() -> None:
    writes = MixWrites()
    writes.add(b"\x00", ULAW, 0, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        writes.apply(np.zeros((4, 2), dtype=np.int16).T)
    assert len(writes) == 1  # still waiting
    with pytest.raises(ValueError, match="chunk 0 of 1 does not fit"):
        writes.apply(np.zeros((4, 1), dtype=np.int16)[:0])
    assert len(writes) == 0


@st.composite
def cuts(draw: st.DrawFn) -> tuple[np.ndarray, bytes, array, int, int]:
    """`mixes` that hold audio up to ``dirty`` only (zero from there), and a cut of ``n`` frames:
    the ops anywhere, before, across and after both."""
    mix, payloads, ops = draw(mixes())
    frames = len(mix)
    dirty = draw(st.integers(0, frames))
    mix[dirty:] = 0
    return mix, payloads, ops, draw(st.integers(0, frames)), dirty


@needs_c
@settings(max_examples=400, deadline=None)
@given(cuts())
def test_the_cut_kernel_is_its_twin_and_the_cut_written_out(case: tuple[np.ndarray, bytes, array, int, int]) -> None:
    mix, payloads, ops, n, dirty = case
    twin = mix.copy()
    expected = mix.copy()
    reference(expected, payloads, ops)
    block, after = reference_cut(expected, n)
    out, twin_out = np.full((n, mix.shape[1]), 7, np.int16), np.full((n, mix.shape[1]), 7, np.int16)
    count = len(ops) // mixing.FIELDS
    assert cut_c(mix, payloads, ops, out, n, dirty) == cut_numpy(twin, payloads, ops, twin_out, n, dirty) == count
    np.testing.assert_array_equal(out, block)
    np.testing.assert_array_equal(twin_out, block)
    np.testing.assert_array_equal(mix, after)
    np.testing.assert_array_equal(twin, after)


@pytest.mark.parametrize("cut", [cut_numpy, pytest.param(cut_c, marks=needs_c)])
def test_a_cut_writes_nothing_when_an_op_or_the_cut_does_not_fit(cut) -> None:
    mix = np.arange(20, dtype=np.int16).reshape(10, 2)
    before = mix.copy()
    out = np.full((4, 2), 7, np.int16)
    ops = array("q", (0, 2, 0, 1, ULAW, 0, 8, 3, 0, ULAW))  # the second past the mix's end
    assert cut(mix, bytes(8), ops, out, 4, 10) == 1
    assert cut(mix, b"", array("q"), out, 11, 10) == 1  # more than the mix: count + 1
    assert cut(mix, b"", array("q"), out, 4, 11) == 1
    np.testing.assert_array_equal(mix, before)
    assert (out == 7).all()


def test_mix_writes_cut_a_block_after_the_writes() -> None:
    mix = np.zeros((6, 2), dtype=np.int16)
    mix[1, 0] = 3
    mix[4, 1] = 5  # audio already there (an L16 write): the mix holds audio up to 5
    writes = MixWrites()
    writes.add(bytes((0x00, 0x00)), ULAW, 1, 0)  # -32124 twice, onto the 3 first
    writes.add(bytes((0xD5,)), ALAW, 3, 1)  # 8
    writes.add(bytes((0xFF,)), ULAW, 5, 0)  # 0, past the audio
    assert writes.end == 6
    block = writes.cut(mix, 2, 5)
    np.testing.assert_array_equal(block, [[0, 0], [-32121, 0]])
    np.testing.assert_array_equal(mix, [[-32124, 0], [0, 8], [0, 5], [0, 0], [0, 0], [0, 0]])
    assert len(writes) == 0 and writes.end == 0
    with pytest.raises(ValueError, match="cannot cut 7 frames"):
        writes.cut(mix, 7, 5)
