"""`CallCore` with segments (a RingCX dialog's placement engine), sans-IO: the same blocks as the
`SegmentMixer` alone, byte for byte, through the shell's receive loop; and the same lifecycle as
a call of two sides (start, endings and their close codes, limits, the bad-event cap, record)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.call.blocks import PcmBlock
from callstream.call.core import CallCore
from callstream.call.events import (
    AGENT,
    BOT,
    CONTACT,
    CallComplete,
    CallIncomplete,
    CallStarted,
    InputIgnored,
    MediaReceived,
    SegmentInfo,
    SegmentMedia,
    SegmentStarted,
    SegmentStopped,
    StreamEnded,
)
from callstream.call.segments import SegmentMixer, _Segment
from callstream.errors import ProtocolError
from test_segments import Plan, jittered_dialog, rough_dialog, tone_chunk

STARTED = CallStarted(
    fields={"callId": "dlg-1", "dialogId": "dlg-1", "sessionId": "sess"},
    raw={"session_id": "sess", "account": {"id": "acc"}, "dialog": {"id": "dlg-1"}},
)


def dialog_events(plan: Plan) -> list:
    """The plan's events in arrival order: starts, chunks (repeats too), a hold's info, stops."""
    kinds = [CONTACT, AGENT, BOT]
    events: list = []
    for index, (name, join, count, seq0, sent) in enumerate(plan):
        events.append(SegmentStarted(name, f"p-{name}", kinds[index], name=name, at=join * 0.1))
        for k, delay, repeated in sent:
            at = (join + k + 1) * 0.1 + delay / 1000
            events.append(SegmentMedia(name, tone_chunk(index, k), seq0 + k, 100, at))
            if repeated:
                events.append(SegmentMedia(name, tone_chunk(index, k), seq0 + k, 100, at + 0.05))
        events.append(SegmentInfo(name, "HOLD", None, at=(join + 1) * 0.1))
        events.append(SegmentStopped(name, at=(join + count) * 0.1 + 0.15))
    events.sort(key=lambda event: event.at)
    return events


def mixer_alone(events: list, takes: list[int]) -> list[PcmBlock]:
    """The mixer fed event by event, popping after each; a tick and a partial pop per take."""
    mixer = SegmentMixer()
    blocks: list[PcmBlock] = []
    position = 0
    for size in [*takes, len(events)]:
        for event in events[position : position + size]:
            mixer.handle(event)
            while (block := mixer.pop_block()) is not None:
                blocks.append(block)
        position += size
        if position >= len(events):
            break
        mixer.tick(events[position - 1].at)
        if (block := mixer.pop_block(partial=True)) is not None:
            blocks.append(block)
    if (tail := mixer.finish()) is not None:
        blocks.append(tail)
    return blocks


def through_the_core(events: list, takes: list[int]) -> tuple[list[PcmBlock], CallCore]:
    """The core fed as the recorder's loop feeds it (server/recorder.py `_place`): one take of
    the channel at a time, `receive_media` over the take, blocks popped, every item it leaves to
    `receive`; a tick per take with the events' clock."""
    core = CallCore(segments=SegmentMixer(), now=0.0)
    assert core.receive(STARTED) is False
    blocks: list[PcmBlock] = []
    position = 0
    for size in [*takes, len(events)]:
        items = events[position : position + size]
        i, end = 0, len(items)
        while i < end:
            i = core.receive_media(items, i)
            while (block := core.next_block()) is not None:
                blocks.append(block)
            if i < end and type(items[i]) is not tuple:
                core.receive(items[i])
                i += 1
        position += size
        if position >= len(events):
            break
        if (block := core.tick(0.0, clock=events[position - 1].at)) is not None:
            blocks.append(block)
    assert core.receive(StreamEnded("stream closed by the platform", complete=True)) is True
    if (tail := core.finish()) is not None:
        blocks.append(tail)
    return blocks, core


@settings(max_examples=60, deadline=None)
@given(jittered_dialog(), st.lists(st.integers(1, 40), max_size=8))
def test_the_core_gives_the_mixers_blocks_byte_for_byte(plan: Plan, takes: list[int]) -> None:
    events = dialog_events(plan)
    expected = mixer_alone(events, takes)
    blocks, core = through_the_core(events, takes)
    # the same recording, byte for byte, in contiguous blocks (where a block ends may differ: the
    # loop pops after media and at the next take, the mixer alone after every event)
    position = 0
    for block in blocks:
        assert block.start == position and block.frames.dtype == np.int16
        position += block.samples
    recording = b"".join(block.frames.tobytes() for block in blocks)
    assert recording == b"".join(block.frames.tobytes() for block in expected)
    assert core.outcome() == CallComplete("stream closed by the platform", 1000)
    statistics = core.statistics()
    assert statistics["samples_emitted"] == sum(block.samples for block in blocks)
    assert statistics["segments"] == len(plan) and statistics["bad_messages"] == 0


def fed(events: list, takes: list[int], *, runs: bool, block_ms: float, window_ms: float, layout: str = "stereo",
        states: dict[int, dict[str, Any]] | None = None) -> tuple[list[tuple[int, bytes, int]], SegmentMixer]:
    """The mixer's blocks (start, frames, how many events had been fed when it was popped) fed
    take by take: with ``runs``, `receive_run` over each take and every item it leaves to
    `handle`; else `handle` item by item. Either way every block popped as soon as the contract
    allows (after an item, after receive_run stops), and a tick and a partial pop between takes.
    The count is the contract's point: receive_run stops at the very item after which `handle`
    would have had a block ready, not one later. ``states``: filled with the mixer's whole state
    (`mixer_state`) by that count, after each item (or each return of receive_run) and its pops."""
    mixer = SegmentMixer(block_ms=block_ms, window_ms=window_ms, layout=layout)
    blocks: list[tuple[int, bytes, int]] = []
    fed_so_far = 0

    def pop() -> None:
        while (block := mixer.pop_block()) is not None:
            blocks.append((block.start, block.frames.tobytes(), fed_so_far))
        if states is not None:
            states[fed_so_far] = mixer_state(mixer)

    pop()  # the state before any event
    position = 0
    for size in [*takes, len(events)]:
        items = events[position : position + size]
        i, end = 0, len(items)
        while i < end:
            if runs:
                i = mixer.receive_run(items, i)
                fed_so_far = position + i
                pop()
            if i < end:
                mixer.handle(items[i])
                i += 1
                fed_so_far = position + i
                pop()
        position += size
        if position >= len(events):
            break
        mixer.tick(events[position - 1].at)
        if (block := mixer.pop_block(partial=True)) is not None:
            blocks.append((block.start, block.frames.tobytes(), fed_so_far))
        pop()
    if (tail := mixer.finish()) is not None:
        blocks.append((tail.start, tail.frames.tobytes(), fed_so_far))
    return blocks, mixer


@settings(max_examples=80, deadline=None)
@given(jittered_dialog(), st.lists(st.integers(1, 40), max_size=8), st.sampled_from([200.0, 300.0, 1000.0]),
       st.sampled_from([100.0, 200.0]))
def test_receive_run_is_handle_and_pop_after_each_item(plan: Plan, takes: list[int], block_ms: float,
                                                       window_ms: float) -> None:
    """Block for block (where each starts, its frames) and counter for counter: receive_run
    computes the watermark only where a block may be ready or a lost chunk be given up."""
    events = dialog_events(plan)
    expected, alone = fed(events, takes, runs=False, block_ms=block_ms, window_ms=window_ms)
    blocks, mixer = fed(events, takes, runs=True, block_ms=block_ms, window_ms=window_ms)
    assert blocks == expected
    assert mixer.statistics() == alone.statistics() and mixer.segments() == alone.segments()


def mixer_state(mixer: SegmentMixer) -> dict[str, Any]:
    """Everything the mixer decides with, to compare two mixers: its fields and every segment's
    (`_Segment`'s slots, its history, waiting and held chunks), the mix and the waiting writes."""
    state = {name: value for name, value in vars(mixer).items()
             if name not in ("_writes", "_mix", "_segments", "_live", "reject")}
    state["live"] = [segment.start.segment_id for segment in mixer._live]
    writes = mixer._writes
    state["writes"] = (len(writes), writes.end, bytes(writes._ops), b"".join(writes._payloads))
    state["mix"] = mixer._mix.tobytes()
    segments = []
    for segment in mixer._segments.values():
        fields = {name: getattr(segment, name) for name in _Segment.__slots__ if name not in ("decode", "start")}
        fields["history"] = list(segment.history)
        fields["pending"] = {seq: (bytes(chunk), at) for seq, (chunk, at) in segment.pending.items()}
        if segment.suspect is not None:
            held, at, since = segment.suspect
            fields["suspect"] = (bytes(held), at, since)
        segments.append(fields)
    state["segments"] = segments
    return state


@settings(max_examples=150, deadline=None)
@given(rough_dialog(), st.lists(st.integers(1, 40), max_size=10), st.sampled_from([300.0, 1000.0]),
       st.sampled_from([100.0, 200.0]), st.sampled_from(["stereo", "participants"]))
def test_receive_run_is_handle_after_each_item_in_rough_dialogs(events: list, takes: list[int], block_ms: float,
                                                                window_ms: float, layout: str) -> None:
    """As above, over dialogs with everything the common case is not (see `rough_dialog`: holds
    with and without the platform's word, reader stalls, L16 and PCMA, empty payloads, a late
    first event, stops, unknown segments), and the two mixers' whole state compared at every
    return of receive_run (against handle's after as many events) and at the end."""
    by_item: dict[int, dict[str, Any]] = {}
    by_run: dict[int, dict[str, Any]] = {}
    expected, alone = fed(events, takes, runs=False, block_ms=block_ms, window_ms=window_ms, layout=layout,
                          states=by_item)
    blocks, mixer = fed(events, takes, runs=True, block_ms=block_ms, window_ms=window_ms, layout=layout,
                        states=by_run)
    assert blocks == expected
    for count, state in by_run.items():
        assert state == by_item[count], f"after {count} events"
    assert mixer_state(mixer) == mixer_state(alone)


@settings(max_examples=150, deadline=None)
@given(rough_dialog(), st.sampled_from([300.0, 1000.0]), st.sampled_from([100.0, 200.0]))
def test_the_watermark_is_idempotent(events: list, block_ms: float, window_ms: float) -> None:
    """After every event (blocks popped as they come), the watermark computed twice gives the
    same mark and leaves the same state: giving up lost chunks does not depend on how often it
    is asked (receive_run asks again where handle would not)."""
    mixer = SegmentMixer(block_ms=block_ms, window_ms=window_ms)
    for event in events:
        mixer.handle(event)
        while mixer.pop_block() is not None:
            pass
        first = mixer.watermark()
        state = mixer_state(mixer)
        assert mixer.watermark() == first
        assert mixer_state(mixer) == state


def test_a_dialogs_record_merges_its_start_and_its_segments() -> None:
    core = CallCore(segments=SegmentMixer(), connection={"front_end": "ringcx", "session_id": None}, now=0.0)
    assert core.call_id == "unknown" and not core.started
    core.receive(STARTED)
    core.receive(SegmentStarted("c", "p-c", CONTACT, product={"id": "q", "type": "QUEUE"}, at=0.0))
    core.receive(SegmentMedia("c", tone_chunk(1, 0), 0, 100, 0.1))
    core.receive(SegmentInfo("c", "HOLD", "x", at=0.1))
    assert (core.call_id, core.session_id, core.channels, core.sample_rate) == ("dlg-1", "sess", 2, 8000)
    metadata = core.sidecar_metadata()
    assert metadata["front_end"] == "ringcx" and metadata["session_id"] == "sess"
    assert metadata["account"] == {"id": "acc"} and metadata["product"] == {"id": "q", "type": "QUEUE"}
    assert [segment["segment_id"] for segment in metadata["segments"]] == ["c"]
    assert metadata["segment_info"][0]["event"] == "HOLD" and metadata["fields"]["callId"] == "dlg-1"
    assert core.channel_map() == {"left": "AGENT segments", "right": "CONTACT and BOT segments"}
    assert core.media_totals()[:2] == (1, 800)


@pytest.mark.parametrize("engine", ["timeline", "segments"])
def test_both_engines_end_a_call_at_the_maximum_duration_and_when_idle(engine: str) -> None:
    def make(**limits: float) -> CallCore:
        return CallCore(now=100.0, segments=SegmentMixer() if engine == "segments" else None, **limits)

    def media(core: CallCore, k: int) -> None:
        if engine == "segments":
            if k == 0:
                core.receive(SegmentStarted("c", "p-c", CONTACT, at=100.0))
            core.receive(SegmentMedia("c", b"\x10" * 800, k, 100, 100.1 + k * 0.1))
        else:
            core.receive(MediaReceived(1, k + 1, b"\x10" * 160))

    longest = make(max_call_seconds=2.0)
    media(longest, 0)
    longest.tick(101.0, clock=101.0)
    assert longest.ending is None
    longest.tick(102.0, clock=102.0)
    assert longest.ending == CallIncomplete("maximum call duration of 2 s reached", 1001)
    idle = make(idle_timeout=0.5)
    media(idle, 0)
    idle.tick(100.2, clock=100.2)
    media(idle, 1)
    idle.tick(100.6, clock=100.6)  # a frame came since the last tick
    assert idle.ending is None
    idle.tick(101.1, clock=101.1)
    assert idle.ending == CallIncomplete("no media for 0.5 s", 1001)
    assert idle.outcome().status == "incomplete"


def test_unusable_segment_events_count_against_the_cores_cap() -> None:
    core = CallCore(segments=SegmentMixer(), max_bad_messages=2, now=0.0)
    core.receive(STARTED)
    core.receive(SegmentStopped("ghost", at=0.1))  # of an unknown segment
    core.receive(InputIgnored("newer_event"))
    with pytest.raises(ProtocolError) as raised:
        core.receive(STARTED)  # a second DialogInit
    assert raised.value.code == 1007
    assert core.ending is not None and core.ending.close_code == 1007
    assert (core.statistics()["bad_messages"], core.statistics()["unknown_events"]) == (2, 1)
    assert core.media_totals()[-1] == 2


def test_each_engine_refuses_the_others_media() -> None:
    with pytest.raises(ValueError):
        CallCore(segments=SegmentMixer()).receive(MediaReceived(0, 1, b"\xff" * 160))
    with pytest.raises(ValueError):
        CallCore().receive(SegmentStopped("c"))


def test_a_cancelled_dialog_is_incomplete_with_nothing_to_answer() -> None:
    core = CallCore(segments=SegmentMixer(), now=0.0)
    core.receive(STARTED)
    assert core.receive(StreamEnded("stream cancelled")) is True
    assert core.outcome() == CallIncomplete("stream cancelled", None)
    core.close("draining")  # the shell's stop after the peer went: the close code is answered
    assert core.outcome() == CallIncomplete("draining", 1001)
