"""The sans-IO Timeline: reorder, gaps, duplicates, late frames, discontinuities, alignment, modes.

Every property test derives what it expects from a small model of the input (frames in sequence
order, a missing frame as silence of the frame length, the shorter side padded), never from the
code under test. Payloads never contain the silence byte, so silence in the output is always ours.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from callstream.call.batch import ScannedMedia
from callstream.call.timeline import SILENCE, STEADY_FRAMES, STEADY_IN_C, StereoBlock, Timeline, TimelineFinishedError
from callstream.engagevoice.messages import Perspective

SIL = bytes([SILENCE])
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Push = tuple[int, int, bytes]


def frame(side: int, tag: int, length: int = 160) -> bytes:
    """A recognisable payload of ``length`` (>= 4) bytes: side and tag in the first four bytes,
    never the silence byte 0xFF."""
    head = bytes([side, tag % 255, tag // 255 % 255, tag // 65025 % 255])
    return head + bytes([(tag * 7 + side + 1) % 255]) * (length - 4)


def play(
    timeline: Timeline, pushes: list[Push], pops: list[int] | None = None
) -> tuple[bytes, bytes, list[StereoBlock]]:
    """Feed ``pushes``; after push i do ``pops[i]``: 0 nothing, 1 pop every full block,
    2 one partial pop (default: 1 after every push, as the recorder does). Then finish."""
    blocks: list[StereoBlock] = []
    for i, (perspective, sequence, payload) in enumerate(pushes):
        ready = timeline.push(perspective, sequence, payload)
        how = 1 if pops is None else pops[i]
        if how == 1:
            block = timeline.pop_block()
            assert (block is not None) == ready  # True exactly when a full block is ready
            while block is not None:
                blocks.append(block)
                block = timeline.pop_block()
        elif how == 2 and (block := timeline.pop_block(partial=True)) is not None:
            blocks.append(block)
    tail = timeline.finish()
    if tail is not None:
        blocks.append(tail)
    return b"".join(b.left for b in blocks), b"".join(b.right for b in blocks), blocks


def side_model(frames: list[bytes | None], nominal: int) -> bytes:
    """One side: frames by offset from its first sequence number; None = missing -> silence.
    Missing frames after the last one received are unknown to the receiver: they vanish."""
    frames = list(frames)
    while frames and frames[-1] is None:
        frames.pop()
    return b"".join(SIL * nominal if f is None else f for f in frames)


def stereo_model(left: bytes, right: bytes) -> tuple[bytes, bytes]:
    length = max(len(left), len(right))
    return left.ljust(length, SIL), right.ljust(length, SIL)


@dataclass
class Call:
    window: int  # reorder window, frames
    length: int  # bytes (samples) per frame
    frames: tuple[list[bytes | None], list[bytes | None]]
    pushes: list[Push]
    duplicates: int

    @property
    def window_ms(self) -> float:
        return self.window * self.length * 1000 / 8000

    def timeline(self, **kwargs: object) -> Timeline:
        return Timeline(window_ms=self.window_ms, **kwargs)  # type: ignore[arg-type]

    def expected(self) -> tuple[bytes, bytes]:
        return stereo_model(*(side_model(f, self.length) for f in self.frames))


@st.composite
def calls(draw: st.DrawFn, *, drops: bool = False, duplicates: bool = False) -> Call:
    """Two per-perspective counters from one origin; every frame arrives before a frame
    ``window`` newer on its side (arrival key = index + delay, delay < window), both sides progressing together."""
    window = draw(st.integers(1, 12))
    length = draw(st.sampled_from([80, 160, 240]))
    arrivals: list[tuple[int, int, int, int, bytes]] = []
    frames: tuple[list[bytes | None], list[bytes | None]] = ([], [])
    dup_count = 0
    # one counter origin for both sides (their numbers agree: placed by number from there): the
    # platform's 1, or anywhere far from it (then the first side starts where it arrives)
    first = draw(st.one_of(st.just(1), st.integers(2**20, 2**40)))
    for side in (0, 1):
        count = draw(st.integers(1, 70))
        delays = draw(st.lists(st.integers(0, window - 1), min_size=count, max_size=count))
        present = [True] * count
        if drops:
            present = draw(st.lists(st.booleans(), min_size=count, max_size=count))
            present[0] = True  # a side starts at its lowest number: leading drops are invisible
        for i in range(count):
            data = frame(side, i, length)
            frames[side].append(data if present[i] else None)
            if present[i]:
                arrivals.append((i + delays[i], side, i, first + i, data))
                if duplicates and draw(st.integers(0, 3)) == 0:
                    late = draw(st.integers(0, 3 * window))
                    arrivals.append((i + late, side, i, first + i, data))
                    dup_count += 1
    arrivals.sort(key=lambda a: a[:3])
    pushes = [(side, seq, data) for _, side, _, seq, data in arrivals]
    return Call(window, length, frames, pushes, dup_count)


# ------------------------------------------------------------------------------ properties


@PROPERTY
@given(calls())
def test_any_arrival_order_within_the_window_gives_the_in_order_output(call: Call) -> None:
    left, right, _ = play(call.timeline(sequence_mode="perspective"), call.pushes)
    assert (left, right) == call.expected()


@PROPERTY
@given(calls(drops=True))
def test_drops_become_silence_of_the_nominal_length_in_place(call: Call) -> None:
    timeline = call.timeline(sequence_mode="perspective")
    left, right, _ = play(timeline, call.pushes)
    assert (left, right) == call.expected()
    stats = timeline.statistics()
    for side in (0, 1):
        interior = side_model(call.frames[side], call.length)
        missing = interior.count(SIL) // call.length
        assert stats.by_perspective(side).gaps >= missing
        assert stats.by_perspective(side).late_drops == 0


@PROPERTY
@given(calls(drops=True, duplicates=True))
def test_duplicates_change_nothing(call: Call) -> None:
    timeline = call.timeline(sequence_mode="perspective")
    left, right, _ = play(timeline, call.pushes)
    assert (left, right) == call.expected()
    stats = timeline.statistics()
    assert stats.participant.duplicates + stats.conference.duplicates == call.duplicates
    assert stats.participant.late_drops + stats.conference.late_drops == 0


@PROPERTY
@given(calls(), st.booleans())
def test_auto_mode_keeps_per_perspective_counters(call: Call, same_start: bool) -> None:
    pushes = call.pushes
    if same_start:  # both counters from 1: the two sides' numbers overlap fully
        firsts = {side: min(s for p, s, _ in pushes if p == side) for side in (0, 1)}
        pushes = [(p, s - firsts[p] + 1, d) for p, s, d in pushes]
        pushes.sort(key=lambda x: (x[1], x[0]))  # in order: auto decides on a clean start
    timeline = call.timeline()
    left, right, _ = play(timeline, pushes)
    assert (left, right) == call.expected()
    assert timeline.statistics().sequence_mode == "perspective"


@PROPERTY
@given(calls(drops=True), st.data())
def test_any_pop_pattern_gives_the_same_output(call: Call, data: st.DataObject) -> None:
    block_ms = data.draw(st.sampled_from([10, 20, 50, 1000]))
    reference = play(call.timeline(block_ms=block_ms), call.pushes, [0] * len(call.pushes))
    pops = data.draw(st.lists(st.integers(0, 2), min_size=len(call.pushes),
                              max_size=len(call.pushes)))
    timeline = call.timeline(block_ms=block_ms)
    left, right, blocks = play(timeline, call.pushes, pops)
    assert (left, right) == reference[:2]
    assert [b.start for b in blocks] == [sum(len(b.left) for b in blocks[:i])
                                         for i in range(len(blocks))]
    for block in blocks[:-1]:
        assert 0 < len(block.left) == len(block.right) <= timeline.block_samples


# Arbitrary input: small frames so short examples cover many windows, blocks and jumps.
MESSY_LENGTH = 80  # 10 ms: the shortest frame the window arithmetic counts (MIN_FRAME_MS)
MESSY = {"window_ms": 40, "discontinuity_ms": 400, "block_ms": 50}  # W=4, J=40 frames
MESSY_WINDOW = 4


@st.composite
def messy_pushes(draw: st.DrawFn) -> list[Push]:
    """Anything: in order, skips, late, duplicates, rewinds, huge jumps, one side silent."""
    seqs = [draw(st.integers(0, 1000)), draw(st.integers(0, 1000))]
    pushes: list[Push] = []
    steps = draw(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 9), st.integers(-30, 30),
                                    st.integers(50, 10**12)), max_size=250))
    for tag, (side, kind, small, huge) in enumerate(steps):
        if kind == 9 and pushes:  # an exact duplicate of an earlier push
            pushes.append(pushes[len(pushes) * abs(small) // 31])
            continue
        if kind <= 5:
            seqs[side] += 1
            sequence = seqs[side]
        elif kind <= 7:
            sequence = seqs[side] + small  # late, early or a skip
            seqs[side] = max(seqs[side], sequence)
        else:
            sequence = seqs[side] = seqs[side] + huge * (1 if small >= 0 else -1)
        pushes.append((side, sequence, frame(side, tag, MESSY_LENGTH)))
    return pushes


def check_accounting(timeline: Timeline, length: int) -> None:
    stats = timeline.statistics()
    for side in (stats.participant, stats.conference):
        assert side.frames_received == (
            side.frames_placed + side.duplicates + side.late_drops + side.frames_held)
        assert side.samples_committed == (
            side.frames_placed * length + side.gap_samples + side.fill_samples)


@PROPERTY
@given(messy_pushes(), st.data())
def test_messy_input_keeps_channels_equal_and_output_is_frames_plus_gaps(
    pushes: list[Push], data: st.DataObject
) -> None:
    pops = data.draw(st.lists(st.integers(0, 2), min_size=len(pushes), max_size=len(pushes)))
    timeline = Timeline(**MESSY)
    left, right, _ = play(timeline, pushes, pops)
    assert len(left) == len(right)
    check_accounting(timeline, MESSY_LENGTH)
    stats = timeline.statistics()
    assert stats.participant.frames_held == stats.conference.frames_held == 0
    assert stats.samples_emitted == len(left)
    for side, out in ((stats.participant, left), (stats.conference, right)):
        assert side.samples_committed == len(out)
    # any pop pattern gives the same output, whatever the input
    assert play(Timeline(**MESSY), pushes, [0] * len(pushes))[:2] == (left, right)


def run_in_batches(timeline: Timeline, items: list, sizes: list[int],
                   on_return: Callable[[int], None] = lambda pushed: None,
                   scan: bool = False) -> list[tuple[int, StereoBlock]]:
    """Drive ``timeline.push_run`` as the recorder does: ``items`` in batches of ``sizes``
    (cycled), popping every full block after each return and stepping over a non-tuple item;
    ``on_return(items pushed so far)`` after each return's pops. With ``scan``, a batch of
    tuples only comes as a `ScannedMedia`, as from MediaScanner.
    Returns (index of the item after whose push it was ready, block), then the tail (index -1)."""
    blocks: list[tuple[int, StereoBlock]] = []
    first, turn = 0, 0
    while first < len(items):
        batch = items[first : first + sizes[turn % len(sizes)]]
        if scan and all(type(item) is tuple for item in batch):
            batch = ScannedMedia.from_tuples(batch)
        i = 0
        while i < len(batch):
            i = timeline.push_run(batch, i)
            while (block := timeline.pop_block()) is not None:
                blocks.append((first + i - 1, block))
            on_return(first + i)
            if i < len(batch) and type(batch[i]) is not tuple:
                i += 1
        first += len(batch)
        turn += 1
    tail = timeline.finish()
    return blocks + ([] if tail is None else [(-1, tail)])


def timeline_state(timeline: Timeline) -> tuple:
    """Everything a Timeline holds (white box): two timelines in the same state behave alike
    from there on, whatever comes. Where the C lanes hold the sides, what they hold, as the
    sides will hold it when the lanes hand them back; not how long a side has been steady."""
    sides = []
    for index, side in enumerate((timeline._left, timeline._right)):
        values = {name: getattr(side, name) for name in side.__slots__ if name != "steady_since"}
        if timeline._steady:
            values["held"], values["ring_seq"], values["ring_payload"] = timeline._lanes.export(index)
        sides.append(tuple(bytes(value) if isinstance(value, bytearray) else copy.copy(value)
                           for value in values.values()))
    return (timeline._emitted, timeline._connection, timeline._pending, timeline._finished, tuple(sides))


@st.composite
def mostly_in_order(draw: st.DrawFn) -> list[Push]:
    """A long in-order stream of both sides (so that the steady state is reached, and left),
    disturbed here and there: a frame swapped with the next, dropped, replayed, late, of another
    length (which can push what is held over its byte budget), a jump, a side pausing; a burst
    of long frames (the replay ring near its byte budget), two frames whose lengths add up to two
    nominal ones, a few late frames in a row (a late run pending while in-order frames go on)."""
    pushes: list[Push] = []
    late: list[tuple[int, Push]] = []  # (where it is due, the push)
    seqs = [draw(st.integers(0, 50)), draw(st.integers(0, 50))]
    calm = draw(st.sampled_from([12, 1000]))  # plain frames per 11 disturbances, on average
    for tag in range(draw(st.integers(20, 400))):
        side = tag % 2
        while late and late[0][0] <= len(pushes):  # a late frame's turn has come
            pushes.append(late.pop(0)[1])
        what = draw(st.sampled_from(["plain"] * calm + ["swap", "drop", "replay", "long", "short", "jump", "pause",
                                                      "late", "burst", "pair", "rewind"]))
        if what == "burst":
            for extra in range(draw(st.integers(3, 12))):
                seqs[side] += 1
                pushes.append((side, seqs[side], frame(side, 20_000 + 100 * tag + extra, 2000)))
        elif what == "pair":
            odd = draw(st.integers(1, MESSY_LENGTH - 4))
            for extra, length in enumerate((MESSY_LENGTH - odd, MESSY_LENGTH + odd)):
                seqs[side] += 1
                pushes.append((side, seqs[side], frame(side, 30_000 + 100 * tag + extra, length)))
        elif what == "rewind":
            back = draw(st.integers(MESSY_WINDOW + 1, 3 * MESSY_WINDOW))
            for extra in range(draw(st.integers(2, MESSY_WINDOW))):
                pushes.append((side, seqs[side] - back + extra, frame(side, 40_000 + 100 * tag + extra, MESSY_LENGTH)))
        seqs[side] += 1
        if what == "late":  # arrives a few windows late: a late drop, or a run with others
            late.append((len(pushes) + draw(st.integers(2, 30)), (side, seqs[side], frame(side, tag, MESSY_LENGTH))))
            late.sort(key=lambda entry: entry[0])
            continue
        length = {"long": 2000, "short": 4}.get(what, MESSY_LENGTH)
        if what == "drop":
            continue
        if what == "jump":
            seqs[side] += draw(st.integers(2, 60))
        if what == "pause":  # the other side runs on alone for a while
            for extra in range(draw(st.integers(1, 12))):
                seqs[1 - side] += 1
                pushes.append((1 - side, seqs[1 - side], frame(1 - side, 10_000 + 100 * tag + extra, MESSY_LENGTH)))
        pushes.append((side, seqs[side], frame(side, tag, length)))
        if what == "swap" and len(pushes) >= 2:
            pushes[-1], pushes[-2] = pushes[-2], pushes[-1]
        if what == "replay":
            pushes.append(pushes[draw(st.integers(0, len(pushes) - 1))])
    return pushes


def assert_push_run_is_push(pushes: list[Push], config: dict, mode: str, sizes: list[int],
                            junk_before: set[int], steady_frames: int | None = None) -> None:
    """``pushes`` through push_run in batches of ``sizes``, with a non-tuple item before each
    push numbered in ``junk_before``, against push one frame at a time: the same blocks after
    the same pushes, the same statistics, the same state at every return of push_run. With
    ``steady_frames``, batches without such items come as `ScannedMedia`, and the C lanes take
    over after that many steady frames (instead of STEADY_FRAMES)."""
    reference = Timeline(**config, sequence_mode=mode)
    expected: list[tuple[int, StereoBlock]] = []
    states = [timeline_state(reference)]  # after 0, 1, 2, ... pushes (and their pops)
    for index, (side, sequence, payload) in enumerate(pushes):
        if reference.push(side, sequence, payload):
            while (block := reference.pop_block()) is not None:
                expected.append((index, block))
        states.append(timeline_state(reference))
    tail = reference.finish()
    expected += [] if tail is None else [(-1, tail)]
    items: list = []
    numbering: list[int] = []
    pushed_before: list[int] = []  # per item: the pushes before it
    for index, push in enumerate(pushes):
        if index in junk_before:
            items.append("not a tuple")
            numbering.append(-2)
            pushed_before.append(index)
        items.append(push)
        numbering.append(index)
        pushed_before.append(index)
    pushed_before.append(len(pushes))
    timeline = Timeline(**config, sequence_mode=mode)
    if steady_frames is not None:
        timeline._steady_frames = steady_frames

    def same_state(returned_at: int) -> None:
        assert timeline_state(timeline) == states[pushed_before[returned_at]]

    got = [(numbering[i] if i >= 0 else -1, block)
           for i, block in run_in_batches(timeline, items, sizes, same_state, steady_frames is not None)]
    assert got == expected
    assert timeline.statistics() == reference.statistics()


TIGHT_RING = {"window_ms": 250, "discontinuity_ms": 2500, "block_ms": 100}  # see below


@PROPERTY
@given(st.one_of(mostly_in_order(), messy_pushes()), st.data())
def test_push_run_is_push_one_frame_at_a_time(pushes: list[Push], data: st.DataObject) -> None:
    """Whatever the input (in order, gaps, late, replays, jumps, frames of other lengths) and
    however it is cut into batches with other items between: the same blocks at the same
    moments, the same statistics, and the same state (white box: held frames, late run, replay
    ring, counters) at every return of push_run, as push one frame at a time."""
    mode = data.draw(st.sampled_from(["auto", "perspective", "connection"]))
    # blocks of 5 frames; of 40 (a steady run of one side can then be longer than the ring); a
    # window of 250 ms (W = 25): the replay ring's byte budget is then 200 frames of 80 bytes,
    # so it is full in the steady state and a longer frame in it makes it evict
    config = data.draw(st.sampled_from([MESSY, {**MESSY, "block_ms": 400}, TIGHT_RING]))
    rarity = data.draw(st.sampled_from([10, 1000]))  # at most one item in this many is not a frame
    junk = data.draw(st.sets(st.integers(0, max(0, len(pushes) - 1)), max_size=len(pushes) // rarity))
    # batches of up to 12 (--read-interval 0 and small reads) and of 40 to 120 (a real-time read:
    # longer than the ring, here 32 numbers)
    sizes = data.draw(st.lists(st.one_of(st.integers(1, 12), st.integers(40, 120)), min_size=1, max_size=5))
    # the C lanes (csrc/inorder.c) when built: after no steady frame at all, after a few, or
    # as in production
    steady_frames = data.draw(st.sampled_from([None, 0, 3, STEADY_FRAMES])) if STEADY_IN_C else None
    assert_push_run_is_push(pushes, config, mode, sizes, junk, steady_frames)


def in_order(frames: int, length: int = MESSY_LENGTH, longer: dict[tuple[int, int], int] | None = None) -> list[Push]:
    """Both sides in order, alternating, numbered from 1; ``longer[(side, number)]`` = length."""
    longer = longer or {}
    return [(side, number, frame(side, number, longer.get((side, number), length)))
            for number in range(1, frames + 1) for side in (0, 1)]


@pytest.mark.parametrize("mode", ["auto", "perspective"])
@pytest.mark.parametrize(
    ("config", "pushes", "sizes"),
    [
        # runs longer than the ring (40-frame blocks, ring of 32), while it still has empty slots
        ({**MESSY, "block_ms": 400}, in_order(300), [600]),
        # the ring at its byte budget (W = 25: 200 slots of 80 bytes): three long frames make it
        # evict, and for a while after, a run must not take slots whose reuse would pass it
        (TIGHT_RING, in_order(400, longer={(0, 60): 2000, (0, 61): 2000, (1, 90): 1000}), [50]),
        (TIGHT_RING, in_order(400, longer={(0, number): 160 for number in range(60, 80)}), [50, 7]),
        # frames whose length does not divide the C lanes' pools (4,000 and 16,000 bytes): they
        # wrap around the pools' ends
        (MESSY, in_order(600, length=93), [64]),
        # blocks longer than the ring pool (16,000 bytes): a C call stops when its releases would
        # go round the pool, and the next one goes on
        ({**MESSY, "block_ms": 3000}, in_order(800), [700]),
        # empty payloads first: the sides start, holding a window, before learning their frame
        # length (the C lanes must not take them over: the first real frame changes the window)
        (MESSY, [(side, number, frame(side, number, MESSY_LENGTH) if number > 30 else b"")
                 for number in range(1, 200) for side in (0, 1)], [40]),
        # numbers from below zero on (the lanes take the sides once they are past it)
        (MESSY, [(side, number, frame(side, number + 1000, MESSY_LENGTH))
                 for number in range(-150, 150) for side in (0, 1)], [40]),
    ],
    ids=["runs longer than the ring", "ring budget, long frames", "ring budget, a stretch of double frames",
         "frames wrapping around the pools", "blocks longer than the ring pool", "empty payloads first",
         "numbers from below zero"],
)
@pytest.mark.parametrize("steady_frames", [None, 0, 50], ids=["python", "C at once", "C after 50"])
def test_push_run_is_push_in_the_steady_state(config: dict, pushes: list[Push], sizes: list[int], mode: str,
                                              steady_frames: int | None) -> None:
    """Steady-state runs at the edges of the run placement's checks (the property test rarely
    gets there), placed in Python and by the C lanes."""
    if steady_frames is not None and not STEADY_IN_C:
        pytest.skip("callstream._mulaw is not built")
    assert_push_run_is_push(pushes, config, mode, sizes, set(), steady_frames)


@pytest.mark.skipif(not STEADY_IN_C, reason="callstream._mulaw is not built")
@pytest.mark.parametrize("then", ["push", "push_run of a list"])
def test_the_c_lanes_hand_back_before_python_places_a_frame(then: str) -> None:
    """While the C lanes hold the sides, a frame placed by push, or by push_run from a list (as
    for a small batch), is placed on the state the lanes hand back. The lanes take over for a
    batch of the left side only, which leaves the right side's held frames as they were when
    the lanes took them (so that Python's steady path could place the right side's next frame
    on what it holds, with the ring in the lanes); then the right side's next frame comes."""
    pushes = in_order(100)
    left_only = [(0, number, frame(0, number)) for number in range(101, 103)]
    right_next = (1, 101, frame(1, 101))
    reference = Timeline(**MESSY)
    for push in [*pushes, *left_only, right_next]:
        reference.push(*push)
        while reference.pop_block() is not None:
            pass
    timeline = Timeline(**MESSY)
    timeline._steady_frames = 0
    i = 0
    while i < len(pushes):
        i = timeline.push_run(pushes, i)
        while timeline.pop_block() is not None:
            pass
    assert not timeline._steady
    assert timeline.push_run(ScannedMedia.from_tuples(left_only)) == len(left_only)
    assert timeline._steady
    if then == "push":
        timeline.push(*right_next)
    else:
        timeline.push_run([right_next])
    while timeline.pop_block() is not None:
        pass
    assert not timeline._steady
    assert timeline_state(timeline) == timeline_state(reference)
    assert timeline.finish() == reference.finish()


@pytest.mark.skipif(not STEADY_IN_C, reason="callstream._mulaw is not built")
def test_the_c_lanes_leave_a_window_with_a_gap_alone() -> None:
    """In connection mode a side may hold a window of frames over more numbers (a gap is
    skipped, not filled): that is no steady state for the lanes, which hold consecutive numbers."""
    pushes = [push for push in in_order(200) if push[:2] != (0, 60)]  # a batch ends on the gap
    assert_push_run_is_push(pushes, MESSY, "connection", [40], set(), 0)


@pytest.mark.skipif(not STEADY_IN_C, reason="callstream._mulaw is not built")
def test_the_c_lanes_never_take_numbers_beyond_int64() -> None:
    """protocol.py takes sequence numbers of any length (the scanner only up to 18 digits): a
    call steady on numbers that reach past int64, then a scanned batch, is placed in Python."""
    huge = [(side, number, frame(side, number)) for number in range(2**63 - 100, 2**63 + 50) for side in (0, 1)]
    after = [(0, 5, frame(0, 5)), (1, 5, frame(1, 5))]
    reference = Timeline()
    for push in huge + after:
        reference.push(*push)
    timeline = Timeline()
    timeline._steady_frames = 0
    for batch in (huge, ScannedMedia.from_tuples(after)):
        i = 0
        while i < len(batch):
            i = timeline.push_run(batch, i)
    assert not timeline._steady
    assert timeline_state(timeline) == timeline_state(reference)


def test_push_run_after_finish_raises_like_push() -> None:
    timeline = Timeline()
    timeline.push_run([(side, seq, frame(side, seq)) for seq in range(30) for side in (0, 1)])
    timeline.finish()
    with pytest.raises(TimelineFinishedError):
        timeline.push_run([(0, 30, frame(0, 30))])


class TimelineMachine(RuleBasedStateMachine):
    """Drives one Timeline with arbitrary pushes and pops, popping whenever push says so (as the
    recorder does), against a model: per side a dict sequence -> payload of what was pushed."""

    def __init__(self) -> None:
        super().__init__()
        self.timeline = Timeline(**MESSY, sequence_mode="perspective")
        self.frontier = [100, 100]
        self.pushed: tuple[dict[bytes, int], dict[bytes, int]] = ({}, {})  # payload -> sequence
        self.times: dict[bytes, int] = {}  # payload -> how often it was pushed
        self.recent: tuple[list[Push], list[Push]] = ([], [])
        self.tag = 0
        self.output: list[StereoBlock] = []

    def push(self, side: int, sequence: int) -> None:
        self.tag += 1
        self.send((side, sequence, frame(side, self.tag, MESSY_LENGTH)))

    def send(self, item: Push) -> None:
        side, sequence, payload = item
        self.pushed[side][payload] = sequence
        self.times[payload] = self.times.get(payload, 0) + 1
        self.recent[side].append(item)
        del self.recent[side][:-8]
        if self.timeline.push(side, sequence, payload):
            while (block := self.timeline.pop_block()) is not None:
                self.output.append(block)

    @rule(side=st.integers(0, 1), step=st.integers(1, 3))
    def next_frame(self, side: int, step: int) -> None:
        self.frontier[side] += step
        self.push(side, self.frontier[side])

    @rule(side=st.integers(0, 1), back=st.integers(1, 3 * MESSY_WINDOW))
    def late_frame(self, side: int, back: int) -> None:
        self.push(side, self.frontier[side] - back)

    @precondition(lambda self: self.recent[0] or self.recent[1])
    @rule(index=st.integers(0, 15))
    def duplicate(self, index: int) -> None:
        candidates = self.recent[0] + self.recent[1]
        self.send(candidates[index % len(candidates)])

    @rule(side=st.integers(0, 1), jump=st.integers(41, 10**12), backward=st.booleans())
    def discontinuity(self, side: int, jump: int, backward: bool) -> None:
        self.frontier[side] += -jump if backward else jump
        self.push(side, self.frontier[side])

    @rule(side=st.integers(0, 1), back=st.integers(5, 35), count=st.integers(1, 8))
    def rewound_counter(self, side: int, back: int, count: int) -> None:
        start = self.frontier[side] - back
        for k in range(count):
            self.push(side, start + k)
        self.frontier[side] = max(self.frontier[side], start + count - 1)

    @rule()
    def partial_pop(self) -> None:
        if (block := self.timeline.pop_block(partial=True)) is not None:
            assert len(block.left) <= self.timeline.block_samples
            self.output.append(block)

    @invariant()
    def memory_is_bounded_by_the_window(self) -> None:
        timeline = self.timeline
        for side in (timeline._left, timeline._right):  # white box: the exact bounds
            assert len(side.held) <= MESSY_WINDOW
            assert len(side.run) < MESSY_WINDOW
        assert timeline.buffered_frames <= 2 * (2 * MESSY_WINDOW - 1)
        stats = timeline.statistics()
        left, right = stats.participant, stats.conference
        assert abs(left.samples_committed - right.samples_committed) <= timeline.window_samples
        for side in (left, right):  # committed but not popped: under a block plus the window
            assert side.samples_committed - stats.samples_emitted < (
                timeline.block_samples + timeline.window_samples)
        check_accounting(timeline, MESSY_LENGTH)

    @invariant()
    def media_counters_agree_with_the_statistics(self) -> None:
        stats = self.timeline.statistics()
        left, right = stats.participant, stats.conference
        gap_samples = left.gap_samples + right.gap_samples
        assert self.timeline.media_counters() == (
            left.frames_received + right.frames_received,
            left.samples_committed + right.samples_committed - gap_samples
            - left.fill_samples - right.fill_samples,
            left.gaps + right.gaps,
            gap_samples,
            left.duplicates + right.duplicates,
            left.late_drops + right.late_drops,
        )

    def teardown(self) -> None:
        timeline = self.timeline
        tail = timeline.finish()
        blocks = self.output + ([tail] if tail is not None else [])
        stats = timeline.statistics()
        check_accounting(timeline, MESSY_LENGTH)
        for side, key in ((0, "left"), (1, "right")):
            audio = b"".join(getattr(b, key) for b in blocks)
            assert len(audio) == stats.samples_emitted
            chunks = [audio[i:i + MESSY_LENGTH] for i in range(0, len(audio), MESSY_LENGTH)]
            placed = [c for c in chunks if c != SIL * MESSY_LENGTH]
            side_stats = stats.by_perspective(side)
            assert len(placed) == side_stats.frames_placed
            assert all(c in self.pushed[side] for c in placed)  # nothing invented or crossed
            # a frame pushed once is placed at most once (a replay beyond the duplicate
            # memory of 8 windows may be placed again: we cannot tell it from new audio)
            assert all(placed.count(c) <= self.times[c] for c in set(placed))
            assert all(placed.count(c) <= 1 for c in set(placed) if self.times[c] == 1)
            order = [self.pushed[side][c] for c in placed]
            descents = sum(b < a for a, b in pairwise(order))
            assert descents <= side_stats.discontinuities


class ConnectionTimelineMachine(TimelineMachine):
    """The same, with one counter across the connection (held frames capped by count)."""

    def __init__(self) -> None:
        super().__init__()
        self.timeline = Timeline(**MESSY, sequence_mode="connection")


MACHINE_SETTINGS = settings(max_examples=60, stateful_step_count=60, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow])
TestTimelineMachine = TimelineMachine.TestCase
TestTimelineMachine.settings = MACHINE_SETTINGS
TestConnectionTimelineMachine = ConnectionTimelineMachine.TestCase
TestConnectionTimelineMachine.settings = MACHINE_SETTINGS


@PROPERTY
@given(
    total=st.integers(50, 400),
    silent_from=st.integers(0, 200),
    silent_for=st.integers(0, 300),
    counter_runs_on=st.booleans(),
)
def test_one_side_silent_for_seconds_never_holds_the_other_back(
    total: int, silent_from: int, silent_for: int, counter_runs_on: bool
) -> None:
    """Agent streams 20 ms frames; the caller stops for a while (hold) and comes back with its
    counter either having run on, or paused. The lag stays within the window and blocks flow."""
    timeline = Timeline(block_ms=100)
    window = 10  # frames of 20 ms
    caller: list[bytes] = []
    pushes: list[Push] = []
    caller_seq = 5000
    for i in range(total):
        pushes.append((Perspective.PARTICIPANT, i, frame(0, i)))
        if not silent_from <= i < silent_from + silent_for:
            caller.append(frame(1, i))
            pushes.append((Perspective.CONFERENCE, caller_seq, caller[-1]))
            caller_seq += 1
        elif counter_runs_on:
            caller_seq += 1
    popped = 0
    for perspective, sequence, payload in pushes:
        timeline.push(perspective, sequence, payload)
        while (block := timeline.pop_block()) is not None:
            popped += len(block.left)
        stats = timeline.statistics()
        lag = stats.participant.samples_committed - stats.conference.samples_committed
        assert abs(lag) <= timeline.window_samples
    # the agent is never held back by more than its own window plus the caller's allowance
    assert popped >= total * 160 - 2 * timeline.window_samples - timeline.block_samples
    tail = timeline.finish()
    right = tail.right if tail is not None else b""
    stats = timeline.statistics()
    caller_stats = stats.conference
    if counter_runs_on:  # the numbers say where the caller resumes: exact placement
        assert caller_stats.late_drops == 0
    else:  # a paused counter: everything placed, except a run shorter than the window
        assert caller_stats.late_drops < window
        assert caller_stats.frames_placed + caller_stats.late_drops == len(caller)
    assert right.replace(SIL, b"") in b"".join(caller)


def test_a_side_that_never_sends_is_silence_and_blocks_still_flow() -> None:
    timeline = Timeline()
    blocks = []
    for i in range(500):  # 10 s of agent only
        if timeline.push(Perspective.PARTICIPANT, i, frame(0, i)):
            while (block := timeline.pop_block()) is not None:
                blocks.append(block)
    assert len(blocks) >= 9
    assert all(block.right == SIL * 8000 for block in blocks)
    stats = timeline.statistics()
    assert stats.conference.fill_samples == stats.conference.samples_committed
    assert stats.conference.frames_received == 0
    assert stats.conference.nominal_frame_samples is None
    # the caller's first frame finally arrives, just before the agent's frame 500: it lands
    # where it arrived (the agent's newest frame, 499, starts there), not at its filled
    # position, which trails the agent's arrivals by two windows
    assert stats.conference.samples_committed == (500 - 2 * 10) * 160
    for i in range(500, 530):
        timeline.push(Perspective.CONFERENCE, 77 + i, frame(1, i))
        timeline.push(Perspective.PARTICIPANT, i, frame(0, i))
    tail = timeline.finish()
    assert tail is not None
    right = b"".join(b.right for b in blocks) + tail.right
    position = 499 * 160
    assert right[:position] == SIL * position
    caller = b"".join(frame(1, i) for i in range(500, 530))
    assert right[position:] == caller + SIL * 160  # padded to the agent's end by finish


@PROPERTY
@given(
    before=st.integers(1, 80),
    after=st.integers(1, 80),
    jump=st.integers(501, 20_000),  # moderate: a regression fails here instead of eating memory
    backward=st.booleans(),
    side=st.integers(0, 1),
)
def test_discontinuity_re_anchors_without_allocating_the_jump(
    before: int, after: int, jump: int, backward: bool, side: int
) -> None:
    timeline = Timeline()  # J = 500 frames of 20 ms
    base = 10**6
    pushes: list[Push] = []
    sent: tuple[list[bytes], list[bytes]] = ([], [])
    for i in range(before + after):
        for p in (0, 1):
            sequence = base + i
            if p == side and i >= before:
                sequence += -jump if backward else jump
            sent[p].append(frame(p, i))
            pushes.append((p, sequence, sent[p][-1]))
    left, right, _ = play(timeline, pushes)
    assert (left, right) == (b"".join(sent[0]), b"".join(sent[1]))  # no silence at all
    stats = timeline.statistics()
    assert stats.by_perspective(side).discontinuities == 1
    assert stats.by_perspective(1 - side).discontinuities == 0


@pytest.mark.parametrize("jump", [10**5, 10**9, -(10**9), 10**18])  # small first: fail, not OOM
def test_a_huge_jump_allocates_no_silence(jump: int) -> None:
    timeline = Timeline()
    timeline.push(0, 10**9 + 1, frame(0, 1))
    timeline.push(1, 1, frame(1, 1))
    timeline.push(0, 10**9 + 1 + jump, frame(0, 2))
    timeline.push(1, 2, frame(1, 2))
    assert timeline.statistics().participant.samples_committed <= 2 * 160
    for i in range(3, 40):
        timeline.push(0, 10**9 - 1 + jump + i, frame(0, i))
        timeline.push(1, i, frame(1, i))
    tail = timeline.finish()
    assert tail is not None
    assert tail.left == b"".join(frame(0, i) for i in range(1, 40))
    assert tail.right == b"".join(frame(1, i) for i in range(1, 40))
    assert timeline.statistics().participant.discontinuities == 1


@PROPERTY
@given(
    count=st.integers(4, 80),
    window=st.integers(2, 10),
    delays=st.lists(st.integers(0, 9), min_size=160, max_size=160),
    caller_first=st.booleans(),
)
def test_a_connection_wide_counter_is_detected_in_auto_mode(
    count: int, window: int, delays: list[int], caller_first: bool
) -> None:
    """One counter across the connection: each side sees every other number. Auto switches to
    connection mode at the first release and fills no gaps; reordering is still undone."""
    arrivals = []
    sent: tuple[list[bytes], list[bytes]] = ([], [])
    for i in range(2 * count):
        side = (i + caller_first) % 2
        sent[side].append(frame(side, i))
        arrivals.append((i + delays[i] % window, i, side, 1 + i, sent[side][-1]))
    arrivals.sort()
    timeline = Timeline(window_ms=20 * window)
    left, right, _ = play(timeline, [(p, s, d) for _, _, p, s, d in arrivals])
    stats = timeline.statistics()
    assert stats.sequence_mode == "connection"
    assert stats.sequence_mode_decided
    assert (left, right) == (b"".join(sent[0]), b"".join(sent[1]))
    assert stats.participant.gaps == stats.conference.gaps == 0


@PROPERTY
@given(
    present=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=120),
)
def test_connection_mode_never_fills_gaps(present: list[tuple[bool, bool]]) -> None:
    timeline = Timeline(sequence_mode="connection")
    pushes: list[Push] = []
    sent: tuple[list[bytes], list[bytes]] = ([], [])
    for i, flags in enumerate(present):
        for side in (0, 1):
            if flags[side]:
                sent[side].append(frame(side, i))
                pushes.append((side, 2 * i + side, sent[side][-1]))
    left, right, _ = play(timeline, pushes)
    assert left.replace(SIL, b"") == b"".join(sent[0])
    assert right.replace(SIL, b"") == b"".join(sent[1])
    stats = timeline.statistics()
    assert stats.participant.gaps == stats.conference.gaps == 0
    assert stats.participant.late_drops == stats.conference.late_drops == 0


# ---------------------------------------------------------------------------- example tests


def left_only(timeline: Timeline, pushes: list[tuple[int, bytes]]) -> bytes:
    for sequence, payload in pushes:
        timeline.push(0, sequence, payload)
    tail = timeline.finish()
    return b"" if tail is None else tail.left


F = [frame(0, i) for i in range(40)]


def test_in_order_frames_come_out_unchanged() -> None:
    assert left_only(Timeline(), [(i, F[i]) for i in range(20)]) == b"".join(F[:20])


def test_a_late_frame_within_the_window_goes_back_in_place() -> None:
    order = [0, 1, 3, 4, 5, 2, 6, 7]
    assert left_only(Timeline(), [(i, F[i]) for i in order]) == b"".join(F[:8])


def test_the_first_frames_may_arrive_out_of_order_too() -> None:
    order = [5, 3, 4, 0, 1, 2, 6]
    assert left_only(Timeline(), [(i, F[i]) for i in order]) == b"".join(F[:7])


def test_a_missing_frame_becomes_silence_once_the_window_has_passed() -> None:
    timeline = Timeline(sequence_mode="perspective")  # window 10 frames of 20 ms
    for i in [0, *range(2, 11)]:
        timeline.push(0, i, F[i])
    stats = timeline.statistics().participant
    assert (stats.gaps, stats.samples_committed) == (0, 160)  # frame 0 out, 1 may still come
    timeline.push(0, 11, F[11])  # 11 >= 1 + window: frame 1 is given up
    stats = timeline.statistics().participant
    assert (stats.gaps, stats.gap_samples, stats.gap_ms) == (1, 160, 20.0)
    timeline.push(0, 1, F[1])  # too late now: dropped, counted
    tail = timeline.finish()
    assert tail is not None
    assert tail.left == F[0] + SIL * 160 + b"".join(F[2:12])
    assert timeline.statistics().participant.late_drops == 1


def test_silence_is_0xff_not_0x00() -> None:
    out = left_only(Timeline(), [(0, F[0]), (2, F[2])])
    assert out[160:320] == b"\xff" * 160


def test_duplicates_are_dropped_and_counted() -> None:
    timeline = Timeline()
    pushes = [(i, F[i]) for i in range(15)] + [(14, F[14]), (3, F[3]), (14, F[14])]
    pushes += [(i, F[i]) for i in range(15, 20)]
    assert left_only(timeline, pushes) == b"".join(F[:20])
    stats = timeline.statistics().participant
    assert (stats.duplicates, stats.late_drops) == (3, 0)


def test_a_stray_late_frame_is_dropped_and_counted() -> None:
    timeline = Timeline()
    pushes = [(i, F[i]) for i in range(30) if i != 5] + [(5, F[5])]
    pushes += [(30, frame(0, 30))]
    out = left_only(timeline, pushes)
    assert out[5 * 160:6 * 160] == SIL * 160
    assert timeline.statistics().participant.late_drops == 1


def test_frames_keep_their_own_length_and_gaps_use_the_nominal_one() -> None:
    short, long_ = b"\x01" * 80, b"\x02" * 240
    out = left_only(Timeline(), [(0, F[0]), (1, short), (3, long_), (4, F[4])])
    assert out == F[0] + short + SIL * 160 + long_ + F[4]


def test_nominal_frame_length_is_learnt_from_the_first_payload() -> None:
    timeline = Timeline()
    first = b"\x10" * 320
    out = left_only(timeline, [(0, first), (2, first)])
    assert out == first + SIL * 320 + first
    assert timeline.statistics().participant.nominal_frame_samples == 320


def test_a_paused_counter_is_re_anchored_and_its_frames_kept() -> None:
    """After a hold the platform resumes from an old number: the run of late frames is placed."""
    timeline = Timeline()
    agent = [frame(0, i) for i in range(200)]
    caller = [frame(1, i) for i in range(150)]
    pushes: list[Push] = []
    for i in range(200):
        pushes.append((0, i, agent[i]))
        if i < 100:
            pushes.append((1, i, caller[i]))
        elif i < 150:
            pushes.append((1, i - 40, caller[i]))  # counter rewound by 40 frames
    left, right, _ = play(timeline, pushes)
    stats = timeline.statistics().conference
    assert (stats.counter_resumes, stats.discontinuities, stats.late_drops) == (1, 1, 0)
    assert stats.frames_placed == 150
    assert right.replace(SIL, b"") == b"".join(caller)
    assert left == b"".join(agent)


def test_the_late_run_buffer_is_abandoned_by_an_in_order_frame() -> None:
    timeline = Timeline()
    pushes = [(i, F[i]) for i in range(30)] + [(3, F[33]), (4, F[34]), (30, F[30])]
    left_only(timeline, pushes)
    stats = timeline.statistics().participant
    assert (stats.late_drops, stats.counter_resumes) == (2, 0)


def test_a_restarted_counter_is_a_discontinuity() -> None:
    timeline = Timeline()
    pushes = [(5000 + i, F[i]) for i in range(20)] + [(1 + i, F[20 + i]) for i in range(20)]
    assert left_only(timeline, pushes) == b"".join(F[:40])
    assert timeline.statistics().participant.discontinuities == 1


def test_lag_is_bounded_by_forcing_the_lagging_side() -> None:
    timeline = Timeline()  # window 1600 samples
    for i in range(30):
        timeline.push(0, i, F[i])
    stats = timeline.statistics()
    assert stats.participant.samples_committed == 20 * 160
    assert stats.conference.samples_committed == 20 * 160 - 1600
    assert stats.conference.fill_samples == stats.conference.samples_committed


def test_finish_pads_the_shorter_side_and_closes() -> None:
    timeline = Timeline()
    timeline.push(0, 1, F[0])
    timeline.push(0, 2, F[1])
    timeline.push(1, 1, b"\x05" * 160)
    tail = timeline.finish()
    assert tail == StereoBlock(F[0] + F[1], b"\x05" * 160 + SIL * 160, 0)
    with pytest.raises(TimelineFinishedError):
        timeline.push(0, 2, F[2])
    assert timeline.finish() is None
    assert timeline.pop_block(partial=True) is None
    assert timeline.statistics().conference.fill_samples == 160


def test_finish_with_nothing_received_returns_none() -> None:
    assert Timeline().finish() is None


def test_pop_block_returns_exact_blocks_and_partial_returns_what_is_aligned() -> None:
    timeline = Timeline(block_ms=100)  # 800 samples
    assert timeline.pop_block() is None
    assert timeline.pop_block(partial=True) is None
    ready = [timeline.push(p, i, frame(p, i)) for i in range(16) for p in (0, 1)]
    assert ready[-1] and not any(ready[:-3])  # 6 frames per side released: 960 >= 800
    block = timeline.pop_block()
    assert block is not None and (block.start, block.samples, block.end) == (0, 800, 800)
    assert timeline.pop_block() is None
    partial = timeline.pop_block(partial=True)
    assert partial is not None and (partial.start, partial.samples) == (800, 160)
    assert timeline.pop_block(partial=True) is None


def test_buffered_frames_counts_both_sides() -> None:
    timeline = Timeline()
    for i in range(4):
        timeline.push(0, i, F[i])
        timeline.push(1, i, F[i])
    assert timeline.buffered_frames == 8
    assert timeline.frames_received == 8


def test_statistics_are_a_frozen_json_ready_snapshot() -> None:
    timeline = Timeline(sequence_mode="connection")
    timeline.push(0, 1, F[0])
    stats = timeline.statistics()
    assert list(stats.as_dict().items()) == list(asdict(stats).items())  # every field, in order
    data = json.loads(json.dumps(stats.as_dict()))
    assert data["participant"]["frames_received"] == 1
    assert data["sequence_mode"] == "connection"
    assert data["conference"]["nominal_frame_samples"] is None
    with pytest.raises(AttributeError):
        stats.samples_emitted = 3  # type: ignore[misc]


def test_auto_mode_is_undecided_until_the_first_release() -> None:
    timeline = Timeline()
    timeline.push(0, 1, F[0])
    assert not timeline.statistics().sequence_mode_decided
    assert timeline.sequence_mode == "perspective"


@pytest.mark.parametrize("perspective", [-1, 2, 5])
def test_unknown_perspective_is_refused(perspective: int) -> None:
    with pytest.raises(ValueError):
        Timeline().push(perspective, 0, F[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sequence_mode": "both"},
        {"window_ms": 0},
        {"block_ms": -1},
        {"sample_rate": 0},
        {"window_ms": 500, "discontinuity_ms": 400},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Timeline(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------- a side that starts late

N = 160  # samples per 20 ms frame at 8 kHz


def first_sound(audio: bytes) -> int:
    """Samples of silence before the first sample of audio (payloads never hold 0xFF)."""
    return len(audio) - len(audio.lstrip(SIL))


@PROPERTY
@given(
    late=st.integers(20, 500),
    after=st.integers(1, 60),
    late_side=st.integers(0, 1),
    late_first=st.booleans(),
    window_ms=st.sampled_from([60, 200, 380]),  # W = 3, 10, 19 frames: late > W
    other_first=st.sampled_from([1, 1000]),
)
def test_a_side_starting_late_lands_where_it_arrived(
    late: int, after: int, late_side: int, late_first: bool, window_ms: int, other_first: int
) -> None:
    """The other side streams alone for ``late`` frames; then both send one frame per 20 ms tick
    (in either order within the tick). The late side's first frame lands within one frame of
    ``late`` frames of silence, nothing lost; the streaming side is untouched. (Late by at most
    the window, a first frame is reordering jitter: both sides start together.) The late side
    numbers from 7 (its first frames lost), the other from 1 (so the late side's numbers come
    after the other side's same numbers: it really started later) or from 1000."""
    # numbered alike, a side later by up to the window (a frame more when its frame comes first
    # in the tick) is a side whose first frames were lost (placed by its numbers: the test above)
    assume(other_first != 1 or late - 6 > window_ms / 20 + 1)
    other = 1 - late_side
    sent: tuple[list[bytes], list[bytes]] = ([], [])
    pushes: list[Push] = []
    for i in range(late + after):
        tick: list[Push] = []
        sent[other].append(frame(other, i))
        tick.append((other, other_first + i, sent[other][-1]))
        if i >= late:
            sent[late_side].append(frame(late_side, i))
            tick.append((late_side, 7 + i - late, sent[late_side][-1]))
        pushes.extend(reversed(tick) if late_first else tick)
    timeline = Timeline(window_ms=window_ms)
    out = play(timeline, pushes)[:2]
    assert out[other] == b"".join(sent[other])
    assert abs(first_sound(out[late_side]) - late * N) <= N
    assert out[late_side].strip(SIL) == b"".join(sent[late_side])
    check_accounting(timeline, N)


@PROPERTY
@given(
    window=st.integers(1, 12),
    lost=st.sampled_from([1, 2, 5]),
    lost_side=st.integers(0, 1),
    count=st.integers(6, 60),
    mode=st.sampled_from(["auto", "perspective"]),
    data=st.data(),
)
def test_a_side_whose_first_frames_are_lost_is_placed_by_its_numbers(
    window: int, lost: int, lost_side: int, count: int, mode: str, data: st.DataObject
) -> None:
    """Both sides number from 1 and stream together, each frame delayed by less than the window
    (a random order within it); ``lost_side``'s first ``lost`` frames never come. The recording
    is exact: that side starts with ``lost`` frames of silence, nothing shifted (issue 12 bug 1:
    each side was anchored at its first number seen, so the lost side played ``lost`` frames
    early against the other for the whole call)."""
    sent: tuple[list[bytes | None], list[bytes | None]] = ([], [])
    keyed = []
    for side in (0, 1):
        delays = data.draw(st.lists(st.integers(0, window - 1), min_size=count, max_size=count))
        for i in range(count):
            payload = frame(side, i)
            if side == lost_side and i < lost:
                sent[side].append(None)
                continue
            sent[side].append(payload)
            keyed.append((i + delays[i], data.draw(st.integers(0, 1)), side, (side, 1 + i, payload)))
    keyed.sort()
    pushes = [k[3] for k in keyed]
    timeline = Timeline(window_ms=window * 20, sequence_mode=mode)
    out = play(timeline, pushes)[:2]
    expected = stereo_model(side_model(sent[0], N), side_model(sent[1], N))
    assert out == expected
    check_accounting(timeline, N)


@PROPERTY
@given(
    before=st.integers(1, 60),
    pause=st.integers(30, 500),
    after=st.integers(10, 60),
    paused_side=st.integers(0, 1),
    paused_first=st.booleans(),
    restarted=st.booleans(),
)
def test_a_side_resuming_after_a_pause_lands_where_it_arrived(
    before: int, pause: int, after: int, paused_side: int, paused_first: bool, restarted: bool
) -> None:
    """Both sides stream; one stops for ``pause`` frames (hold), its counter paused (a run of
    late frames re-anchors it) or restarted far away (a discontinuity), then streams again. Its
    first frame after the pause lands within one frame of where it arrived."""
    other = 1 - paused_side
    sent: tuple[list[bytes], list[bytes]] = ([], [])
    pushes: list[Push] = []
    seq = 100
    for i in range(before + pause + after):
        tick: list[Push] = []
        sent[other].append(frame(other, i))
        tick.append((other, 5000 + i, sent[other][-1]))
        if not before <= i < before + pause:
            if i == before + pause and restarted:
                seq += 10**6
            sent[paused_side].append(frame(paused_side, i))
            tick.append((paused_side, seq, sent[paused_side][-1]))
            seq += 1
        pushes.extend(reversed(tick) if paused_first else tick)
    timeline = Timeline()  # window 10 frames
    out = play(timeline, pushes)[:2]
    assert out[other] == b"".join(sent[other])
    audio = out[paused_side]
    resumed = sent[paused_side][before]
    assert abs(audio.find(resumed) - (before + pause) * N) <= N
    assert audio.replace(SIL, b"") == b"".join(sent[paused_side])
    stats = timeline.statistics().by_perspective(paused_side)
    assert (stats.counter_resumes, stats.discontinuities) == (1 - restarted, 1)
    assert stats.late_drops == 0
    check_accounting(timeline, N)


# ------------------------------------------------------------- bytes held, whatever the lengths

LONGEST = 2000  # bytes: protocol.MAX_MEDIA_PAYLOAD, 250 ms at 8 kHz (timeline.LONGEST_FRAME_MS)


def byte_bound(timeline: Timeline) -> int:
    """What one call may keep, derived from the configuration alone (not from the timeline's
    internals): per side, held frames and a late run within 2 units each and the duplicate ring
    within 8 units (a unit: the window or the longest frame, whichever is longer), plus committed
    but unpopped audio under a block and the alignment limit."""
    unit = max(timeline.window_samples, LONGEST)
    return 2 * (12 * unit + timeline.block_samples + unit)


def bytes_kept(timeline: Timeline) -> int:
    """White box: payload bytes held, in a late run and in the duplicate ring, and committed
    audio not popped yet, both sides; also checks the timeline's own byte counters."""
    total = 0
    for side in (timeline._left, timeline._right):
        held = sum(map(len, side.held.values()))
        run = sum(map(len, side.run.values()))
        ring = sum(len(p) for p in side.ring_payload if p is not None)
        assert (side.held_bytes, side.run_bytes, side.ring_bytes) == (held, run, ring)
        total += held + run + ring + len(side.acc)
    return total


class ByteBoundMachine(RuleBasedStateMachine):
    """Payloads of any length from 1 to the protocol's maximum (the first one too: a 1-byte first
    frame once made the window 1600 frames), in any order: in order, skips, late, replays, jumps,
    rewound counters, partial pops. Whatever it holds stays within the byte bound."""

    @initialize(
        window_ms=st.sampled_from([20, 200, 1000]),
        mode=st.sampled_from(["auto", "perspective", "connection"]),
        first=st.tuples(st.integers(1, LONGEST), st.integers(1, LONGEST)),
    )
    def start(self, window_ms: int, mode: str, first: tuple[int, int]) -> None:
        self.timeline = Timeline(window_ms=window_ms, sequence_mode=mode)
        self.bound = byte_bound(self.timeline)
        self.frontier = [1000, 5000]
        self.recent: list[Push] = []
        self.tag = 0
        for side in (0, 1):
            self.push(side, self.frontier[side], first[side])

    def push(self, side: int, sequence: int, length: int) -> None:
        self.tag += 1
        self.send((side, sequence, bytes([self.tag % 255]) * length))

    def send(self, item: Push) -> None:
        self.recent.append(item)
        del self.recent[:-16]
        if self.timeline.push(*item):
            while self.timeline.pop_block() is not None:
                pass

    @rule(side=st.integers(0, 1), step=st.integers(1, 3), length=st.integers(1, LONGEST))
    def next_frame(self, side: int, step: int, length: int) -> None:
        self.frontier[side] += step
        self.push(side, self.frontier[side], length)

    @rule(side=st.integers(0, 1), count=st.integers(1, 40), length=st.integers(1, LONGEST))
    def burst(self, side: int, count: int, length: int) -> None:
        for _ in range(count):
            self.frontier[side] += 1
            self.push(side, self.frontier[side], length)

    @rule(side=st.integers(0, 1), back=st.integers(1, 200), length=st.integers(1, LONGEST))
    def late_frame(self, side: int, back: int, length: int) -> None:
        self.push(side, self.frontier[side] - back, length)

    @precondition(lambda self: self.recent)
    @rule(index=st.integers(0, 15))
    def replay(self, index: int) -> None:
        self.send(self.recent[index % len(self.recent)])

    @rule(side=st.integers(0, 1), jump=st.integers(50, 10**12), backward=st.booleans(),
          length=st.integers(1, LONGEST))
    def jump(self, side: int, jump: int, backward: bool, length: int) -> None:
        self.frontier[side] += -jump if backward else jump
        self.push(side, self.frontier[side], length)

    @rule(side=st.integers(0, 1), back=st.integers(5, 1000), count=st.integers(1, 60),
          length=st.integers(1, LONGEST))
    def rewound_counter(self, side: int, back: int, count: int, length: int) -> None:
        start = self.frontier[side] - back
        for k in range(count):
            self.push(side, start + k, length)
        self.frontier[side] = max(self.frontier[side], start + count - 1)

    @rule()
    def partial_pop(self) -> None:
        self.timeline.pop_block(partial=True)

    @invariant()
    def what_is_kept_is_bounded_in_bytes(self) -> None:
        kept = bytes_kept(self.timeline)
        assert kept <= self.bound, (kept, self.bound)
        stats = self.timeline.statistics()
        for side in (stats.participant, stats.conference):
            assert side.frames_received == (
                side.frames_placed + side.duplicates + side.late_drops + side.frames_held)
            assert side.samples_committed - stats.samples_emitted == len(
                (self.timeline._left, self.timeline._right)[side is stats.conference].acc)

    def teardown(self) -> None:
        if not hasattr(self, "timeline"):
            return
        tail = self.timeline.finish()
        stats = self.timeline.statistics()
        assert stats.participant.samples_committed == stats.conference.samples_committed
        assert stats.participant.samples_committed == stats.samples_emitted
        assert tail is None or len(tail.left) == len(tail.right)
        assert self.timeline.buffered_frames == 0


TestByteBoundMachine = ByteBoundMachine.TestCase
TestByteBoundMachine.settings = settings(max_examples=80, stateful_step_count=40, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])


def test_the_byte_bound_of_a_live_call_is_under_200_kb() -> None:
    assert byte_bound(Timeline()) <= 200_000


def shapes() -> dict[str, list[tuple[int, int, int]]]:
    """The hostile shapes of tests/test_fuzz_core.py at the protocol's maximum payload."""
    one_then_long = [(0, 0, 1), (1, 0, 1)]
    one_then_long += [(p, seq, LONGEST) for seq in range(1, 1600) for p in (0, 1)]
    late_run = [(p, seq, 1) for seq in range(10_000, 13_200) for p in (0, 1)]
    late_run += [(p, seq, LONGEST) for seq in range(12_000, 13_600) for p in (0, 1)]
    rewound = [(p, seq, 1) for seq in range(10_000, 13_200) for p in (0, 1)]
    rewound += [(p, seq, LONGEST) for seq in range(13_100, 13_150) for p in (0, 1)]
    # in order, held just within its budget (21 x 190 <= 2 units): no shedding, so the steady
    # state's fast release runs, and the ring of 160 such frames must forget some
    short_then_longer = [(p, 0, 80) for p in (0, 1)] + [(p, seq, 190) for seq in range(1, 1600) for p in (0, 1)]
    return {"one byte then long": one_then_long, "late run": late_run, "rewound": rewound,
            "short then longer": short_then_longer}


@pytest.mark.parametrize("name", list(shapes()))
@pytest.mark.parametrize("batched", [False, True], ids=["push", "push_run"])
def test_long_frames_after_a_one_byte_first_frame_are_kept_within_the_bound(name: str, batched: bool) -> None:
    timeline = Timeline()
    most = 0
    for perspective, sequence, length in shapes()[name]:
        payload = bytes([sequence % 255]) * length
        if batched:  # one frame per batch: the bound is checked after every frame
            timeline.push_run([(perspective, sequence, payload)])
        else:
            timeline.push(perspective, sequence, payload)
        while timeline.pop_block() is not None:
            pass
        most = max(most, bytes_kept(timeline))
        ring = max(timeline._left.ring_bytes, timeline._right.ring_bytes)
        assert ring <= 8 * max(timeline.window_samples, LONGEST)  # the ring's own budget
    assert most <= byte_bound(timeline)
    assert timeline.buffered_frames <= 2 * (2 * 20 - 1)  # W <= window_ms / MIN_FRAME_MS = 20
    timeline.finish()
    stats = timeline.statistics()
    assert stats.participant.samples_committed == stats.conference.samples_committed


@pytest.mark.parametrize("first", [1, 40, 79, 80])
def test_the_window_never_counts_frames_shorter_than_10_ms(first: int) -> None:
    timeline = Timeline()  # 200 ms: at most 20 frames, however short the first one is
    for seq in range(100):
        timeline.push(0, seq, b"\x01" * first)
        assert timeline.statistics().participant.frames_held <= 20 + 1
    side = timeline._left  # white box: W, the ring and J, counted in frames of 10 ms
    assert (side.window, side.ring_size, side.jump_frames) == (20, 160, 1000)


# ------------------------------------------------------------------------ the wall clock (set_time)


def jumping_call(timeline: Timeline, frames: int, step: int, clock: bool) -> tuple[bytes, bytes, list[bytes]]:
    """The agent numbers 1, 2, 3 ...; the caller 1, 1 + step, 1 + 2 * step ..., both one frame per
    20 ms, the time given at each tick when ``clock``. Returns the output and the caller's frames."""
    pushes: list[Push] = []
    sent = []
    for i in range(frames):
        sent.append(frame(1, i))
        pushes += [(0, 1 + i, frame(0, i)), (1, 1 + step * i, sent[-1])]
    blocks = []
    for i, (perspective, sequence, payload) in enumerate(pushes):
        if clock and perspective == 0:
            timeline.set_time(1000.0 + i // 2 * 0.02)  # any origin: the first call is the start
        if timeline.push(perspective, sequence, payload):
            while (block := timeline.pop_block()) is not None:
                blocks.append(block)
    if (tail := timeline.finish()) is not None:
        blocks.append(tail)
    return b"".join(b.left for b in blocks), b"".join(b.right for b in blocks), sent


def test_numbers_running_ahead_of_the_clock_are_discontinuities() -> None:
    """Issue 12: a sequence number jumping by 499 per frame (under the 500-frame jump bound, so
    each jump was filled with 9.98 s of silence) turned 585 KiB sent into a 304 MiB file in 64
    s. With the time given, no side's audio runs more than the window ahead of it: each such jump
    is a discontinuity, counted, and every frame received is still in the recording."""
    frames = 150  # 3 s
    timeline = Timeline()  # window 200 ms
    left, right, sent = jumping_call(timeline, frames, 499, clock=True)
    assert len(left) == len(right) <= frames * N + timeline.window_samples + N
    assert right.replace(SIL, b"") == b"".join(sent)
    caller = timeline.statistics().conference
    assert caller.clock_jumps == caller.discontinuities >= frames - 2
    assert caller.gaps == 0
    assert timeline.statistics().participant.clock_jumps == 0


def test_without_a_clock_numbers_are_trusted() -> None:
    """No set_time (the timeline alone, as the benchmarks use it): a jump under the bound is a gap."""
    timeline = Timeline()
    _, right, _ = jumping_call(timeline, 20, 499, clock=False)
    assert len(right) >= 19 * 499 * N
    assert timeline.statistics().conference.clock_jumps == 0


@PROPERTY
@given(
    window=st.integers(1, 12),
    count=st.integers(1, 80),
    first=st.integers(1, 3),
    data=st.data(),
)
def test_a_real_time_call_never_runs_ahead_of_the_clock(
    window: int, count: int, first: int, data: st.DataObject
) -> None:
    """Both sides send one frame per 20 ms tick from number ``first``, each delayed by less than
    the window, some lost (runs of up to 20); the time is given at every tick. The clock never
    bites: the output is exactly the frames in place, no clock_jumps."""
    sent: tuple[list[bytes | None], list[bytes | None]] = ([None] * (first - 1), [None] * (first - 1))
    keyed = []
    for side in (0, 1):
        lost = set()
        for _ in range(data.draw(st.integers(0, 3))):
            start = data.draw(st.integers(1, max(1, count - 2)))
            lost.update(range(start, start + data.draw(st.integers(1, 20))))
        for i in range(count):
            payload = frame(side, i)
            if i in lost and i < count - 1:
                sent[side].append(None)
                continue
            sent[side].append(payload)
            tick = first - 1 + i + data.draw(st.integers(0, window - 1))
            keyed.append((tick, data.draw(st.integers(0, 1)), side, (side, first + i, payload)))
    keyed.sort()
    timeline = Timeline(window_ms=window * 20)
    timeline.set_time(0.0)  # the call starts (the recorder: when the connection is accepted)
    blocks = []
    for tick, _, _, (perspective, sequence, payload) in keyed:
        timeline.set_time(tick * 0.02)
        if timeline.push(perspective, sequence, payload):
            while (block := timeline.pop_block()) is not None:
                blocks.append(block)
    if (tail := timeline.finish()) is not None:
        blocks.append(tail)
    out = b"".join(b.left for b in blocks), b"".join(b.right for b in blocks)
    assert out == stereo_model(side_model(sent[0], N), side_model(sent[1], N))
    stats = timeline.statistics()
    assert stats.participant.clock_jumps == stats.conference.clock_jumps == 0


def test_a_sender_faster_than_real_time_may_still_lose_a_few_frames() -> None:
    """The time stands still (a whole call sent at once, as tests and replays do): its frames
    are its own allowance, so a few lost frames (under a window's worth) are still gaps in place."""
    timeline = Timeline()  # window 10 frames
    timeline.set_time(5.0)
    sent: tuple[list[bytes | None], list[bytes | None]] = ([], [])
    pushes: list[Push] = []
    for i in range(100):
        for side in (0, 1):
            lost = i in ((20, 50, 70) if side else (30, 31, 80, 95))
            sent[side].append(None if lost else frame(side, i))
            if not lost:
                pushes.append((side, 1 + i, frame(side, i)))
    out = play(timeline, pushes)[:2]
    assert out == stereo_model(side_model(sent[0], N), side_model(sent[1], N))
    assert timeline.statistics().participant.clock_jumps == 0
