"""Tests for callstream.mediascan: the C Media fast path agrees with protocol.parse_message.

The fast path may leave any message to the general parser; what it must never do is make of a
message something other than what `parse_message` makes of it. And it must recognise the
platform's own shape, or it silently stops being a fast path.
"""

from __future__ import annotations

import base64
import itertools
import os
from array import array

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from callstream.call.batch import ScannedMedia
from callstream.engagevoice.encoding import encode_media
from callstream.engagevoice.mediascan import MediaScanner, _lib
from callstream.engagevoice.messages import Media, Perspective
from callstream.engagevoice.protocol import MAX_MEDIA_PAYLOAD, parse_message
from callstream.engagevoice.textbatch import TextBatch
from callstream.errors import ProtocolError

needs_c = pytest.mark.skipif(_lib is None, reason="callstream._mulaw is not built")


def batch_of(messages: list[str]) -> TextBatch:
    """The messages back to back, as the websockets adapter hands a read over."""
    spans = array("I")
    position = 0
    for message in messages:
        spans.extend((position, len(message)))
        position += len(message)
    return TextBatch(bytearray("".join(messages).encode("ascii")), spans)


def assert_agrees(messages: list[str], max_bytes: int = 65536, *, vectors: bool = True) -> list:
    """Each item is either the message itself, or the Media that parse_message makes of it."""
    items = MediaScanner(max_bytes=max_bytes, min_batch=1, vectors=vectors).scan(batch_of(messages))
    assert len(items) == len(messages)
    for message, item in zip(messages, items, strict=True):
        if type(item) is str:
            assert item == message
            continue
        assert type(item) is tuple and type(item[2]) is bytes
        event = parse_message(message, max_bytes=max_bytes)  # must not raise: it was recognised
        assert type(event) is Media
        assert (int(event.perspective), event.sequence, event.payload) == item
    return items


WHITE = st.text(alphabet=" \t\n\r", max_size=2)
B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _quoted(text: str) -> str:
    return '"' + text + '"'


media_values = st.one_of(
    st.binary(min_size=0, max_size=MAX_MEDIA_PAYLOAD + 3).map(lambda b: _quoted(base64.b64encode(b).decode())),
    st.binary(min_size=1, max_size=400).map(lambda b: _quoted(base64.b64encode(b).decode())),
    st.text(alphabet=B64_CHARS + "=-_\\ .", max_size=12).map(_quoted),  # odd padding, bad alphabet
    st.sampled_from(['"AB=="', '"AR=="', '"ABC="', '"ABD="', '"A==="', '"===="', '"AA=A"', '"QUJD\\u0044"',
                     '"QUJD\\""', "12", "null", '"QUJD" ',
                     '"QUJDAB-="', '"QUJDA.=="']),
    st.sampled_from([MAX_MEDIA_PAYLOAD - 1, MAX_MEDIA_PAYLOAD, MAX_MEDIA_PAYLOAD + 1, MAX_MEDIA_PAYLOAD + 2]).flatmap(
        lambda n: st.binary(min_size=n, max_size=n).map(lambda b: _quoted(base64.b64encode(b).decode()))
    ),
)
plain_media = st.binary(min_size=1, max_size=200).map(lambda b: _quoted(base64.b64encode(b).decode()))
sequence_values = st.one_of(
    st.integers(0, 10**20).map(lambda n: _quoted(str(n))),
    st.integers(0, 10**6).map(lambda n: _quoted(str(n))),
    st.sampled_from(['"007"', '""', '"-1"', '" 5"', '"5 "', '"1e3"', '"\\u0661"', "5", "-5", '"12\\u0033"',
                     '"999999999999999999"', '"1000000000000000000"']),
)
perspective_values = st.sampled_from(
    ['"Participant"', '"Conference"', '"participant"', '" Conference"', '"Other"', '"Partic\\u0069pant"', "0"]
)
event_values = st.sampled_from(['"Media"', '"media"', '"Start"', '"Med\\u0069a"', "1"])


@st.composite
def media_like(draw: st.DrawFn) -> str:
    """Media messages and near misses: members in any order, white space, odd values, extra,
    missing or repeated members, escapes, cut or spliced text."""
    members = {  # each member plain three times in four, so that a fair share is recognised
        "event": draw(st.sampled_from(['"Media"'] * 3) | event_values),
        "perspective": draw(st.sampled_from(['"Participant"', '"Conference"'] * 3) | perspective_values),
        "sequenceId": draw(sequence_values),
        "media": draw(media_values | plain_media),
    }
    names = draw(st.permutations(list(members)))
    names = names[: len(names) - draw(st.sampled_from([0, 0, 0, 1]))]  # sometimes one missing
    pairs = [(f'"{name}"', members[name]) for name in names]
    if draw(st.integers(0, 5)) == 0:
        extra = draw(st.sampled_from(['"extra"', '"media"', '"ev\\u0065nt"']))
        pairs.insert(draw(st.integers(0, len(pairs))), (extra, '"x"'))
    parts = [draw(WHITE) + key + draw(WHITE) + ":" + draw(WHITE) + value + draw(WHITE) for key, value in pairs]
    text = draw(WHITE) + "{" + ",".join(parts) + "}" + draw(WHITE)
    cut = draw(st.integers(0, 12))
    if cut == 0:  # cut anywhere
        text = text[: draw(st.integers(0, len(text)))]
    elif cut == 1:  # a character inserted anywhere
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(list('{}[],:"\\ x0'))) + text[at:]
    return text


@needs_c
@settings(max_examples=600)
@given(st.lists(media_like(), min_size=1, max_size=8))
@example(['{"event":"Media","perspective":"Participant","sequenceId":"1","media":"AR=="}'])
@example(['{"event":"Media","perspective":"Participant","sequenceId":"1","media":"QUJD"}{}'])
def test_a_recognised_message_is_what_parse_message_makes_of_it(messages: list[str]) -> None:
    assert_agrees(messages)


@needs_c
@given(st.lists(media_like(), min_size=1, max_size=4), st.integers(1, 400))
def test_a_message_over_max_bytes_is_left_to_parse_message_which_refuses_it(
    messages: list[str], max_bytes: int
) -> None:
    items = assert_agrees(messages, max_bytes)
    for message, item in zip(messages, items, strict=True):
        if len(message) > max_bytes:
            assert item == message
            with pytest.raises(ProtocolError):
                parse_message(message, max_bytes=max_bytes)


EDGE_MEDIA = [
    "QUJD", "QUI=", "QQ==", "AR==", "AB==", "ABD=", "QUJDAB-=", "QUJDA.==", "QUJDA===", "====", "QUJD====",
    "QU=D", "Q===", "QUJ", "QUJDQ", "-_-_", "QUJ-", "QUJDQU.D", "QUJDQUJ.", "QUJD\\u0044", "QU\\/D", " QUJD", "QUJD ",
    base64.b64encode(bytes(MAX_MEDIA_PAYLOAD)).decode(), base64.b64encode(bytes(MAX_MEDIA_PAYLOAD + 1)).decode(),
    base64.b64encode(bytes(MAX_MEDIA_PAYLOAD + 2)).decode(),
]


@needs_c
def test_base64_edge_cases_agree_with_parse_message() -> None:
    messages = [f'{{"event":"Media","perspective":"Participant","sequenceId":"1","media":"{m}"}}' for m in EDGE_MEDIA]
    items = assert_agrees(messages)
    assert [type(item) for item in items[:3]] == [tuple, tuple, tuple]


def _with_media(media: str) -> str:
    return f'{{"event":"Media","perspective":"Conference","sequenceId":"7","media":"{media}"}}'


@needs_c
@pytest.mark.parametrize("vectors", [True, False], ids=["vectors", "scalar"])
def test_every_ascii_byte_at_every_place_of_a_platform_payload_agrees_with_parse_message(vectors: bool) -> None:
    """A platform payload (160 bytes, 216 digits) is decoded mostly 32 digits at a time
    (vectors, where the CPU has them) and the rest one group at a time: each of the 128 ASCII
    bytes in each place, digit or not, must come out as parse_message has it, either way."""
    media = base64.b64encode(bytes(range(80, 240))).decode()
    messages = [
        _with_media(media[:at] + chr(byte) + media[at + 1 :]) for at in range(len(media)) for byte in range(128)
    ]
    items = assert_agrees(messages, vectors=vectors)
    # recognised: any of the 64 digits in the 214 places before the padding ("...7w=="), a digit
    # or "=" in the next place, only "=" in the last
    assert sum(type(item) is tuple for item in items) == 64 * 214 + 65 + 1


@needs_c
@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=MAX_MEDIA_PAYLOAD), st.data())
def test_payloads_of_any_length_with_a_byte_changed_agree_with_parse_message(
    payload: bytes, data: st.DataObject
) -> None:
    media = base64.b64encode(payload).decode()
    at = data.draw(st.integers(0, len(media) - 1))
    byte = data.draw(st.sampled_from([*map(ord, B64_CHARS + "=-_.:"), 0, 0x22, 0x5C, 0x7F]))
    messages = [_with_media(media), _with_media(media[:at] + chr(byte) + media[at + 1 :])]
    assert list(assert_agrees(messages)) == list(assert_agrees(messages, vectors=False))


def platform_frames(count: int) -> list[str]:
    return [encode_media(Perspective(i % 2), i // 2, os.urandom(1 + i % 300)) for i in range(count)]


@needs_c
def test_the_platforms_shape_is_recognised_whatever_the_order_and_spacing() -> None:
    payload = os.urandom(160)
    media = base64.b64encode(payload).decode()
    members = ['"event":"Media"', '"perspective":"Conference"', '"sequenceId":"999999999999999999"',
               f'"media":"{media}"']
    shapes = ["{" + ",".join(order) + "}" for order in itertools.permutations(members)]
    shapes.append('\r\n { "event" : "Media" ,\t"perspective": "Conference", "sequenceId" :'
                  f'"999999999999999999","media":\n"{media}" }}\n')
    frames = platform_frames(50)
    items = assert_agrees(frames + shapes)
    assert all(type(item) is tuple for item in items)
    assert items[-1] == (1, 999_999_999_999_999_999, payload)
    assert [item[1] for item in items[:50]] == [i // 2 for i in range(50)]


@needs_c
def test_other_events_in_a_batch_keep_their_place() -> None:
    frames = platform_frames(6)
    messages = ['{"event":"Connected","protocol":"AgentSession","version":"1.0.0"}', *frames[:3],
                '{"event":"Stop","metadata":{}}', *frames[3:], "not json"]
    items = assert_agrees(messages)
    assert [type(item) for item in items] == [str, tuple, tuple, tuple, str, tuple, tuple, tuple, str]


def test_without_the_c_extension_every_message_goes_to_parse_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from callstream.engagevoice import mediascan

    monkeypatch.setattr(mediascan, "_lib", None)
    messages = platform_frames(30)
    assert MediaScanner(min_batch=1).scan(batch_of(messages)) == messages


@needs_c
def test_a_small_batch_goes_to_parse_message_whole() -> None:
    scanner = MediaScanner(min_batch=3)
    two, three = platform_frames(2), platform_frames(3)
    assert scanner.scan(batch_of(two)) == two
    assert list(scanner.scan(batch_of(three))) == [tuple(parse_message(message)) for message in three]


@needs_c
def test_batches_beyond_the_scratch_space_are_scanned_whole() -> None:
    """More messages than the arrays hold (small ones), then more bytes than the scratch buffer
    holds (few long ones), then a small batch again."""
    many = [encode_media(Perspective(i % 2), i, b"\xff") for i in range(600)]
    long = [encode_media(Perspective(i % 2), i, os.urandom(MAX_MEDIA_PAYLOAD)) for i in range(40)]
    assert len("".join(many)) < 65536 < len("".join(long)) and len(long) < 256 < len(many)
    scanner = MediaScanner(min_batch=1)
    for messages in (many, long, platform_frames(3)):
        items = list(scanner.scan(batch_of(messages)))
        assert items == [tuple(parse_message(message)) for message in messages]
        # white box: C writes as far as it is told to, so the scratch space must have grown (a
        # missing check would write past it, which the comparison above may not notice)
        assert scanner._capacity >= len(messages) and scanner._room >= len("".join(messages))


@needs_c
def test_a_media_batch_comes_whole_and_each_item_alike() -> None:
    """An all-Media batch comes as a ScannedMedia: each item read on its own (as the recorder
    reads the one push_run stopped before) is the item of the whole list."""
    messages = platform_frames(40)
    items = MediaScanner(min_batch=1).scan(batch_of(messages))
    assert type(items) is ScannedMedia
    one_by_one = [items[i] for i in range(len(items))]
    assert one_by_one == items.tuples() == [tuple(parse_message(message)) for message in messages]
    assert items[-1] == items.tuples()[-1] and items[3:5] == items.tuples()[3:5]
