"""One perspective's reorder buffer: held frames, in-order release, replays, late runs (sans-IO).

A `Side` is the state of one perspective of a call's `timeline.Timeline` and the per-side half of
its placement rule; the timeline decides which arrival is which (``Timeline.push``) and does
everything that involves both sides (starting, anchoring, catching up, forcing, blocks). The C
lanes (inorder.py) borrow a side in its steady state through `lend`, `settle` and `take_back`.

Theory of operation
-------------------
A side learns its *nominal* frame length N (samples) from its first non-empty payload; its
window is W frames and its jump bound J frames (`configure`; the timeline derives both from
milliseconds, counting frames of at least 10 ms). All limits count sequence progress.

Placement. A side holds arriving frames in a dict ``seq -> payload`` (``held``) and releases them
in sequence order from ``next`` (the next expected number; None until the timeline starts the
side at its lowest held number, ``lo``). Frame ``next`` is released when a frame >= ``next + W``
has arrived (the window has passed, `release_window`), or when the timeline forces the side. A
released number that is missing becomes N samples of silence (0xFF) and counts as a gap (in
connection mode it is skipped); a present frame is emitted with its own length. Released audio
is appended to ``acc`` (committed, not yet popped: the timeline pops both sides' together) and
remembered in the replay ring, so a frame released recently that arrives again byte for byte
is a duplicate (`is_replay`; the ring covers the last 8W numbers).

Late frames (below ``next``, not replays) are kept in a small *run* buffer while they arrive
close to one another (`late`); an in-order frame or a distant late frame abandons the run (its
frames count as late drops). A run that reaches W frames, or more bytes than may be held, is a
paused or rewound counter: the timeline re-anchors the side on it.

Memory. Held payloads stay within ``hold_limit`` bytes (the timeline sheds the lowest when a push
takes them over), a late run within ``hold_limit`` (over it, it is a resumed counter) and the ring
within ``ring_limit`` (`evict`: over it, entries are forgotten from about the oldest on).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Final

from callstream.audio import ULAW_SILENCE

SILENCE: Final = ULAW_SILENCE  # mu-law silence (decodes to 0); 0x00 decodes to -32124
RING_WINDOWS: Final = 8  # exact replays are recognised up to 8 windows of numbers back


@dataclass(frozen=True, slots=True)
class PerspectiveStatistics:
    """Counters of one perspective. Frames are counted by push; samples at the sample rate.

    ``frames_received == frames_placed + duplicates + late_drops + frames_held`` at any moment
    (``frames_held`` includes a pending late run). ``samples_committed == sum of placed payload
    lengths + gap_samples + fill_samples``.
    """

    frames_received: int
    frames_placed: int
    duplicates: int
    late_drops: int
    gaps: int  # missing sequence numbers replaced by silence of the nominal length
    gap_samples: int
    gap_ms: float
    fill_samples: int  # silence with no sequence number behind it (side silent or ended first)
    fill_ms: float
    discontinuities: int  # re-anchors: jumps beyond the bound, plus counter_resumes
    counter_resumes: int  # re-anchors on a run of window-many late frames (paused counter)
    clock_jumps: int  # re-anchors on a jump that would have run ahead of the clock (set_time)
    frames_held: int
    samples_committed: int  # position of this side on the call's timeline
    nominal_frame_samples: int | None  # None until the side's first non-empty payload

    def as_dict(self) -> dict[str, Any]:
        """The counters by name (JSON-ready: every field is a number or None)."""
        return {name: getattr(self, name) for name in _PERSPECTIVE_FIELDS}


# (dataclasses.asdict deep-copies field by field: ~50 us for a call's statistics, at every ending)
_PERSPECTIVE_FIELDS: Final = tuple(field.name for field in fields(PerspectiveStatistics))


class Side:
    """One perspective's reorder buffer (see the module's theory of operation).

    Its attributes are the timeline's to read and to drive, each documented where it is set;
    the C lanes touch none of them but through `lend`, `settle` and `take_back`. Not thread safe.
    ``hold_limit`` and ``ring_limit``: byte budgets of the held payloads (and a late run) and of
    the replay ring."""

    __slots__ = (
        "acc",
        "by_number",
        "clock_jumps",
        "committed",
        "discontinuities",
        "duplicates",
        "ever_started",
        "fill_gaps",
        "fill_samples",
        "force_limit",
        "gap_samples",
        "gaps",
        "held",
        "held_bytes",
        "hi",
        "hold_limit",
        "jump",
        "jump_frames",
        "late_drops",
        "learnt",
        "lo",
        "next",
        "nominal",
        "placed",
        "received",
        "resumes",
        "ring_bytes",
        "ring_cursor",
        "ring_limit",
        "ring_payload",
        "ring_seq",
        "ring_size",
        "run",
        "run_bytes",
        "run_hi",
        "run_lo",
        "silence",
        "span",
        "steady_since",
        "window",
    )

    def __init__(self, hold_limit: int, ring_limit: int) -> None:
        self.hold_limit = hold_limit
        self.ring_limit = ring_limit
        self.held: dict[int, bytes] = {}
        self.held_bytes = 0  # sum of the held payloads' lengths
        self.next: int | None = None  # next sequence to release; None until (re)started
        self.lo = 0  # lowest held number, valid while next is None and held is not empty
        self.hi = 0  # highest number taken in since the (re)start, >= next - 1: hi + 1 is expected
        self.ever_started = False
        self.by_number = False  # its first start is placed by its numbers (timeline: "Anchoring")
        self.run: dict[int, bytes] = {}  # the late run
        self.run_lo = 0
        self.run_hi = 0
        self.run_bytes = 0
        self.acc = bytearray()  # committed audio not yet popped
        self.committed = 0  # samples committed since the call's start: the side's position
        self.learnt = False  # the nominal length is this side's own (not the other's, or 20 ms)
        self.fill_gaps = True  # perspective mode: missing numbers become silence
        self.received = self.placed = self.duplicates = self.late_drops = 0
        self.gaps = self.gap_samples = self.fill_samples = 0
        self.discontinuities = self.resumes = self.clock_jumps = 0
        # frames received when it last took a frame outside its steady state: the frames since
        # were placed in it, in a row (see timeline.py, "Steady state")
        self.steady_since = 0
        # set by configure and apply_mode:
        self.nominal = 0
        self.silence = b""
        self.window = self.span = self.jump = self.jump_frames = 0
        self.force_limit = self.ring_size = 0
        self.ring_seq: list[int | None] = []
        self.ring_payload: list[bytes | None] = []
        self.ring_bytes = 0  # sum of the ring's payload lengths
        self.ring_cursor = 0  # where eviction resumes: roughly the oldest entry

    def configure(self, nominal: int, window: int, jump_frames: int, force_limit: int) -> None:
        """Frame length ``nominal`` (samples), window ``window`` and jump bound ``jump_frames``
        (frames), and ``force_limit`` (samples: the other side is forced when this one leads by
        more). Empties the replay ring. Call `apply_mode` after it."""
        self.nominal = nominal
        self.silence = bytes([SILENCE]) * nominal
        self.window = window
        self.jump_frames = jump_frames
        self.force_limit = force_limit
        self.ring_size = RING_WINDOWS * window
        self.ring_seq = [None] * self.ring_size
        self.ring_payload = [None] * self.ring_size
        self.ring_bytes = self.ring_cursor = 0

    def apply_mode(self, connection: bool, pending: bool) -> None:
        """The sequence mode: connection-wide numbers step by ~2 per frame of a side, so the
        span and jump bound double in numbers, and gaps are skipped. While the mode is
        ``pending``, a side may wait for that span before its first release (it still releases
        once it holds more than a window of frames), so that the decision sees enough numbers."""
        self.span = self.window * (2 if connection or pending else 1)
        self.jump = self.jump_frames * (2 if connection else 1)
        self.fill_gaps = not connection

    def is_replay(self, sequence: int, payload: bytes) -> bool:
        """True when ``sequence`` was released recently with exactly this payload."""
        i = sequence % self.ring_size
        return self.ring_seq[i] == sequence and self.ring_payload[i] == payload

    def release_window(self) -> None:
        """Release what the window has passed; in connection mode also enforce the held cap."""
        self.release_to(self.hi - self.span)
        held = self.held
        while len(held) > self.window:
            seq = self.next
            while seq not in held:
                seq += 1
            self.release_to(seq)

    def release_to(self, last: int) -> None:
        """Release every number from ``next`` to ``last`` inclusive, in order."""
        nxt = self.next
        if last < nxt:
            return
        held = self.held
        acc = self.acc
        ring_seq = self.ring_seq
        ring_payload = self.ring_payload
        size = self.ring_size
        ring_bytes = self.ring_bytes
        released = 0  # payload bytes placed
        placed = 0
        if self.fill_gaps:
            silence = self.silence
            gaps = 0
            while nxt <= last:
                payload = held.pop(nxt, None)
                i = nxt % size
                old = ring_payload[i]
                if old is not None:
                    ring_bytes -= len(old)
                ring_seq[i] = nxt
                ring_payload[i] = payload
                if payload is None:
                    acc += silence
                    gaps += 1
                else:
                    acc += payload
                    released += len(payload)
                    placed += 1
                nxt += 1
            if gaps:
                self.gaps += gaps
                self.gap_samples += gaps * len(silence)
                self.committed += gaps * len(silence)
        else:
            while nxt <= last:
                payload = held.pop(nxt, None)
                if payload is not None:
                    i = nxt % size
                    old = ring_payload[i]
                    if old is not None:
                        ring_bytes -= len(old)
                    ring_seq[i] = nxt
                    ring_payload[i] = payload
                    acc += payload
                    released += len(payload)
                    placed += 1
                nxt += 1
        self.placed += placed
        self.committed += released
        self.held_bytes -= released
        self.ring_bytes = ring_bytes = ring_bytes + released
        if ring_bytes > self.ring_limit:
            self.evict()
        self.next = nxt
        if self.hi < nxt - 1:  # forced past everything received: expect nxt next
            self.hi = nxt - 1

    def evict(self) -> None:
        """The ring is over its byte budget: forget payloads, from about the oldest on, until
        it is not (their numbers are then no longer recognised as replays)."""
        ring_seq = self.ring_seq
        ring_payload = self.ring_payload
        size = self.ring_size
        limit = self.ring_limit
        ring_bytes = self.ring_bytes
        i = self.ring_cursor
        while ring_bytes > limit:
            payload = ring_payload[i]
            if payload is not None:
                ring_bytes -= len(payload)
                ring_payload[i] = ring_seq[i] = None
            i = i + 1 if i + 1 < size else 0
        self.ring_bytes = ring_bytes
        self.ring_cursor = i

    def fill(self, samples: int) -> None:
        """Commit ``samples`` of silence with no number behind it."""
        self.acc += self.silence if samples == self.nominal else bytes([SILENCE]) * samples
        self.committed += samples
        self.fill_samples += samples

    def late(self, sequence: int, payload: bytes) -> bool:
        """Take a late frame (below ``next``, not a replay) into the run. True when the run is
        now a resumed counter (window-many frames, or over the hold limit): re-anchor on it."""
        run = self.run
        if run:
            if sequence in run:
                self.duplicates += 1
                return False
            if sequence > self.run_hi + self.span or sequence < self.run_lo - self.span:
                self.abandon_run()
        if run:
            if sequence > self.run_hi:
                self.run_hi = sequence
            elif sequence < self.run_lo:
                self.run_lo = sequence
        else:
            self.run_lo = self.run_hi = sequence
        run[sequence] = payload
        self.run_bytes += len(payload)
        return len(run) >= self.window or self.run_bytes > self.hold_limit

    def abandon_run(self) -> None:
        """Drop the late run: its frames count as late drops."""
        if self.run:
            self.late_drops += len(self.run)
            self.run.clear()
            self.run_bytes = 0

    def restart(self, held: dict[int, bytes], held_bytes: int, lo: int, hi: int) -> None:
        """Re-anchor (after what was held went out): hold ``held`` (``held_bytes`` bytes, numbers
        ``lo`` .. ``hi``), not started; counted as a discontinuity."""
        self.discontinuities += 1
        self.held = held
        self.held_bytes = held_bytes
        self.next = None
        self.lo = lo
        self.hi = hi

    def statistics(self, sample_rate: int) -> PerspectiveStatistics:
        return PerspectiveStatistics(
            frames_received=self.received,
            frames_placed=self.placed,
            duplicates=self.duplicates,
            late_drops=self.late_drops,
            gaps=self.gaps,
            gap_samples=self.gap_samples,
            gap_ms=self.gap_samples * 1000 / sample_rate,
            fill_samples=self.fill_samples,
            fill_ms=self.fill_samples * 1000 / sample_rate,
            discontinuities=self.discontinuities,
            counter_resumes=self.resumes,
            clock_jumps=self.clock_jumps,
            frames_held=len(self.held) + len(self.run),
            samples_committed=self.committed,
            nominal_frame_samples=self.nominal if self.learnt else None,
        )

    # -- the steady state, lent to the C lanes (inorder.py) -----------------------------------

    def is_steady(self) -> bool:
        """In its steady state: started, learnt, no late run, holding exactly ``next`` ..
        ``next + window - 1`` (so the frame to come, ``next + window``, releases ``next``), and
        numbers C takes as int64 (not negative: C's % would put a ring slot apart; nor near
        2**63: the platform's numbers may have any count of digits)."""
        nxt = self.next
        return (
            nxt is not None and 0 <= nxt < 1 << 62 and not self.run and self.learnt
            and len(self.held) == self.window and self.hi == nxt + self.window - 1
        )

    def lend(self) -> tuple[list[bytes], list[int | None], list[bytes | None]]:
        """Hand the steady state to a lane: the held payloads in number order from ``next``, and
        the replay ring (numbers, payloads by slot), which the side forgets until `take_back`
        (its held dict keeps its keys, so its length stays right, with stale payloads)."""
        nxt, held = self.next, self.held
        payloads = [held[number] for number in range(nxt, nxt + self.window)]
        ring_seq, ring_payload = self.ring_seq, self.ring_payload
        self.ring_seq = [None] * self.ring_size
        self.ring_payload = [None] * self.ring_size
        return payloads, ring_seq, ring_payload

    def settle(self, nxt: int, received: int, placed: int, committed: int, held_bytes: int,
               ring_bytes: int, *released: memoryview) -> None:
        """A lane placed frames of this side: its counters as the lane left them, and the audio
        it released (in pieces, in order), appended to ``acc``."""
        self.next = nxt
        self.received = received
        self.placed = placed
        self.committed = committed
        self.held_bytes = held_bytes
        self.ring_bytes = ring_bytes
        self.hi = nxt + self.window - 1
        acc = self.acc
        for piece in released:
            acc += piece

    def take_back(self, held: dict[int, bytes], ring_seq: list[int | None],
                  ring_payload: list[bytes | None]) -> None:
        """A lane hands the side back: its held frames and replay ring as the lane left them."""
        self.held, self.ring_seq, self.ring_payload = held, ring_seq, ring_payload
