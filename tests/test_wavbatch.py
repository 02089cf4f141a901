"""Batched C appends write exactly what WavWriter.write + flush write, file by file, byte by byte."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.errors import RecordingError
from callstream.storage import wavbatch, wavfile
from callstream.storage.sinks import WavMulawSink, WavPcmSink

pytestmark = pytest.mark.skipif(not wavbatch.AVAILABLE, reason="the C extension is not built")

SINKS = (WavPcmSink, WavMulawSink)

# a batch: (file index, samples per channel) blocks, in order
block = st.tuples(st.integers(0, 3), st.integers(0, 400))
batches = st.lists(st.lists(block, min_size=0, max_size=12), min_size=1, max_size=5)


def payload(seed: int, n: int) -> tuple[bytes, bytes]:
    left = bytes((seed * 31 + i * 7) % 256 for i in range(n))
    right = bytes((seed * 17 + i * 13 + 5) % 256 for i in range(n))
    return left, right


@settings(max_examples=60, deadline=None)
@given(batches=batches, kind=st.sampled_from(SINKS), fsync=st.booleans())
def test_batched_appends_equal_python_writes(batches: list[list[tuple[int, int]]], kind: type, fsync: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        batched = [kind(root / f"b{i}.wav") for i in range(4)]
        python = [kind(root / f"p{i}.wav") for i in range(4)]
        seed = 0
        for batch in batches:
            plans = []
            for index, n in batch:
                seed += 1
                left, right = payload(seed, n)
                plans.append(batched[index].plan(left, right))
                python[index].write(left, right)
            assert wavbatch.append_all(plans, fsync=fsync) == [None] * len(plans)
            flush_and_compare(root, python, {index for index, _ in batch})
        close_and_compare(root, batched, python)


def flush_and_compare(root: Path, python: list, touched: set[int]) -> None:
    """The Python-path files ``touched`` by a batch flushed; each batched file (``b<i>.wav``) equal
    to its twin (``p<i>.wav``): between batches the header on disk already matches the data (a
    crash loses nothing)."""
    for index in touched:
        python[index].flush()
        assert (root / f"b{index}.wav").read_bytes() == (root / f"p{index}.wav").read_bytes()


def close_and_compare(root: Path, batched: list, python: list) -> None:
    """Both sides closed, each batched file equal to its twin, the same frames counted."""
    for index, (ours, theirs) in enumerate(zip(batched, python, strict=True)):
        assert ours.frames_written == theirs.frames_written
        ours.close()
        theirs.close()
        assert (root / f"b{index}.wav").read_bytes() == (root / f"p{index}.wav").read_bytes()


def frames_of(seed: int, n: int, channels: int) -> np.ndarray:
    values = (np.arange(n * channels, dtype=np.int64) * 2654435761 + seed * 40503) % 65536 - 32768
    return values.astype(np.int16).reshape(n, channels)


@settings(max_examples=60, deadline=None)
@given(batches=batches, channels=st.sampled_from((1, 2, 4)), fsync=st.booleans())
def test_batched_pcm_frames_equal_python_writes(
    batches: list[list[tuple[int, int]]], channels: int, fsync: bool
) -> None:
    """A RingCX dialog's mixed frames (any channel count) in a batch beside stereo mu-law
    blocks of other files: each file gets what write_pcm + flush (or write + flush) write."""
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        batched = [WavPcmSink(root / f"b{i}.wav", channels) for i in range(3)] + [WavPcmSink(root / "b3.wav")]
        python = [WavPcmSink(root / f"p{i}.wav", channels) for i in range(3)] + [WavPcmSink(root / "p3.wav")]
        seed = 0
        for batch in batches:
            plans = []
            for index, n in batch:
                seed += 1
                if index == 3:  # a WebSocket call's stereo mu-law block in the same batch
                    left, right = payload(seed, n)
                    plans.append(batched[3].plan(left, right))
                    python[3].write(left, right)
                    continue
                frames = frames_of(seed, n, channels)
                plan = batched[index].plan_pcm(frames)
                if plan is None:  # no frames: nothing to write
                    assert n == 0
                    continue
                plans.append(plan)
                python[index].write_pcm(frames)
            assert wavbatch.append_all(plans, fsync=fsync) == [None] * len(plans)
            flush_and_compare(root, python, {index for index, _ in batch})
        close_and_compare(root, batched, python)


def test_pcm_frames_of_another_shape_are_refused(tmp_path: Path) -> None:
    sink, mulaw = WavPcmSink(tmp_path / "a.wav", 4), WavMulawSink(tmp_path / "m.wav")
    try:
        with pytest.raises(ValueError, match="shape"):
            sink.plan_pcm(np.zeros((10, 2), np.int16))
        with pytest.raises(ValueError, match="16-bit PCM"):
            wavbatch.plan_pcm(mulaw._writer, np.zeros((10, 2), np.int16))
    finally:
        sink.close()
        mulaw.close()


@pytest.mark.parametrize("kind", SINKS)
def test_python_write_after_batched_appends_goes_at_the_end(tmp_path: Path, kind: type) -> None:
    batched, python = kind(tmp_path / "b.wav"), kind(tmp_path / "p.wav")
    first, second = payload(1, 50), payload(2, 30)
    assert wavbatch.append_all([batched.plan(*first)]) == [None]
    batched.write(*second)
    python.write(*first)
    python.write(*second)
    batched.close()
    python.close()
    assert (tmp_path / "b.wav").read_bytes() == (tmp_path / "p.wav").read_bytes()


def test_a_failing_file_stops_alone(tmp_path: Path) -> None:
    """ENOSPC from the kernel on one file: its blocks fail (the later ones too, so the file
    has no hole), its reservations are dropped; the other file is written in full."""
    doomed, healthy = WavPcmSink(tmp_path / "doomed.wav"), WavPcmSink(tmp_path / "healthy.wav")
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, doomed._writer.fileno())
    os.close(full)
    blocks = [payload(i, 80) for i in range(4)]
    plans = [doomed.plan(*blocks[0]), healthy.plan(*blocks[1]), doomed.plan(*blocks[2]), healthy.plan(*blocks[3])]
    results = wavbatch.append_all(plans)
    assert results[1] is None and results[3] is None
    for error in (results[0], results[2]):
        assert isinstance(error, RecordingError)
        assert "No space left on device" in str(error) and "doomed.wav" in str(error)
    assert doomed.frames_written == 0
    assert healthy.frames_written == 160
    reference = WavPcmSink(tmp_path / "reference.wav")
    reference.write(*blocks[1])
    reference.write(*blocks[3])
    reference.close()
    healthy.close()
    with pytest.raises(RecordingError):
        doomed.close()  # its header cannot be written either; the descriptor is released
    assert (tmp_path / "healthy.wav").read_bytes() == (tmp_path / "reference.wav").read_bytes()


def test_mismatched_lengths_are_refused(tmp_path: Path) -> None:
    sink = WavPcmSink(tmp_path / "a.wav")
    with pytest.raises(ValueError, match="left has 3 samples"):
        sink.plan(b"abc", b"ab")
    sink.close()
    assert wavbatch.append_all([]) == []


def test_batched_appends_refuse_a_writer_of_other_than_two_channels(tmp_path: Path) -> None:
    writer = wavfile.WavWriter(tmp_path / "a.wav", channels=3)
    with pytest.raises(ValueError, match="stereo"):
        wavbatch.plan(writer, b"\xff", b"\xff")
    writer.close()
