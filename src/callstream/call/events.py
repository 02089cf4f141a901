"""The call core's events: what a front end tells it, and how it says a call ended (sans-IO).

Protocol-neutral: an Engage Voice WebSocket front end and a RingCX gRPC front end translate their
own wire messages into these, so that one `CallCore` records both. Media is the exception to
"one object per event": a front end hands it over as plain ``(side, sequence, payload)`` tuples
or a whole `ScannedMedia`, in batches (`CallCore.receive_media`), because a dataclass per 20 ms
frame is what the hot path cannot afford. `MediaReceived` is the one-frame form for everything
that is not the hot path (a test, a slow front end): `CallCore.receive` takes it.

Sides: 0 is the agent (left channel), 1 the caller and every other leg (right channel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from callstream.audio import SAMPLE_RATE

__all__ = [
    "MULAW",
    "CallComplete",
    "CallEnded",
    "CallFailed",
    "CallIncomplete",
    "CallStarted",
    "InputIgnored",
    "InputRejected",
    "MediaReceived",
    "SideStopped",
    "StreamEnded",
]

MULAW = "audio/x-mulaw"  # the one encoding the core records: G.711 mu-law, one byte per sample


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
    come. ``reason``: how it ended, for the log and the result."""

    reason: str = "closed by peer"


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
