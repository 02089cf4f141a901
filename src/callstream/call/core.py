"""`CallCore`: one call, protocol-neutral and sans-IO: events in, aligned blocks and an ending out.

Theory of operation (in the manner of h11's ``Connection``): a front end translates its wire
messages into the events of `callstream.call.events` and feeds them here; the core keeps the
call's metadata and counters, places the media with its placement engine and decides when and
how the call ends. It does no I/O and reads no clock: time comes in as data (``now``, seconds on
any monotonic clock) with `tick`. The shell around it (server/recorder.py) reads, feeds, hands
each block (`callstream.call.blocks`) to storage, and acts on `ending` (stop reading, finish,
answer the peer with `CallEnded.close_code`).

Placement engines, chosen at construction; everything else (start, endings, limits, counters,
the record) is the same for both:
- a `Timeline` (the default): two sides of sequence-numbered frames (Engage Voice): per-side
  reordering, the two-side alignment, `StereoBlock`s of mu-law;
- a `SegmentMixer` (``segments=``): participants' segments placed by arrival and ``seq``, mixed
  into channels (RingCX): `PcmBlock`s of int16.

Data in: `receive_media` (the hot path: a batch of plain ``(side, sequence, payload)`` tuples or a
`ScannedMedia`, placed until a block is ready; it *is* `Timeline.push_run`, bound once, so a
frame costs the core nothing beyond the timeline's own work; with segments it is
`SegmentMixer.receive_run`, over a batch of `SegmentMedia`), `receive` (one event of any kind,
in band: `CallStarted`, `MediaReceived`, `SideStopped`, the segment events, `InputRejected`,
`InputIgnored`, `StreamEnded`), `close` (the shell's own reasons: a drain, a protocol error the
front end found) and `fail` (storage failed). Data out: `next_block` (a full block, or None),
`tick` (a partial block at most one flush interval old), `finish` (the tail), `outcome` (a
`CallEnded`) and the record (`sidecar_metadata`, `statistics`, `channel_map`: the call's
metadata, statistics and channels for the sidecar).

States: open (no ending decided) -> ending (a `CallEnded` decided: stop reading; media already
received may still be fed, e.g. what a drain finds buffered) -> finished (after `finish`, no more
media). The first ending decided stands, except that a failure of the recording overrides it and
an ending that closes the stream replaces one that does not (a server stop after the peer went).
A call is complete once every side stopped (`SideStopped`, two of them) or the peer ended the
stream as a whole call ends (`StreamEnded` with ``complete``: a stream of segments).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from callstream.audio import SAMPLE_RATE
from callstream.call.blocks import Block
from callstream.call.events import (
    MULAW,
    CallComplete,
    CallEnded,
    CallFailed,
    CallIncomplete,
    CallStarted,
    InputIgnored,
    InputRejected,
    MediaReceived,
    SegmentInfo,
    SegmentMedia,
    SegmentStarted,
    SegmentStopped,
    SideStopped,
    StreamEnded,
)
from callstream.call.segments import SAMPLE_RATE as SEGMENT_RATE
from callstream.call.segments import SegmentMixer
from callstream.call.timeline import StereoBlock, Timeline, TimelineStatistics
from callstream.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_PAYLOAD,
    CLOSE_NORMAL,
    CLOSE_UNSUPPORTED_DATA,
    ProtocolError,
)

LOGGER = logging.getLogger("callstream.call")

SIDES: Final = 2  # a stop per side ends the call
UNKNOWN_ID: Final = "unknown"  # call id or session id when no metadata names one
INFINITE: Final = float("inf")
SEGMENT_EVENTS: Final = frozenset({SegmentStarted, SegmentMedia, SegmentInfo, SegmentStopped})

# the media counters a metrics reporter reads per tick (see `media_totals`)
MediaTotals = tuple[int, int, int, int, int, int, int]


class CallCore:
    """One call (see the module's docstring). Use from one task; never blocks, never waits.

    ``fields``: the call's canonical metadata known before any message (e.g. from the upgrade
    request), which a `CallStarted` overrides field by field; ``connection``: what the front end
    records about the connection, first in the sidecar's metadata (a dict ready for JSON, never a
    secret). ``now``: the current time (seconds, monotonic) for the duration limit.
    ``max_bad_messages``: `InputRejected` and `InputIgnored` together tolerated before the call
    ends with 1007;
    ``idle_timeout``, ``max_call_seconds``: seconds. The timeline's settings are `Timeline`'s.
    ``segments``: place the media with this `SegmentMixer` (fresh, used by this core only: it
    reports its unusable events to the core's count) instead of a `Timeline` (whose settings
    are then unused)."""

    def __init__(
        self,
        *,
        fields: dict[str, str] | None = None,
        connection: dict[str, Any] | None = None,
        now: float | None = None,
        max_bad_messages: int = 100,
        idle_timeout: float = INFINITE,
        max_call_seconds: float = INFINITE,
        window_ms: float = 200.0,
        discontinuity_ms: float = 5000.0,
        block_ms: float = 1000.0,
        sequence_mode: str = "auto",
        segments: SegmentMixer | None = None,
    ) -> None:
        self._timeline: Timeline | None = None
        self._mixer = segments
        if segments is None:
            self._timeline = timeline = Timeline(
                window_ms=window_ms, discontinuity_ms=discontinuity_ms, block_ms=block_ms,
                sequence_mode=sequence_mode,
            )
            # The hot path: the timeline's own methods, so that a batch costs no call of ours.
            self.receive_media = timeline.push_run
            self.next_block = timeline.pop_block
            self.set_time = timeline.set_time
            if now is not None:
                timeline.set_time(now)  # the call's start: its audio stays within its time since
        else:
            # The segments' own clock is their events' ``at`` (and tick's ``clock``): the shell's
            # read time is not theirs.
            segments.reject = self._reject_segment_event
            self.receive_media = segments.receive_run
            self.next_block = segments.pop_block
            self.set_time = _no_time
        if now is None:
            now = 0.0
        self._initial = dict(fields or {})
        self._connection = dict(connection or {})
        self._fields = self._initial
        self.start: CallStarted | None = None
        self._stops: list[SideStopped] = []
        self._max_bad = max_bad_messages
        self._bad = 0
        self._ignored = 0
        self._first_bad: str | None = None
        self._idle_timeout = idle_timeout
        self._max_seconds = max_call_seconds
        self._deadline = now + max_call_seconds
        self._idle_since, self._idle_count = now, -1
        self._ending: CallEnded | None = None
        self._failure: CallFailed | None = None
        self._finished = False
        self._input_over = False  # the stream ended
        self._complete = False  # the stream ended as a whole call ends (StreamEnded.complete)

    # ----------------------------------------------------------------------------------- input

    receive_media: Any  # (items: Sequence, start: int = 0) -> int; see `Timeline.push_run`
    next_block: Any  # (*, partial: bool = False) -> Block | None; see `Timeline.pop_block`
    set_time: Any  # (now: float) -> None: the time, whenever frames arrive; see `Timeline.set_time`

    def receive(self, event: object) -> bool:
        """Take one event (any of `callstream.call.events`' input events). Returns True once the
        input is over: every side stopped, or the stream ended (stop reading; an ending the
        shell decided, e.g. a drain, does not count: what already reached us is still fed). A
        `MediaReceived` or a segment event is placed (pop `next_block` until None afterwards).
        Raises `ProtocolError` when the event ends the call for a reason the peer must hear (too
        many rejected messages or unusable segment events: 1007; an encoding the core cannot
        record: 1003), after recording that ending; ValueError for an unknown event, or for
        media of the other placement engine."""
        kind = type(event)
        if kind in SEGMENT_EVENTS:
            if self._mixer is None:
                raise ValueError(f"a call of two sides takes no segment events: {event!r}")
            self._mixer.handle(event)  # type: ignore[arg-type]
        elif kind is MediaReceived:
            if self._timeline is None:
                raise ValueError(f"a call of segments takes no side media: {event!r}")
            self.receive_media([tuple(event)])  # type: ignore[arg-type]
        elif kind is SideStopped:
            self._stops.append(event)  # type: ignore[arg-type]
            if len(self._stops) >= SIDES:
                self._end(CallComplete("both Stops received", CLOSE_NORMAL))
        elif kind is CallStarted:
            self._on_start(event)  # type: ignore[arg-type]
        elif kind is InputRejected:
            self._on_rejected(event)  # type: ignore[arg-type]
        elif kind is InputIgnored:
            self._ignored += 1
            LOGGER.debug("call %s: unknown event %r ignored", self.call_id, event.name)  # type: ignore[union-attr]
            self._check_cap()
        elif kind is StreamEnded:
            if event.complete:  # type: ignore[union-attr]
                self._complete = True
                self._end(CallComplete(event.reason, CLOSE_NORMAL))  # type: ignore[union-attr]
            else:
                self._end(CallIncomplete(event.reason, None))  # type: ignore[union-attr]
            self._input_over = True
        else:
            raise ValueError(f"not a call event: {event!r}")
        return self._input_over or len(self._stops) >= SIDES

    def close(self, reason: str, code: int = CLOSE_GOING_AWAY) -> None:
        """End the call now for the shell's own reason (a drain, a protocol error found by the
        front end): the close ``code`` goes to the peer."""
        self._end(CallIncomplete(reason, code))

    def fail(self, reason: str) -> None:
        """Recording the call failed (storage): the call ends with 1011 whatever was decided."""
        failure = CallFailed(reason, CLOSE_INTERNAL_ERROR)
        self._failure = failure
        if self._ending is None or self._ending.status != "failed":
            self._ending = failure

    def tick(self, now: float, *, room: bool = True, clock: float | None = None) -> Block | None:
        """Once per flush interval (``now``: seconds, the clock of the constructor's ``now``):
        ends the call after ``idle_timeout`` seconds without a frame or at ``max_call_seconds``
        (1001), and returns the aligned audio that is not yet a full block (None when there is
        none, or when ``room`` is False: storage cannot take it now). ``clock``: with segments,
        the time on their events' clock (``at``), when it is not ``now``: lost chunks and
        media of unknown segments are given up by it."""
        timeline = self._timeline
        if timeline is not None:
            timeline.set_time(now)
            count = timeline.frames_received
        else:
            mixer = self._mixer
            assert mixer is not None
            mixer.tick(now if clock is None else clock)
            count = mixer.chunks_received
        if count != self._idle_count:
            self._idle_since, self._idle_count = now, count
        elif now - self._idle_since >= self._idle_timeout:
            self.close(f"no media for {self._idle_timeout:g} s")
        if now >= self._deadline:
            self.close(f"maximum call duration of {self._max_seconds:g} s reached")
        return self.next_block(partial=True) if room else None  # type: ignore[no-any-return]

    def finish(self) -> Block | None:
        """The call's end: every held frame released, the sides (or segments) closed and padded
        to one length; returns everything not yet popped as one block (maybe longer than a
        block), or None. After it, media raises (`TimelineFinishedError`, or RuntimeError with
        segments); a second call returns None."""
        self._finished = True
        if self._timeline is not None:
            return self._timeline.finish()
        assert self._mixer is not None
        return self._mixer.finish()

    # ---------------------------------------------------------------------------------- output

    @property
    def ending(self) -> CallEnded | None:
        """The ending decided so far (stop reading once it is not None), or None."""
        return self._ending

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def outcome(self) -> CallEnded:
        """How the call ended: failed when recording failed; complete once every side stopped
        (also when the shell stopped it after that); else incomplete. The reason and close code
        are the ending's (the peer went, if none was decided)."""
        ending = self._ending or CallIncomplete("closed by peer", None)
        if self._failure is not None:
            return CallFailed(ending.reason, ending.close_code)
        if self.stopped:
            return CallComplete(ending.reason, ending.close_code)
        return CallIncomplete(ending.reason, ending.close_code)

    @property
    def stopped(self) -> bool:
        """True once every side has stopped (or the stream ended as a whole call ends)."""
        return len(self._stops) >= SIDES or self._complete

    @property
    def started(self) -> bool:
        return self.start is not None

    @property
    def fields(self) -> dict[str, str]:
        """The call's canonical metadata: the constructor's fields, overridden by `CallStarted`'s."""
        return self._fields

    @property
    def call_id(self) -> str:
        return self._fields.get("callId") or UNKNOWN_ID

    @property
    def session_id(self) -> str:
        return self._fields.get("sessionId") or UNKNOWN_ID

    @property
    def bad_messages(self) -> int:
        return self._bad

    @property
    def timeline(self) -> Timeline:
        """The call's timeline, for reading its counters (feed media through the core);
        AttributeError for a call of segments."""
        if self._timeline is None:
            raise AttributeError("a call of segments has no timeline (see `segments`)")
        return self._timeline

    @property
    def segments(self) -> SegmentMixer | None:
        """The call's segment mixer, for reading its reports; None for a call of two sides."""
        return self._mixer

    @property
    def sequence_mode(self) -> str:
        """The timeline's sequence mode in force: "perspective" or "connection" ("segments"
        for a call of segments: each numbers its own)."""
        return "segments" if self._timeline is None else self._timeline.sequence_mode

    @property
    def sample_rate(self) -> int:
        return SEGMENT_RATE if self._timeline is None else self._timeline.sample_rate

    @property
    def channels(self) -> int:
        """The recording's channel count: 2, or the segments' layout's."""
        return SIDES if self._mixer is None else self._mixer.channels

    @property
    def frames_received(self) -> int:
        """Frames (or chunks of segments) taken so far: what the idle timeout watches."""
        return self._mixer.chunks_received if self._timeline is None else self._timeline.frames_received  # type: ignore[union-attr]

    def media_totals(self) -> MediaTotals:
        """The engine's media counters and the rejected messages (cheap: once per tick)."""
        engine = self._timeline if self._timeline is not None else self._mixer
        return (*engine.media_counters(), self._bad)  # type: ignore[union-attr]

    def timeline_statistics(self) -> TimelineStatistics:
        return self.timeline.statistics()

    def statistics(self) -> dict[str, Any]:
        """The sidecar's statistics: the engine's, then the call's counters (JSON-ready)."""
        if self._mixer is not None:
            return {**self._mixer.statistics(), "bad_messages": self._bad, "unknown_events": self._ignored}
        return {
            **self.timeline.statistics().as_dict(),
            "bad_messages": self._bad,
            "unknown_events": self._ignored,
            "stops": len(self._stops),
        }

    def sidecar_metadata(self) -> dict[str, Any]:
        """The sidecar's metadata (never a secret: front ends keep them out). Two sides: the
        connection's, the start's raw metadata (or None), each stop's, and the merged fields.
        Segments: the connection's, the start's raw metadata merged in, the segments' report
        (product, segments, segment_info) and the merged fields."""
        if self._mixer is not None:
            return {
                **self._connection,
                **({} if self.start is None else self.start.raw),
                **self._mixer.metadata(),
                "fields": self._fields,
            }
        return {
            **self._connection,
            "start": None if self.start is None else self.start.raw,
            "stops": [stop.metadata for stop in self._stops],
            "fields": self._fields,
        }

    def channel_map(self) -> dict[str, Any] | None:
        """What each channel holds, for the sidecar: None for two sides (storage's default:
        agent left, caller right), else the segments' (`SegmentMixer.channel_map`)."""
        return None if self._mixer is None else self._mixer.channel_map()

    @property
    def channel_map_version(self) -> int:
        """Changes whenever `channel_map` or the segments' report in `sidecar_metadata` does (a
        segment started): the live sidecar is then rewritten, so that a recording recovered after
        a crash lists every segment that had started, not only those of its DialogInit; cheap."""
        mixer = self._mixer
        return 0 if mixer is None else mixer.segment_count

    # ------------------------------------------------------------------------------- internals

    def _end(self, ending: CallEnded) -> None:
        current = self._ending
        if current is None or (current.close_code is None and ending.close_code is not None
                               and current.status != "complete"):
            self._ending = ending

    def _on_start(self, event: CallStarted) -> None:
        if self.start is not None:
            LOGGER.debug("call %s: second Start ignored", self.call_id)
            if self._mixer is not None:
                self._reject_segment_event("a second start")
            return
        # segments carry their own formats (an unusable one is not recorded, the others are)
        if self._mixer is None and (event.encoding != MULAW or event.sample_rate != SAMPLE_RATE):
            reason = f"cannot record {event.encoding} at {event.sample_rate} Hz"
            self.close(reason, CLOSE_UNSUPPORTED_DATA)
            raise ProtocolError(reason, code=CLOSE_UNSUPPORTED_DATA)
        self.start = event
        self._fields = {**self._initial, **event.fields}
        if self._mixer is not None:
            self._mixer.label = self.call_id

    def _on_rejected(self, event: InputRejected) -> None:
        self._bad += 1
        if self._first_bad is None:
            self._first_bad = event.reason
            LOGGER.warning("call %s: skipping a bad message: %s", self.call_id, event.reason)
        self._check_cap()

    def _reject_segment_event(self, reason: str) -> None:
        """The mixer could not use an event (an unknown segment's stop, a second start ...)."""
        self._on_rejected(InputRejected(reason))

    def _check_cap(self) -> None:
        """Rejected and ignored input together: an unknown event is harmless once, but a stream
        of them is a peer keeping a core busy for nothing."""
        if self._bad + self._ignored > self._max_bad:
            reason = (f"more than {self._max_bad} bad messages and unknown events "
                      f"({self._bad} bad, {self._ignored} unknown)")
            self.close(reason, CLOSE_INVALID_PAYLOAD)
            raise ProtocolError(reason, code=CLOSE_INVALID_PAYLOAD)


def _no_time(now: float) -> None:
    """`CallCore.set_time` of a call of segments: their clock is their events' own."""


def receive_all(core: CallCore, items: Sequence[Any]) -> list[StereoBlock]:
    """Place a whole batch of media, popping every block as it is ready (for tests and tools
    without a storage lane to wait on: the shell interleaves the pops with its own waits)."""
    blocks: list[StereoBlock] = []
    i, end = 0, len(items)
    while i < end:
        placed = core.receive_media(items, i)
        if placed == i:
            raise ValueError(f"item {i} is not a (side, sequence, payload) tuple")
        i = placed
        block = core.next_block()
        while block is not None:
            blocks.append(block)
            block = core.next_block()
    return blocks
