"""The mixer against our own read delay: a reader that falls behind (the process starved, the GIL
busy, the bridge full) delays every segment of a dialog alike and must never change the recording;
only evidence that the platform paused (one segment's media stopping while another's goes on, in
the stream's own order) becomes silence."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.call.events import AGENT, CONTACT, SegmentMedia, SegmentStarted
from callstream.call.segments import PcmBlock, SegmentMixer
from test_segments import N, finish_recording, pcm, tone_chunk

CHUNK = 0.1  # seconds of a chunk
TAKE = 0.5  # seconds between the recorder's takes
MAX_DELAY = 3.0  # seconds: the longest read delay the property applies


def sent_dialog(chunks: int, join: int, held: str | None, after: int, paused: int) -> list[tuple[float, str, int]]:
    """(time sent, segment, k), sorted: caller "c" from 0 s, agent "a" from chunk ``join``, 100 ms
    chunks each sent once spoken. ``held``: that segment's media stops after its chunk ``after`` for
    ``paused`` chunks, seq going on, while the other talks on."""
    sent = []
    for segment, first in (("c", 0), ("a", join)):
        for k in range(chunks - first):
            gap = paused if segment == held and k >= after else 0
            sent.append(((first + k + 1 + gap) * CHUNK, segment, k))
        if held is not None and segment != held:  # it talks on while the other is held, to the end
            sent.extend(((first + k + 1) * CHUNK, segment, k) for k in range(chunks - first, chunks - first + paused))
    sent.sort()  # the platform interleaves the segments as they are spoken
    return sent


def read_times(sent: list[tuple[float, str, int]], delays: list[tuple[int, float]]) -> list[float]:
    """When a reader that falls behind reads each message: from message i of ``delays`` on it is
    that many seconds behind (steps up: a stall that stays behind; steps down: a burst), reading
    in the stream's order (never before a message was sent, never out of order)."""
    reads, last, delay = [], 0.0, 0.0
    steps = dict(delays)
    for i, (at, _, _) in enumerate(sent):
        delay = steps.get(i, delay)
        last = max(last, at + delay)
        reads.append(last)
    return reads


def record(sent: list[tuple[float, str, int]], reads: list[float]) -> tuple[np.ndarray, SegmentMixer]:
    """The recorder: every TAKE seconds it handles what the reader has read, then ticks with the
    clock as the bridge gives it (the oldest event not taken yet, else now), popping blocks."""
    mixer = SegmentMixer()
    mixer.handle(SegmentStarted("c", "p-c", CONTACT, at=0.0))
    blocks: list[PcmBlock] = []
    seeds = {"c": 1, "a": 2}
    started = False
    i, take = 0, 0.0
    while i < len(sent):
        take += TAKE
        while i < len(sent) and reads[i] <= take:
            _, segment, k = sent[i]
            if segment == "a" and not started:
                mixer.handle(SegmentStarted("a", "p-a", AGENT, at=reads[i]))
                started = True
            mixer.handle(SegmentMedia(segment, tone_chunk(seeds[segment], k), k, 100, reads[i]))
            while (block := mixer.pop_block()) is not None:
                blocks.append(block)
            i += 1
        mixer.tick(min(take, reads[i]) if i < len(sent) else take)
        while (block := mixer.pop_block(partial=True)) is not None:
            blocks.append(block)
    return finish_recording(mixer, blocks), mixer


delays = st.lists(st.tuples(st.integers(0, 120), st.floats(0.0, MAX_DELAY)), max_size=5)


@settings(max_examples=80, deadline=None)
@given(chunks=st.integers(20, 60), join=st.integers(0, 8), steps=delays)
def test_property_a_late_reader_records_byte_identical(chunks: int, join: int, steps: list) -> None:
    """Any read delay up to MAX_DELAY seconds (stalls, a reader that stays behind, bursts) applied
    to the whole dialog gives the recording the undelayed reader gives, byte for byte, each
    segment whole, without a gap, no pause."""
    sent = sent_dialog(chunks, join, None, 0, 0)
    # from the message after both segments' first on: a lone segment, or a join, is still placed by
    # its arrival (docs/protocol.md)
    joined = 1 + max(next(i for i, (_, segment, _) in enumerate(sent) if segment == name) for name in "ca")
    steps = [(joined + i, delay) for i, delay in steps]
    expected, _ = record(sent, read_times(sent, []))
    audio, mixer = record(sent, read_times(sent, steps))
    assert audio.shape == expected.shape
    assert np.array_equal(audio, expected)
    assert mixer.statistics()["pauses"] == 0
    for channel, seed, count in ((1, 1, chunks), (0, 2, chunks - join)):
        sound = audio[:, channel][np.flatnonzero(audio[:, channel])]
        assert np.array_equal(sound, np.concatenate([pcm(tone_chunk(seed, k)) for k in range(count)]))


@settings(max_examples=60, deadline=None)
@given(chunks=st.integers(20, 50), held=st.sampled_from(["c", "a"]), after=st.integers(3, 10),
       paused=st.integers(3, 20), steps=delays)
def test_property_a_real_pause_is_silence_even_behind_a_late_reader(
        chunks: int, held: str, after: int, paused: int, steps: list) -> None:
    """One segment's media stops for ``paused`` chunks (more than the 200 ms window) while the
    other talks on: silence of the pause's length (to within a chunk) on its side, with or without
    a late reader, the other side whole."""
    sent = sent_dialog(chunks, 0, held, after, paused)
    steps = [(2 + i, delay) for i, delay in steps]  # after both segments' first (see above)
    for reads in (read_times(sent, []), read_times(sent, steps)):
        audio, mixer = record(sent, reads)
        channel = 1 if held == "c" else 0
        side = audio[:, channel]
        sound = np.flatnonzero(side)
        gaps = np.flatnonzero(np.diff(sound) > 1)
        assert len(gaps) == 1
        silence = int(sound[gaps[0] + 1] - sound[gaps[0]] - 1)
        assert abs(silence - paused * N) <= N
        assert sound[gaps[0]] + 1 == after * N  # the audio before the pause is where it was spoken
        pauses = {s["segment_id"]: s["statistics"]["pauses"] for s in mixer.segments()}
        assert pauses == {"c": int(held == "c"), "a": int(held == "a")}
        other = audio[:, 1 - channel]
        assert np.array_equal(other[np.flatnonzero(other)],
                              np.concatenate([pcm(tone_chunk(2 if held == "c" else 1, k))
                                              for k in range(chunks + paused)]))
