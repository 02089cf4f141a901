"""The sans-IO core under hostile input: `parse_message`, the front end's translation and the
`CallCore` (its state and its `Timeline`) together.

The invariant of every test here (h11's fuzz rule): any input is either handled or ends the call
with `ProtocolError` -- never any other exception. And whatever the input, the timeline holds a
bounded number of frames (a reorder window and a late run per side), committed but unpopped
audio stays within a block plus the alignment limit, and ``finish`` leaves both channels equal.
"""

from __future__ import annotations

import base64
import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callstream.call.core import CallCore
from callstream.call.timeline import StereoBlock, Timeline
from callstream.engagevoice.mediascan import MediaScanner
from callstream.engagevoice.messages import BadMessage, Connected, Event, Media, Perspective, Start, Stop, Unknown
from callstream.engagevoice.protocol import parse_message
from callstream.engagevoice.query import parse_query
from callstream.engagevoice.session import EngageVoiceSession, core_event
from callstream.errors import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    ProtocolError,
)

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RATE = 8000  # Hz
DEFAULT_NOMINAL = 160  # samples: what a side assumes before its first payload (20 ms)
MAX_BAD = 50  # bad messages and unknown events tolerated by the CallCore under test
MAX_BYTES = 65536  # the server's default --max-message-size

HOSTILE_SEQUENCES = (0, 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30)


# ----------------------------------------------------------------------------------- strategies

def payloads(max_size: int = 4000) -> st.SearchStrategy[bytes]:
    """1..max_size bytes of mu-law; one repeated byte keeps the examples cheap to generate."""
    return st.builds(lambda n, b: bytes([b]) * n, st.integers(1, max_size), st.integers(0, 255))


sequences = st.one_of(
    st.integers(0, 60),  # dense: reorder, duplicates, late frames, runs
    st.sampled_from(HOSTILE_SEQUENCES),
    st.integers(0, 2**64),  # huge jumps both ways
)
media_events = st.builds(Media, st.sampled_from(list(Perspective)), sequences, payloads())
other_events = st.one_of(
    st.builds(Connected, st.none() | st.text(max_size=10), st.none() | st.text(max_size=10)),
    st.builds(Start, st.dictionaries(st.sampled_from(["callId", "sessionId", "agentId"]),
                                     st.text(max_size=20), max_size=3)),
    st.builds(Stop, st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)),
    st.builds(Unknown, st.text(max_size=10)),
    st.builds(BadMessage, st.text(max_size=10)),
)
TICK = "tick"  # the recorder's flush ticker: pop whatever is aligned, at most one block
steps = st.lists(st.one_of(media_events, media_events, other_events, st.just(TICK)), max_size=250)


# ------------------------------------------------------------------------------------- pipeline

class Pipeline:
    """What `CallRecorder` does with each event, without the I/O: Media to the core's timeline
    (popping every full block), everything else through the front end's translation to the
    core; ProtocolError ends the call."""

    def __init__(self, *, window_ms: float = 200, mode: str = "auto") -> None:
        query = parse_query("/?callId=fuzz")
        self.call = CallCore(fields=dict(query.mapped), max_bad_messages=MAX_BAD, window_ms=window_ms,
                             sequence_mode=mode)
        self.timeline = self.call.timeline
        self.window_ms = window_ms
        self.blocks: list[StereoBlock] = []
        self.largest_payload = DEFAULT_NOMINAL
        self.closed_with: int | None = None

    def feed(self, item: Event | str) -> None:
        if self.closed_with is not None:
            return
        if item == TICK:
            block = self.call.tick(0.0)
            if block is not None:
                self.blocks.append(block)
        elif type(item) is Media:
            self.push(item.perspective, item.sequence, item.payload)
        else:
            event = core_event(item)  # type: ignore[arg-type]
            try:
                if event is not None:
                    self.call.receive(event)
            except ProtocolError as error:
                assert error.code == CLOSE_INVALID_PAYLOAD
                counters = self.call.statistics()
                assert counters["bad_messages"] + counters["unknown_events"] == MAX_BAD + 1
                self.closed_with = error.code
        self.check_bounded()

    def push(self, perspective: int, sequence: int, payload: bytes) -> None:
        self.largest_payload = max(self.largest_payload, len(payload))
        ready = self.timeline.push(perspective, sequence, payload)
        block = self.timeline.pop_block()
        assert (block is not None) == ready
        while block is not None:
            self.blocks.append(block)
            block = self.timeline.pop_block()

    def window_frames(self, nominal: int | None) -> int:
        frame_ms = (nominal or DEFAULT_NOMINAL) * 1000 / RATE
        return max(1, round(self.window_ms / frame_ms))

    def check_bounded(self) -> None:
        timeline = self.timeline
        stats = timeline.statistics()
        held = 0
        for side in (stats.participant, stats.conference):
            # at most a window of frames held, plus a late run shorter than a window
            assert side.frames_held <= 2 * self.window_frames(side.nominal_frame_samples) - 1, side
            assert side.frames_received == (
                side.frames_placed + side.duplicates + side.late_drops + side.frames_held
            ), side
            held += side.frames_held
        assert timeline.buffered_frames == held
        # committed but unpopped audio: under a block on the shorter side, and the sides at
        # most the alignment limit apart (the window, or one frame when frames are longer)
        left = stats.participant.samples_committed - stats.samples_emitted
        right = stats.conference.samples_committed - stats.samples_emitted
        limit = max(timeline.window_samples, self.largest_payload)
        assert min(left, right) < timeline.block_samples
        assert abs(left - right) <= limit, (left, right, limit)
        assert stats.samples_emitted == sum(block.samples for block in self.blocks)

    def finish(self) -> None:
        tail = self.call.finish()
        if tail is not None:
            self.blocks.append(tail)
        assert self.call.finish() is None
        stats = self.timeline.statistics()
        assert stats.participant.frames_held == stats.conference.frames_held == 0
        assert self.timeline.buffered_frames == 0
        assert stats.participant.samples_committed == stats.conference.samples_committed
        assert stats.participant.samples_committed == stats.samples_emitted
        position = 0
        for block in self.blocks:
            assert len(block.left) == len(block.right)
            assert block.start == position
            position = block.end
        assert position == stats.samples_emitted


# ---------------------------------------------------------------------------------- event fuzz

@FUZZ
@given(steps=steps, mode=st.sampled_from(["auto", "perspective", "connection"]),
       window_ms=st.sampled_from([20.0, 200.0, 1000.0]))
def test_any_event_sequence_is_handled_bounded_and_ends_equal(
    steps: list[Event | str], mode: str, window_ms: float
) -> None:
    pipeline = Pipeline(window_ms=window_ms, mode=mode)
    for item in steps:
        pipeline.feed(item)
    pipeline.finish()


@FUZZ
@given(
    pushes=st.lists(
        st.tuples(
            st.sampled_from([0, 1]),
            st.one_of(st.integers(-60, 60), st.integers(-(2**70), 2**70),
                      st.sampled_from([-(2**63), -1, *HOSTILE_SEQUENCES])),
            payloads(),
        ),
        max_size=200,
    ),
    mode=st.sampled_from(["auto", "perspective", "connection"]),
)
def test_direct_timeline_pushes_with_any_int_never_raise(
    pushes: list[tuple[int, int, bytes]], mode: str
) -> None:
    """Negative numbers cannot come from the parser; the timeline must survive them anyway."""
    pipeline = Pipeline(mode=mode)
    for perspective, sequence, payload in pushes:
        pipeline.push(perspective, sequence, payload)
        pipeline.check_bounded()
    pipeline.finish()


@FUZZ
@given(
    base=st.sampled_from([0, 2**32, 2**63 - 5, 2**64]),
    runs=st.lists(st.tuples(st.sampled_from([0, 1]), st.integers(-3000, 3000),
                            st.integers(1, 60), payloads(4000)), min_size=1, max_size=12),
)
def test_long_runs_after_hostile_jumps_stay_bounded(
    base: int, runs: list[tuple[int, int, int, bytes]]
) -> None:
    """Runs of consecutive numbers after jumps (a restarted counter, a rewound one): many frames
    per run, so the window actually fills and releases on the far side of each jump."""
    pipeline = Pipeline()
    position = [base, base]
    for perspective, jump, length, payload in runs:
        start = max(0, position[perspective] + jump)
        for sequence in range(start, start + length):
            pipeline.push(perspective, sequence, payload)
            pipeline.check_bounded()
        position[perspective] = start + length
    pipeline.finish()


# ------------------------------------------------------------------------------ raw text fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                       max_size=4),
    max_leaves=12,
)
event_names = st.sampled_from(["Media", "media", " MEDIA ", "Start", "start", "Stop", "STOP",
                               "Connected", "connected", "Dance", "", 1, None])
sequence_ids = st.one_of(
    st.integers(-5, 2**70), st.integers(0, 40).map(str), st.sampled_from(
        ["", " 7 ", "-1", "1e3", "١٢", "0x10", "9" * 5000, str(2**64), "1.0", "+3"]),
    st.floats(), st.none(), json_values,
)
media_fields = st.one_of(
    payloads(400).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["", "AAAA====", "!!!", "AA==AA==", "=", "AAA", "AAAA\n", "YQ"]),
    st.text(max_size=20), json_values,
)
content_types = st.sampled_from(["audio/x-mulaw", "AUDIO/PCMU; rate=8000", "audio/x-alaw",
                                 "audio/l16", "", 7, None])
sample_rates = st.sampled_from([8000, "8000", 8000.0, "8000.0", 16000, "x", 0, -8000, 1e309, None])


@st.composite
def event_objects(draw: st.DrawFn) -> dict[str, Any]:
    """Dicts shaped like the platform's messages, every field possibly wrong."""
    message: dict[str, Any] = {"event": draw(event_names)}
    if draw(st.booleans()):
        message["perspective"] = draw(st.sampled_from(["Participant", "conference", " Conference",
                                                       "Agent", "", 0]))
    if draw(st.booleans()):
        message["sequenceId"] = draw(sequence_ids)
    if draw(st.booleans()):
        message["media"] = draw(media_fields)
    if draw(st.booleans()):
        metadata: dict[str, Any] = draw(st.dictionaries(
            st.sampled_from(["callId", "call_id", "SessionID", "agentId", "secret", "Secret",
                             "duration", "x"]), json_values, max_size=4))
        if draw(st.booleans()):
            metadata["contentType"] = draw(content_types)
        if draw(st.booleans()):
            metadata["sampleRateHertz"] = draw(sample_rates)
        message["metadata"] = draw(st.sampled_from([metadata, [metadata], "meta"]))
    if draw(st.booleans()):
        message["secret"] = draw(json_values)
    return message


def serialise(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


raw_frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(serialise),
    event_objects().map(serialise),
    event_objects().map(serialise).map(lambda text: text.encode("utf-8", "surrogatepass")),
    event_objects().map(serialise).map(lambda text: text[: len(text) // 2]),  # truncated
    st.sampled_from(["[" * 10000, '{"a":' * 5000, "\ud800", '{"event": "\ud800"}',
                     b'{"event": "Media", "x": "\xff\xfe"}', "x" * (MAX_BYTES + 1),
                     "é" * (MAX_BYTES // 2 + 1), b"\x00" * 100]),
)


def parse(frame: str | bytes) -> Event | None:
    """parse_message, or None when it raised the ProtocolError that ends the call."""
    try:
        return parse_message(frame, max_bytes=MAX_BYTES)
    except ProtocolError as error:
        assert error.code in (CLOSE_MESSAGE_TOO_BIG, CLOSE_UNSUPPORTED_DATA), error
        assert error.reason.isascii() and len(error.reason.encode()) <= 123
        return None


@FUZZ
@given(frames=st.lists(raw_frames, max_size=60))
def test_raw_frames_parse_or_end_the_call_and_the_pipeline_holds(
    frames: list[str | bytes],
) -> None:
    pipeline = Pipeline()
    for frame in frames:
        event = parse(frame)
        if event is None:
            break  # the recorder closes the call here
        assert type(event) in (Connected, Start, Media, Stop, Unknown, BadMessage)
        if type(event) is Media:
            assert event.sequence >= 0 and event.payload
            assert event.perspective in (Perspective.PARTICIPANT, Perspective.CONFERENCE)
        pipeline.feed(event)
    pipeline.finish()


@FUZZ
@given(
    event=st.sampled_from(["Media", "media", " MEDIA "]),
    perspective=st.sampled_from(["Participant", "conference", " Conference"]),
    sequence=sequence_ids,
    media=media_fields,
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)
def test_media_with_any_field_values_is_media_or_a_bad_message(
    event: str, perspective: str, sequence: Any, media: Any, extra: dict[str, Any]
) -> None:
    """Media is the hot path and the fast decoder's: every field value must give Media or
    BadMessage, from the text and from the same bytes."""
    message = {**extra, "event": event, "perspective": perspective, "sequenceId": sequence,
               "media": media}
    text = serialise(message)
    for frame in (text, text.encode("utf-8", "surrogatepass")):
        parsed = parse_message(frame, max_bytes=MAX_BYTES)
        assert type(parsed) in (Media, BadMessage), parsed
        if type(parsed) is Media:
            assert parsed.sequence >= 0 and parsed.payload
            pipeline = Pipeline()
            pipeline.feed(parsed)
            pipeline.finish()


@FUZZ
@given(message=event_objects())
def test_event_objects_parse_the_same_as_text_and_as_bytes(message: dict[str, Any]) -> None:
    text = serialise(message)
    as_text, as_bytes = parse(text), parse(text.encode("utf-8", "surrogatepass"))
    assert as_text == as_bytes


@FUZZ
@given(target=st.text(max_size=300) | st.builds(
    lambda keys, values: "/?" + "&".join(f"{k}={v}" for k, v in zip(keys, values, strict=False)),
    st.lists(st.sampled_from(["callId", "CALL_ID", "secret", "sessionId", "%", "%zz", "a=b"]),
             max_size=6),
    st.lists(st.text(max_size=30), max_size=6)))
def test_any_upgrade_target_parses_into_a_call_core(target: str) -> None:
    session = EngageVoiceSession(parse_query(target), scanner=MediaScanner())
    call = CallCore(fields=session.fields(), connection=session.connection(), max_bad_messages=MAX_BAD)
    assert isinstance(call.call_id, str) and call.call_id
    assert isinstance(call.session_id, str) and call.session_id
    metadata = call.sidecar_metadata()
    json.dumps(metadata)
    assert not any(key.lower() == "secret" for key in metadata["query"]["raw"])


# ------------------------------------------------------------------- bytes held, not just frames

RETAINED_BUDGET = 4 * 2**20  # bytes: ~500 frames of 4000 bytes per side; the window is 1600 samples


def retained_after(pushes: list[tuple[int, int, int]]) -> int:
    """Bytes still allocated after feeding ``pushes`` (perspective, sequence, payload length) into
    a fresh Timeline and popping every full block. Each payload is a fresh object the caller drops
    at once, so whatever stays allocated is what the timeline keeps."""
    timeline = Timeline()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for perspective, sequence, length in pushes:
            timeline.push(perspective, sequence, bytes([sequence % 255]) * length)
            while timeline.pop_block() is not None:
                pass
        return tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()


def in_order_after_a_one_byte_frame(count: int) -> list[tuple[int, int, int]]:
    pushes = [(0, 0, 1), (1, 0, 1)]
    return pushes + [(p, seq, 4000) for seq in range(1, count) for p in (0, 1)]


def late_run_after_one_byte_frames(count: int) -> list[tuple[int, int, int]]:
    pushes = [(p, seq, 1) for seq in range(10_000, 10_000 + 2 * count) for p in (0, 1)]
    return pushes + [(p, seq, 4000) for seq in range(1000, 1000 + count) for p in (0, 1)]


def test_frames_of_the_first_length_are_held_within_budget() -> None:
    """The control for the test below: a plain 160-byte stream keeps a few KiB."""
    pushes = [(p, seq, 160) for seq in range(3000) for p in (0, 1)]
    assert retained_after(pushes) < 256 * 1024


@pytest.mark.parametrize("shape", [in_order_after_a_one_byte_frame, late_run_after_one_byte_frames])
def test_frames_longer_than_the_first_do_not_multiply_what_is_held(shape) -> None:
    retained = retained_after(shape(1599))
    assert retained <= RETAINED_BUDGET, f"{retained / 2**20:.1f} MiB retained"
