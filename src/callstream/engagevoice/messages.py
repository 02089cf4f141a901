"""The typed events of the Engage Voice Call Streaming protocol (see docs/protocol.md).

These are plain values with no behaviour. `protocol.parse_message` makes them from text frames;
the front end (`engagevoice.session`) translates them into the call core's own, protocol-neutral
events (`call.events`): the core never sees these. ``Media`` is a NamedTuple rather than a
frozen dataclass because it is built 100 times per call per second and tuple construction is
the cheapest immutable record Python has.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from callstream.audio import SAMPLE_RATE


class Perspective(enum.IntEnum):
    """Which leg a Media frame belongs to; the value is the stereo channel index."""

    PARTICIPANT = 0  # the agent: left channel
    CONFERENCE = 1  # the caller and every other leg: right channel


@dataclass(frozen=True, slots=True)
class Connected:
    """First message of a stream. ``secret`` is set when the message carries one."""

    protocol: str | None = None
    version: str | None = None
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Start:
    """Stream metadata.

    ``metadata`` maps the canonical field names (``callId``, ``sessionId``, ``ani``, ``dnis``,
    ``accountId``, ``subaccountId``, ``rcAccountId``, ``agentId``, ``productType``,
    ``productId``) to strings, for those present. ``content_type`` is the canonical name
    (``audio/pcmu`` becomes ``audio/x-mulaw``); ``sample_rate`` is in Hz. ``raw`` is the
    metadata object as received, less any ``secret`` key (which goes to ``secret``).
    """

    metadata: dict[str, str]
    content_type: str = "audio/x-mulaw"
    sample_rate: int = SAMPLE_RATE
    raw: dict[str, Any] = field(default_factory=dict)
    secret: str | None = field(default=None, repr=False)


class Media(NamedTuple):
    """About 20 ms of audio of one perspective: ``payload`` is G.711 bytes (one byte per sample)."""

    perspective: Perspective
    sequence: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Stop:
    """One perspective has ended. A Stop names no perspective; the call ends after two."""

    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed message with an event we do not know; ignored (logged at debug)."""

    event: str
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BadMessage:
    """A message that could not be understood; skipped and counted, never fatal by itself."""

    reason: str


Event = Connected | Start | Media | Stop | Unknown | BadMessage


@dataclass(frozen=True, slots=True)
class QueryMetadata:
    """What the upgrade request's target says about the call.

    ``mapped``: canonical field names (as in `Start.metadata`) to the first non-empty value;
    ``raw``: every query parameter, percent-decoded, all values in order; ``path``: the target
    up to ``?``, as received. A ``secret`` parameter (any casing) is in neither dict, only in
    ``secret`` (first one wins), which stays out of the repr.
    """

    mapped: dict[str, str]
    raw: dict[str, list[str]]
    path: str
    secret: str | None = field(default=None, repr=False)
