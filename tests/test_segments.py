"""The sans-IO segment mixer (RingCX dialogs' placement engine): placement in time, ordering,
gaps, pauses, mixing."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream import codec
from callstream.call.events import (
    AGENT,
    BOT,
    CONTACT,
    AudioFormat,
    SegmentInfo,
    SegmentMedia,
    SegmentStarted,
    SegmentStopped,
)
from callstream.call.segments import PcmBlock, SegmentMixer

RATE = 8000
N = 800  # samples of a 100 ms chunk


def tone_chunk(seed: int, k: int, n: int = N) -> bytes:
    """Mu-law bytes of chunk k of a segment: distinct per (seed, k), never silence."""
    rng = np.random.default_rng(seed * 100_003 + k)
    return bytes(rng.integers(0, 0x7F, n, dtype=np.uint8))  # negative half: never decodes to 0


def pcm(payload: bytes) -> np.ndarray:
    return codec.decode_ulaw(payload)


def finish_recording(mixer: SegmentMixer, blocks: list[PcmBlock]) -> np.ndarray:
    """``blocks`` (those popped so far) and the mixer's tail: the whole recording, the blocks
    checked to be contiguous."""
    tail = mixer.finish()
    if tail is not None:
        blocks.append(tail)
    position = 0
    for block in blocks:
        assert block.start == position
        position += block.samples
    if not blocks:
        return np.zeros((0, 2), dtype=np.int16)
    return np.concatenate([block.frames for block in blocks])


def collect(mixer: SegmentMixer) -> np.ndarray:
    """Pop every block, then finish (see `finish_recording`)."""
    blocks: list[PcmBlock] = []
    while (block := mixer.pop_block()) is not None:
        blocks.append(block)
    return finish_recording(mixer, blocks)


def start(segment: str, kind: str, at: float, fmt: AudioFormat | None = None) -> SegmentStarted:
    return SegmentStarted(segment, f"p-{segment}", kind, name=segment, audio_format=fmt, at=at)


def run(events: list, *, window_ms: float = 200.0, tick: bool = True) -> tuple[np.ndarray, SegmentMixer]:
    """Feed ``events`` (sorted by arrival), popping blocks as the recorder does."""
    mixer = SegmentMixer(window_ms=window_ms)
    blocks: list[PcmBlock] = []
    for event in events:
        if tick:
            mixer.tick(event.at)
        mixer.handle(event)
        while (block := mixer.pop_block()) is not None:
            blocks.append(block)
    return finish_recording(mixer, blocks), mixer


def test_two_participants_agent_joining_later_starts_where_it_joined() -> None:
    events: list = [start("c", CONTACT, 0.0, AudioFormat("PCMU", 8000, 100))]
    for k in range(30):  # the caller, 3 s
        events.append(SegmentMedia("c", tone_chunk(1, k), k, 100, (k + 1) * 0.1))
    events.append(start("a", AGENT, 1.0))
    for k in range(15):  # the agent from 1.0 s, its seq starting at 7
        events.append(SegmentMedia("a", tone_chunk(2, k), 7 + k, 100, 1.0 + (k + 1) * 0.1))
    events.sort(key=lambda e: e.at)
    audio, mixer = run(events)
    assert audio.shape == (30 * N, 2)
    caller = np.concatenate([pcm(tone_chunk(1, k)) for k in range(30)])
    agent = np.concatenate([pcm(tone_chunk(2, k)) for k in range(15)])
    assert np.array_equal(audio[:, 1], caller)
    joined = 10 * N  # arrived at 1.1 s, less one chunk
    assert np.array_equal(audio[:joined, 0], np.zeros(joined, np.int16))
    assert np.array_equal(audio[joined : joined + 15 * N, 0], agent)
    assert not audio[joined + 15 * N :, 0].any()
    segments = {s["segment_id"]: s for s in mixer.segments()}
    assert segments["a"]["joined_seconds"] == 1.0
    assert segments["a"]["codec"] == "PCMU"  # inherited from the first SegmentStarted


def test_hold_with_seq_continuing_becomes_silence_of_the_pause() -> None:
    events: list = [start("c", CONTACT, 0.0), start("a", AGENT, 0.0)]
    for k in range(40):  # the agent talks throughout
        events.append(SegmentMedia("a", tone_chunk(2, k), k, 100, (k + 1) * 0.1))
    for k in range(10):  # the caller: 1 s, a 2 s hold, 1 s more, seq continuing
        events.append(SegmentMedia("c", tone_chunk(1, k), k, 100, (k + 1) * 0.1))
    for k in range(10, 20):
        events.append(SegmentMedia("c", tone_chunk(1, k), k, 100, (k + 1) * 0.1 + 2.0))
    events.append(SegmentInfo("c", "HOLD", None, at=1.05))
    events.append(SegmentInfo("c", "UNHOLD", None, at=3.0))
    events.sort(key=lambda e: e.at)
    audio, mixer = run(events)
    caller = audio[:, 1]
    assert np.array_equal(caller[: 10 * N], np.concatenate([pcm(tone_chunk(1, k)) for k in range(10)]))
    assert not caller[10 * N : 30 * N].any()
    assert np.array_equal(caller[30 * N : 40 * N], np.concatenate([pcm(tone_chunk(1, k)) for k in range(10, 20)]))
    assert np.array_equal(audio[:, 0], np.concatenate([pcm(tone_chunk(2, k)) for k in range(40)]))
    stats = {s["segment_id"]: s["statistics"] for s in mixer.segments()}
    assert stats["c"]["pauses"] == 1 and stats["c"]["paused_seconds"] == 2.0
    assert [(i["event"], i["offset_seconds"]) for i in mixer.infos] == [("HOLD", 1.05), ("UNHOLD", 3.0)]


def test_reordering_duplicates_and_a_lost_chunk() -> None:
    order = [0, 1, 3, 2, 2, 4, 1, 6, 7, 8, 9]  # 3 before 2, 2 and 1 repeated, 5 lost
    events: list = [start("c", CONTACT, 0.0)]
    for i, k in enumerate(order):
        events.append(SegmentMedia("c", tone_chunk(1, k), 100 + k, 100, (i + 1) * 0.1))
    audio, mixer = run(events, tick=False)
    expected = [pcm(tone_chunk(1, k)) if k != 5 else np.zeros(N, np.int16) for k in range(10)]
    assert np.array_equal(audio[:, 1], np.concatenate(expected))
    stats = mixer.segments()[0]["statistics"]
    assert stats["duplicates"] == 2 and stats["lost_chunks"] == 1 and stats["reordered"] >= 1


def test_transfer_overlap_mixes_with_saturation_on_one_side() -> None:
    loud = np.full(N, 30000, np.int16)
    events: list = [start("a1", AGENT, 0.0, AudioFormat("L16", 8000, 100)), start("a2", AGENT, 0.0)]
    for k in range(3):
        events.append(SegmentMedia("a1", loud.astype(">i2").tobytes(), k, 100, (k + 1) * 0.1))
        events.append(SegmentMedia("a2", (loud // 3).astype(">i2").tobytes(), k, 100, (k + 1) * 0.1))
    events.append(SegmentStopped("a1", at=0.31))
    events.sort(key=lambda e: e.at)
    audio, _ = run(events)
    assert (audio[:, 0] == 32767).all()  # 30000 + 10000 clipped, not wrapped
    assert not audio[:, 1].any()


def test_overlapping_chunks_are_added_in_the_order_they_were_placed_whatever_their_codec() -> None:
    """Clipping makes a saturating add depend on its order: mu-law +32124 (placed first), mu-law
    -32124, then L16 +32000 gives 32000; L16 first (PCM written at once, before the G.711 chunks
    that wait for the block's cut) would give 643."""
    events: list = [start("c1", CONTACT, 0.0), start("c2", CONTACT, 0.0),
                    start("c3", CONTACT, 0.0, AudioFormat("L16", 8000, 100))]
    for k in range(3):
        at = (k + 1) * 0.1
        events.append(SegmentMedia("c1", b"\x80" * N, k, 100, at))
        events.append(SegmentMedia("c2", b"\x00" * N, k, 100, at))
        events.append(SegmentMedia("c3", np.full(N, 32000, ">i2").tobytes(), k, 100, at))
    audio, _ = run(events)
    assert len(audio) == 3 * N and (audio[:, 1] == 32000).all() and not audio[:, 0].any()


def test_pcma_and_bot_on_the_right_unsupported_codec_not_recorded() -> None:
    alaw = bytes(range(0x10, 0x10 + 160)) * 5
    events: list = [
        start("b", BOT, 0.0, AudioFormat("PCMA", 8000, 100)),
        start("o", AGENT, 0.0, AudioFormat("OPUS", 48000, 20)),
    ]
    for k in range(5):
        events.append(SegmentMedia("b", alaw, k, 100, (k + 1) * 0.1))
        events.append(SegmentMedia("o", b"\x01\x02", k, 20, (k + 1) * 0.1))
    audio, mixer = run(events)
    assert np.array_equal(audio[:, 1], np.tile(codec.decode_alaw(alaw), 5))
    assert not audio[:, 0].any()
    opus = mixer.segments()[1]
    assert not opus["recorded"] and "OPUS" in opus["not_recorded_because"]
    assert opus["statistics"]["chunks_not_recorded"] == 5


def test_media_before_its_segment_start_is_placed_and_unknown_segments_are_counted() -> None:
    events: list = [SegmentMedia("c", tone_chunk(1, 0), 0, 100, 0.1),
                    start("c", CONTACT, 0.12), SegmentMedia("c", tone_chunk(1, 1), 1, 100, 0.2),
                    SegmentMedia("ghost", tone_chunk(3, 0), 0, 100, 0.2),
                    SegmentMedia("c", tone_chunk(1, 2), 2, 100, 0.6)]
    audio, mixer = run(events)
    assert np.array_equal(audio[: 2 * N, 1], np.concatenate([pcm(tone_chunk(1, k)) for k in range(2)]))
    assert mixer.statistics()["unknown_segment_media"] == 1


def test_memory_stays_bounded_when_one_segment_runs_far_ahead() -> None:
    mixer = SegmentMixer()
    mixer.handle(start("c", CONTACT, 0.0))
    mixer.handle(start("a", AGENT, 0.0))
    mixer.handle(SegmentMedia("a", tone_chunk(2, 0), 0, 100, 0.1))
    size = mixer._mix.nbytes
    for k in range(600):  # one minute of the caller at once; the agent silent
        mixer.handle(SegmentMedia("c", tone_chunk(1, k), k, 100, 0.1))
        while mixer.pop_block() is not None:
            pass
    assert mixer._mix.nbytes == size
    assert mixer.emitted >= 59 * RATE


def test_media_counters_count_a_segment_whose_chunk_came_after_its_place_had_left() -> None:
    mixer = SegmentMixer()
    mixer.handle(start("c", CONTACT, 0.0))
    mixer.handle(start("a", AGENT, 0.0))
    for k in range(2):
        mixer.handle(SegmentMedia("a", tone_chunk(2, k), k, 100, 0.1 * (k + 1)))
        mixer.handle(SegmentMedia("c", tone_chunk(1, k), k, 100, 0.1 * (k + 1)))
    mixer.handle(SegmentMedia("c", tone_chunk(1, 1), 1, 100, 0.2))  # a repeat
    mixer.tick(6.0)  # the whole stream quiet: the clock moves the recording on without it
    assert mixer.pop_block(partial=True) is not None and mixer.emitted > 2 * N
    mixer.handle(SegmentMedia("a", tone_chunk(2, 2), 2, 100, 6.0))  # a stall: placed where it belongs, shifted
    assert mixer.media_counters() == (6, 5 * N, 0, 0, 1, 1)  # chunks, samples, lost, their samples, repeats, shifted
    mixer.handle(start("b", BOT, 6.1))
    mixer.handle(SegmentMedia("b", tone_chunk(3, 0), 0, 100, 6.1))
    mixer.handle(start("x", CONTACT, 6.2, AudioFormat("OPUS", 48000, 20)))
    mixer.handle(SegmentMedia("x", bytes(60), 0, 20, 6.2))  # received, not recorded
    assert mixer.media_counters() == (8, 6 * N, 0, 0, 1, 1)
    mixer.handle(SegmentMedia("b", tone_chunk(3, 2), 2, 100, 6.3))  # its chunk 1 lost
    mixer.tick(7.0)  # given up: silence of a chunk
    assert mixer.media_counters() == (9, 7 * N, 1, N, 1, 1)


Plan = list[tuple[str, int, int, int, list[tuple[int, int, bool]]]]


def codec_chunk(seed: int, k: int, n: int, codec: str) -> bytes:
    """Chunk k of a segment in ``codec`` (n samples): distinct per (seed, k)."""
    rng = np.random.default_rng(seed * 100_003 + k)
    if codec == "L16":
        return rng.integers(-3000, 3000, n, dtype=np.int16).astype(">i2").tobytes()
    return bytes(rng.integers(0, 0xFF, n, dtype=np.uint8))


ROUGH_CODECS = {"PCMU": 8, "PCMA": 1, "L16": 1}  # weights: mostly the platform's PCMU


@st.composite
def rough_dialog(draw: st.DrawFn) -> list[Any]:
    """A dialog with everything the common case is not, between stretches of it: one to three
    segments (mostly PCMU; PCMA, L16; some silent a while after their start), 20 or 100 ms
    chunks, jitter, repeats, losses, empty payloads, a pause of one segment with seq going on,
    the platform's hold of all (with or without its HOLD), a HOLD without one, a reader stall (a
    stretch of arrivals delivered at once), the call's first events late, stops, media of an
    unknown segment. Events in arrival order."""
    events: list[Any] = []
    ptime = draw(st.sampled_from([100, 20]))
    n = ptime * 8
    step = ptime / 1000
    lead = draw(st.sampled_from([0.0, 0.0, 0.3]))  # s: what was spoken before comes then, at once
    roles = [CONTACT, AGENT, BOT]
    # the platform's hold of every segment: from hold_at (s) on, every chunk hold_for later
    hold_at, hold_for = draw(st.integers(2, 40)) * 0.1, draw(st.sampled_from([0.0, 0.0, 0.4, 1.2]))
    if hold_for and draw(st.integers(0, 3)):  # and, mostly, its word for it
        events.append(SegmentInfo("s0", "HOLD", at=hold_at + draw(st.integers(0, 3)) * step))
        events.append(SegmentInfo("s0", "UNHOLD", at=hold_at + hold_for))
    for index in range(draw(st.integers(1, 3))):
        name = f"s{index}"
        codec = draw(st.sampled_from([c for c, w in ROUGH_CODECS.items() for _ in range(w)]))
        join = 0 if index == 0 else draw(st.integers(0, 15))
        silent = draw(st.sampled_from([0, 0, 0, 5, 20]))  # chunks' time from its start to its media
        count = draw(st.integers(1, 50))
        seq0 = draw(st.integers(0, 1000))
        pause_at = draw(st.integers(1, 40)) if draw(st.booleans()) else None
        pause = draw(st.integers(3, 12)) * step
        events.append(SegmentStarted(name, f"p-{name}", roles[index], name=name,
                                     audio_format=AudioFormat(codec, 8000, ptime), at=max(join * step, lead)))
        shift = 0.0
        for k in range(count):
            if k == pause_at:
                shift += pause
            if draw(st.integers(0, 19)) == 0 and 0 < k < count - 1:
                continue  # lost
            jitter = draw(st.integers(0, 90 if draw(st.integers(0, 7)) == 0 else ptime // 3)) / 1000
            spoken = (join + silent + k + 1) * step + shift
            at = max(spoken + jitter + (hold_for if spoken > hold_at else 0.0), lead)
            payload = b"" if draw(st.integers(0, 39)) == 0 else codec_chunk(index, k, n, codec)
            events.append(SegmentMedia(name, payload, seq0 + k, ptime, at))
            if draw(st.integers(0, 9)) == 0:
                events.append(SegmentMedia(name, payload, seq0 + k, ptime, at + draw(st.integers(0, 50)) / 1000))
        if draw(st.booleans()):
            events.append(SegmentStopped(name, at=(join + silent + count + 1) * step + shift + lead + 0.2))
    if draw(st.integers(0, 3)) == 0:  # a HOLD without a pause
        events.append(SegmentInfo("s0", "HOLD", at=lead + draw(st.integers(0, 40)) * 0.1))
    if draw(st.integers(0, 9)) == 0:
        events.append(SegmentMedia("nobody", b"\x55" * n, 0, ptime, lead + draw(st.integers(0, 40)) * 0.1))
    events.sort(key=lambda event: event.at)
    if draw(st.booleans()) and len(events) > 4:  # a reader stall: a stretch delivered at once
        first = draw(st.integers(0, len(events) - 2))
        last = draw(st.integers(first + 1, len(events) - 1))
        until = events[last].at
        events[first : last + 1] = [event._replace(at=until) if isinstance(event, SegmentMedia) else event
                                    for event in events[first : last + 1]]
    return events


@st.composite
def jittered_dialog(draw: st.DrawFn) -> Plan:
    """Two or three segments joining at chunk boundaries, every chunk delayed by up to 90 ms,
    some repeated, some lost; the first chunk of each arrives on time. Per segment: (name,
    join chunk, count, first seq, [(chunk, delay ms, repeated)] of the chunks sent)."""
    plan = []
    for index in range(draw(st.integers(2, 3))):
        join = 0 if index == 0 else draw(st.integers(0, 20))
        count = draw(st.integers(1, 30))
        lost = set(draw(st.sets(st.integers(1, max(1, count - 2)), max_size=3))) - {0, count - 1}
        sent = [(k, 0 if k == 0 else draw(st.integers(0, 90)), draw(st.integers(0, 9)) == 0)
                for k in range(count) if k not in lost]
        plan.append((f"s{index}", join, count, draw(st.integers(0, 1000)), sent))
    return plan


@settings(max_examples=60, deadline=None)
@given(jittered_dialog())
def test_property_every_chunk_lands_at_its_place(plan: Plan) -> None:
    kinds = [CONTACT, AGENT, BOT]
    events: list = []
    for index, (name, join, _, seq0, sent) in enumerate(plan):
        events.append(start(name, kinds[index], join * 0.1))
        for k, delay, repeated in sent:
            at = (join + k + 1) * 0.1 + delay / 1000
            events.append(SegmentMedia(name, tone_chunk(index, k), seq0 + k, 100, at))
            if repeated:
                events.append(SegmentMedia(name, tone_chunk(index, k), seq0 + k, 100, at + 0.05))
    events.sort(key=lambda e: e.at)
    audio, _ = run(events)
    expected = np.zeros((max(join + count for _, join, count, _, _ in plan) * N, 2), np.int32)
    for index, (name, join, _, _, sent) in enumerate(plan):
        channel = 0 if name == "s1" else 1
        for k, _, _ in sent:
            where = (join + k) * N
            expected[where : where + N, channel] += pcm(tone_chunk(index, k))
    expected = np.clip(expected, -32768, 32767).astype(np.int16)
    assert audio.shape == expected.shape
    assert np.array_equal(audio, expected)


def test_a_late_start_does_not_move_later_joins_and_pauses_early() -> None:
    """The dialog's first events come 0.25 s late, together (its RPC was being set up while the
    platform spoke); then everything arrives on time. The agent joining at 1.0 s and the
    caller's pause from 1.5 s to 2.5 s are still placed where they happened."""
    late = 0.25
    events: list = [start("c", CONTACT, late), start("a", AGENT, 1.0)]
    for k in range(15):  # the caller, talking 0-1.5 s
        events.append(SegmentMedia("c", tone_chunk(1, k), k, 100, max(late, (k + 1) * 0.1)))
    for k in range(15, 25):  # and 2.5-3.5 s, seq going on
        events.append(SegmentMedia("c", tone_chunk(1, k), k, 100, (k + 1) * 0.1 + 1.0))
    for k in range(20):  # the agent from 1.0 s
        events.append(SegmentMedia("a", tone_chunk(2, k), k, 100, 1.0 + (k + 1) * 0.1))
    events.sort(key=lambda e: e.at)
    audio, mixer = run(events)
    caller = [pcm(tone_chunk(1, k)) for k in range(25)]
    assert np.array_equal(audio[: 15 * N, 1], np.concatenate(caller[:15]))
    assert not audio[15 * N : 25 * N, 1].any()
    assert np.array_equal(audio[25 * N : 35 * N, 1], np.concatenate(caller[15:]))
    assert np.array_equal(audio[10 * N : 30 * N, 0], np.concatenate([pcm(tone_chunk(2, k)) for k in range(20)]))
    segments = {s["segment_id"]: s for s in mixer.segments()}
    assert segments["a"]["joined_seconds"] == 1.0 and segments["c"]["statistics"]["paused_seconds"] == 1.0


def test_a_stall_of_the_whole_stream_is_not_a_pause() -> None:
    """From 1.0 s every chunk of both segments comes 0.5 s late, in a burst, then on time again
    (the network or the server stalled; the clock ticks meanwhile): nothing moves."""
    events: list = [start("c", CONTACT, 0.0), start("a", AGENT, 0.0)]
    for k in range(30):
        at = (k + 1) * 0.1
        if 1.0 < at <= 1.5:
            at = 1.5 + k * 0.001  # held back, then all at once
        events.append(SegmentMedia("c", tone_chunk(1, k), k, 100, at))
        events.append(SegmentMedia("a", tone_chunk(2, k), k, 100, at))
    events.sort(key=lambda e: e.at)
    mixer = SegmentMixer()
    blocks: list[PcmBlock] = []
    clock = 0.0
    for event in events:
        while clock + 0.05 < event.at:  # the server's clock ticks through the stall
            clock += 0.05
            mixer.tick(clock)
            while (block := mixer.pop_block(partial=True)) is not None:
                blocks.append(block)
        mixer.tick(event.at)
        mixer.handle(event)
        while (block := mixer.pop_block()) is not None:
            blocks.append(block)
    blocks.append(mixer.finish())
    audio = np.concatenate([b.frames for b in blocks])
    assert np.array_equal(audio[:, 1], np.concatenate([pcm(tone_chunk(1, k)) for k in range(30)]))
    assert np.array_equal(audio[:, 0], np.concatenate([pcm(tone_chunk(2, k)) for k in range(30)]))
    stats = {s["segment_id"]: s["statistics"] for s in mixer.segments()}
    for name in "ca":  # the other segment's chunks, in the stream's order, say nothing paused
        assert stats[name]["pauses"] == 0 and stats[name]["shifted_seconds"] == 0
