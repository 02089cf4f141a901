"""The Engage Voice front end's translation (`EngageVoiceSession`): wire messages -> core events."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callstream.call.core import CallCore
from callstream.call.events import CallStarted, InputIgnored, InputRejected, SideStopped, StreamEnded
from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start, encode_stop
from callstream.engagevoice.mediascan import MediaScanner
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import parse_query
from callstream.engagevoice.session import EngageVoiceSession
from callstream.engagevoice.textbatch import TextBatch
from callstream.engagevoice.transport import StreamClosed
from callstream.errors import CLOSE_POLICY_VIOLATION, CLOSE_UNSUPPORTED_DATA, ProtocolError


def session(target: str = "/?callId=q&secret=s3", **options) -> EngageVoiceSession:
    return EngageVoiceSession(parse_query(target), scanner=MediaScanner(min_batch=1), **options)


def batch(messages: list[str]) -> TextBatch:
    spans, offset = array("I"), 0
    for message in messages:
        spans.extend((offset, len(message)))
        offset += len(message)
    return TextBatch("".join(messages).encode(), spans)


def test_each_message_becomes_its_core_event() -> None:
    front = session()
    started = front.event(encode_start({"callId": "c1", "sessionId": "7", "agentId": "5"}))
    assert type(started) is CallStarted
    assert started.fields == {"callId": "c1", "sessionId": "7", "agentId": "5"}
    assert (started.encoding, started.sample_rate) == ("audio/x-mulaw", 8000)
    assert started.raw["callId"] == "c1"
    media = front.event(encode_media(Perspective.CONFERENCE, 12, b"\x01\x02"))
    assert type(media) is tuple and media == (1, 12, b"\x01\x02")
    assert front.event(encode_stop(1.5, "2026-01-01T00:00:00Z")) == SideStopped(
        None, {"duration": 1.5, "end_time": "2026-01-01T00:00:00Z"})
    assert front.event(encode_connected()) is None
    assert front.event('{"event":"Hello"}') == InputIgnored("Hello")
    assert type(front.event("not json")) is InputRejected
    with pytest.raises(ProtocolError) as error:
        front.event('{"event":"Start","metadata":{"contentType":"audio/x-alaw"}}')
    assert error.value.code == CLOSE_UNSUPPORTED_DATA


def test_the_first_message_must_carry_the_secret_when_one_is_asked() -> None:
    assert not session().needs_first_message
    front = session(authenticate=lambda secret: secret == "right")
    assert front.needs_first_message
    assert front.first('{"event":"Connected","secret":"right"}') is None
    for first in ('{"event":"Connected","secret":"wrong"}', encode_connected(),
                  encode_media(Perspective.PARTICIPANT, 1, b"\x01")):
        with pytest.raises(ProtocolError) as error:
            front.first(first)
        assert error.value.code == CLOSE_POLICY_VIOLATION


def test_the_connection_record_keeps_the_query_but_never_its_secret() -> None:
    front = session()
    assert front.fields() == {"callId": "q"}
    record = front.connection()
    assert record["query"]["mapped"] == {"callId": "q"}
    assert "secret" not in str(record).lower()


def test_the_end_of_the_stream_is_an_in_band_event() -> None:
    assert EngageVoiceSession.ended(StreamClosed(None)) == StreamEnded("connection lost")
    assert EngageVoiceSession.ended(StreamClosed(1006)) == StreamEnded("connection lost")
    assert EngageVoiceSession.ended(StreamClosed(1000, "bye")) == StreamEnded("stream closed with 1000 (bye)")


def play(front: EngageVoiceSession, core: CallCore, reads: list[str | TextBatch]) -> list[tuple]:
    """What the recorder's loop does with each read, without the I/O."""
    blocks = []
    for data in reads:
        items = front.items(data)
        i, end = 0, len(items)
        while i < end:
            i = core.receive_media(items, i)
            while (block := core.next_block()) is not None:
                blocks.append((block.start, block.left, block.right))
            if i < end and type(items[i]) is not tuple:
                event = front.event(items[i])
                if type(event) is tuple:
                    items[i] = event
                    continue
                i += 1
                if event is not None:
                    core.receive(event)
    tail = core.finish()
    return [*blocks, None if tail is None else (tail.start, tail.left, tail.right)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, 500), max_size=15), bad=st.lists(st.integers(0, 500), max_size=3))
def test_the_same_messages_one_by_one_or_in_batches_give_the_same_call(cuts, bad) -> None:
    messages = [encode_connected(), encode_start({"callId": "c"})]
    messages += [encode_media(p, seq, bytes([seq % 256, p]) * 80) for seq in range(1, 240) for p in Perspective]
    for position in bad:
        messages.insert(min(position, len(messages)), '{"event":"Media","perspective":"Nobody"}')
    messages.append(encode_stop(1.0, "2026-01-01T00:00:00Z"))
    one_by_one = play(session(), single := CallCore(), list(messages))
    reads, start = [], 0
    for cut in [*sorted(set(cuts)), len(messages)]:
        if cut > start:
            reads.append(batch(messages[start:cut]))
            start = cut
    batched = play(session(), core := CallCore(), reads)
    assert batched == one_by_one
    assert core.statistics() == single.statistics()
    assert core.sidecar_metadata() == single.sidecar_metadata()
    assert core.bad_messages == len(bad)
