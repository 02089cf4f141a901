"""The RingCX dialog's events, protocol-neutral (no grpc, no protobuf): what the front end makes
of each `StreamEvent` and what `DialogAssembler` takes.

Every event carries ``at``: the dialog's clock in seconds when it arrived (see
`callstream.ringcx.service`: time spent waiting for the recorder is taken out, so that a slow disk
pushing back on the stream is not mistaken for a pause of the media). ``SegmentMedia`` is a
NamedTuple: it is built ten times per segment per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

AGENT = "AGENT"
CONTACT = "CONTACT"
BOT = "BOT"
UNSPECIFIED = "PARTICIPANT_TYPE_UNSPECIFIED"


@dataclass(frozen=True, slots=True)
class DialogInit:
    """Once, first. ``account`` and ``dialog`` are plain JSON-ready dicts (ids, type, ani,
    dnis, language, attributes)."""

    session_id: str
    account: dict[str, Any]
    dialog: dict[str, Any]
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """``codec``: the enum's name (PCMU, PCMA, L16, OPUS, FLAC, CODEC_UNSPECIFIED); ``rate`` in
    Hz; ``ptime`` in ms per chunk (0 when not given)."""

    codec: str = "PCMU"
    rate: int = 8000
    ptime: int = 100


@dataclass(frozen=True, slots=True)
class SegmentStart:
    """A participant joins. ``audio_format`` is None when the event carried none (the platform
    sends it on the first segment only: later ones inherit the last one given)."""

    segment_id: str
    participant_id: str
    participant_type: str  # AGENT, CONTACT, BOT or PARTICIPANT_TYPE_UNSPECIFIED
    name: str | None = None
    audio_format: AudioFormat | None = None
    product: dict[str, Any] | None = None
    at: float = 0.0


class SegmentMedia(NamedTuple):
    """One chunk of a segment's audio: ``payload`` in the segment's codec, ``seq`` its number,
    ``duration`` its length in ms as the platform states it."""

    segment_id: str
    payload: bytes
    seq: int
    duration: int
    at: float


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """Segment metadata such as hold and unhold; ``data`` optional."""

    segment_id: str
    event: str
    data: str | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class SegmentStop:
    """A participant has left."""

    segment_id: str
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Unknown:
    """A StreamEvent with no event set (a newer platform's event kind): counted, ignored."""

    kind: str = ""
    at: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)


DialogEvent = DialogInit | SegmentStart | SegmentMedia | SegmentInfo | SegmentStop | Unknown
