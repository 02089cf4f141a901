"""The state of one call's stream, apart from its audio (sans-IO: no trio, no sockets, no files).

Theory of operation: the server parses each text frame into an event. Media events go straight
to the call's `Timeline` (that is the hot path and skips this class entirely); every other event
comes here. `CallState` keeps the metadata (the upgrade query first, the Start message when it
arrives, which is authoritative), counts Stops (one per perspective, and a Stop names none: the
call is over after the second) and counts bad messages and unknown events, raising `ProtocolError`
when their number together passes the configured cap (an unknown event is harmless once, but a
stream of them is a peer keeping a core busy for nothing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from callstream.errors import CLOSE_INVALID_PAYLOAD, ProtocolError
from callstream.events import BadMessage, Connected, Event, QueryMetadata, Start, Stop, Unknown

LOGGER = logging.getLogger("callstream.call")

STOPS_PER_CALL = 2  # one per perspective
UNKNOWN_ID = "unknown"


@dataclass(frozen=True, slots=True)
class CallCounters:
    """Non-audio counters of one call (the audio ones live in `TimelineStatistics`)."""

    bad_messages: int
    unknown_events: int
    stops: int


class CallState:
    """Metadata and lifecycle of one stream.

    ``query`` is the parsed upgrade request; ``max_bad_messages`` is the number of malformed
    messages and unknown events, together, tolerated before the call is closed with 1007.
    """

    def __init__(self, query: QueryMetadata, *, max_bad_messages: int) -> None:
        self.query = query
        self.connected: Connected | None = None
        self.start: Start | None = None
        self.stops: list[Stop] = []
        self._max_bad_messages = max_bad_messages
        self._bad_messages = 0
        self._unknown_events = 0
        self._first_bad_reason: str | None = None

    @property
    def finished(self) -> bool:
        """True once both perspectives have sent Stop."""
        return len(self.stops) >= STOPS_PER_CALL

    @property
    def fields(self) -> dict[str, str]:
        """The call's canonical metadata: the query's mapped fields, overridden by Start's."""
        merged = dict(self.query.mapped)
        if self.start is not None:
            merged.update(self.start.metadata)
        return merged

    @property
    def call_id(self) -> str:
        return self.fields.get("callId") or UNKNOWN_ID

    @property
    def session_id(self) -> str:
        return self.fields.get("sessionId") or UNKNOWN_ID

    def handle(self, event: Event) -> None:
        """Take one non-Media event. Raises `ProtocolError` when bad messages and unknown events
        together pass the cap."""
        kind = type(event)
        if kind is BadMessage:
            self._on_bad_message(event)  # type: ignore[arg-type]
        elif kind is Start:
            if self.start is not None:
                LOGGER.debug("call %s: second Start ignored", self.call_id)
            else:
                self.start = event  # type: ignore[assignment]
        elif kind is Stop:
            self.stops.append(event)  # type: ignore[arg-type]
        elif kind is Connected:
            self.connected = event  # type: ignore[assignment]
        elif kind is Unknown:
            self._unknown_events += 1
            LOGGER.debug("call %s: unknown event %r ignored", self.call_id, event.event)  # type: ignore[union-attr]
            self._check_cap()

    def _on_bad_message(self, event: BadMessage) -> None:
        self._bad_messages += 1
        if self._first_bad_reason is None:
            self._first_bad_reason = event.reason
            LOGGER.warning("call %s: skipping a bad message: %s", self.call_id, event.reason)
        self._check_cap()

    def _check_cap(self) -> None:
        if self._bad_messages + self._unknown_events > self._max_bad_messages:
            raise ProtocolError(
                f"more than {self._max_bad_messages} bad messages and unknown events "
                f"({self._bad_messages} bad, {self._unknown_events} unknown)",
                code=CLOSE_INVALID_PAYLOAD,
            )

    @property
    def bad_messages(self) -> int:
        return self._bad_messages

    def counters(self) -> CallCounters:
        return CallCounters(
            bad_messages=self._bad_messages,
            unknown_events=self._unknown_events,
            stops=len(self.stops),
        )

    def sidecar_metadata(self) -> dict[str, Any]:
        """What the sidecar records about the stream (never the secret)."""
        return {
            "query": {"path": self.query.path, "raw": self.query.raw, "mapped": self.query.mapped},
            "start": None if self.start is None else self.start.raw,
            "stops": [stop.metadata for stop in self.stops],
            "fields": self.fields,
        }
