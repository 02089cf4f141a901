"""Wire messages to the call core's events: every field carried over; any bytes either fail to parse
(a bad message for the core) or convert without raising; the server's decoder, which parses every
message into one reused StreamEvent, gives what a fresh parse gives."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from callstream.call.events import (
    CallStarted,
    InputIgnored,
    InputRejected,
    SegmentInfo,
    SegmentMedia,
    SegmentStarted,
    SegmentStopped,
)
from callstream.ringcx import streaming_pb2 as pb
from callstream.ringcx.convert import EventDecoder, convert

text = st.text(max_size=20)
u32 = st.integers(0, 2**32 - 1)


@given(segment=text, payload=st.binary(max_size=2000), seq=u32, duration=u32, at=st.floats(0, 1e6))
def test_media(segment: str, payload: bytes, seq: int, duration: int, at: float) -> None:
    event = pb.StreamEvent(segment_media=pb.SegmentMediaEvent(
        segment_id=segment, audio_content=pb.AudioContent(payload=payload, seq=seq, duration=duration)))
    wire = pb.StreamEvent.FromString(event.SerializeToString())
    assert convert(wire, at) == SegmentMedia(segment, payload, seq, duration, at)


@given(segment=text, participant=text, kind=st.sampled_from([0, 1, 2, 5, 7]), name=st.none() | text,
       codec=st.none() | st.integers(0, 9), rate=u32, ptime=u32, product=st.none() | text)
def test_segment_start(segment: str, participant: str, kind: int, name: str | None, codec: int | None,
                       rate: int, ptime: int, product: str | None) -> None:
    start = pb.SegmentStartEvent(segment_id=segment, participant=pb.Participant(id=participant, type=kind))
    if name is not None:
        start.participant.name = name
    if codec is not None:
        start.audio_format.CopyFrom(pb.AudioFormat(codec=codec, rate=rate, ptime=ptime))
    if product is not None:
        start.product.CopyFrom(pb.Product(id=product, type=pb.QUEUE))
    wire = pb.StreamEvent.FromString(pb.StreamEvent(segment_start=start).SerializeToString())
    event = convert(wire, 1.5)
    assert isinstance(event, SegmentStarted)
    assert (event.segment_id, event.participant_id, event.name, event.at) == (segment, participant, name, 1.5)
    assert event.role == {0: "PARTICIPANT_TYPE_UNSPECIFIED", 1: "CONTACT", 2: "AGENT", 5: "BOT"}.get(
        kind, str(kind))
    if codec is None:
        assert event.audio_format is None
    else:
        names = {0: "CODEC_UNSPECIFIED", 1: "OPUS", 2: "PCMA", 3: "PCMU", 4: "L16", 5: "FLAC"}
        assert (event.audio_format.codec, event.audio_format.rate, event.audio_format.ptime) == (
            names.get(codec, str(codec)), rate, ptime)
    assert event.product == (None if product is None else {"id": product, "type": "QUEUE"})


@given(dialog=text, session=text, ani=st.none() | text, attributes=st.dictionaries(text, text, max_size=3))
def test_dialog_init(dialog: str, session: str, ani: str | None, attributes: dict[str, str]) -> None:
    message = pb.Dialog(id=dialog, type=pb.OUTBOUND, attributes=attributes)
    if ani is not None:
        message.ani = ani
    event = convert(pb.StreamEvent(session_id=session, dialog_init=pb.DialogInitEvent(
        account=pb.Account(id="a", sub_account_id="s", rc_account_id="r"), dialog=message)), 0.0)
    assert isinstance(event, CallStarted) and event.raw["session_id"] == session
    assert event.raw["dialog"] == {"id": dialog, "type": "OUTBOUND", "ani": ani, "dnis": None, "language": None,
                                   "attributes": attributes}
    assert event.raw["account"] == {"id": "a", "sub_account_id": "s", "rc_account_id": "r"}
    named = {"dialogId": dialog, "callId": dialog, "sessionId": session, "accountId": "a", "subaccountId": "s",
             "rcAccountId": "r", "ani": ani or ""}
    assert event.fields == {key: value for key, value in named.items() if value}  # names the file


def test_info_stop_and_no_event() -> None:
    info = convert(pb.StreamEvent(segment_info=pb.SegmentInfoEvent(segment_id="c", event="HOLD")), 2.0)
    assert info == SegmentInfo("c", "HOLD", None, at=2.0)
    assert convert(pb.StreamEvent(segment_stop=pb.SegmentStopEvent(segment_id="c")), 3.0) == SegmentStopped("c", at=3.0)
    assert isinstance(convert(pb.StreamEvent(session_id="x"), 4.0), InputIgnored)


@given(st.binary(max_size=300))
def test_any_bytes_parse_and_convert_or_fail_to_parse(data: bytes) -> None:
    try:
        message = pb.StreamEvent.FromString(data)
    except DecodeError:
        return
    convert(message, 0.0)  # never raises


def _fresh(data: bytes, at: float) -> object:
    """What grpc's own deserializer and `convert` make of ``data``."""
    try:
        message = pb.StreamEvent.FromString(data)
    except DecodeError:
        return InputRejected("malformed StreamEvent")
    return convert(message, at)


@given(st.binary(max_size=300))
def test_the_decoder_gives_a_bad_message_for_what_does_not_parse_else_a_fresh_parse(data: bytes) -> None:
    assert EventDecoder().decode(data, 1.5) == _fresh(data, 1.5)


_events = st.one_of(
    st.builds(lambda segment, payload, seq: pb.StreamEvent(session_id="s", segment_media=pb.SegmentMediaEvent(
        segment_id=segment, audio_content=pb.AudioContent(payload=payload, seq=seq, duration=100))),
        text, st.binary(max_size=900), u32),
    st.builds(lambda segment, name: pb.StreamEvent(segment_start=pb.SegmentStartEvent(
        segment_id=segment, participant=pb.Participant(id=segment, type=pb.AGENT, name=name))),
        text, st.none() | text),
    st.builds(lambda segment, data: pb.StreamEvent(segment_info=pb.SegmentInfoEvent(
        segment_id=segment, event="HOLD", data=data)), text, st.none() | text),
    st.builds(lambda segment: pb.StreamEvent(segment_stop=pb.SegmentStopEvent(segment_id=segment)), text),
    st.builds(lambda dialog, attributes: pb.StreamEvent(session_id="s", dialog_init=pb.DialogInitEvent(
        dialog=pb.Dialog(id=dialog, attributes=attributes))), text, st.dictionaries(text, text, max_size=3)),
    st.just(pb.StreamEvent(session_id="nothing set")),
)


@given(st.lists(st.one_of(_events.map(lambda event: event.SerializeToString()), st.binary(max_size=40)),
                max_size=30), st.integers(1, 4))
def test_a_reused_message_decodes_a_stream_as_fresh_parses_do(stream: list[bytes], reuse: int) -> None:
    """Every kind of event after every other (a field of one never shows in the next), malformed
    bytes among them, and the message replaced every ``reuse`` parses."""
    decoder = EventDecoder(reuse)
    assert [decoder.decode(data, float(k)) for k, data in enumerate(stream)] == [
        _fresh(data, float(k)) for k, data in enumerate(stream)]


def test_a_decoder_reuses_at_least_once() -> None:
    with pytest.raises(ValueError, match="reuse"):
        EventDecoder(0)
