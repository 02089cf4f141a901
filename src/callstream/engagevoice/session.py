"""One Engage Voice stream's messages as call-core events (sans-IO: no trio, sockets or files).

The front end's half of the recorder: the shell reads a message (or a `TextBatch` of them) and
asks this for the call's events; the `CallCore` never sees a JSON message. The hot path stays one
call per read: `items` scans a batch in C (`MediaScanner`) and returns the Media as plain
``(side, sequence, payload)`` tuples (or a `ScannedMedia` when every message was Media), which go
to `CallCore.receive_media` as they are; each other item is text, turned into one core event by
`event` (`parse_message` decides what it means). docs/protocol.md says what each message is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from callstream.call.batch import MediaFields
from callstream.call.events import CallStarted, InputIgnored, InputRejected, SideStopped, StreamEnded
from callstream.engagevoice.mediascan import MediaScanner
from callstream.engagevoice.messages import BadMessage, Connected, Event, Media, QueryMetadata, Start, Stop, Unknown
from callstream.engagevoice.protocol import DEFAULT_MAX_BYTES, parse_message
from callstream.engagevoice.textbatch import TextBatch
from callstream.engagevoice.transport import StreamClosed
from callstream.errors import CLOSE_POLICY_VIOLATION, ProtocolError

__all__ = ["CoreEvent", "EngageVoiceSession", "core_event", "message_credential"]

# what `EngageVoiceSession.event` returns: a core event, a Media frame's tuple, or None (nothing
# for the core: Connected)
CoreEvent = CallStarted | SideStopped | InputRejected | InputIgnored | MediaFields | None


def message_credential(event: Event) -> str | None:
    """The secret carried by a first message (Connected or Start), or None."""
    if isinstance(event, Connected | Start):
        return event.secret
    return None


class EngageVoiceSession:
    """Translates one stream (see the module's docstring). ``query``: the upgrade's parsed
    target; ``scanner``: the process's (scratch space, used between awaits only); ``max_bytes``:
    the longest message taken (longer: `ProtocolError` 1009); ``authenticate``: when set, the
    first message must carry a secret it accepts (it is given the secret, or None), else
    `first` raises `ProtocolError` 1008 before anything reaches the core."""

    __slots__ = ("_authenticate", "_max_bytes", "event", "items", "query")

    def __init__(
        self,
        query: QueryMetadata,
        *,
        scanner: MediaScanner,
        max_bytes: int = DEFAULT_MAX_BYTES,
        authenticate: Callable[[str | None], bool] | None = None,
    ) -> None:
        self.query = query
        self._max_bytes = max_bytes
        self._authenticate = authenticate

        def event(message: str | bytes, parse=parse_message, media=Media, translate=core_event) -> CoreEvent:
            """One message as the core's event: a Media frame as its ``(side, sequence,
            payload)`` tuple; None for a message the core needs nothing of (Connected). Raises
            `ProtocolError` as `parse_message` (too big: 1009; a Start of audio we cannot
            record: 1003). (A closure: it is called per message of a small read.)"""
            parsed = parse(message, max_bytes=max_bytes)
            return tuple(parsed) if type(parsed) is media else translate(parsed)  # type: ignore[return-value]

        def items(
            data: str | bytes | TextBatch, scan=scanner.scan, batch=TextBatch,
            parse=parse_message, media=Media, failed=ProtocolError,
        ) -> Sequence[MediaFields | str | bytes]:
            """One read's messages, in order: Media as plain tuples (a `ScannedMedia` when the
            scanner recognised all), every other message as it came, for `event`. The messages
            the scanner leaves as text (all of a small read, or without the C kernel) are parsed
            here, so that their Media go to the core with the rest of the read; any other is
            parsed again by `event` (a handful per call), which also raises, in order, for one
            that cannot be taken. Never raises."""
            found = scan(data) if type(data) is batch else [data]
            if type(found) is list:
                for i, item in enumerate(found):
                    if type(item) is not tuple:
                        try:
                            parsed = parse(item, max_bytes=max_bytes)
                        except failed:
                            continue
                        if type(parsed) is media:
                            found[i] = tuple(parsed)
            return found

        self.event = event
        self.items = items

    @property
    def needs_first_message(self) -> bool:
        """True when the first message must be given to `first` (it carries the secret)."""
        return self._authenticate is not None

    def fields(self) -> dict[str, str]:
        """The call's fields known from the upgrade (a Start overrides them)."""
        return dict(self.query.mapped)

    def connection(self) -> dict[str, Any]:
        """The sidecar's record of the upgrade (the secret is never in it)."""
        query = self.query
        return {"query": {"path": query.path, "raw": query.raw, "mapped": query.mapped}}

    def first(self, message: str | bytes) -> CoreEvent:
        """The first message, authenticated: its event (as `event`). Raises `ProtocolError`:
        1008 for a missing or wrong secret, or as `parse_message`."""
        parsed = parse_message(message, max_bytes=self._max_bytes)
        authenticate = self._authenticate
        if authenticate is not None and not authenticate(message_credential(parsed)):
            raise ProtocolError("missing or wrong secret", code=CLOSE_POLICY_VIOLATION)
        return core_event(parsed)

    @staticmethod
    def ended(closed: StreamClosed) -> StreamEnded:
        """The transport's end of stream as the core's in-band event."""
        if closed.code is None or closed.code == 1006:
            return StreamEnded("connection lost")
        return StreamEnded(f"stream closed with {closed.code}" + (f" ({closed.reason})" if closed.reason else ""))


def core_event(event: Event) -> CoreEvent:
    """A parsed message as the core's event (see `EngageVoiceSession.event`)."""
    kind = type(event)
    if kind is Media:
        return tuple(event)  # type: ignore[return-value]
    if kind is Start:
        return CallStarted(
            fields=event.metadata, encoding=event.content_type,  # type: ignore[union-attr]
            sample_rate=event.sample_rate, raw=event.raw,  # type: ignore[union-attr]
        )
    if kind is Stop:
        return SideStopped(None, event.metadata)  # type: ignore[union-attr]
    if kind is BadMessage:
        return InputRejected(event.reason)  # type: ignore[union-attr]
    if kind is Unknown:
        return InputIgnored(event.event)  # type: ignore[union-attr]
    return None  # Connected: the core needs nothing of it (its secret was checked by `first`)
