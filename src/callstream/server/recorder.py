"""Records one accepted stream: the trio shell around the sans-IO call state and timeline.

Theory of operation: one task per call, in the call's own nursery, plus two shared services.
- The receive loop reads messages, parses them, pushes Media into the `Timeline` and hands each
  full block (about one second of stereo audio) to the call's `Lane` of the process's
  `DiskWriter`, which writes it to the call's `Recording` in a worker thread, batched with every
  other call's blocks. A lane holds a bounded number of blocks: when the disk is slow the loop
  waits, stops reading, and TCP pushes back on the platform: memory stays bounded and nothing is
  dropped.
- The server's clock calls `tick()` once per flush interval: it hands over whatever is aligned
  but not yet a full block (so audio reaches disk within about a second even when media stalls),
  reports the media counters and enforces the idle timeout and the maximum call duration. One
  clock for all calls: a timer task per call cost a wake-up per call-second.
The call ends after both Stops, when the peer closes, on a fatal protocol error, when the
server stops it (drain), or when the disk fails; every way out finalises the recording with what
was received.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from callstream.call.state import CallState
from callstream.call.timeline import StereoBlock, Timeline
from callstream.engagevoice.mediascan import MediaScanner
from callstream.engagevoice.protocol import parse_message
from callstream.engagevoice.query import QueryMetadata
from callstream.engagevoice.textbatch import TextBatch
from callstream.engagevoice.transport import MessageStream, StreamClosed
from callstream.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    DiskStalledError,
    ProtocolError,
    RecordingError,
)
from callstream.events import Media
from callstream.server.auth import message_credential, secret_matches
from callstream.server.metrics import NO_MEDIA, Metrics
from callstream.settings import Settings
from callstream.storage.diskwriter import DiskWriter
from callstream.storage.recording import Recording
from callstream.storage.wavbatch import PlannedAppend

LOGGER = logging.getLogger("callstream.recorder")

FINALISE_TIMEOUT = 30.0  # seconds allowed to write the tail and close files after the call ends

@dataclass(frozen=True, slots=True)
class CallResult:
    """How one call ended. ``path`` is None when nothing was recorded (no Start, no audio)."""

    call_id: str
    session_id: str
    status: str  # complete | incomplete | failed
    reason: str
    close_code: int | None
    path: Path | None
    frames: int  # samples per channel written
    statistics: dict[str, Any]


class CallRecorder:
    """One call, from the accepted stream to the finished recording. Use once: `await run()`."""

    def __init__(
        self,
        stream: MessageStream,
        query: QueryMetadata,
        settings: Settings,
        disk: DiskWriter,
        *,
        require_secret: str | None = None,
        metrics: Metrics | None = None,
        scanner: MediaScanner,
    ) -> None:
        """``disk``: the process's writer (running). ``require_secret``: when set, the first
        message must carry this secret (else close 1008). ``metrics``: where the call's media
        counters go (at each tick and at the end). ``scanner``: the process's, with
        ``max_bytes`` = settings.max_message_bytes (it keeps scratch space: one per process)."""
        self._stream = stream
        self._lane = disk.lane(self)
        self._metrics = metrics
        self._metered = NO_MEDIA
        self._require_secret = require_secret
        self._settings = settings
        self._scanner = scanner
        self.call = CallState(query, max_bad_messages=settings.max_bad_messages)
        self.timeline = Timeline(
            window_ms=settings.reorder_window_ms,
            discontinuity_ms=settings.discontinuity_ms,
            block_ms=settings.block_ms,
            sequence_mode=settings.sequence_mode,
        )
        self._recording: Recording | None = None
        self._ended_at: datetime | None = None  # when the finish began: the sidecar's end
        self.last_block: StereoBlock | None = None  # the latest block sent to the disk (levels)
        self._started = datetime.now(UTC)
        self.started_monotonic = time.monotonic()
        self._receive_scope = trio.CancelScope()
        self._mode_logged = settings.sequence_mode != "auto"
        self._reason = "closed by peer"
        self._close_code: int | None = None
        self._failure: RecordingError | None = None
        self._ended = False  # the receive loop is over (see run)
        now = time.monotonic()
        self.timeline.set_time(now)  # the call's start: its audio stays within its time since
        self._deadline = now + settings.max_call_seconds
        self._idle_since, self._idle_count = now, -1

    @property
    def started(self) -> datetime:
        """When the call was accepted (UTC)."""
        return self._started

    @property
    def blocks_waiting(self) -> int:
        """Blocks of this call queued for the disk or being written."""
        return self._lane.queued

    def stop(self, reason: str, code: int = CLOSE_GOING_AWAY) -> None:
        """Ask the call to end now (drain, timeout); the recording is still finalised."""
        if self._close_code is None:
            self._reason, self._close_code = reason, code
        self._receive_scope.cancel()

    async def run(self) -> CallResult:
        """Record until the call ends; never raises for anything the peer or the disk does."""
        try:
            try:
                await self._receive_until_end()
            finally:
                self._ended = True  # from here the tail goes as one block: no more ticks
            with trio.CancelScope(shield=True), trio.move_on_after(FINALISE_TIMEOUT):
                tail = self.timeline.finish()
                if tail is not None:
                    try:
                        await self._lane.send(tail, time.monotonic())
                    except DiskStalledError as error:
                        self._fail(error)
        finally:
            # Also when the whole server is cancelled: close the files with what they have.
            # The recording is finished before the stream is closed, so that the close code
            # tells the truth: 1000 only once the recording is safely on disk, 1011 when
            # finishing it failed.
            with trio.CancelScope(shield=True):
                with trio.move_on_after(FINALISE_TIMEOUT):  # the lane's wait has its own bound
                    result = await self._finalise()
                with trio.move_on_after(FINALISE_TIMEOUT):
                    await self._close_stream()
        return result

    async def _receive_until_end(self) -> None:
        with self._receive_scope:
            async with trio.open_nursery():  # the call's own nursery: its tasks end with it
                try:
                    if await self._receive():
                        self._reason, self._close_code = "both Stops received", CLOSE_NORMAL
                except ProtocolError as error:
                    LOGGER.warning("call %s: %s (closing %d)", self.call.call_id, error.reason, error.code)
                    self._reason, self._close_code = error.reason, error.code

    async def _receive(self) -> bool:
        """The hot loop. Returns True after both Stops, False when the peer closed first."""
        stream, timeline, call, lane = self._stream, self.timeline, self.call, self._lane
        max_bytes = self._settings.max_message_bytes
        if self._require_secret is not None:
            try:
                first = parse_message(await stream.receive(), max_bytes=max_bytes)
            except StreamClosed as closed:
                self._reason = _closed_reason(closed)
                return False
            if not secret_matches(self._require_secret, message_credential(first)):
                raise ProtocolError("missing or wrong secret", code=CLOSE_POLICY_VIOLATION)
            call.handle(first)
        # Messages already parsed from the last chunk are taken without an await each: between
        # two of them nothing else runs (no await), so nothing can cancel us either. A transport
        # that reads many messages at once may hand them over as one TextBatch: its Media
        # messages are then parsed in one C call (mediascan), and the batch is placed whole, also
        # when a block had to wait for room on the lane meanwhile (that wait is a checkpoint);
        # after such a wait the next message or batch comes through receive() again, which checks.
        receive = getattr(stream, "receive_batch", stream.receive)
        receive_nowait = getattr(stream, "receive_batch_nowait", _nothing)
        push_run, pop_block, scan = timeline.push_run, timeline.pop_block, self._scanner.scan
        while True:
            # the last batch's decoded payloads (copied into the timeline's C lanes) go now, not
            # after the wait: server RSS per call at 1,000 real-time calls fell by ~18 KB
            items = data = None
            try:
                data = await receive()
            except StreamClosed as closed:
                self._reason = _closed_reason(closed)
                return False
            timeline.set_time(time.monotonic())  # once per read: what the frames may span
            while data is not None:
                waited = False
                items = scan(data) if type(data) is TextBatch else [data]
                i, end = 0, len(items)
                while i < end:
                    i = push_run(items, i)  # Media tuples, until a block is ready or another item
                    block = pop_block()
                    while block is not None:
                        if lane.has_room():
                            lane.send_nowait(block, time.monotonic())
                        else:
                            try:
                                await lane.send(block, time.monotonic())
                            except DiskStalledError as error:
                                self._fail(error)
                                return False
                            waited = True
                        block = pop_block()
                    if i < end and type(items[i]) is not tuple:  # not recognised by the scanner
                        event = parse_message(items[i], max_bytes=max_bytes)
                        if type(event) is Media:
                            items[i] = tuple(event)  # a plain tuple: push_run takes it next
                            continue
                        i += 1
                        call.handle(event)
                        if call.finished:
                            return True
                if waited:
                    break
                data = receive_nowait()

    def tick(self, now: float) -> None:
        """Once per flush interval (``now``: time.monotonic()), from the server's clock: hand
        over the aligned audio that is not yet a full block, report the counters, enforce the
        idle timeout and the maximum duration. Never waits: while the lane is full the partial
        block stays in the timeline (the receive loop is then waiting for the disk anyway)."""
        if self._ended:
            return
        self.timeline.set_time(now)
        self._meter()
        self._log_sequence_mode()
        settings = self._settings
        count = self.timeline.frames_received
        if count != self._idle_count:
            self._idle_since, self._idle_count = now, count
        elif now - self._idle_since >= settings.idle_timeout:
            self.stop(f"no media for {settings.idle_timeout:g} s")
        if now >= self._deadline:
            self.stop(f"maximum call duration of {settings.max_call_seconds:g} s reached")
        if self._failure is None and self._lane.has_room():
            block = self.timeline.pop_block(partial=True)
            if block is not None:
                self._lane.send_nowait(block, now)

    def _log_sequence_mode(self) -> None:
        """docs/protocol.md: when auto-detection falls back to connection-wide ordering, say so once."""
        if not self._mode_logged and self.timeline.sequence_mode == "connection":
            self._mode_logged = True
            LOGGER.warning(
                "call %s: sequenceId counts across the connection, not per perspective: "
                "ordering without gap filling", self.call.call_id,
            )

    def _meter(self) -> None:
        """Report the media counters' progress since the last report (cheap: once per tick)."""
        if self._metrics is None:
            return
        totals = (*self.timeline.media_counters(), self.call.bad_messages)
        if totals != self._metered:
            self._metrics.add_media(totals, self._metered, sample_rate=self.timeline.sample_rate)
            self._metered = totals

    # -- the lane's target (see diskwriter.BlockTarget) ---------------------------------------

    def open_target(self) -> None:
        """In a disk thread, before the first block: create the recording."""
        if self._recording is None:
            self._create_recording(self.call.fields)

    def plan_block(self, block: StereoBlock) -> PlannedAppend | None:
        """In the event loop: the block as a batched append, or None (then `write_block`)."""
        assert self._recording is not None, "open_target() first"
        self.last_block = block  # one reference per block: the live view's levels (see livecalls)
        return self._recording.plan(block.left, block.right)

    def write_block(self, block: StereoBlock) -> None:
        """In a disk thread: append the block (formats without batched appends)."""
        assert self._recording is not None, "open_target() first"
        self._recording.write(block.left, block.right)

    def flush_blocks(self) -> None:
        """After a batch of this call's blocks: about once per flush interval, so flushing costs
        two system calls a second and bounds what a crash can lose to one flush interval plus
        the reorder window (and the writer's batch interval)."""
        if self._recording is not None:
            self._recording.flush(fsync=self._settings.fsync)

    def write_failed(self, error: RecordingError) -> None:
        self._fail(error)

    def _create_recording(self, fields: dict[str, str]) -> Recording:
        settings = self._settings
        self._recording = Recording.create(
            settings.output_dir,
            settings.path_template,
            settings.format,
            fields=fields,
            started=self._started,
            metadata=self.call.sidecar_metadata(),
            durable=settings.fsync,
        )
        LOGGER.debug("call %s: recording to %s", self.call.call_id, self._recording.partial_path)
        return self._recording

    def _fail(self, error: RecordingError) -> None:
        LOGGER.error("call %s session %s: recording failed: %s", self.call.call_id, self.call.session_id, error)
        self._failure = error
        if self._metrics is not None:
            self._metrics.disk_error()
        self.stop(f"recording failed: {error}", CLOSE_INTERNAL_ERROR)
        self._reason, self._close_code = f"recording failed: {error}", CLOSE_INTERNAL_ERROR

    async def _close_stream(self) -> None:
        if self._close_code is not None:
            try:
                await self._stream.close(self._close_code, self._reason[:120])
            except Exception:  # the peer may already be gone; closing is best effort
                LOGGER.debug("call %s: close failed", self.call.call_id, exc_info=True)

    async def _finalise(self) -> CallResult:
        call = self.call
        self._log_sequence_mode()
        if self._failure is not None:
            status = "failed"
        elif call.finished:
            status = "complete"
        else:
            status = "incomplete"
        statistics = {**self.timeline.statistics().as_dict(), **_counters(call)}
        self._meter()
        path = None
        # Always through the lane, whatever happened to the Start: the lane runs this after the
        # file's creation (if a block asked for one) and its last block, so it decides with the
        # recording as it is, not as it was before the disk writer opened it.
        try:
            path = await self._lane.finish(self._finish_recording, status, statistics)
        except RecordingError as error:
            status = "failed"
            recording = self._recording
            if recording is not None and not recording.finished and not isinstance(error, DiskStalledError):
                # (after a stall the finish itself still runs once the disk is back)
                self._lane.retry(lambda: self._retry_finish(statistics), recording.abandon)
            if self._failure is None:
                self._fail(error)
            elif not isinstance(error, DiskStalledError):  # a stall: the file is closed when the disk is back
                LOGGER.error("call %s session %s: cannot finish the failed recording: %s",
                             call.call_id, call.session_id, error)
        if self._failure is not None:
            status = "failed"
        frames = 0 if self._recording is None else self._recording.frames_written
        return CallResult(
            call_id=call.call_id,
            session_id=call.session_id,
            status=status,
            reason=self._reason,
            close_code=self._close_code,
            path=path,
            frames=frames,
            statistics=statistics,
        )

    def _finish_recording(self, status: str, statistics: dict[str, Any]) -> Path | None:
        """In a disk thread, after every block of the call: finish the recording (create it
        first for a Start without audio); None when there is none to finish (no Start, no
        audio). After a failed finish, tries once more as failed, then raises (the caller has the
        writer retry it)."""
        recording = self._recording
        if recording is None:
            if self.call.start is None:
                return None
            recording = self._create_recording(self.call.fields)
        if self._failure is not None:  # a write failed after the status was decided
            status = "failed"
        self._ended_at = datetime.now(UTC)
        try:
            return self._finish_as(recording, status, statistics)
        except RecordingError:
            if status == "failed":
                raise
        return self._finish_as(recording, "failed", statistics)

    def _retry_finish(self, statistics: dict[str, Any]) -> bool:
        """In a disk thread, every retry interval after the finish failed (see
        `DiskWriter.retry`; giving up is `Recording.abandon`): True once finished as failed."""
        assert self._recording is not None
        try:
            path = self._finish_as(self._recording, "failed", statistics)
        except RecordingError:
            return False
        LOGGER.warning("call %s session %s: recording finished as failed once the disk took it: %s",
                       self.call.call_id, self.call.session_id, path)
        return True

    def _finish_as(self, recording: Recording, status: str, statistics: dict[str, Any]) -> Path:
        return recording.finish(
            status,
            ended=self._ended_at or datetime.now(UTC),
            metadata=self.call.sidecar_metadata(),
            statistics=statistics,
        )


def _nothing() -> None:
    """`receive_batch_nowait` for a stream without one: every message then comes from receive()."""
    return None


def _closed_reason(closed: StreamClosed) -> str:
    if closed.code is None or closed.code == 1006:
        return "connection lost"
    return f"stream closed with {closed.code}" + (f" ({closed.reason})" if closed.reason else "")


def _counters(call: CallState) -> dict[str, int]:
    counters = call.counters()
    return {"bad_messages": counters.bad_messages, "unknown_events": counters.unknown_events, "stops": counters.stops}
