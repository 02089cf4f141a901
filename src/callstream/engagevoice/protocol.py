"""The Engage Voice Call Streaming message layer, sans-IO: text frames in, typed events out.

No sockets, no tasks, no files, no state: every function here is pure. The server hands each
text frame to `parse_message` (the upgrade request's target goes to `query.parse_query`; the
platform's frames are built by `encoding`, for the simulator and the tests). See shared
docs/protocol.md.

Theory of operation (`parse_message`): Media is 99.9 % of the traffic, so a Media frame in the
platform's exact shape is decoded in one call to a typed msgspec decoder that also does the
strict base64 (benchmarks/bench_parse.py measured it against stdlib json + base64 and orjson +
pybase64). Anything that decoder refuses -- other events, odd casing, numeric ids, bad data --
falls through to one tolerant dict-based parser, which alone decides what the frame means. The
fast path is therefore only a shortcut: it accepts a subset of what the tolerant parser accepts
and gives the same event for it (tests/test_protocol.py checks this).

Malformed frames become `BadMessage` (the call goes on; the caller counts them), and so does a
Media payload over `MAX_MEDIA_PAYLOAD` bytes; a frame over
`max_bytes`, or a Start announcing audio we cannot record, raises `ProtocolError` with its close
code. Reasons are short ASCII texts that never quote a secret.
"""

from __future__ import annotations

import binascii
import string
from types import MappingProxyType
from typing import Any, Final, Literal

import msgspec

from callstream import audio
from callstream.engagevoice.messages import (
    BadMessage,
    Connected,
    Event,
    Media,
    Perspective,
    Start,
    Stop,
    Unknown,
)
from callstream.errors import CLOSE_MESSAGE_TOO_BIG, CLOSE_UNSUPPORTED_DATA, ProtocolError

__all__ = [
    "CANONICAL_FIELDS",
    "DEFAULT_CONTENT_TYPE",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SAMPLE_RATE",
    "MAX_MEDIA_PAYLOAD",
    "SECRET_KEY",
    "SUPPORTED_CONTENT_TYPES",
    "SUPPORTED_SAMPLE_RATES",
    "normalise_key",
    "parse_message",
]

DEFAULT_MAX_BYTES: Final = 65536  # bytes of UTF-8 per text frame; a Media frame is ~300
DEFAULT_CONTENT_TYPE: Final = "audio/x-mulaw"
DEFAULT_SAMPLE_RATE: Final = audio.SAMPLE_RATE  # Hz
# The longest Media payload we take, bytes: 250 ms of 8 kHz mu-law. The platform sends 160-byte
# (20 ms) frames, its successor 100 ms chunks; a longer payload is a BadMessage, so that a peer
# cannot make the timeline hold frames many times its window (timeline.LONGEST_FRAME_MS).
MAX_MEDIA_PAYLOAD: Final = 2000
_MEDIA_TOO_LONG: Final = f"Media payload is over {MAX_MEDIA_PAYLOAD} bytes"

# What a Start may announce: lower-cased media type (parameters stripped) -> canonical name,
# which is what `Start.content_type` carries. A-law ("audio/x-alaw", "audio/pcma") goes here
# once the recorder can store it.
SUPPORTED_CONTENT_TYPES: Final = MappingProxyType(
    {
        "audio/x-mulaw": "audio/x-mulaw",
        "audio/mulaw": "audio/x-mulaw",
        "audio/pcmu": "audio/x-mulaw",
        "audio/basic": "audio/x-mulaw",
    }
)
SUPPORTED_SAMPLE_RATES: Final = frozenset({audio.SAMPLE_RATE})  # Hz

# Field names, compared after lower-casing and dropping ASCII punctuation and white space, so
# callId, call_id, CallID, CALL-ID and "Call ID" are one key. Shared by Start metadata and the
# upgrade query; the long forms are the names the platform's guide uses in prose.
CANONICAL_FIELDS: Final = MappingProxyType(
    {
        "callid": "callId",
        "sessionid": "sessionId",
        "ani": "ani",
        "callerani": "ani",
        "dnis": "dnis",
        "accountid": "accountId",
        "evaccountid": "accountId",
        "mainaccountid": "accountId",
        "subaccountid": "subaccountId",
        "evsubaccountid": "subaccountId",
        "rcaccountid": "rcAccountId",
        "rcofficeaccountid": "rcAccountId",
        "ringcentralofficeaccountid": "rcAccountId",
        "agentid": "agentId",
        "producttype": "productType",
        "productid": "productId",
    }
)
_CONTENT_TYPE_KEYS: Final = frozenset({"contenttype", "audiocontenttype"})
_SAMPLE_RATE_KEYS: Final = frozenset({"sampleratehertz", "samplerate"})
SECRET_KEY: Final = "secret"
_SEPARATORS: Final = MappingProxyType(str.maketrans("", "", string.punctuation + string.whitespace))

_PERSPECTIVE_BY_LOWER: Final = MappingProxyType(
    {"participant": Perspective.PARTICIPANT, "conference": Perspective.CONFERENCE}
)
_PARTICIPANT: Final = Perspective.PARTICIPANT
_CONFERENCE: Final = Perspective.CONFERENCE
_REASON_ECHO: Final = 32  # characters of a peer's value quoted in a close reason (limit 123 B)


class _MediaFrame(msgspec.Struct, gc=False):
    """A Media frame in the platform's exact shape; anything else fails to decode."""

    event: Literal["Media"]
    perspective: Literal["Participant", "Conference"]
    sequenceId: str | int  # the wire name; the platform sends a string
    media: bytes  # msgspec decodes base64 strictly (alphabet and padding)


_MEDIA_DECODER: Final = msgspec.json.Decoder(_MediaFrame)
_decode_json: Final = msgspec.json.decode
# Media(p, s, m) runs the NamedTuple's Python-level __new__ (0.54 us); building the tuple
# directly makes the same object in 0.16 us, and this is once per Media message.
_new_tuple: Final = tuple.__new__


def parse_message(data: str | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Event:
    """Turn one text frame into one event.

    ``data`` is the frame as text, or as bytes holding UTF-8 JSON text. Returns `Connected`,
    `Start`, `Media`, `Stop`, `Unknown` (a well-formed message with an event we do not know)
    or `BadMessage` (anything malformed: not UTF-8, not JSON, not an object, no event, a bad
    field, a Media payload over `MAX_MEDIA_PAYLOAD` bytes); never raises for those. Raises
    `ProtocolError` only for what must end the call: a frame over ``max_bytes`` bytes of UTF-8
    (code 1009), a Start whose content type is not in `SUPPORTED_CONTENT_TYPES` or whose sample
    rate is not in `SUPPORTED_SAMPLE_RATES` (code 1003).
    """
    if len(data) > max_bytes >> 2 and _utf8_length(data) > max_bytes:
        raise ProtocolError(f"message over {max_bytes} bytes", code=CLOSE_MESSAGE_TOO_BIG)
    try:
        frame = _MEDIA_DECODER.decode(data)
        seq = frame.sequenceId
        if type(seq) is str:
            seq = int(seq) if seq.isascii() and seq.isdigit() else -1
        media = frame.media
        if seq >= 0 and media:
            if len(media) > MAX_MEDIA_PAYLOAD:  # what the tolerant parser says too
                return BadMessage(_MEDIA_TOO_LONG)
            perspective = _PARTICIPANT if frame.perspective == "Participant" else _CONFERENCE
            return _new_tuple(Media, (perspective, seq, media))
    except (ValueError, RecursionError):  # msgspec's errors, bad UTF-8, deep nesting, int()
        pass
    return _parse_tolerant(data)


def _utf8_length(data: str | bytes) -> int:
    if isinstance(data, str):
        return len(data.encode("utf-8", "surrogatepass"))
    return len(data)


def _bad_utf8(data: str | bytes) -> bool:
    if isinstance(data, str):
        return False  # a str reaching here was decoded already (surrogates raise UnicodeError)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _parse_tolerant(data: str | bytes) -> Event:
    try:
        msg = _decode_json(data)
    except UnicodeError:
        return BadMessage("not valid UTF-8")
    except RecursionError:
        return BadMessage("JSON nested too deeply")
    except ValueError:
        # msgspec >= 0.23 reports bad UTF-8 in a string as a DecodeError (a ValueError), not
        # as a UnicodeError: tell the two apart here, on the error path only.
        return BadMessage("not valid UTF-8" if _bad_utf8(data) else "not valid JSON")
    if type(msg) is not dict:
        return BadMessage("not a JSON object")
    event = msg.get("event")
    if event is None:
        return BadMessage("missing event")
    if type(event) is not str:
        return BadMessage("event is not a string")
    kind = event.strip().lower()
    if kind == "media":
        return _media(msg)
    if kind == "start":
        return _start(msg)
    if kind == "stop":
        return _stop(msg)
    if kind == "connected":
        return _connected(msg)
    return Unknown(event, _without_secret(msg))


def _media(msg: dict[str, Any]) -> Media | BadMessage:
    name = msg.get("perspective")
    perspective = _PERSPECTIVE_BY_LOWER.get(name.strip().lower()) if type(name) is str else None
    if perspective is None:
        return BadMessage("Media perspective is not Participant or Conference")
    sequence = _non_negative_int(msg.get("sequenceId"))
    if sequence is None:
        return BadMessage("Media sequenceId is not a non-negative integer")
    media = msg.get("media")
    if type(media) is not str:
        return BadMessage("Media media is missing or not a string")
    payload = _decode_base64(media)
    if payload is None:
        return BadMessage("Media media is not valid base64")
    if not payload:
        return BadMessage("Media payload is empty")
    if len(payload) > MAX_MEDIA_PAYLOAD:
        return BadMessage(_MEDIA_TOO_LONG)
    return Media(perspective, sequence, payload)


def _non_negative_int(value: object) -> int | None:
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is str:
        text = value.strip()
        if text.isascii() and text.isdigit():
            try:
                return int(text)
            except ValueError:  # over the interpreter's int-from-string digit limit
                return None
    return None


def _decode_base64(text: str) -> bytes | None:
    """Standard alphabet, padded, nothing else: the same set msgspec's decoder accepts."""
    if len(text) % 4 or text.endswith("==="):  # strict_mode lets "AAAA====" through
        return None
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        return None


def _start(msg: dict[str, Any]) -> Start | BadMessage:
    raw = msg.get("metadata")
    if raw is None:
        raw = {}
    elif type(raw) is not dict:
        return BadMessage("Start metadata is not an object")
    secret = _secret_in(msg)
    metadata: dict[str, str] = {}
    content_type: object = None
    sample_rate: object = None
    secret_in_metadata = False
    for key, value in raw.items():
        norm = normalise_key(key)
        canonical = CANONICAL_FIELDS.get(norm)
        if canonical is not None:
            text = _text(value)
            if text and canonical not in metadata:
                metadata[canonical] = text
        elif norm in _CONTENT_TYPE_KEYS:
            if content_type is None:
                content_type = value
        elif norm in _SAMPLE_RATE_KEYS:
            if sample_rate is None:
                sample_rate = value
        elif norm == SECRET_KEY:
            secret_in_metadata = True
            if secret is None:
                secret = _text(value)
    return Start(
        metadata=metadata,
        content_type=_content_type(content_type),
        sample_rate=_sample_rate(sample_rate),
        raw=_without_secret(raw) if secret_in_metadata else raw,
        secret=secret,
    )


def _content_type(value: object) -> str:
    if value is None:
        return DEFAULT_CONTENT_TYPE
    media_type = value.split(";", 1)[0].strip().lower() if type(value) is str else value
    canonical = SUPPORTED_CONTENT_TYPES.get(media_type) if type(media_type) is str else None
    if canonical is None:
        raise ProtocolError(
            f"unsupported content type {_echo(media_type)}", code=CLOSE_UNSUPPORTED_DATA
        )
    return canonical


def _sample_rate(value: object) -> int:
    if value is None:
        return DEFAULT_SAMPLE_RATE
    rate = _integral(value)
    if rate not in SUPPORTED_SAMPLE_RATES:
        raise ProtocolError(f"unsupported sample rate {_echo(value)}", code=CLOSE_UNSUPPORTED_DATA)
    return rate


def _integral(value: object) -> int | None:
    """An int from an int, an integral float, or a string of either ("8000", "8000.0")."""
    if type(value) is str:
        try:
            value = float(value) if not value.strip().isdigit() else int(value)
        except ValueError:
            return None
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


def _echo(value: object) -> str:
    """A peer's value, quoted for a close reason: short, ASCII."""
    return ascii(value if type(value) is str else type(value).__name__)[:_REASON_ECHO]


def _stop(msg: dict[str, Any]) -> Stop | BadMessage:
    metadata = msg.get("metadata")
    if metadata is None:
        return Stop({})
    if type(metadata) is not dict:
        return BadMessage("Stop metadata is not an object")
    return Stop(metadata)


def _connected(msg: dict[str, Any]) -> Connected:
    secret = _secret_in(msg)
    metadata = msg.get("metadata")
    if secret is None and type(metadata) is dict:
        secret = _secret_in(metadata)
    return Connected(
        protocol=_text(msg.get("protocol")), version=_text(msg.get("version")), secret=secret
    )


def normalise_key(key: str) -> str:
    """A field name as compared: lower case, without ASCII punctuation and white space."""
    return key.lower().translate(_SEPARATORS)


def _text(value: object) -> str | None:
    """A scalar as the platform would have written it in a string; None for anything else.

    Ids come as numbers or strings: 12345 and 12345.0 both give "12345".
    """
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    if type(value) is float:
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _secret_in(obj: dict[str, Any]) -> str | None:
    """The value of the first key that reads "secret" (any casing), as text."""
    for key, value in obj.items():
        if normalise_key(key) == SECRET_KEY:
            return _text(value)
    return None


def _without_secret(obj: dict[str, Any]) -> dict[str, Any]:
    if not any(normalise_key(key) == SECRET_KEY for key in obj):
        return obj
    return {key: value for key, value in obj.items() if normalise_key(key) != SECRET_KEY}
