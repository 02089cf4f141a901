"""One call's two perspectives, reordered and aligned into stereo blocks (sans-IO, pure Python).

Three modules place a call's audio: this one (the placement rule of `Timeline.push`, the two-side
alignment and the blocks), reorder.py (each perspective's reorder buffer, `Side`: held frames,
in-order release, the replay ring, late runs) and inorder.py (the steady state's fast path in C).

Theory of operation
-------------------
Each perspective (0 = participant = left, 1 = conference = right) is a `reorder.Side`. A side
learns its *nominal* frame length N (samples) from its first non-empty payload; its window is
W = max(1, round(window_ms / frame_ms)) frames and its jump bound J = round(discontinuity_ms /
frame_ms) frames (until then the other side's, or 20 ms, stands in), where frame_ms is N's
duration but at least MIN_FRAME_MS (10 ms): a peer whose first frame is tiny cannot make W, J or
the duplicate ring many frames long (W <= window_ms / 10). All limits count sequence progress,
never time (but see Wall clock). Frames may be longer than N, so what is held is also capped in
bytes (see Memory). How a side holds and releases frames: reorder.py.

Arrivals (`push`). ``seq`` already held: duplicate. ``seq`` below ``next``: if it equals a
recently released frame byte for byte (the side's replay ring), duplicate; otherwise a *late*
frame, kept in the side's late run. A jump of more than J, either way, from the next expected
number (one past the highest number taken in since the side's (re)start), or one that runs
ahead of the clock (see Wall clock), is a *discontinuity*: flush what is held (in order, gaps
filled), then re-anchor the side at the new number at its current position (caught up, see
below), as at the start. A late run that reaches W frames is a paused or rewound counter: flush,
re-anchor at the run's lowest number (caught up), and place the run. Anything else is held, and
releases what the window has passed. A side that has not started yet collects frames, and starts
at its lowest number once the window has passed it.

Alignment. Stereo is emitted up to the shorter ``acc``. After every push, while one side's
committed length exceeds the other's by more than ``max(window, N)`` samples the lagging side is
forced one frame: its ``next`` is released even if missing (a held frame, or silence). A side that
has nothing to offer (never received a frame; or connection mode with nothing held) is padded
with silence counted as *fill*. A forced side whose numbers carry on is placed by its numbers.

Catching up. A forced side trails the other side's arrivals by up to two windows (one window
behind the other's committed audio, which itself trails its arrivals by one). So when a side
(re)anchors while the other side streams (has started releasing) -- its first frame, a
discontinuity, a resumed counter -- its silence is topped up (as fill) first, so that its newest
frame starts where the other side's newest received frame starts: the other's committed audio
plus its held numbers (perspective mode) or frames (connection mode) before the newest, at most
the lead bound. A run's lowest frame goes that many frames earlier than its newest. A late side
thus lands where it arrived, within one frame. A first frame that arrives before the other side
has started (within about a window of the other's first) is reordering jitter: both sides start
together, at their current positions.

Anchoring. Both perspectives number from 1 on one timeline (docs: PROTOCOL.md, guarantee 1),
so a side's first start is placed by its numbers when they agree with the other side's: its
first frame k goes where the other side's frame k goes (the other side placed), or k - 1 frames
into the call (neither placed yet), with silence (fill) before it; a side whose first frames
were lost is not shifted. They agree when that place is within a window of where the other
side's newest frame arrived (within two windows of the call's start, the other side not placed
yet) and not behind the side's position. Otherwise -- numbers far from the other's, or frames
that come more than a window after the other side's of the same numbers (the side really
started later) -- the side is placed by arrival (below). Re-anchors are always by arrival.
Perspective mode only: connection-wide numbers say nothing about a side's start.

Wall clock. The timeline reads no clock; the caller may pass the time (`set_time`). A forward
jump in a side's numbers that would place its audio more than a window beyond the time since
the first `set_time` (or beyond the side's received frames at the nominal length, for a sender
faster than real time) is a discontinuity, counted in ``clock_jumps``: numbers alone cannot
make a recording outgrow its call.

Sequence mode. "perspective": numbers count per side, gaps are filled. "connection": one counter
across both sides; a side's numbers step by ~2, so the window and jump bound double in numbers,
held frames are still capped at W, missing numbers are skipped, never filled. "auto" starts as
"perspective" and decides at the first release of a side, from the frames held then (until it
has decided, a side's first release waits for a span of 2W numbers or more than W frames held,
so that a connection-wide counter shows enough numbers; W >= 2 is needed): switch to
"connection" when a side holds >= 3 numbers, no two consecutive, with numbers of the other side
strictly between them, the other side's numbers also free of consecutive pairs and of shared
numbers. A side holding >= 3 numbers with a consecutive pair, or the second side's first release,
settles "perspective".

Steady state. A side in its steady state holds exactly the W numbers next .. next + W - 1 (all
received, no late run), and the frame to come is next + W, which releases frame next. `push`
places such a frame first, in a few lines; once both sides have placed STEADY_FRAMES (100)
frames in a row that way, a batch from the scanner (`ScannedMedia`) is placed by the C lanes
(inorder.py, csrc/inorder.c: the same rule, its fast twin), which then hold both sides (their held
payloads and replay rings, in circular pools; every counter is written back after each batch)
until a frame is anything but the next one of its side's steady state, or would shed, evict or
force the other side: then they hand the state back, and the frame is placed by `push` as any
other. This holds in any sequence mode (a side holding W consecutive numbers releases its lowest
when the next arrives).

Memory, in frames: held <= W frames per side, the late run < W frames, the ring 8W references.
In bytes, with U = max(window, LONGEST_FRAME_MS) samples (2000 at the defaults: 200 ms window,
250 ms = protocol.MAX_MEDIA_PAYLOAD at 8 kHz), whatever the payload lengths: held payloads <= 2U
per side (after a push, the lowest held frames are released, as if the window had passed them,
until they fit); the late run <= 2U (a run over it is a resumed counter, as one of W frames); the
ring <= 8U (over it, entries are forgotten from about the oldest on: their numbers are no longer
recognised as replays). Committed but unpopped audio stays below one block + max(window, N) per
side as long as the caller pops whenever ``push`` returns True (within a push, a forward jump
below J may add up to J frames of silence at once). So at the defaults, for payloads of at most
2000 bytes, a call keeps at most 2 x (12U + 8000 + 2000) = 68,000 bytes of audio (+ the ring's
8W slots and the dicts' overhead; tests/test_timeline.py checks the bound). While the C lanes hold
a side, the same 12U: its pools of 2U (held) and 8U (ring), the held dict's stale 2U, no late run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Final

from callstream.call.batch import ScannedMedia
from callstream.call.blocks import StereoBlock
from callstream.call.inorder import AVAILABLE as STEADY_IN_C
from callstream.call.inorder import SteadyLanes
from callstream.call.reorder import RING_WINDOWS, SILENCE, PerspectiveStatistics, Side
from callstream.errors import CallstreamError

__all__ = [
    "SILENCE", "STEADY_FRAMES", "STEADY_IN_C", "PerspectiveStatistics", "StereoBlock", "Timeline",
    "TimelineFinishedError", "TimelineStatistics",
]

MODES: Final = ("auto", "perspective", "connection")
DEFAULT_FRAME_MS: Final = 20.0  # stands in for the frame length until a side's first payload
MIN_FRAME_MS: Final = 10.0  # the window arithmetic never counts frames shorter than this
LONGEST_FRAME_MS: Final = 250.0  # the longest frame expected (protocol.MAX_MEDIA_PAYLOAD at 8 kHz)
HOLD_UNITS: Final = 2  # held frames, and a late run, stay within 2 budget units of bytes
# Frames a side places in its steady state in a row before the C lanes take both sides over
# (each hand-over costs about as much as placing 20 frames in Python).
STEADY_FRAMES: Final = 100


class TimelineFinishedError(CallstreamError, RuntimeError):
    """``push`` was called after ``finish``."""


@dataclass(frozen=True, slots=True)
class TimelineStatistics:
    """Counters of one call's timeline; ``as_dict()`` is ready for a JSON sidecar."""

    participant: PerspectiveStatistics
    conference: PerspectiveStatistics
    samples_emitted: int  # per channel, popped or returned by finish
    sequence_mode: str  # in force: "perspective" or "connection"
    sequence_mode_decided: bool  # False while "auto" has not settled yet
    sample_rate: int

    def by_perspective(self, perspective: int) -> PerspectiveStatistics:
        return self.conference if perspective else self.participant

    def as_dict(self) -> dict[str, Any]:
        """What `dataclasses.asdict` gives, built directly (it is called at every call's end)."""
        return {
            "participant": self.participant.as_dict(),
            "conference": self.conference.as_dict(),
            "samples_emitted": self.samples_emitted,
            "sequence_mode": self.sequence_mode,
            "sequence_mode_decided": self.sequence_mode_decided,
            "sample_rate": self.sample_rate,
        }


class Timeline:
    """Reorders and aligns one call's two perspectives (see the module's theory of operation).

    Usage: ``push`` every Media frame (or ``push_run`` a batch of them); whenever it returns True
    (``push_run``: whenever it returns), ``pop_block()`` until None; on a flush timer,
    ``pop_block(partial=True)``; at the end of the call, ``finish()``. Not thread safe; one instance
    per call. Payloads are kept by reference until released: do not mutate them.
    """

    def __init__(
        self,
        *,
        window_ms: float = 200,  # reorder window, ms of sequence progress
        discontinuity_ms: float = 10_000,  # larger jumps re-anchor instead of filling silence
        block_ms: float = 1000,  # pop_block size, ms
        sample_rate: int = 8000,  # Hz; one mu-law byte per sample
        sequence_mode: str = "auto",  # "auto" | "perspective" | "connection"
    ) -> None:
        if sequence_mode not in MODES:
            raise ValueError(f"sequence_mode must be one of {MODES}, not {sequence_mode!r}")
        if not sample_rate > 0:
            raise ValueError("sample_rate must be positive")
        if not window_ms > 0 or not block_ms > 0:
            raise ValueError("window_ms and block_ms must be positive")
        if not discontinuity_ms > window_ms:
            raise ValueError("discontinuity_ms must exceed window_ms")
        self._window_ms = float(window_ms)
        self._discontinuity_ms = float(discontinuity_ms)
        self._sample_rate = int(sample_rate)
        self._block = max(1, round(block_ms * sample_rate / 1000))
        self._window_samples = max(1, round(window_ms * sample_rate / 1000))
        self._min_frame = max(1, round(MIN_FRAME_MS * sample_rate / 1000))
        longest = max(1, round(LONGEST_FRAME_MS * sample_rate / 1000))
        unit = max(self._window_samples, longest)  # the byte budget unit (2000 at the defaults)
        self._hold_limit = HOLD_UNITS * unit
        self._ring_limit = RING_WINDOWS * unit
        self._connection = sequence_mode == "connection"
        self._pending = sequence_mode == "auto"
        self._emitted = 0
        self._finished = False
        self._t0: float | None = None  # the first set_time: the call's start on the caller's clock
        self._clock_samples: int | None = None  # samples of wall-clock time since, None: no clock
        self._lanes: SteadyLanes | None = None  # created on the first steady state
        self._steady = False  # the lanes hold both sides
        self._steady_frames = STEADY_FRAMES
        self._left = Side(self._hold_limit, self._ring_limit)
        self._right = Side(self._hold_limit, self._ring_limit)
        default = max(1, round(DEFAULT_FRAME_MS * sample_rate / 1000))
        self._configure(self._left, default)
        self._configure(self._right, default)

    # ----------------------------------------------------------------------------- public API

    @property
    def block_samples(self) -> int:
        """Samples per channel in a full block."""
        return self._block

    @property
    def window_samples(self) -> int:
        """The reorder window in samples: the most one side may lead the other."""
        return self._window_samples

    @property
    def sequence_mode(self) -> str:
        """The mode in force: "perspective" or "connection"."""
        return "connection" if self._connection else "perspective"

    @property
    def frames_received(self) -> int:
        """Frames pushed so far, both sides (cheap: for an idle timer)."""
        return self._left.received + self._right.received

    @property
    def buffered_frames(self) -> int:
        """Frames held for reordering on both sides, a pending late run included."""
        left, right = self._left, self._right
        return len(left.held) + len(left.run) + len(right.held) + len(right.run)

    def set_time(self, now: float) -> None:
        """The wall-clock time, ``now`` in seconds on the caller's monotonic clock (the timeline
        reads none: it is sans-IO); the first call marks the call's start. From then on, a jump
        in a side's numbers that would place its audio further than the reorder window ahead
        of the time since then (or, for a sender faster than real time, ahead of its received
        frames of the nominal length) is a discontinuity, counted in ``clock_jumps``: numbers
        cannot make a call's recording outgrow its duration. Call it at the start and whenever
        frames arrive (the recorder: once per read)."""
        if self._t0 is None:
            self._t0 = now
        self._clock_samples = round((now - self._t0) * self._sample_rate)

    def push(self, perspective: int, sequence: int, payload: bytes) -> bool:
        """Place one frame: ``perspective`` 0 (left) or 1 (right), its ``sequence`` number, its
        mu-law ``payload`` (one byte per sample; kept by reference). Returns True when at least
        one full block is ready to pop. Raises ValueError for another perspective and
        TimelineFinishedError after ``finish``. O(1) amortised.

        This is the placement rule (the module's theory of operation); the C lanes
        (inorder.py) are its fast twin for the steady state."""
        if perspective == 0:
            side = self._left
        elif perspective == 1:
            side = self._right
        else:
            raise ValueError(f"perspective must be 0 or 1, not {perspective!r}")
        if self._steady:
            self._leave_steady()
        held = side.held
        nxt = side.next
        # (in either sequence mode: `nxt` is held, so there is no gap to fill or skip; after
        # finish() nothing is held, so the condition is false and the general path raises)
        if (
            sequence == side.hi + 1 and sequence - side.span == nxt and len(held) == side.window
            and nxt in held and side.learnt and not side.run
        ):
            # the steady state: hold this frame, release frame `nxt` (what the general path
            # below and Side.release_window would do, in straight-line code: most frames are
            # this; csrc/inorder.c is its twin)
            side.received += 1
            held[sequence] = payload
            side.hi = sequence
            first = held.pop(nxt)
            n = len(first)
            slot = nxt % side.ring_size
            ring_payload = side.ring_payload
            old = ring_payload[slot]
            side.ring_seq[slot] = nxt
            ring_payload[slot] = first
            side.acc += first
            side.placed += 1
            side.committed += n
            side.held_bytes += len(payload) - n
            side.ring_bytes += n - (0 if old is None else len(old))
            if side.ring_bytes > self._ring_limit:
                side.evict()
            side.next = nxt + 1
        else:
            if self._finished:
                raise TimelineFinishedError("push after finish")
            side.steady_since = side.received = side.received + 1
            if not side.learnt and payload:
                self._learn(side, len(payload))
            if nxt is None:  # not started: collect, start once the window has passed the lowest
                if not held:  # its first frame (a re-anchor holds its frame already)
                    held[sequence] = payload
                    side.held_bytes = len(payload)
                    side.lo = side.hi = sequence
                    side.by_number = self._numbers_agree(side, sequence)
                    if not side.by_number:
                        self._catch_up(side, 0)  # a late first frame: to where it arrived
                elif sequence in held or (sequence < side.lo and side.is_replay(sequence, payload)):
                    side.duplicates += 1
                elif abs(sequence - side.hi - 1) > side.jump or (
                    sequence > side.hi + 1 and self._beyond_clock(side, sequence - side.lo)
                ):
                    self._discontinuity(side, sequence, payload)
                else:
                    held[sequence] = payload
                    side.held_bytes += len(payload)
                    if sequence > side.hi:
                        side.hi = sequence
                    elif sequence < side.lo:
                        side.lo = sequence
                    if side.hi - side.lo >= side.span or len(held) > side.window:
                        self._start(side)
                        side.release_window()
            elif sequence >= nxt:
                gap = sequence - side.hi - 1
                if gap > side.jump or (gap > 0 and self._beyond_clock(side, sequence - nxt)):
                    self._discontinuity(side, sequence, payload)
                elif sequence in held:
                    side.duplicates += 1
                else:
                    if side.run:
                        side.abandon_run()
                    held[sequence] = payload
                    side.held_bytes += len(payload)
                    if sequence > side.hi:
                        side.hi = sequence
                    if side.hi - nxt >= side.span or len(held) > side.window:
                        side.release_window()
            elif side.is_replay(sequence, payload):
                side.duplicates += 1
            elif side.hi + 1 - sequence > side.jump:
                self._discontinuity(side, sequence, payload)
            elif side.late(sequence, payload):
                self._resume(side)
        if side.held_bytes > self._hold_limit:
            self._shed(side)
        left = self._left
        right = self._right
        lead = left.committed - right.committed
        if lead > right.force_limit or -lead > left.force_limit:
            self._align()
        block = self._block
        return len(left.acc) >= block and len(right.acc) >= block

    def push_run(self, items: Sequence[Any], start: int = 0) -> int:
        """Push ``items[start:]`` in order, each a ``(perspective, sequence, payload)`` tuple, as
        `push` would one by one; stop after an item whose push made a full block ready (pop
        then, as after `push` returning True), or before an item that is not a plain tuple.
        Returns the index of the first item not pushed. Raises as `push`.

        For a batch of parsed messages (mediascan): once both sides have been steady for a
        while, a `ScannedMedia` is placed by the C lanes (see "Steady state" in the module's
        docstring), as far as they can, and the rest by `push`."""
        if type(items) is ScannedMedia:
            if self._steady or self._enter_steady():
                left, right = self._left, self._right
                block = self._block
                start = self._lanes.place(left, right, items, start, block)
                if start == len(items) or (len(left.acc) >= block and len(right.acc) >= block):
                    return start
                self._leave_steady()  # items[start] is not the steady state's next frame
            items = items.tuples()
        push = self.push
        for i in range(start, len(items)):
            item = items[i]
            if type(item) is not tuple:
                return i
            perspective, sequence, payload = item
            if push(perspective, sequence, payload):
                return i + 1
        return len(items)

    def pop_block(self, *, partial: bool = False) -> StereoBlock | None:
        """The next ``block_samples`` aligned stereo samples, or None when fewer are aligned.
        With ``partial=True``: whatever is aligned, at most one block; None when nothing is."""
        left_acc = self._left.acc
        right_acc = self._right.acc
        n = min(len(left_acc), len(right_acc))
        if n >= self._block:
            n = self._block
        elif not partial or n == 0:
            return None
        return self._take(n)

    def finish(self) -> StereoBlock | None:
        """End of call: release every held frame in order (gaps become silence; a pending late
        run is dropped), pad the shorter side with silence, and return everything not yet
        popped as one block (possibly longer than ``block_samples``), or None when empty.
        Later ``push`` raises TimelineFinishedError; a second ``finish`` returns None."""
        if self._finished:
            return None
        if self._steady:
            self._leave_steady()
        self._finished = True
        for side in (self._left, self._right):
            side.abandon_run()
            self._flush(side)
        left, right = self._left, self._right
        if left.committed < right.committed:
            left.fill(right.committed - left.committed)
        elif right.committed < left.committed:
            right.fill(left.committed - right.committed)
        n = min(len(left.acc), len(right.acc))
        return self._take(n) if n else None

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def media_counters(self) -> tuple[int, int, int, int, int, int]:
        """The counters the metrics report, both perspectives summed, without building
        `statistics()` (the server asks once per call per flush interval): frames received,
        samples of received audio placed (neither gap nor fill), gaps, gap samples, duplicates,
        late drops. Cumulative."""
        left, right = self._left, self._right
        gap_samples = left.gap_samples + right.gap_samples
        placed = left.committed + right.committed - gap_samples - left.fill_samples - right.fill_samples
        return (
            left.received + right.received, placed, left.gaps + right.gaps, gap_samples,
            left.duplicates + right.duplicates, left.late_drops + right.late_drops,
        )

    def statistics(self) -> TimelineStatistics:
        """A snapshot of the counters (see PerspectiveStatistics)."""
        return TimelineStatistics(
            participant=self._left.statistics(self._sample_rate),
            conference=self._right.statistics(self._sample_rate),
            samples_emitted=self._emitted,
            sequence_mode=self.sequence_mode,
            sequence_mode_decided=not self._pending,
            sample_rate=self._sample_rate,
        )

    # ------------------------------------------------------------------------------- internals

    def _configure(self, side: Side, nominal: int) -> None:
        # the window arithmetic counts frames of at least MIN_FRAME_MS: a peer's tiny first
        # frame cannot make the window, the jump bound or the ring many frames long
        frame_ms = max(nominal, self._min_frame) * 1000 / self._sample_rate
        window = max(1, round(self._window_ms / frame_ms))
        jump = max(window + 1, round(self._discontinuity_ms / frame_ms))
        side.configure(nominal, window, jump, max(self._window_samples, nominal))
        side.apply_mode(self._connection, self._pending)

    def _enter_steady(self) -> bool:
        """Hand both sides to the C lanes if both have been in their steady state for
        STEADY_FRAMES frames in a row and still are. Returns whether they took them."""
        left, right = self._left, self._right
        frames = self._steady_frames
        if (left.received - left.steady_since < frames or right.received - right.steady_since < frames
                or self._finished):
            return False
        # (in any sequence mode: a side holding `window` consecutive numbers, the next to come
        # releases its lowest; and both sides started means "auto" has decided)
        if not (left.is_steady() and right.is_steady()):
            return False
        if self._lanes is None:
            if not STEADY_IN_C:
                return False
            self._lanes = SteadyLanes(self._hold_limit, self._ring_limit)
        self._lanes.enter(left, right)
        self._steady = True
        return True

    def _leave_steady(self) -> None:
        """Take both sides back from the C lanes, before anything but their steady state."""
        self._lanes.leave(self._left, self._right)
        self._steady = False
        for side in (self._left, self._right):
            side.steady_since = side.received

    def _learn(self, side: Side, nominal: int) -> None:
        side.learnt = True
        self._configure(side, nominal)
        other = self._right if side is self._left else self._left
        if not other.learnt and other.nominal != nominal and not other.held and not other.run:
            self._configure(other, nominal)  # provisional, until its own first payload

    def _set_mode(self, connection: bool) -> None:
        self._connection = connection
        self._pending = False
        self._left.apply_mode(connection, False)
        self._right.apply_mode(connection, False)

    def _start(self, side: Side) -> None:
        if not side.ever_started:
            side.ever_started = True
            if self._pending:
                self._decide_mode()
            if side.by_number:  # its first frame agreed with the other side's numbers
                side.by_number = False
                position = self._number_position(side, side.lo)
                # (bounded: it agreed within a window or two of the other side's arrivals)
                if position is not None and 0 < position - side.committed <= 4 * side.force_limit:
                    side.fill(position - side.committed)
        side.next = side.lo

    def _number_position(self, side: Side, sequence: int) -> int | None:
        """Where frame ``sequence`` of ``side`` goes by its number: where the other side's frame
        of that number goes (the other side placed), or ``sequence - 1`` frames into the call
        (neither placed yet: anchored at 1). None where numbers say nothing: connection-wide
        counters, or the other side re-anchoring."""
        other = self._right if side is self._left else self._left
        if not side.fill_gaps:
            return None
        if other.next is not None:
            return other.committed + (sequence - other.next) * other.nominal
        if other.ever_started:
            return None
        return (sequence - 1) * side.nominal

    def _numbers_agree(self, side: Side, sequence: int) -> bool:
        """Whether a side's first frame, number ``sequence`` arriving now, may be placed by its
        number: within a window of where the other side's newest frame arrived (later, the side
        started later: where it arrives; earlier, the numbers disagree), and not behind the
        side's position; when the other side is not placed yet, at most two windows into the
        call."""
        position = self._number_position(side, sequence)
        if position is None or position < side.committed:
            return False
        other = self._right if side is self._left else self._left
        if other.next is None:
            return position <= side.committed + 2 * self._window_samples
        arrived = other.committed + min((other.hi - other.next) * other.nominal, other.force_limit)
        return abs(position - arrived) <= other.force_limit

    def _beyond_clock(self, side: Side, frames: int) -> bool:
        """Whether a frame ``frames`` numbers past the side's next one (its lowest held, before
        it starts) would place audio beyond what the clock allows (see `set_time`); counts it.
        (Only gaps are checked: silence filled for numbers is the audio no sender paid for.)"""
        clock = self._clock_samples
        if clock is None or not side.fill_gaps:
            return False
        nominal = side.nominal
        limit = max(clock, side.received * nominal) + self._window_samples
        if side.committed + frames * nominal <= limit:
            return False
        side.clock_jumps += 1
        return True

    def _decide_mode(self) -> None:
        sides = (self._left, self._right)
        consecutive = False
        for index in (0, 1):
            mine = sorted(sides[index].held)
            if len(mine) < 3:
                continue
            if any(b - a == 1 for a, b in pairwise(mine)):
                consecutive = True
                continue
            other = sides[1 - index]
            theirs = set(other.held)
            theirs.update(
                s for s, p in zip(other.ring_seq, other.ring_payload, strict=True) if p is not None
            )
            ordered = sorted(theirs)
            if (
                ordered
                and not any(b - a == 1 for a, b in pairwise(ordered))
                and theirs.isdisjoint(mine)
                and any(mine[0] < s < mine[-1] for s in ordered)
            ):
                self._set_mode(True)
                return
        if consecutive or (self._left.ever_started and self._right.ever_started):
            self._set_mode(False)

    def _shed(self, side: Side) -> None:
        """Held payloads are over their byte budget (frames longer than the nominal one): release
        the lowest held frames, as if the window had passed them, until they are not."""
        if side.next is None:
            self._start(side)
        held = side.held
        limit = self._hold_limit
        while side.held_bytes > limit:
            side.release_to(min(held))

    def _flush(self, side: Side) -> None:
        """Release everything held, in order."""
        if side.held:
            if side.next is None:
                self._start(side)
            side.release_to(max(side.held))

    def _discontinuity(self, side: Side, sequence: int, payload: bytes) -> None:
        side.abandon_run()
        self._flush(side)
        side.restart({sequence: payload}, len(payload), sequence, sequence)
        self._catch_up(side, 0)

    def _resume(self, side: Side) -> None:
        """A run of window-many late frames (or of more bytes than may be held): the counter
        was paused or rewound. Re-anchor."""
        run, run_bytes = side.run, side.run_bytes
        side.run = {}
        side.run_bytes = 0
        self._flush(side)
        side.resumes += 1
        side.restart(run, run_bytes, side.run_lo, side.run_hi)
        # the run's lowest frame arrived that many frames before its newest, which just did
        self._catch_up(side, side.hi - side.lo if side.fill_gaps else len(run) - 1)
        if side.hi - side.lo >= side.span:
            self._start(side)
            side.release_window()

    def _catch_up(self, side: Side, behind: int) -> None:
        """``side`` (re)anchors on frames whose newest has just arrived, ``behind`` frames after
        its lowest. While the other side streams, top the side's silence up so that its newest
        frame starts where the other side's newest received frame starts (the other side's
        committed audio plus what it holds), as far as the lead bound allows: a side that was
        forced while silent trails the other's arrivals by up to two windows."""
        other = self._right if side is self._left else self._left
        if not other.ever_started:  # both sides are starting: they start together
            return
        if other.next is not None:
            ahead = other.hi - other.next if other.fill_gaps else len(other.held) - 1
        elif other.held:  # re-anchoring itself: it starts at its position, at its lowest
            ahead = other.hi - other.lo if other.fill_gaps else len(other.held) - 1
        else:
            return
        target = other.committed + min(ahead * other.nominal, other.force_limit)
        target -= behind * side.nominal
        if target > side.committed:
            side.fill(target - side.committed)

    def _force(self, side: Side) -> None:
        """Move a lagging side forward by one frame: its next frame, or silence."""
        if side.next is None:
            if not side.held:
                side.fill(side.nominal)
                return
            if side.by_number:  # silence up to where its numbers put it before it starts
                position = self._number_position(side, side.lo)
                if position is not None and position > side.committed:
                    side.fill(min(side.nominal, position - side.committed))
                    return
            self._start(side)
        if side.fill_gaps:
            side.release_to(side.next)
        elif side.held:
            seq = side.next
            held = side.held
            while seq not in held:
                seq += 1
            side.release_to(seq)
        else:
            side.fill(side.nominal)

    def _align(self) -> None:
        left = self._left
        right = self._right
        while True:
            lead = left.committed - right.committed
            if lead > right.force_limit:
                self._force(right)
            elif -lead > left.force_limit:
                self._force(left)
            else:
                return

    def _take(self, n: int) -> StereoBlock:
        left_acc = self._left.acc
        right_acc = self._right.acc
        block = StereoBlock(bytes(left_acc[:n]), bytes(right_acc[:n]), self._emitted)
        del left_acc[:n]
        del right_acc[:n]
        self._emitted += n
        return block
