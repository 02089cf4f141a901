"""Wire messages to the call core's events: every field carried over; any bytes either fail to parse
(`decode`: a bad message for the core) or convert without raising."""

from __future__ import annotations

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
from callstream.ringcx.convert import convert, decode

text = st.text(max_size=20)
u32 = st.integers(0, 2**32 - 1)


@given(segment=text, payload=st.binary(max_size=2000), seq=u32, duration=u32, at=st.floats(0, 1e6))
def test_media(segment: str, payload: bytes, seq: int, duration: int, at: float) -> None:
    event = pb.StreamEvent(segment_media=pb.SegmentMediaEvent(
        segment_id=segment, audio_content=pb.AudioContent(payload=payload, seq=seq, duration=duration)))
    wire = pb.StreamEvent.FromString(event.SerializeToString())
    expected = SegmentMedia(segment, payload, seq, duration, at)
    assert convert(wire, at) == expected
    chunk = decode(event.SerializeToString(), at)  # its own path for the hot case
    assert type(chunk) is SegmentMedia and chunk == expected
    assert (chunk.segment_id, chunk.payload, chunk.seq, chunk.duration, chunk.at) == expected


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


@given(st.binary(max_size=300))
def test_decode_gives_a_bad_message_for_what_does_not_parse_else_its_conversion(data: bytes) -> None:
    try:
        expected = convert(pb.StreamEvent.FromString(data), 1.5)
    except DecodeError:
        expected = InputRejected("malformed StreamEvent")
    assert decode(data, 1.5) == expected
