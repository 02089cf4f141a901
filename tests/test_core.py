"""`CallCore`, sans-IO: the same events give the same blocks however they are cut, and the call's
ending, limits and record follow from the events and the time given (no I/O, no clock)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callstream.call.batch import ScannedMedia
from callstream.call.core import CallCore, receive_all
from callstream.call.events import (
    CallComplete,
    CallFailed,
    CallIncomplete,
    CallStarted,
    InputIgnored,
    InputRejected,
    MediaReceived,
    SideStopped,
    StreamEnded,
)
from callstream.call.timeline import StereoBlock
from callstream.errors import CLOSE_GOING_AWAY, CLOSE_INVALID_PAYLOAD, CLOSE_UNSUPPORTED_DATA, ProtocolError

Frame = tuple[int, int, bytes]


@st.composite
def streams(draw: st.DrawFn) -> list[Frame]:
    """Both sides' frames, mostly in order (long enough for the C lanes to take over: they do
    after 100 steady frames a side), with some swapped, repeated or missing, and odd lengths."""
    count = draw(st.integers(0, 400))
    frames: list[Frame] = []
    for seq in range(1, count + 1):
        for side in (0, 1):
            length = 160 if draw(st.integers(0, 30)) else draw(st.integers(1, 400))
            frames.append((side, seq, draw(st.binary(min_size=length, max_size=length))
                           if length < 8 else bytes([(seq * 7 + side) % 256]) * length))
    for _ in range(draw(st.integers(0, 8))):
        if len(frames) < 2:
            break
        i = draw(st.integers(0, len(frames) - 2))
        action = draw(st.sampled_from(["swap", "repeat", "drop", "far"]))
        if action == "swap":
            frames[i], frames[i + 1] = frames[i + 1], frames[i]
        elif action == "repeat":
            frames.insert(i, frames[i])
        elif action == "drop":
            del frames[i]
        else:
            side, _, payload = frames[i]
            frames.insert(i, (side, draw(st.integers(0, 2**40)), payload))
    return frames


def play_whole(core: CallCore, frames: list[Frame]) -> list[StereoBlock]:
    return receive_all(core, frames)


def play_one_by_one(core: CallCore, frames: list[Frame]) -> list[StereoBlock]:
    blocks = []
    for frame in frames:
        core.receive(MediaReceived(*frame))
        block = core.next_block()
        while block is not None:
            blocks.append(block)
            block = core.next_block()
    return blocks


def play_batches(core: CallCore, frames: list[Frame], cuts: list[int]) -> list[StereoBlock]:
    blocks, start = [], 0
    for cut in [*sorted(set(cuts)), len(frames)]:
        if cut > start:
            blocks += receive_all(core, ScannedMedia.from_tuples(frames[start:cut]))
            start = cut
    return blocks


def outcome_of(core: CallCore, blocks: list[StereoBlock]) -> tuple:
    tail = core.finish()
    return ([(b.start, b.left, b.right) for b in blocks],
            None if tail is None else (tail.start, tail.left, tail.right), core.statistics())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frames=streams(), cuts=st.lists(st.integers(0, 900), max_size=12),
       mode=st.sampled_from(["auto", "perspective", "connection"]))
def test_the_same_media_whole_one_by_one_or_in_batches_gives_the_same_blocks(frames, cuts, mode) -> None:
    whole = outcome_of(core := CallCore(sequence_mode=mode), play_whole(core, frames))
    single = outcome_of(core := CallCore(sequence_mode=mode), play_one_by_one(core, frames))
    batched = outcome_of(core := CallCore(sequence_mode=mode), play_batches(core, frames, cuts))
    assert single == whole
    assert batched == whole


def test_a_steady_stream_in_batches_is_placed_in_c_and_gives_the_same_audio() -> None:
    """The control for the property above: a long in-order stream, where the C lanes take over."""
    frames = [(side, seq, bytes([seq % 256]) * 160) for seq in range(1, 1001) for side in (0, 1)]
    whole = outcome_of(core := CallCore(), play_whole(core, frames))
    batched = outcome_of(core := CallCore(), play_batches(core, frames, list(range(0, 2000, 37))))
    assert batched == whole
    blocks, tail, _ = whole
    audio = b"".join(left for _, left, _ in blocks) + tail[1]
    assert audio == b"".join(payload for side, _, payload in frames if side == 0)


def test_both_stops_complete_the_call_and_stop_the_input() -> None:
    core = CallCore(fields={"callId": "q"})
    assert not core.receive(CallStarted({"callId": "c1", "sessionId": "7"}, raw={"callId": "c1"}))
    assert not core.receive(SideStopped(metadata={"duration": 1}))
    assert core.ending is None
    assert core.receive(SideStopped())
    assert core.outcome() == CallComplete("both Stops received", 1000)
    assert (core.call_id, core.session_id) == ("c1", "7")
    core.close("server shutting down")  # later: the first ending stands
    assert core.outcome() == CallComplete("both Stops received", 1000)


def test_the_stream_ending_in_band_ends_the_call_incomplete_without_a_close() -> None:
    core = CallCore()
    assert core.receive(StreamEnded("connection lost"))
    assert core.outcome() == CallIncomplete("connection lost", None)
    core.close("server shutting down")  # a close after the peer went still answers it
    assert core.outcome() == CallIncomplete("server shutting down", CLOSE_GOING_AWAY)


def test_a_shell_stop_leaves_the_input_open_for_what_already_arrived() -> None:
    core = CallCore()
    core.close("server shutting down")
    assert core.ending == CallIncomplete("server shutting down", CLOSE_GOING_AWAY)
    assert not core.receive(CallStarted({"callId": "late"}))
    receive_all(core, [(0, 1, b"\x01" * 160), (1, 1, b"\x02" * 160)])
    tail = core.finish()
    assert tail is not None and tail.left == b"\x01" * 160 and tail.right == b"\x02" * 160


def test_a_failure_overrides_every_ending() -> None:
    core = CallCore()
    core.receive(SideStopped())
    core.receive(SideStopped())
    core.fail("recording failed: disk full")
    assert core.outcome() == CallFailed("recording failed: disk full", 1011)
    assert core.failed


def test_rejected_and_ignored_input_past_the_cap_ends_the_call_1007() -> None:
    core = CallCore(max_bad_messages=3)
    core.receive(InputRejected("not JSON"))
    core.receive(InputIgnored("Hello"))
    core.receive(InputRejected("not JSON"))
    with pytest.raises(ProtocolError) as error:
        core.receive(InputIgnored("Hello"))
    assert error.value.code == CLOSE_INVALID_PAYLOAD
    reason = "more than 3 bad messages and unknown events (2 bad, 2 unknown)"
    assert core.ending == CallIncomplete(reason, CLOSE_INVALID_PAYLOAD)
    statistics = core.statistics()
    assert (statistics["bad_messages"], statistics["unknown_events"], statistics["stops"]) == (2, 2, 0)


def test_an_encoding_the_core_cannot_record_ends_the_call_1003() -> None:
    core = CallCore()
    with pytest.raises(ProtocolError) as error:
        core.receive(CallStarted({}, encoding="audio/x-alaw"))
    assert error.value.code == CLOSE_UNSUPPORTED_DATA
    assert not core.started


def test_idle_timeout_and_maximum_duration_follow_the_time_given() -> None:
    core = CallCore(now=100.0, idle_timeout=5.0, max_call_seconds=60.0)
    core.tick(100.0)
    core.receive(MediaReceived(0, 1, b"\x01" * 160))
    core.tick(104.0)  # a frame since the last tick: not idle
    core.tick(108.9)
    assert core.ending is None
    core.tick(109.0)
    assert core.ending == CallIncomplete("no media for 5 s", CLOSE_GOING_AWAY)
    longest = CallCore(now=100.0, max_call_seconds=60.0)
    longest.tick(159.99)
    assert longest.ending is None
    longest.tick(160.0)
    assert longest.ending == CallIncomplete("maximum call duration of 60 s reached", CLOSE_GOING_AWAY)


def test_a_tick_hands_over_the_partial_block_only_when_storage_has_room() -> None:
    core = CallCore(window_ms=20)
    receive_all(core, [(side, seq, b"\x05" * 160) for seq in (1, 2, 3) for side in (0, 1)])
    assert core.tick(0.0, room=False) is None
    block = core.tick(0.0)
    assert block is not None and block.start == 0 and 0 < block.samples < core.timeline.block_samples


def test_the_record_keeps_the_connection_start_stops_and_merged_fields() -> None:
    core = CallCore(fields={"callId": "q", "agentId": "9"}, connection={"query": {"path": "/"}})
    core.receive(CallStarted({"callId": "c"}, raw={"callId": "c", "extra": 1}))
    core.receive(CallStarted({"callId": "ignored"}))
    core.receive(SideStopped(metadata={"duration": 3}))
    assert core.sidecar_metadata() == {
        "query": {"path": "/"},
        "start": {"callId": "c", "extra": 1},
        "stops": [{"duration": 3}],
        "fields": {"callId": "c", "agentId": "9"},
    }


def test_anything_else_is_not_an_event() -> None:
    with pytest.raises(ValueError, match="not a call event"):
        CallCore().receive("Media")
