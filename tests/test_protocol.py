"""Tests for callstream.protocol: the platform's frames, our tolerance rules, and fuzzing."""

from __future__ import annotations

import base64
import json
import string

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from callstream.engagevoice import protocol
from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start, encode_stop
from callstream.engagevoice.messages import (
    BadMessage,
    Connected,
    Media,
    Perspective,
    Start,
    Stop,
    Unknown,
)
from callstream.engagevoice.protocol import MAX_MEDIA_PAYLOAD, parse_message
from callstream.engagevoice.query import QueryMetadata, build_query, parse_query
from callstream.errors import CLOSE_MESSAGE_TOO_BIG, CLOSE_UNSUPPORTED_DATA, ProtocolError

EVENT_TYPES = (Connected, Start, Media, Stop, Unknown, BadMessage)
CANONICAL = (
    "callId",
    "sessionId",
    "ani",
    "dnis",
    "accountId",
    "subaccountId",
    "rcAccountId",
    "agentId",
    "productType",
    "productId",
)
PAYLOAD = bytes(range(160))
B64 = base64.b64encode(PAYLOAD).decode()


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


def media_frame(**fields: object) -> str:
    msg: dict[str, object] = {
        "event": "Media",
        "perspective": "Participant",
        "sequenceId": "1",
        "media": B64,
    }
    msg.update(fields)
    return dumps({k: v for k, v in msg.items() if v is not ...})


def start_frame(metadata: object = ..., **top: object) -> str:
    if metadata is ...:
        metadata = {"callId": "12345", "contentType": "audio/x-mulaw", "sampleRateHertz": 8000}
    return dumps({"event": "Start", "metadata": metadata, **top})


# --- The guide's frames, verbatim in content ---------------------------------------------


def test_guide_connected() -> None:
    text = '{ "event": "Connected", "protocol": "AgentSession", "version": "1.0.0" }'
    assert parse_message(text) == Connected(protocol="AgentSession", version="1.0.0")


GUIDE_START_METADATA = {
    "callId": "12345",
    "sessionId": 2,
    "ani": "2223334444",
    "dnis": "2223334444",
    "accountId": "99990000",
    "subaccountId": "99990001",
    "rcAccountId": "123456789",
    "agentId": 123,
    "productType": "Queue",
    "productId": 1234,
    "contentType": "audio/x-mulaw",
    "sampleRateHertz": 8000,
}


def test_guide_start() -> None:
    event = parse_message(dumps({"event": "Start", "metadata": GUIDE_START_METADATA}))
    assert event == Start(
        metadata={
            "callId": "12345",
            "sessionId": "2",
            "ani": "2223334444",
            "dnis": "2223334444",
            "accountId": "99990000",
            "subaccountId": "99990001",
            "rcAccountId": "123456789",
            "agentId": "123",
            "productType": "Queue",
            "productId": "1234",
        },
        content_type="audio/x-mulaw",
        sample_rate=8000,
        raw=GUIDE_START_METADATA,
    )


def test_guide_start_sample_with_trailing_comma_is_bad_json() -> None:
    # The guide's Start sample ends its metadata with "8000, }": not JSON. A real serializer
    # cannot produce it, so we do not bend the parser for it.
    text = '{"event": "Start", "metadata": {"callId": "12345", "sampleRateHertz": 8000, }}'
    assert parse_message(text) == BadMessage("not valid JSON")


def test_guide_media() -> None:
    text = '{ "event": "Media", "perspective": "Conference", "sequenceId": "1", "media": "%s" }'
    assert parse_message(text % B64) == Media(Perspective.CONFERENCE, 1, PAYLOAD)


def test_guide_stop() -> None:
    text = '{"event": "Stop", "metadata": {"duration": 120, "end_time": "2021-01-14T00:00:00Z"}}'
    assert parse_message(text) == Stop({"duration": 120, "end_time": "2021-01-14T00:00:00Z"})


# --- Tolerance ---------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["media", "MEDIA", "mEdIa", " Media "])
def test_event_name_is_case_insensitive_media(spelling: str) -> None:
    assert parse_message(media_frame(event=spelling)) == Media(Perspective.PARTICIPANT, 1, PAYLOAD)


@pytest.mark.parametrize(
    ("spelling", "kind"),
    [("connected", Connected), ("CONNECTED", Connected), ("start", Start), ("STOP", Stop)],
)
def test_event_name_is_case_insensitive_others(spelling: str, kind: type) -> None:
    assert type(parse_message(dumps({"event": spelling}))) is kind


@pytest.mark.parametrize(
    ("name", "perspective"),
    [
        ("Participant", Perspective.PARTICIPANT),
        ("participant", Perspective.PARTICIPANT),
        ("PARTICIPANT", Perspective.PARTICIPANT),
        ("Conference", Perspective.CONFERENCE),
        ("conference", Perspective.CONFERENCE),
        ("CONFERENCE", Perspective.CONFERENCE),
    ],
)
def test_perspective_is_case_insensitive(name: str, perspective: Perspective) -> None:
    assert parse_message(media_frame(perspective=name)) == Media(perspective, 1, PAYLOAD)


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [("1", 1), ("0", 0), ("007", 7), (" 12 ", 12), (42, 42), (0, 0), ("2147483648", 2**31)],
)
def test_sequence_id_string_or_int(sequence: object, expected: int) -> None:
    assert parse_message(media_frame(sequenceId=sequence)).sequence == expected


@pytest.mark.parametrize("length", [1, 160, 800, MAX_MEDIA_PAYLOAD])
def test_media_payloads_up_to_the_maximum_are_media(length: int) -> None:
    payload = bytes([length % 251]) * length
    for perspective in Perspective:
        frame = encode_media(perspective, 7, payload)
        assert parse_message(frame) == Media(perspective, 7, payload)
        assert protocol._parse_tolerant(frame) == Media(perspective, 7, payload)


@pytest.mark.parametrize("length", [MAX_MEDIA_PAYLOAD + 1, 4000, 48_000])
def test_a_media_payload_over_the_maximum_is_a_bad_message_not_fatal(length: int) -> None:
    """250 ms of 8 kHz mu-law at most: a longer payload is skipped and counted (BadMessage),
    by the fast path and the tolerant parser alike, whatever else the frame says."""
    assert MAX_MEDIA_PAYLOAD == 2000
    frame = encode_media(Perspective.CONFERENCE, 3, b"\x10" * length)
    expected = BadMessage(f"Media payload is over {MAX_MEDIA_PAYLOAD} bytes")
    assert parse_message(frame) == expected
    assert parse_message(frame.encode()) == expected
    assert protocol._parse_tolerant(frame) == expected
    odd = frame.replace('"Media"', '"media"')  # not the exact shape: the tolerant parser
    assert parse_message(odd) == expected


def test_media_payload_length_comes_from_the_frame() -> None:
    payload = b"\xff" * 321
    event = parse_message(media_frame(media=base64.b64encode(payload).decode()))
    assert event == Media(Perspective.PARTICIPANT, 1, payload)


def test_unknown_fields_are_ignored() -> None:
    assert parse_message(media_frame(extra={"a": [1, 2]}, other=None)) == Media(
        Perspective.PARTICIPANT, 1, PAYLOAD
    )
    event = parse_message(start_frame({"callId": 1, "weird": [1], "x": {}}, more=True))
    assert event.metadata == {"callId": "1"}
    assert event.raw == {"callId": 1, "weird": [1], "x": {}}


def test_unknown_event() -> None:
    msg = {"event": "Hold", "reason": "x"}
    assert parse_message(dumps(msg)) == Unknown("Hold", msg)


def test_connected_without_fields() -> None:
    assert parse_message('{"event":"Connected"}') == Connected()


@pytest.mark.parametrize("key", ["contentType", "audioContentType", "content_type", "ContentType"])
def test_start_content_type_key(key: str) -> None:
    event = parse_message(start_frame({key: "audio/x-mulaw", "sampleRateHertz": 8000}))
    assert event.content_type == "audio/x-mulaw"


@pytest.mark.parametrize(
    "value",
    [
        "audio/x-mulaw",
        "AUDIO/X-MULAW",
        "audio/mulaw",
        "audio/PCMU",
        "audio/basic",
        "audio/x-mulaw; rate=8000",
        " audio/x-mulaw ;rate=8000;channels=1",
    ],
)
def test_start_content_type_aliases_are_canonicalised(value: str) -> None:
    assert parse_message(start_frame({"contentType": value})).content_type == "audio/x-mulaw"


def test_start_defaults() -> None:
    assert parse_message(start_frame({})) == Start({}, "audio/x-mulaw", 8000, {})
    assert parse_message('{"event":"Start"}') == Start({}, "audio/x-mulaw", 8000, {})
    assert parse_message('{"event":"Start","metadata":null}') == Start({})


@pytest.mark.parametrize("rate", [8000, "8000", " 8000 ", 8000.0, "8000.0"])
def test_start_sample_rate_number_or_string(rate: object) -> None:
    assert parse_message(start_frame({"sampleRateHertz": rate})).sample_rate == 8000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12345", "12345"),
        (12345, "12345"),
        (12345.0, "12345"),
        (0, "0"),
        (1.5, "1.5"),
        ("abc", "abc"),
        (2**63, "9223372036854775808"),
    ],
)
def test_start_ids_are_strings(value: object, expected: str) -> None:
    assert parse_message(start_frame({"callId": value})).metadata == {"callId": expected}


@pytest.mark.parametrize("value", [None, True, [1], {"a": 1}, ""])
def test_start_non_scalar_or_empty_ids_are_left_out(value: object) -> None:
    event = parse_message(start_frame({"callId": value}))
    assert event.metadata == {}
    assert event.raw == {"callId": value}


@pytest.mark.parametrize(
    ("key", "canonical"),
    [
        ("callId", "callId"),
        ("call_id", "callId"),
        ("CallID", "callId"),
        ("CALL-ID", "callId"),
        ("Call ID", "callId"),
        ("subAccountId", "subaccountId"),
        ("sub_account_id", "subaccountId"),
        ("rcAccountID", "rcAccountId"),
        ("RC_ACCOUNT_ID", "rcAccountId"),
        ("session_id", "sessionId"),
        ("ANI", "ani"),
        ("Dnis", "dnis"),
        ("account-id", "accountId"),
        ("AgentID", "agentId"),
        ("product_type", "productType"),
        ("PRODUCTID", "productId"),
    ],
)
def test_start_metadata_keys_are_style_insensitive(key: str, canonical: str) -> None:
    assert parse_message(start_frame({key: "7"})).metadata == {canonical: "7"}


def test_start_first_spelling_of_a_key_wins() -> None:
    event = parse_message(start_frame({"callId": "1", "call_id": "2", "CALLID": "3"}))
    assert event.metadata == {"callId": "1"}


def test_secret_in_connected() -> None:
    event = parse_message(encode_connected(secret="s3cr3t"))
    assert event == Connected("AgentSession", "1.0.0", secret="s3cr3t")
    assert "s3cr3t" not in repr(event)
    nested = parse_message('{"event":"Connected","metadata":{"Secret":"x"}}')
    assert nested.secret == "x"


def test_secret_top_level_in_start() -> None:
    event = parse_message(start_frame({"callId": "1"}, secret="s3cr3t"))
    assert event.secret == "s3cr3t"
    assert "s3cr3t" not in repr(event)


def test_secret_inside_start_metadata_is_kept_out_of_raw() -> None:
    event = parse_message(start_frame({"callId": "1", "SECRET": "s3cr3t"}))
    assert event.secret == "s3cr3t"
    assert event.raw == {"callId": "1"}
    assert "s3cr3t" not in repr(event)


def test_secret_top_level_wins_over_metadata() -> None:
    event = parse_message(start_frame({"secret": "inner"}, secret="outer"))
    assert event.secret == "outer"


def test_secret_is_kept_out_of_unknown_raw() -> None:
    assert parse_message('{"event":"Hold","secret":"s"}') == Unknown("Hold", {"event": "Hold"})


def test_no_secret() -> None:
    assert parse_message(start_frame()).secret is None
    assert parse_message(encode_connected()).secret is None


def test_stop_without_metadata() -> None:
    assert parse_message('{"event":"Stop"}') == Stop({})


def test_bytes_are_utf8_json() -> None:
    assert parse_message(media_frame().encode()) == parse_message(media_frame())
    assert parse_message(start_frame({"ani": "é"}).encode()).metadata == {"ani": "é"}


# --- Bad messages: never raised, always returned ----------------------------------------


BAD_MESSAGES = {
    "not json": ("not json", "not valid JSON"),
    "empty": ("", "not valid JSON"),
    "truncated": (media_frame()[:-1], "not valid JSON"),
    "invalid utf-8": (b'{"event":"Media","x":"\xff"}', "not valid UTF-8"),
    "lone surrogate": ('{"event":"Media","x":"\ud800"}', "not valid UTF-8"),
    "list": ("[1, 2]", "not a JSON object"),
    "number": ("1", "not a JSON object"),
    "string": ('"Media"', "not a JSON object"),
    "null": ("null", "not a JSON object"),
    "missing event": ('{"perspective":"Participant"}', "missing event"),
    "null event": ('{"event":null}', "missing event"),
    "numeric event": ('{"event":3}', "event is not a string"),
    "object event": ('{"event":{"a":1}}', "event is not a string"),
    "deep nesting": ("[" * 40000 + "]" * 40000, None),
    "integer out of range": ('{"event":"Stop","metadata":{"d":1' + "0" * 5000 + "}}", None),
}
MEDIA_REASON = {
    "perspective": "Media perspective is not Participant or Conference",
    "sequence": "Media sequenceId is not a non-negative integer",
    "missing": "Media media is missing or not a string",
    "base64": "Media media is not valid base64",
    "empty": "Media payload is empty",
    "too long": "Media payload is over 2000 bytes",
}
BAD_MEDIA = {
    "no perspective": ({"perspective": ...}, "perspective"),
    "other perspective": ({"perspective": "Agent"}, "perspective"),
    "numeric perspective": ({"perspective": 0}, "perspective"),
    "list perspective": ({"perspective": ["Participant"]}, "perspective"),
    "no sequence": ({"sequenceId": ...}, "sequence"),
    "null sequence": ({"sequenceId": None}, "sequence"),
    "empty sequence": ({"sequenceId": ""}, "sequence"),
    "word sequence": ({"sequenceId": "one"}, "sequence"),
    "negative string sequence": ({"sequenceId": "-1"}, "sequence"),
    "plus sequence": ({"sequenceId": "+1"}, "sequence"),
    "underscore sequence": ({"sequenceId": "1_000"}, "sequence"),
    "decimal sequence": ({"sequenceId": "1.0"}, "sequence"),
    "unicode digit sequence": ({"sequenceId": "\u0663"}, "sequence"),
    "superscript sequence": ({"sequenceId": "\u00b2"}, "sequence"),
    "huge string sequence": ({"sequenceId": "9" * 5000}, "sequence"),
    "negative int sequence": ({"sequenceId": -1}, "sequence"),
    "float sequence": ({"sequenceId": 1.0}, "sequence"),
    "bool sequence": ({"sequenceId": True}, "sequence"),
    "list sequence": ({"sequenceId": [1]}, "sequence"),
    "no media": ({"media": ...}, "missing"),
    "null media": ({"media": None}, "missing"),
    "numeric media": ({"media": 12}, "missing"),
    "list media": ({"media": [1, 2]}, "missing"),
    "url-safe alphabet": ({"media": "-_-_"}, "base64"),
    "white space": ({"media": "AAAA AAAA"}, "base64"),
    "newline": ({"media": "AAAA\nAAAA"}, "base64"),
    "missing padding": ({"media": "AAA"}, "base64"),
    "extra padding": ({"media": "AAAA===="}, "base64"),
    "leading padding": ({"media": "=AAA"}, "base64"),
    "data after padding": ({"media": "AA==AAAA"}, "base64"),
    "non-ascii": ({"media": "AAA\u00e9"}, "base64"),
    "empty payload": ({"media": ""}, "empty"),
    "payload over the maximum": ({"media": base64.b64encode(b"\x10" * 2001).decode()}, "too long"),
    "long payload, odd shape": (
        {"sequenceId": 1, "media": base64.b64encode(b"\x10" * 48_000).decode()},
        "too long",
    ),
}


@pytest.mark.parametrize(("data", "reason"), BAD_MESSAGES.values(), ids=list(BAD_MESSAGES))
def test_bad_message(data: str | bytes, reason: str | None) -> None:
    event = parse_message(data, max_bytes=1 << 20)
    assert type(event) is BadMessage
    if reason is not None:
        assert event.reason == reason


@pytest.mark.parametrize(("fields", "cause"), BAD_MEDIA.values(), ids=list(BAD_MEDIA))
def test_bad_media(fields: dict[str, object], cause: str) -> None:
    assert parse_message(media_frame(**fields)) == BadMessage(MEDIA_REASON[cause])


@pytest.mark.parametrize("metadata", [[1], "x", 3])
def test_start_and_stop_metadata_must_be_objects(metadata: object) -> None:
    assert parse_message(start_frame(metadata)) == BadMessage("Start metadata is not an object")
    stop = dumps({"event": "Stop", "metadata": metadata})
    assert parse_message(stop) == BadMessage("Stop metadata is not an object")


# --- Fatal: ProtocolError with its close code --------------------------------------------


def test_frame_over_max_bytes() -> None:
    frame = media_frame()
    assert type(parse_message(frame, max_bytes=len(frame))) is Media
    with pytest.raises(ProtocolError) as info:
        parse_message(frame, max_bytes=len(frame) - 1)
    assert info.value.code == CLOSE_MESSAGE_TOO_BIG
    with pytest.raises(ProtocolError) as info:
        parse_message(frame.encode(), max_bytes=len(frame) - 1)
    assert info.value.code == CLOSE_MESSAGE_TOO_BIG


def test_max_bytes_counts_utf8_bytes_not_characters() -> None:
    frame = dumps({"event": "Hold", "x": "é" * 100})
    size = len(frame.encode())
    assert len(frame) < size
    assert type(parse_message(frame, max_bytes=size)) is Unknown
    with pytest.raises(ProtocolError) as info:
        parse_message(frame, max_bytes=size - 1)
    assert info.value.code == CLOSE_MESSAGE_TOO_BIG


def test_default_max_bytes_is_64_kib() -> None:
    frame = dumps({"event": "Hold", "x": "a" * 70000})
    with pytest.raises(ProtocolError) as info:
        parse_message(frame)
    assert info.value.code == CLOSE_MESSAGE_TOO_BIG
    assert type(parse_message(frame, max_bytes=1 << 20)) is Unknown


@pytest.mark.parametrize(
    "metadata",
    [
        {"contentType": "audio/x-alaw"},
        {"contentType": "audio/L16"},
        {"contentType": "audio/x-mulawx"},
        {"contentType": ""},
        {"contentType": 5},
        {"contentType": ["audio/x-mulaw"]},
        {"contentType": {"type": "audio/x-mulaw"}},
        {"audioContentType": "audio/pcma"},
        {"sampleRateHertz": 16000},
        {"sampleRateHertz": "16000"},
        {"sampleRateHertz": "abc"},
        {"sampleRateHertz": "nan"},
        {"sampleRateHertz": "1e400"},
        {"sampleRateHertz": "9" * 5000},
        {"sampleRateHertz": 8000.5},
        {"sampleRateHertz": True},
        {"sampleRateHertz": [8000]},
        {"contentType": "audio/x-mulaw", "sampleRateHertz": 0},
    ],
)
def test_unsupported_audio_is_fatal(metadata: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(start_frame(metadata))
    assert info.value.code == CLOSE_UNSUPPORTED_DATA
    reason = info.value.reason
    assert reason.isascii()
    assert len(reason.encode()) <= 123  # the limit of a WebSocket close reason


def test_unsupported_content_type_reason_is_short() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(start_frame({"contentType": "x" * 10000 + "\u00e9"}), max_bytes=1 << 20)
    assert info.value.reason.isascii()
    assert len(info.value.reason) <= 123


def test_supported_sets_are_named_constants() -> None:
    assert dict(protocol.SUPPORTED_CONTENT_TYPES) == {
        "audio/x-mulaw": "audio/x-mulaw",
        "audio/mulaw": "audio/x-mulaw",
        "audio/pcmu": "audio/x-mulaw",
        "audio/basic": "audio/x-mulaw",
    }
    assert set(protocol.SUPPORTED_SAMPLE_RATES) == {8000}


# --- Encoders: the platform's shapes ---------------------------------------------------


def test_encode_connected_shape() -> None:
    assert json.loads(encode_connected()) == {
        "event": "Connected",
        "protocol": "AgentSession",
        "version": "1.0.0",
    }
    assert json.loads(encode_connected("s"))["secret"] == "s"


def test_encode_start_shape() -> None:
    md = {k: v for k, v in GUIDE_START_METADATA.items() if k not in ("contentType", "sampleRate")}
    assert json.loads(encode_start(md)) == {"event": "Start", "metadata": GUIDE_START_METADATA}
    msg = json.loads(encode_start({}, content_type="audio/pcmu", sample_rate=16000, secret="s"))
    assert msg == {
        "event": "Start",
        "metadata": {"contentType": "audio/pcmu", "sampleRateHertz": 16000},
        "secret": "s",
    }


def test_encode_media_shape() -> None:
    msg = json.loads(encode_media(Perspective.CONFERENCE, 17, PAYLOAD))
    assert msg == {"event": "Media", "perspective": "Conference", "sequenceId": "17", "media": B64}
    assert json.loads(encode_media(Perspective.PARTICIPANT, 0, b"x"))["perspective"] == (
        "Participant"
    )
    with pytest.raises(ValueError):
        encode_media(Perspective.PARTICIPANT, -1, b"x")


def test_media_frame_size_is_about_290_bytes() -> None:
    assert 280 <= len(encode_media(Perspective.CONFERENCE, 123456, b"\xff" * 160)) <= 300


def test_encode_stop_shape() -> None:
    end = "2021-01-14T00:00:00Z"
    assert encode_stop(120, end) == (
        '{"event":"Stop","metadata":{"duration":120,"end_time":"2021-01-14T00:00:00Z"}}'
    )
    assert json.loads(encode_stop(120.0, end))["metadata"]["duration"] == 120
    assert json.loads(encode_stop(1.5, end))["metadata"] == {"duration": 1.5, "end_time": end}
    assert parse_message(encode_stop(1.5, end)) == Stop({"duration": 1.5, "end_time": end})


def test_build_query() -> None:
    assert build_query({}) == ""
    query = build_query({"callId": 12345, "ani": "+1 222/333", "productType": "Queue"})
    assert query.startswith("?callId=12345&")
    assert parse_query("/" + query).mapped == {
        "callId": "12345",
        "ani": "+1 222/333",
        "productType": "Queue",
    }


# --- parse_query ---------------------------------------------------------------------------


def test_parse_query_plain() -> None:
    meta = parse_query("/?callId=1&sessionId=2&ani=2223334444&dnis=5&foo=bar")
    assert meta == QueryMetadata(
        mapped={"callId": "1", "sessionId": "2", "ani": "2223334444", "dnis": "5"},
        raw={"callId": ["1"], "sessionId": ["2"], "ani": ["2223334444"], "dnis": ["5"],
             "foo": ["bar"]},
        path="/",
    )  # fmt: skip


@pytest.mark.parametrize("target", ["", "/", "/anything", "/a/b/c", "?", "/?", "//x/y"])
def test_parse_query_without_parameters(target: str) -> None:
    meta = parse_query(target)
    assert meta.mapped == {}
    assert meta.raw == {}
    assert meta.secret is None
    assert meta.path == target.partition("?")[0]


@pytest.mark.parametrize(
    ("key", "canonical"),
    [
        ("callId", "callId"),
        ("call_id", "callId"),
        ("CallID", "callId"),
        ("call-id", "callId"),
        ("Call+ID", "callId"),
        ("Call%20ID", "callId"),
        ("Session_ID", "sessionId"),
        ("Caller+ANI", "ani"),
        ("Caller%20ANI", "ani"),
        ("DNIS", "dnis"),
        ("EV+Account+ID", "accountId"),
        ("evAccountId", "accountId"),
        ("mainAccountId", "accountId"),
        ("EV%20Subaccount%20ID", "subaccountId"),
        ("evSubaccountId", "subaccountId"),
        ("subAccountId", "subaccountId"),
        ("RingCentral+Office+Account+ID", "rcAccountId"),
        ("rcOfficeAccountId", "rcAccountId"),
        ("rcAccountID", "rcAccountId"),
        ("Agent+ID", "agentId"),
        ("Product+Type", "productType"),
        ("product_id", "productId"),
    ],
)
def test_parse_query_aliases(key: str, canonical: str) -> None:
    meta = parse_query(f"/anything?{key}=v%2Fw")
    assert meta.mapped == {canonical: "v/w"}
    assert list(meta.raw.values()) == [["v/w"]]
    assert meta.path == "/anything"


def test_parse_query_secret_is_kept_apart() -> None:
    meta = parse_query("/?callId=1&Secret=s3cr3t&secret=second")
    assert meta.secret == "s3cr3t"
    assert meta.mapped == {"callId": "1"}
    assert meta.raw == {"callId": ["1"]}
    assert "s3cr3t" not in repr(meta)


def test_parse_query_repeated_keys_first_wins() -> None:
    meta = parse_query("/?callId=1&call_id=2&callId=3")
    assert meta.mapped == {"callId": "1"}
    assert meta.raw == {"callId": ["1", "3"], "call_id": ["2"]}


def test_parse_query_empty_values_are_absent_from_mapped() -> None:
    meta = parse_query("/?callId=&callId=7&ani")
    assert meta.mapped == {"callId": "7"}
    assert meta.raw == {"callId": ["", "7"], "ani": [""]}


def test_parse_query_odd_input() -> None:
    meta = parse_query("/p?ani=%zz&dnis=%ff%fe&&=x&callId=a%2")
    assert meta.mapped == {"ani": "%zz", "dnis": "\ufffd\ufffd", "callId": "a%2"}
    assert meta.raw[""] == ["x"]
    assert parse_query("/p?a=1#frag").raw == {"a": ["1"]}


def test_query_metadata_is_frozen() -> None:
    meta = parse_query("/?callId=1")
    with pytest.raises(AttributeError):
        meta.path = "/x"  # type: ignore[misc]


# --- Properties ----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
no_surrogates = st.characters(blacklist_categories=("Cs",))


def assert_event_or_protocol_error(data: str | bytes) -> None:
    try:
        event = parse_message(data)
    except ProtocolError as exc:
        assert exc.code in (CLOSE_MESSAGE_TOO_BIG, CLOSE_UNSUPPORTED_DATA)
        assert exc.reason.isascii()
        return
    assert isinstance(event, EVENT_TYPES)


@given(st.text())
def test_fuzz_text(text: str) -> None:
    assert_event_or_protocol_error(text)


@given(st.binary())
def test_fuzz_bytes(data: bytes) -> None:
    assert_event_or_protocol_error(data)


@given(json_values)
def test_fuzz_json_values(value: object) -> None:
    assert_event_or_protocol_error(dumps(value))


# Random event names are covered by test_fuzz_json_values; here, reach the per-event parsers.
event_names = st.sampled_from(["Connected", "Start", "Media", "Stop", "media", "START", "Hold"])
metadata_names = st.sampled_from(
    [*CANONICAL, "contentType", "audioContentType", "sampleRateHertz", "secret", "call_id"]
) | st.text(max_size=8)
metadata_values = (
    st.sampled_from(["audio/x-mulaw", "audio/pcmu; rate=8000", 8000, "8000", 8000.0]) | json_values
)
metadata_dicts = st.dictionaries(metadata_names, metadata_values, max_size=6)
wire_strings = st.sampled_from(["Participant", "conference", "1", "0", "-1", "", B64, "AAAA"])
message_dicts = st.builds(
    lambda event, known, other: {**other, "event": event, **known},
    event_names,
    st.fixed_dictionaries(
        {},
        optional={
            "metadata": metadata_dicts | json_values,
            "perspective": wire_strings | json_values,
            "sequenceId": wire_strings | json_values,
            "media": wire_strings | json_values,
            "secret": json_values,
            "protocol": json_values,
            "version": json_values,
        },
    ),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)


@given(message_dicts)
def test_fuzz_dicts_with_an_event(msg: dict[str, object]) -> None:
    assert_event_or_protocol_error(dumps(msg))


def outcome(data: str | bytes) -> object:
    try:
        return parse_message(data)
    except ProtocolError as exc:
        return ("ProtocolError", exc.code, exc.reason)


@given(message_dicts | json_values)
def test_str_and_utf8_bytes_give_the_same_event(value: object) -> None:
    text = dumps(value)
    try:
        data = text.encode()
    except UnicodeEncodeError:  # lone surrogates have no UTF-8 form
        return
    assert outcome(text) == outcome(data)


media_like = st.fixed_dictionaries(
    {"event": st.sampled_from(["Media", "media"])},
    optional={
        "perspective": st.sampled_from(["Participant", "Conference", "participant", "x"])
        | json_scalars,
        "sequenceId": st.integers(-5, 2**40).map(str) | st.integers(-5, 2**40) | json_scalars,
        "media": st.text(alphabet=string.ascii_letters + string.digits + "+/=-_ ", max_size=12)
        | st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode())
        | st.integers(MAX_MEDIA_PAYLOAD - 2, MAX_MEDIA_PAYLOAD + 2).map(
            lambda n: base64.b64encode(b"\x10" * n).decode()
        )
        | json_scalars,
    },
)


@given(media_like)
def test_fast_path_agrees_with_the_tolerant_parser(msg: dict[str, object]) -> None:
    text = dumps(msg)
    assert parse_message(text) == protocol._parse_tolerant(text)


class _Bytes(msgspec.Struct):
    value: bytes


@given(st.text(alphabet=string.ascii_letters + string.digits + "+/=-_\n ", max_size=16))
@example("AAAA====")
@example("AA==AA==")
@example("A===")
def test_base64_strictness_matches_msgspec(text: str) -> None:
    try:
        expected = msgspec.json.decode(dumps({"value": text}), type=_Bytes).value
    except msgspec.ValidationError:
        expected = None
    assert protocol._decode_base64(text) == expected


@given(
    st.sampled_from(Perspective),
    st.integers(min_value=0, max_value=2**31),
    st.binary(min_size=1, max_size=MAX_MEDIA_PAYLOAD),
)
def test_media_round_trip(perspective: Perspective, sequence: int, payload: bytes) -> None:
    frame = encode_media(perspective, sequence, payload)
    expected = Media(perspective, sequence, payload)
    assert parse_message(frame) == expected
    assert parse_message(frame.encode()) == expected


id_values = st.text(no_surrogates, max_size=20) | st.integers(min_value=0, max_value=2**63)


@given(
    st.dictionaries(st.sampled_from(CANONICAL), id_values),
    st.none() | st.text(no_surrogates, min_size=1, max_size=20),
)
def test_start_round_trip(metadata: dict[str, object], secret: str | None) -> None:
    event = parse_message(encode_start(metadata, secret=secret))
    assert event.metadata == {k: str(v) for k, v in metadata.items() if v != ""}
    assert event.content_type == "audio/x-mulaw"
    assert event.sample_rate == 8000
    assert event.secret == secret


@given(st.text())
@example("/?%")
@example("/?a=%ff%fe%fd&b=%e9")
@example("/?a=\ud800")
@example("?=&=&&&;;;")
def test_parse_query_never_raises(target: str) -> None:
    meta = parse_query(target)
    assert isinstance(meta, QueryMetadata)
    assert set(meta.mapped) <= set(CANONICAL)


def _restyle(draw: st.DrawFn, name: str) -> str:
    out = []
    for char in name:
        if char.isupper() and draw(st.booleans()):
            out.append(draw(st.sampled_from(["_", "-", "+", "%20", "."])))
        out.append(char.upper() if draw(st.booleans()) else char.lower())
    return "".join(out)


@st.composite
def restyled(draw: st.DrawFn) -> tuple[str, str]:
    canonical = draw(st.sampled_from(CANONICAL))
    return canonical, _restyle(draw, canonical)


@given(restyled(), st.text(string.ascii_letters + string.digits, min_size=1, max_size=12))
def test_parse_query_style_insensitive(pair: tuple[str, str], value: str) -> None:
    canonical, key = pair
    assert parse_query(f"/?{key}={value}").mapped == {canonical: value}
    assert parse_query(f"/?{canonical}={value}").mapped == {canonical: value}
