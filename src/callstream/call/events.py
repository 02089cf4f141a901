"""The call core's events: what a front end tells it, and how it says a call ended (sans-IO).

Protocol-neutral: an Engage Voice WebSocket front end and a RingCX gRPC front end translate their
own wire messages into these, so that one `CallCore` records both. Media is the exception to
"one object per event": a front end hands it over as plain ``(side, sequence, payload)`` tuples
or a whole `ScannedMedia`, in batches (`CallCore.receive_media`), because a dataclass per 20 ms
frame is what the hot path cannot afford. `MediaReceived` is the one-frame form for everything
that is not the hot path (a test, a slow front end): `CallCore.receive` takes it.

Sides: 0 is the agent (left channel), 1 the caller and every other leg (right channel).

Segments: a front end whose calls are made of participants joining and leaving (RingCX: one
segment per participant, each with its own codec, sequence numbers and chunk durations, and no
timestamps) describes them with `SegmentStarted`, `SegmentMedia`, `SegmentInfo` and
`SegmentStopped`, each stamped ``at``: the call's own clock in seconds when it arrived (the
segments are placed in time by it, see `callstream.call.segments`). A `CallCore` created with a
`SegmentMixer` takes these; one created with a `Timeline` takes the two-side media above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from callstream.audio import SAMPLE_RATE

__all__ = [
    "AGENT",
    "BOT",
    "CONTACT",
    "MULAW",
    "UNSPECIFIED",
    "AudioFormat",
    "CallComplete",
    "CallEnded",
    "CallFailed",
    "CallIncomplete",
    "CallStarted",
    "InputIgnored",
    "InputRejected",
    "MediaReceived",
    "SegmentInfo",
    "SegmentMedia",
    "SegmentStarted",
    "SegmentStopped",
    "SideStopped",
    "StreamEnded",
]

MULAW = "audio/x-mulaw"  # the one encoding the core records: G.711 mu-law, one byte per sample

# a segment's participant role (`SegmentStarted.role`): AGENT on the left, every other on the right
AGENT = "AGENT"
CONTACT = "CONTACT"
BOT = "BOT"
UNSPECIFIED = "PARTICIPANT_TYPE_UNSPECIFIED"


# --------------------------------------------------------------------------------- input events


@dataclass(frozen=True, slots=True)
class CallStarted:
    """The call's metadata is known. ``fields``: canonical names (``callId``, ``sessionId``,
    ``agentId``, ...) to strings; they override the fields the core was created with.
    ``encoding``: the canonical media type; ``sample_rate`` in Hz. ``raw``: the metadata as the
    front end received it, for the sidecar (never a secret). A second one is ignored."""

    fields: dict[str, str]
    encoding: str = MULAW
    sample_rate: int = SAMPLE_RATE
    raw: dict[str, Any] = field(default_factory=dict)


class MediaReceived(NamedTuple):
    """One frame of one side: ``payload`` is mu-law, one byte per sample (kept by reference).
    The batch form is a sequence of plain tuples of the same three fields, or a `ScannedMedia`."""

    side: int
    sequence: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class SideStopped:
    """A side has ended. ``side`` is None when the protocol does not say which (Engage Voice's
    Stop names none): the call is over once as many stops as sides have come. ``metadata``: as
    received, for the sidecar."""

    side: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InputRejected:
    """A message the front end could not understand: skipped and counted; past the core's cap
    the call ends (`ProtocolError`, 1007). ``reason``: short, safe to log."""

    reason: str


@dataclass(frozen=True, slots=True)
class InputIgnored:
    """A well-formed message of a kind the core does not need (counted, logged at debug; counts
    against the same cap as `InputRejected`)."""

    name: str


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer's stream is over, in band (like h11's ``receive_data(b"")``): nothing more will
    come. ``reason``: how it ended, for the log and the result. ``complete``: the peer ended it
    the way its protocol ends a whole call (RingCX: the platform closed the stream; a stream
    of segments has no per-side stop): the call is complete, answered as a normal close."""

    reason: str = "closed by peer"
    complete: bool = False


# ------------------------------------------------------------------------------- segment events


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A segment's audio: ``codec`` by name (PCMU, PCMA, L16; any other name is not recorded,
    e.g. OPUS, FLAC, CODEC_UNSPECIFIED); ``rate`` in Hz; ``ptime`` in ms per chunk (0: not given)."""

    codec: str = "PCMU"
    rate: int = 8000
    ptime: int = 100


@dataclass(frozen=True, slots=True)
class SegmentStarted:
    """A participant joins: its segment's audio follows as `SegmentMedia` of ``segment_id``.
    ``role``: AGENT, CONTACT, BOT or UNSPECIFIED (or a newer name: recorded on the right).
    ``audio_format`` is None when the front end was given none (later segments inherit the
    last one given). ``product``: JSON-ready, for the sidecar."""

    segment_id: str
    participant_id: str
    role: str
    name: str | None = None
    audio_format: AudioFormat | None = None
    product: dict[str, Any] | None = None
    at: float = 0.0


class SegmentMedia(NamedTuple):
    """One chunk of a segment's audio: ``payload`` in the segment's codec, ``seq`` its number,
    ``duration`` its length in ms as the peer states it, ``at`` its arrival (the call's clock,
    seconds). A NamedTuple: it is built ten times per segment per second."""

    segment_id: str
    payload: bytes
    seq: int
    duration: int
    at: float


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """Segment metadata such as hold and unhold (``event``; ``data`` optional), kept with its
    offset in the recording for the sidecar."""

    segment_id: str
    event: str
    data: str | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class SegmentStopped:
    """A participant has left: its segment takes no more media."""

    segment_id: str
    at: float = 0.0


# -------------------------------------------------------------------------------- output events


@dataclass(frozen=True, slots=True)
class CallEnded:
    """How a call ended. ``close_code``: what the front end must answer the peer with (None:
    nothing, the peer has gone); ``reason``: short, safe to send and log."""

    status: ClassVar[str] = "ended"
    reason: str
    close_code: int | None


@dataclass(frozen=True, slots=True)
class CallComplete(CallEnded):
    """Every side stopped: the whole call is in the recording."""

    status: ClassVar[str] = "complete"


@dataclass(frozen=True, slots=True)
class CallIncomplete(CallEnded):
    """The call ended before every side stopped (peer gone, drain, a limit, a protocol error):
    the recording holds what was received."""

    status: ClassVar[str] = "incomplete"


@dataclass(frozen=True, slots=True)
class CallFailed(CallEnded):
    """Recording the call failed (the disk): the recording, if any, is marked failed."""

    status: ClassVar[str] = "failed"
