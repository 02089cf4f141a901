"""`SegmentMixer`: a call's segments placed in time and mixed into channel blocks, the call
core's placement engine for calls made of participants' segments (a RingCX dialog). Sans-IO: no
grpc, no trio, no files; time comes in as data, in every event's ``at`` and in `tick`. Its input
is `callstream.call.events`' segment events; `CallCore` feeds it, or a test directly.

Theory of operation. The recording's timeline counts samples at 8 kHz from the start of the
call's first chunk of audio (sample 0: its arrival less its length). The segment events
carry no timestamp, only ``seq`` and ``duration`` per segment, so a segment is placed by two
clocks:
- Where it joins: its first chunk (``n`` samples, arrived at ``at``) starts at ``pos(at) - n``:
  a chunk arrives once it has been spoken. Accurate to the network's jitter, i.e. within a chunk.
- From there, by ``seq``: each chunk starts where the previous one ended. A chunk that arrives
  out of order waits (at most ``window_ms`` of audio, or until it is ``window_ms`` old) for the
  ones before it; a repeated ``seq`` is dropped; a ``seq`` that never came becomes silence of
  the segment's last chunk length (its own duration is lost with it).
- A pause (hold) is judged only from the platform's evidence, never from our own read delay
  (the process starved, the GIL busy, the bridge full: every segment of the dialog read late
  alike). The stream's own order is that evidence: when another live segment's chunks came since
  this segment's previous one (a witness), its audio says where this chunk belongs (where the
  witness's audio ends, to within a chunk); more than ``window_ms`` beyond the cursor, the media
  paused while ``seq`` went on, and the pause is the arrival's length (less the witness's
  lateness) held to within half a chunk of that. Every live segment quiet at once (no witness) is
  the platform's hold of all only on its word: a HOLD SegmentInfo since the segment's last chunk;
  then, and for a lone segment, the arrival decides: a chunk more than ``window_ms`` later than
  its place by ``seq`` beyond the call's backlog (see `_backlog`) is held until the next one says
  whether the media paused (it comes a chunk later) or the stream stalled (at once). Otherwise no
  silence: a stall, the segments stay aligned. Sequence gaps are filled first, so a platform that
  numbers through the hold is not counted twice.
Channels (``layout="stereo"``): AGENT segments on the left (0); CONTACT, BOT and unspecified
participants on the right (1). Segments on one channel at the same time are mixed with a
saturating 16-bit add (summed in 32 bits, clipped to 16, chunk by chunk).
``layout="participants"``: ``max_channels`` channels, all of them from the first block (a file's
channel count is fixed in its header, written before anyone can know whether a transfer will
come; a reserved channel nobody joined stays silent). Each recorded segment gets the next free
channel in the order of its SegmentStarted; a segment beyond the last channel is mixed into the
last one (no audio lost), logged and counted (``segments_sharing_last_channel``), and its
sidecar entry says ``"channel_shared": true``. Segments not recorded (codec, rate) take none.

Emission: audio up to the watermark W leaves in blocks of ``block_ms`` (`pop_block`), W being the
smallest end of the live segments' placed audio and of the clock less ``window_ms`` (a segment
joining now lands after what has left), but never further behind than ``window_ms`` of the
newest audio placed or of the clock: a live segment that falls silent (hold, loss) holds the
others back by at most the window. A chunk that would land before W (a segment late past
the window) is moved to W and the move counted (``shifted_seconds``), never dropped.

Writing: a G.711 chunk is not decoded when it is placed; its payload waits, with its place, in
`MixWrites` until the mix is next read (a block cut) or grown, and then every waiting chunk is
decoded and added in one C call (`callstream.call.mixing`); at a cut the same call decodes them
straight into the block (those past its end into the mix) and reads of the mix only how far it
was written (``_dirty``). L16 and silence are written at once, after the chunks waiting before
them (a saturating add depends on the order).

Memory: per call, the unemitted mix (one block + the window + one chunk per channel, int16:
42 KB at the defaults in stereo, 21 KB more per participants channel; a longer chunk grows
it) and the G.711 payloads placed in it since the last cut (a byte a sample), per segment
at most ``window_ms`` of waiting chunks (and MAX_PENDING of them), at most
MAX_ORPHANS chunks of media for segments not started yet (held for ``window_ms``, then dropped
and counted), at most MAX_SEGMENTS segments and MAX_INFOS SegmentInfo events kept.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np

from callstream.call.blocks import PcmBlock
from callstream.call.events import (
    AGENT,
    AudioFormat,
    CallStarted,
    SegmentInfo,
    SegmentMedia,
    SegmentStarted,
    SegmentStopped,
)
from callstream.call.mixing import ALAW, ULAW, MixWrites, add_clipped
from callstream.errors import CLOSE_INVALID_PAYLOAD, ProtocolError

__all__ = ["LAYOUTS", "MAX_CHANNELS", "SAMPLE_RATE", "PcmBlock", "SegmentMixer"]

LOGGER = logging.getLogger("callstream.call.segments")

SegmentEvent = SegmentStarted | SegmentMedia | SegmentInfo | SegmentStopped | CallStarted
# a chunk of audio on its way to the mix: a G.711 payload (bytes, one a sample) or PCM (int16)
Chunk = bytes | np.ndarray

SAMPLE_RATE: Final = 8000  # Hz: the only rate recorded
DEFAULT_FORMAT: Final = AudioFormat("PCMU", SAMPLE_RATE, 100)  # RINGCX.md: the platform's today
MAX_SEGMENTS: Final = 64  # segments per call; beyond, new ones are not recorded (and counted)
MAX_PENDING: Final = 64  # chunks waiting for a missing seq, per segment
MAX_ORPHANS: Final = 64  # chunks of segments not started yet, per call
MAX_INFOS: Final = 1000  # SegmentInfo events kept for the sidecar
MAX_GAP_CHUNKS: Final = 10_000  # a seq jump beyond this (or discontinuity_ms) is a restart, not silence
STEREO: Final = 2
LAYOUTS: Final = ("stereo", "participants")
MAX_CHANNELS: Final = 8  # participants layout: FLAC's limit, and past any real transfer chain
MAX_LEAD: Final = 2 * SAMPLE_RATE  # samples: the most the call's first event may have come late
# samples: how far the clock may run ahead of all audio (a stall of the platform, or our own read
# delay: the process starved): every segment quiet this long moves the emission on without them
CLOCK_SLACK: Final = 4 * SAMPLE_RATE
BYTE_ORDERS: Final = ("big", "little")
# numpy releases the GIL around a copy or a ufunc loop of more elements than this (its
# NPY_BEGIN_THREADS_THRESHOLDED). In the server the gRPC front end's thread often waits for the
# GIL while trio places chunks: each release of a microsecond's copy handed it over, with a futex
# wake and context switches (their cost on this VM: a fifth of the process's CPU). PCM chunks (L16,
# silence) are therefore copied in pieces of at most this many samples; G.711 chunks wait in
# `MixWrites` for one C call per block, which also cuts the block (the twin: memoryviews, whose
# memmove keeps the GIL). See benchmarks/RESULTS.md, 2026-12-06 12:09 UTC.
GIL_HELD_ELEMENTS: Final = 500
HISTORY: Final = 8  # arrivals per segment kept to judge a held chunk (a second of a reader's catch-up)


class _Segment:
    __slots__ = (
        "arrived", "arrived_at", "backlog", "bad_payloads", "channel", "chunks", "cursor", "decode", "duplicates",
        "format", "history", "joined", "last_samples", "late", "law", "left", "lost_chunks", "lost_samples",
        "next_seq", "order", "paused",
        "pauses", "pending", "pending_samples", "reordered", "restarts", "samples", "shared", "shifted",
        "stalls", "start", "stopped", "suspect", "unrecorded", "why_not",
    )

    def __init__(self, start: SegmentStarted, fmt: AudioFormat, channel: int | None,
                 law: int | None, decode: Callable[[bytes], np.ndarray] | None, why_not: str | None) -> None:
        self.start = start
        self.format = fmt
        self.channel = channel  # None: not recorded (participants layout)
        self.shared = False  # participants layout: mixed into the last channel, past the cap
        # G.711 (ULAW, ALAW): its payloads are the chunks, added into the mix by `MixWrites`;
        # else (L16) ``decode`` makes PCM of them
        self.law = law
        self.decode = decode
        self.why_not = why_not  # None: recorded; else why this segment is not
        self.next_seq: int | None = None
        self.order = 0  # the call's count of arrived chunks at its latest one (the stream's order)
        self.arrived = 0  # where (by the clock, in samples) its last chunk placed on arrival started
        self.arrived_at = float("-inf")  # the clock (s) at its latest chunk's arrival
        # samples by which its latest chunk arrived after its place by seq (a held one's too), and
        # after the place it was given (its backlog): what a pause is measured against
        self.late = 0
        self.backlog = 0
        # (arrived_at, late) of its arrivals before the latest: to compare a held chunk with
        # what the others showed when it came (a reader catching up changes it fast)
        self.history: deque[tuple[float, int]] = deque(maxlen=HISTORY)
        # a chunk that came late by more than the window, held until the next one says whether
        # the media paused (the next comes a chunk later) or the stream stalled (it comes at once)
        self.suspect: tuple[Chunk, float, float] | None = None  # (chunk, its arrival, the one before)
        self.stalls = 0
        self.cursor = 0  # where the chunk numbered next_seq starts
        self.joined: int | None = None  # first sample placed
        self.left: int | None = None  # SegmentStopped: where its audio ended
        self.stopped = False
        self.pending: dict[int, tuple[Chunk, float]] = {}
        self.pending_samples = 0
        self.last_samples = fmt.ptime * SAMPLE_RATE // 1000 or 800
        self.chunks = self.samples = self.duplicates = self.lost_chunks = self.lost_samples = 0
        self.pauses = self.paused = self.shifted = self.reordered = self.restarts = 0
        self.bad_payloads = self.unrecorded = 0

    def sidecar(self) -> dict[str, Any]:
        start, fmt = self.start, self.format
        ended = None if self.joined is None else self.cursor  # still live: where it is now

        def seconds(samples: int | None) -> float | None:
            return None if samples is None else round(samples / SAMPLE_RATE, 3)

        return {
            "segment_id": start.segment_id,
            "participant": {"id": start.participant_id, "type": start.role, "name": start.name},
            "product": start.product,
            "codec": fmt.codec, "rate": fmt.rate, "ptime": fmt.ptime,
            "channel": self.channel,
            "channel_shared": self.shared,
            "recorded": self.why_not is None,
            "not_recorded_because": self.why_not,
            "joined_seconds": seconds(self.joined),
            "left_seconds": seconds(self.left if self.left is not None else ended),
            "statistics": {
                "chunks": self.chunks, "seconds": seconds(self.samples),
                "duplicates": self.duplicates, "reordered": self.reordered,
                "lost_chunks": self.lost_chunks, "lost_seconds": seconds(self.lost_samples),
                "pauses": self.pauses, "paused_seconds": seconds(self.paused),
                "shifted_seconds": seconds(self.shifted), "restarts": self.restarts, "stalls": self.stalls,
                "bad_payloads": self.bad_payloads, "chunks_not_recorded": self.unrecorded,
            },
        }


_LAWS: Final = {"PCMU": ULAW, "PCMA": ALAW}


def _decoder(fmt: AudioFormat, l16_byte_order: str) -> tuple[int | None, Callable[[bytes], np.ndarray] | None,
                                                              str | None]:
    """(the G.711 law, the decoder of anything else, why it is not recorded): one is not None."""
    if fmt.codec not in ("PCMU", "PCMA", "L16"):
        return None, None, f"codec {fmt.codec} is not recorded (PCMU, PCMA and L16 are)"
    if fmt.rate != SAMPLE_RATE:
        return None, None, f"sample rate {fmt.rate} Hz is not recorded (only {SAMPLE_RATE} Hz)"
    if fmt.codec in _LAWS:
        return _LAWS[fmt.codec], None, None
    dtype = np.dtype(">i2" if l16_byte_order == "big" else "<i2")

    def decode_l16(payload: bytes) -> np.ndarray:
        return np.frombuffer(payload, dtype=dtype, count=len(payload) // 2).astype(np.int16)

    return None, decode_l16, None


class SegmentMixer:
    """One call's segments: events in (`handle`, `receive_run`, `tick`), channel blocks out
    (`pop_block`, `finish`).

    Raises ProtocolError only for what ends the call (more than ``max_bad_events`` events it
    cannot use, counted by ``reject`` when given: `CallCore` passes its own bad-message count);
    everything else is counted and reported in `segments` and `statistics`."""

    def __init__(self, *, window_ms: float = 200.0, block_ms: float = 1000.0,
                 discontinuity_ms: float = 10_000.0, l16_byte_order: str = "big",
                 max_bad_events: int = 1000, layout: str = "stereo", max_channels: int = 4,
                 reject: Callable[[str], None] | None = None) -> None:
        """``layout``: one of LAYOUTS (see the module's docstring); ``max_channels``: the
        participants layout's channel count, 1 to MAX_CHANNELS. ValueError otherwise.
        ``reject``: called with a short reason for every event it cannot use (after its own
        count); it may raise ProtocolError to end the call. Without it, the mixer applies
        ``max_bad_events`` itself."""
        if l16_byte_order not in BYTE_ORDERS:
            raise ValueError(f"l16_byte_order must be one of {BYTE_ORDERS}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        if not 1 <= max_channels <= MAX_CHANNELS:
            raise ValueError(f"max_channels must be 1 to {MAX_CHANNELS}")
        self.layout = layout
        self.channels = STEREO if layout == "stereo" else max_channels
        self._next_channel = 0  # participants layout: the channel the next recorded segment gets
        self._window = max(1, int(window_ms * SAMPLE_RATE / 1000))
        self._block = max(1, int(block_ms * SAMPLE_RATE / 1000))
        self._discontinuity = int(discontinuity_ms * SAMPLE_RATE / 1000)
        self._l16 = l16_byte_order
        self._max_bad = max_bad_events
        self.reject = reject  # who counts the unusable events (see __init__)
        self.label = "unknown"  # the call's id for log lines (`CallCore` sets it)
        self._origin: float | None = None  # the events' clock at sample 0: set by the first audio
        self._clock = float("-inf")  # the newest reading of the events' clock
        self._now = 0  # newest clock reading, in samples
        self._emitted = 0  # samples per channel emitted so far (the mix starts here)
        # one block, the window on both sides and a chunk: room enough in the steady state
        # (samples, channels) int16: a block is cut as it is written, without a transpose or a
        # conversion; room for a block, the window and a chunk (see Memory above)
        self._mix = np.zeros((self._block + self._window + 800, self.channels), dtype=np.int16)
        self._newest = 0  # end of the newest audio placed
        # the mix is zero from here on (samples from the call's start), but for the G.711 chunks
        # waiting in _writes: what a cut must read of it (see MixWrites.cut)
        self._dirty = 0
        # samples by which the clock runs behind the audio: the call's first events came late
        # (its RPC was set up, or the network was slow, while the platform already spoke); see
        # _place. Every position taken from the clock adds it.
        self._lead = 0
        self._filled = [0] * self.channels  # per channel: the end of the audio placed on it
        self._segments: dict[str, _Segment] = {}
        self._order = 0  # chunks of recorded segments arrived so far: the stream's own order
        self._hold_order = -1  # _order when the latest HOLD SegmentInfo came (the platform's word)
        self._live: list[_Segment] = []  # started, not stopped, recorded
        self._format = DEFAULT_FORMAT  # the last one a SegmentStarted gave
        self._orphans: list[SegmentMedia] = []
        # the G.711 chunks placed since the mix was last cut, to be added into it (`_apply`)
        self._writes = MixWrites()
        # the watermark receive_run found a block ready at, for the caller's next pop_block
        # (nothing may happen in between: every other input forgets it)
        self._ready_mark: int | None = None
        self.infos: list[dict[str, Any]] = []
        self.counters = {"unknown_segment_media": 0, "media_after_stop": 0, "segments_over_cap": 0,
                         "bad_events": 0, "infos_dropped": 0}
        if layout == "participants":
            self.counters["segments_sharing_last_channel"] = 0
        self._finished = False

    # -- input -----------------------------------------------------------------------------

    def handle(self, event: SegmentEvent) -> None:
        """Take one segment event (in arrival order; ``event.at`` never earlier than the last).
        A `CallStarted` is the core's business: ignored here. ValueError for anything else."""
        if self._finished:
            raise RuntimeError("the call is finished")
        self._ready_mark = None
        kind = type(event)
        if kind is CallStarted:
            return
        at = event.at  # type: ignore[union-attr]
        if at > self._clock:
            self._clock = at
            if self._origin is not None:
                self._now = round((at - self._origin) * SAMPLE_RATE)
        if kind is SegmentMedia:
            self._media(event)  # type: ignore[arg-type]
        elif kind is SegmentStarted:
            self._start(event)  # type: ignore[arg-type]
        elif kind is SegmentStopped:
            self._stop(event)  # type: ignore[arg-type]
        elif kind is SegmentInfo:
            self._info(event)  # type: ignore[arg-type]
        else:
            raise ValueError(f"not a segment event: {event!r}")

    def receive_run(self, items: Sequence[Any], start: int = 0) -> int:
        """Place the `SegmentMedia` of ``items`` from ``start`` on until a full block is ready
        (then `pop_block` until None, before anything else) or an item of another kind; returns
        the index of the first item not placed (the shell's receive loop, as `Timeline.push_run`).
        The same as `handle` and `pop_block` after each item."""
        if self._finished:
            raise RuntimeError("the call is finished")
        self._ready_mark = None
        i, end = start, len(items)
        place, block, window = self._media, self._block, self._window
        # Stop when a block is ready (pop_block's tests, also before the first item): the caller
        # pops before this places anything more, as it would after each event (where a segment
        # joins depends on what has left). Such an item, not placed here, the caller gives to
        # `handle` (the shell's loop does: it takes it for an event). The watermark is never more
        # than the newest audio (or the clock) less the window: short of that, it is computed
        # only when it may give up a lost chunk (its one side effect), as pop_block would.
        while i < end:
            media = items[i]
            if type(media) is not SegmentMedia:
                break
            ahead = max(self._now + self._lead, self._newest) - self._emitted
            if ahead >= block and (ahead - window >= block or self._waiting()):
                mark = self.watermark()
                if mark - self._emitted >= block:
                    self._ready_mark = mark  # pop_block's, computed once as it would be
                    break
            at = media.at  # as `handle`, without its dispatch
            if at > self._clock:
                self._clock = at
                if self._origin is not None:
                    self._now = round((at - self._origin) * SAMPLE_RATE)
            place(media)
            i += 1
        return i

    def _waiting(self) -> bool:
        """Whether a live segment has chunks waiting for a lost one."""
        return any(segment.pending for segment in self._live)

    def tick(self, now: float) -> None:
        """Time has passed (``now`` on the events' clock): give up waiting for lost chunks and
        for media of segments never started."""
        self._ready_mark = None
        if now > self._clock:
            self._clock = now
            if self._origin is not None:
                self._now = round((now - self._origin) * SAMPLE_RATE)
        self._expire(now)

    def _media(self, media: SegmentMedia) -> None:
        segment = self._segments.get(media.segment_id)
        if segment is None:
            if len(self._orphans) < MAX_ORPHANS:
                self._orphans.append(media)
            else:
                self.counters["unknown_segment_media"] += 1
            return
        if segment.stopped:
            self.counters["media_after_stop"] += 1
            return
        if segment.why_not is not None:
            segment.unrecorded += 1
            return
        payload = media.payload
        pcm: Chunk
        if payload and segment.law is not None:  # G.711: one byte a sample, added into the mix later
            pcm = payload if type(payload) is bytes else bytes(payload)
        elif payload:
            pcm = segment.decode(payload)  # type: ignore[misc]
            if len(payload) % 2:
                segment.bad_payloads += 1
        else:  # no audio but a duration: silence of that length (DTX)
            pcm = np.zeros(media.duration * SAMPLE_RATE // 1000, dtype=np.int16)
        segment.chunks += 1
        if segment.suspect is not None:  # this chunk says whether the held one ended a pause
            held_at = segment.suspect[1]
            # a chunk's time later (3/4 of it: jitter), the media paused; sooner, the stream (or a
            # reader catching up on its backlog) stalled
            self._resolve(segment, paused=media.at - held_at >= 0.75 * len(pcm) / SAMPLE_RATE)
        if self._origin is None:  # the first audio starts the recording: sample 0 is its start
            self._origin = media.at - len(pcm) / SAMPLE_RATE
            self._now = round((self._clock - self._origin) * SAMPLE_RATE)
        seq = media.seq
        self._order += 1
        if segment.next_seq is None:  # its first chunk: placed where it arrived
            arrived = round((media.at - self._origin) * SAMPLE_RATE) - len(pcm)  # type: ignore[operator]
            segment.arrived = arrived
            segment.cursor = max(self._emitted, arrived + self._lead)
            segment.joined = segment.cursor
            segment.next_seq = seq
        elif seq < segment.next_seq:
            if segment.next_seq - seq > self._gap_limit(segment):
                self._restart(segment, seq)  # a restarted counter: carry on from the clock
            else:
                segment.duplicates += 1
                return
        if seq == segment.next_seq:
            self._arrive(segment, pcm, media.at)
            if segment.pending:
                self._drain(segment)
            return
        if seq in segment.pending:
            segment.duplicates += 1
            return
        if seq - segment.next_seq > self._gap_limit(segment):
            self._restart(segment, seq)
            self._place(segment, pcm, media.at)
            return
        segment.pending[seq] = (pcm, media.at)
        segment.pending_samples += len(pcm)
        segment.reordered += 1
        if segment.pending_samples > self._window or len(segment.pending) > MAX_PENDING:
            self._skip_gap(segment)

    def _gap_limit(self, segment: _Segment) -> int:
        return min(MAX_GAP_CHUNKS, max(1, self._discontinuity // max(1, segment.last_samples)))

    def _restart(self, segment: _Segment, seq: int) -> None:
        segment.restarts += 1
        for pcm, at in [segment.pending[k] for k in sorted(segment.pending)]:
            self._place(segment, pcm, at)
        segment.pending.clear()
        segment.pending_samples = 0
        segment.next_seq = seq
        segment.cursor = max(segment.cursor, self._now + self._lead - segment.last_samples, self._emitted)

    def _skip_gap(self, segment: _Segment) -> None:
        """Give up the missing chunks before the lowest waiting one: silence of the last chunk
        length each, then place what waited."""
        assert segment.next_seq is not None
        lowest = min(segment.pending)
        missing = lowest - segment.next_seq
        segment.lost_chunks += missing
        silence = missing * segment.last_samples
        segment.lost_samples += silence
        segment.cursor += silence
        segment.next_seq = lowest
        self._drain(segment)

    def _drain(self, segment: _Segment) -> None:
        pending = segment.pending
        while segment.next_seq in pending:
            pcm, at = pending.pop(segment.next_seq)  # type: ignore[arg-type]
            segment.pending_samples -= len(pcm)
            self._place(segment, pcm, at)

    def _resolve(self, segment: _Segment, *, paused: bool) -> None:
        """Place the held chunk: by its arrival after a pause, or at the cursor after a stall."""
        assert segment.suspect is not None
        pcm, at, since = segment.suspect
        segment.suspect = None
        self._place(segment, pcm, at, paused=paused, since=since)
        if segment.pending:
            self._drain(segment)

    def _arrive(self, segment: _Segment, pcm: Chunk, at: float) -> None:
        """The chunk numbered next_seq as it arrives (not after waiting for an earlier one), at
        ``at``: at the segment's cursor, or after a pause; more than the window late and no
        other segment to tell why, it is held (see `_Segment.suspect`)."""
        n = len(pcm)
        raw = round((at - self._origin) * SAMPLE_RATE) - n  # type: ignore[operator]
        first = not segment.samples  # its first chunk: placed where it joined
        # A chunk that arrives a real chunk's time after the previous one (not in a burst)
        # and starts, by seq, later than the clock says: the clock is behind by that much
        # (the call's first events came late). Joins and pauses are measured with it.
        if not first and raw - segment.arrived >= n // 2:
            lead = segment.cursor - raw
            if lead > self._lead:
                self._lead = min(lead, MAX_LEAD)
        segment.arrived = raw
        arrived = raw + self._lead
        since = segment.arrived_at
        segment.history.append((since, segment.late))
        segment.arrived_at = at
        witness = None if first else self._witness(segment)
        told = self._hold_order >= segment.order  # a HOLD came since its last chunk
        segment.order = self._order
        if witness is not None:
            # Another segment's chunks came (in the stream's order) since this one's last: its audio
            # says where this chunk belongs, whatever our own read delay (the process starved, the
            # bridge full: every segment late alike). Beyond the window behind it, the media paused
            # while seq went on; the pause's length is the arrival's, within a chunk of that.
            # (the witness's audio ends where this chunk does to within a chunk, whichever of
            # two chunks spoken together the platform sent first: the middle of that)
            ahead = witness - n // 2 - segment.cursor
            if ahead > self._window:
                backlog, _ = self._backlog(segment, since, at)
                excess = min(max(arrived - segment.cursor - backlog, ahead - n // 2), ahead + n // 2)
                segment.pauses += 1
                segment.paused += excess
                segment.cursor += excess
            if ahead > self._window or not told:
                segment.late = segment.backlog = max(0, arrived - segment.cursor)
                return self._put(segment, pcm)
        elif not told and any(other is not segment and other.joined is not None for other in self._live):
            # Late, and no other segment's chunk came meanwhile although one is live: every segment
            # was quiet at once, the platform's hold of all or, as likely, our own read delay (the
            # process starved). Without the platform's word (a HOLD SegmentInfo), no silence: the
            # segments stay aligned. With it, its arrival below says how long.
            if arrived - segment.cursor - max(0, segment.backlog) > self._window:
                segment.stalls += 1
            segment.late = segment.backlog = max(0, arrived - segment.cursor)
            return self._put(segment, pcm)
        # how much later than the call's backlog explains: a pause of that length, or a stall
        backlog, _ = self._backlog(segment, since, at)
        if arrived - segment.cursor - backlog > self._window:  # the media paused (hold), or the stream stalled
            segment.late = arrived - segment.cursor
            segment.suspect = (pcm, at, since)
            return None
        segment.late = segment.backlog = arrived - segment.cursor
        return self._put(segment, pcm)

    def _place(self, segment: _Segment, pcm: Chunk, at: float, *, paused: bool | None = None,
               since: float | None = None) -> None:
        """The chunk numbered next_seq, which waited (for an earlier one, or held) and arrived at
        ``at``: at the segment's cursor, or at its arrival after a pause. ``paused``: the decision
        for a held chunk, ``since`` the arrival of the chunk before it."""
        arrived = round((at - self._origin) * SAMPLE_RATE) - len(pcm) + self._lead  # type: ignore[operator]
        # how much later than the call's backlog explains: a pause of that length, or a stall
        backlog, others = self._backlog(segment, segment.arrived_at if since is None else since, at)
        excess = arrived - segment.cursor - backlog
        if others and paused is not None:  # the others kept arriving: they tell a pause from a stall
            paused = excess > self._window
        if paused is False or (paused and excess <= self._window):
            # held, then at once its successor, or by now the call's other segments came as
            # late: the stream (or the reader) stalled
            segment.stalls += 1
        elif excess > self._window:  # the media paused while seq went on: silence of the pause
            segment.pauses += 1
            segment.paused += excess
            segment.cursor += excess
        if paused is not None:
            segment.late = segment.backlog = arrived - segment.cursor
        self._put(segment, pcm)

    def _witness(self, segment: _Segment) -> int | None:
        """Where the audio of the call's other live segments that kept arriving since
        ``segment``'s latest chunk ends (the furthest), in the stream's own order: None when no
        other did (``segment`` alone, or every segment quiet together)."""
        since, end = segment.order, None
        for other in self._live:
            if (other is not segment and other.order > since and other.joined is not None
                    and other.suspect is None and (end is None or other.cursor > end)):
                end = other.cursor
        return end

    def _put(self, segment: _Segment, pcm: Chunk) -> None:
        """Write the chunk numbered next_seq at the segment's cursor (G.711: when the mix is next
        read, see `_apply`) and move it on."""
        n = len(pcm)
        cursor, emitted = segment.cursor, self._emitted
        if cursor < emitted:
            segment.shifted += emitted - cursor
            cursor = emitted
        start = cursor - emitted
        if start + n > len(self._mix):
            self._grow(start + n)
        channel, filled = segment.channel, self._filled
        if type(pcm) is bytes:
            self._writes.add(pcm, segment.law, start, channel)  # type: ignore[arg-type]
        else:
            self._write_pcm(pcm, start, channel, alone=filled[channel] <= cursor)  # type: ignore[arg-type]
        cursor += n
        if cursor > filled[channel]:  # type: ignore[index]
            filled[channel] = cursor  # type: ignore[index]
        segment.cursor = cursor
        segment.next_seq += 1  # type: ignore[operator]
        segment.samples += n
        if n:
            segment.last_samples = n
        if cursor > self._newest:
            self._newest = cursor

    def _write_pcm(self, pcm: np.ndarray, start: int, channel: int, *, alone: bool) -> None:
        """Write PCM at row ``start`` of ``channel`` now: after the G.711 chunks placed before it
        (a saturating add depends on the order). ``alone``: no other segment's audio is there."""
        self._apply()
        mix = self._mix
        self._dirty = max(self._dirty, self._emitted + start + len(pcm))
        for at in range(0, len(pcm), GIL_HELD_ELEMENTS):  # pieces numpy copies without releasing the GIL
            piece = pcm[at : at + GIL_HELD_ELEMENTS]
            column = mix[start + at : start + at + len(piece), channel]
            if alone:  # a copy
                column[:] = piece
            else:  # a saturating 16-bit add
                add_clipped(column, piece)

    def _apply(self) -> None:
        """Add the G.711 chunks placed so far into the mix: before it is read, grown or written."""
        writes = self._writes
        if len(writes):
            self._dirty = max(self._dirty, self._emitted + writes.end)
            writes.apply(self._mix)

    def _backlog(self, segment: _Segment, since: float, at: float) -> tuple[int, bool]:
        """Samples by which the call's chunks arrive after their places now (never below 0): how
        late the call's other live segments came that kept arriving between ``since`` (the
        arrival of ``segment``'s previous chunk) and ``at`` (a quarter chunk clear of both), each at
        its arrival nearest ``at`` (within a chunk and the window); without any, ``segment``'s own
        backlog. Also whether the others
        gave it. A reader that falls behind (an overloaded server) makes every segment late alike,
        slowly or in a jump, and catches up while fewer messages come: that is lag, not a pause;
        a hold is one segment's media stopping while the others go on, or every segment's at
        once (the platform's hold: then the segment's own arrivals tell)."""
        reach = (segment.last_samples + self._window) / SAMPLE_RATE
        # clear of both ends: the platform holds every segment at once, their last chunks before
        # and first after the hold coming together (a quarter chunk: a reader at real time reads
        # two segments' chunks half a chunk apart)
        clear = segment.last_samples / 4 / SAMPLE_RATE
        others = []
        for other in self._live:
            if other is segment or other.arrived_at <= since + clear:
                continue
            near, distance, between = other.late, abs(other.arrived_at - at), other.arrived_at < at - clear
            for when, late in other.history:
                if when > since + clear:
                    between = between or when < at - clear
                    if abs(when - at) < distance:  # a held chunk, decided later: what came with it
                        near, distance = late, abs(when - at)
            if between and distance <= reach:  # it kept arriving while this segment did not
                others.append(near)
        return (max(0, *others), True) if others else (max(0, segment.backlog), False)

    def _grow(self, needed: int) -> None:
        self._apply()
        size = len(self._mix)
        while size < needed:
            size *= 2
        mix = np.zeros((size, self.channels), dtype=np.int16)
        mix[: len(self._mix)] = self._mix
        self._mix = mix

    def _start(self, start: SegmentStarted) -> None:
        if start.segment_id in self._segments:
            self._bad(f"a second SegmentStarted of segment {start.segment_id!r}")
            return
        if start.audio_format is not None:
            self._format = start.audio_format
        fmt = self._format
        if len(self._segments) >= MAX_SEGMENTS:
            self.counters["segments_over_cap"] += 1
            return
        law, decode, why_not = _decoder(fmt, self._l16)
        shared = False
        if self.layout == "stereo":
            channel: int | None = 0 if start.role == AGENT else 1
        elif why_not is not None:
            channel = None
        else:
            channel = self._next_channel
            if channel < self.channels:
                self._next_channel += 1
            else:  # past the cap: mixed into the last channel rather than lost
                channel, shared = self.channels - 1, True
                self.counters["segments_sharing_last_channel"] += 1
                LOGGER.warning("call %s: segment %s (%s %s) is mixed into the last channel (%d): "
                               "all %d channels are taken", self.label, start.segment_id,
                               start.role, start.participant_id, channel, self.channels)
        segment = _Segment(start, fmt, channel, law, decode, why_not)
        segment.shared = shared
        if why_not is not None:
            LOGGER.warning("call %s: segment %s (%s %s): %s", self.label, start.segment_id, start.role,
                           start.participant_id, why_not)
        self._segments[start.segment_id] = segment
        if why_not is None:
            self._live.append(segment)
        orphans = [media for media in self._orphans if media.segment_id == start.segment_id]
        if orphans:  # its media came first: placed now, with their own arrival times
            self._orphans = [media for media in self._orphans if media.segment_id != start.segment_id]
            for media in orphans:
                self._media(media)

    def _stop(self, stop: SegmentStopped) -> None:
        segment = self._segments.get(stop.segment_id)
        if segment is None or segment.stopped:
            self._bad(f"SegmentStopped of {'an unknown' if segment is None else 'a stopped'} segment")
            return
        self._close(segment)

    def _close(self, segment: _Segment) -> None:
        if segment.suspect is not None:
            self._resolve(segment, paused=True)
        while segment.pending:
            self._skip_gap(segment)
        segment.stopped = True
        if segment.joined is not None:
            segment.left = segment.cursor
        if segment in self._live:
            self._live.remove(segment)

    def _info(self, info: SegmentInfo) -> None:
        event = info.event.upper()
        if "HOLD" in event and not event.startswith("UN"):
            self._hold_order = self._order
        if len(self.infos) >= MAX_INFOS:
            self.counters["infos_dropped"] += 1
            return
        self.infos.append({
            "segment_id": info.segment_id, "event": info.event, "data": info.data,
            "offset_seconds": round((self._now + self._lead) / SAMPLE_RATE, 3),
            "known_segment": info.segment_id in self._segments,
        })

    def _bad(self, what: str) -> None:
        self.counters["bad_events"] += 1
        if self.reject is not None:  # the core counts, logs and ends the call past its cap
            self.reject(what)
            return
        if self.counters["bad_events"] == 1:
            LOGGER.warning("call %s: ignoring %s", self.label, what)
        if self.counters["bad_events"] > self._max_bad:
            raise ProtocolError(f"more than {self._max_bad} unusable events", code=CLOSE_INVALID_PAYLOAD)

    def _expire(self, now: float) -> None:
        """Chunks waiting for a lost one longer than the window, orphans older than it (``now``
        on the events' clock, seconds)."""
        window = self._window / SAMPLE_RATE
        for segment in self._live:
            if segment.suspect is not None and now - segment.suspect[1] > window:
                # nothing followed: the call's other segments tell (see _backlog); without
                # them, a reader that fell behind (its next read is late), not a pause
                self._resolve(segment, paused=False)
            while segment.pending and now - min(at for _, at in segment.pending.values()) > window:
                self._skip_gap(segment)
        if self._orphans:
            keep = []
            for media in self._orphans:
                if now - media.at > window:
                    self.counters["unknown_segment_media"] += 1
                else:
                    keep.append(media)
            self._orphans = keep

    # -- output ----------------------------------------------------------------------------

    def watermark(self) -> int:
        """Where the emitted audio may end now (samples from the call's start). Gives up the
        chunks still missing below where it may end (their segments' waiting chunks are placed).
        Idempotent: a second call with nothing fed between gives the same mark and changes
        nothing (a receive_run after pops to None computes it again, as handle would not)."""
        self._ready_mark = None
        now = self._now + self._lead
        live = self._live
        while True:
            floor = self._floor(now)
            newest = self._newest
            for segment in live:
                while segment.pending and segment.cursor < floor:  # a chunk missing below the floor is as good as lost
                    self._skip_gap(segment)  # (moves this segment's cursor only)
            # what waited behind a gap, placed, may be the newest audio: the floor rises with
            # it, and gaps below the new floor are as good as lost too
            if self._newest == newest:
                break
        # a window behind the clock too: a segment joining now lands after what has left
        mark = now - self._window
        for segment in live:
            if segment.joined is not None and segment.cursor < mark:
                mark = segment.cursor
        return max(mark, floor, self._emitted)

    def _floor(self, now: int) -> int:
        """How far behind ``now`` (the clock in samples, its lead included) the watermark may
        stay at most."""
        # a window behind the newest audio (a silent segment holds the others back no longer),
        # and further behind the clock, less the backlog of a reader that falls behind: all
        # audio late together is a stall or lag, not silence
        live = self._live
        backlog = 0
        for segment in live:
            if segment.backlog > backlog:
                backlog = segment.backlog
        floor = max(now - backlog - max(self._window, CLOCK_SLACK), self._newest - self._window)
        for segment in live:  # a held chunk is placed at its cursor, or after: wait for it
            if segment.suspect is not None and segment.cursor < floor:
                floor = segment.cursor
        return floor

    def pop_block(self, *, partial: bool = False) -> PcmBlock | None:
        """A full block when one is ready (or, with ``partial``, whatever is ready); else None."""
        mark, self._ready_mark = self._ready_mark, None
        if mark is None:
            if not partial and max(self._now + self._lead, self._newest) - self._emitted < self._block:
                return None  # the watermark is never past the clock or the newest audio
            mark = self.watermark()
        ready = mark - self._emitted
        if ready >= self._block:
            return self._cut(self._block)
        if partial and ready > 0:
            return self._cut(ready)
        return None

    def finish(self) -> PcmBlock | None:
        """End of the stream: every segment closed, everything placed comes out (one block)."""
        if self._finished:
            return None
        self._ready_mark = None
        for segment in self._live:  # held chunks first, while every segment can still testify;
            if segment.suspect is not None:  # without a witness, the stream's last chunk is late, not a pause
                self._resolve(segment, paused=False)
        for segment in list(self._live):
            self._close(segment)
        self.counters["unknown_segment_media"] += len(self._orphans)
        self._orphans = []
        self._finished = True
        end = self._newest
        return self._cut(end - self._emitted) if end > self._emitted else None

    def _cut(self, n: int) -> PcmBlock:
        if n > len(self._mix):
            self._grow(n)
        emitted, writes = self._emitted, self._writes
        dirty = min(max(0, self._dirty - emitted), len(self._mix))
        reach = emitted + writes.end  # the chunks past the block land in the mix
        block = PcmBlock(writes.cut(self._mix, n, dirty), emitted)
        self._dirty = max(self._dirty, reach)
        self._emitted = emitted + n
        return block

    # -- reports ---------------------------------------------------------------------------

    @property
    def emitted(self) -> int:
        """Samples per channel emitted so far."""
        return self._emitted

    @property
    def segment_count(self) -> int:
        """Segments started so far (recorded or not): when it changes, so does `channel_map`."""
        return len(self._segments)

    @property
    def chunks_received(self) -> int:
        """Media chunks taken so far (for the idle timeout)."""
        return sum(segment.chunks + segment.unrecorded for segment in self._segments.values()) + len(self._orphans)

    def media_counters(self) -> tuple[int, int, int, int, int, int]:
        """The media counters so far, as `Timeline.media_counters`: chunks received, samples
        placed, lost chunks, their samples, repeats, segments with chunks moved past the window
        (as late). Cheap enough for once per tick."""
        chunks = samples = lost = lost_samples = duplicates = shifted = 0
        for segment in self._segments.values():  # one pass: a call has a handful
            chunks += segment.chunks + segment.unrecorded
            samples += segment.samples
            lost += segment.lost_chunks
            lost_samples += segment.lost_samples
            duplicates += segment.duplicates
            if segment.shifted:
                shifted += 1
        return chunks, samples, lost, lost_samples, duplicates, shifted

    def channel_map(self) -> dict[str, Any]:
        """What each channel holds, for the sidecar's ``channel_map``: in stereo, the fixed
        mapping; in the participants layout, per channel index ("0", "1", ...) the segments
        on it so far (segment id, participant id, type and name; empty: reserved, silent)."""
        if self.layout == "stereo":
            return {"left": "AGENT segments", "right": "CONTACT and BOT segments"}
        mapping: dict[str, Any] = {str(channel): [] for channel in range(self.channels)}
        for segment in self._segments.values():
            if segment.channel is not None:
                start = segment.start
                mapping[str(segment.channel)].append({
                    "segment_id": start.segment_id, "participant_id": start.participant_id,
                    "type": start.role, "name": start.name,
                })
        return mapping

    def segments(self) -> list[dict[str, Any]]:
        """Every segment, in order of starting, as the sidecar shows it."""
        return [segment.sidecar() for segment in self._segments.values()]

    def metadata(self) -> dict[str, Any]:
        """The sidecar's report of the segments: the first product named, every segment (see
        `segments`) and every SegmentInfo kept (``segment_info``)."""
        segments = self.segments()
        products = [segment["product"] for segment in segments if segment["product"]]
        return {"product": products[0] if products else None, "segments": segments, "segment_info": self.infos}

    def statistics(self) -> dict[str, Any]:
        segments = self._segments.values()
        return {
            "sample_rate": SAMPLE_RATE,
            "samples_emitted": self._emitted,
            "segments": len(self._segments),
            "chunks": sum(s.chunks for s in segments),
            "duplicates": sum(s.duplicates for s in segments),
            "lost_chunks": sum(s.lost_chunks for s in segments),
            "pauses": sum(s.pauses for s in segments),
            **self.counters,
        }
