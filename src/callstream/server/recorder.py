"""Records one accepted stream: the trio shell around the front end and the sans-IO call core.

Theory of operation: one task per call, in the call's own nursery, plus two shared services.
- The receive loop reads messages, has the front end (`EngageVoiceSession`) turn them into call
  events, feeds them to the `CallCore` and hands each full block (about one second of stereo
  audio) to the call's `Lane` of the process's `DiskWriter`, which writes it to the call's
  `Recording` in a worker thread, batched with every other call's blocks. A lane holds a bounded
  number of blocks: when the disk is slow the loop waits, stops reading, and TCP pushes back on
  the platform: memory stays bounded and nothing is dropped.
- The server's clock calls `tick()` once per flush interval: the core hands over whatever is
  aligned but not yet a full block (so audio reaches disk within about a second even when media
  stalls) and decides the idle timeout and the maximum call duration; the media counters are
  reported. One clock for all calls: a timer task per call cost a wake-up per call-second.
The call ends after both Stops, when the peer closes, on a fatal protocol error, when the
server stops it (drain), or when the disk fails; every way out finalises the recording with what
was received. When the server stops a call (drain, a limit), what the transport has already
received but not handed out is read first (`receive_buffered`), so a drain loses no audio that
reached us.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import trio

from callstream.call.core import CallCore
from callstream.call.timeline import StereoBlock
from callstream.engagevoice.mediascan import MediaScanner
from callstream.engagevoice.query import QueryMetadata
from callstream.engagevoice.session import EngageVoiceSession
from callstream.engagevoice.textbatch import TextBatch
from callstream.engagevoice.transport import MessageStream, StreamClosed
from callstream.errors import CLOSE_GOING_AWAY, DiskStalledError, ProtocolError, RecordingError
from callstream.server.auth import secret_matches
from callstream.server.metrics import NO_MEDIA, Metrics
from callstream.settings import Settings
from callstream.storage.diskwriter import DiskWriter
from callstream.storage.recording import Recording

LOGGER = logging.getLogger("callstream.recorder")

FINALISE_TIMEOUT = 30.0  # seconds allowed to write the tail and close files after the call ends

Receive = Callable[[], Awaitable["str | bytes | TextBatch"]]


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

    front_end = "websocket"  # the live view's and the metrics' name of the front end (metrics.FRONT_ENDS)

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
        self._settings = settings
        self.session = EngageVoiceSession(
            query, scanner=scanner, max_bytes=settings.max_message_bytes,
            authenticate=None if require_secret is None else partial(secret_matches, require_secret),
        )
        now = time.monotonic()
        self.core = CallCore(
            fields=self.session.fields(),
            connection=self.session.connection(),
            now=now,  # the call's start: its audio stays within its time since (Timeline.set_time)
            max_bad_messages=settings.max_bad_messages,
            idle_timeout=settings.idle_timeout,
            max_call_seconds=settings.max_call_seconds,
            window_ms=settings.reorder_window_ms,
            discontinuity_ms=settings.discontinuity_ms,
            block_ms=settings.block_ms,
            sequence_mode=settings.sequence_mode,
        )
        self._recording: Recording | None = None
        self._ended_at: datetime | None = None  # when the finish began: the sidecar's end
        self.last_block: StereoBlock | None = None  # the latest block written (levels; see write_block)
        self._started = datetime.now(UTC)
        self.started_monotonic = now
        self._receive_scope = trio.CancelScope()
        self._mode_logged = settings.sequence_mode != "auto"
        self._ended = False  # the receive loop is over (see run)

    @property
    def call_id(self) -> str:
        return self.core.call_id

    @property
    def session_id(self) -> str:
        return self.core.session_id

    @property
    def started(self) -> datetime:
        """When the call was accepted (UTC)."""
        return self._started

    @property
    def blocks_waiting(self) -> int:
        """Blocks of this call queued for the disk or being written."""
        return self._lane.queued

    def stop(self, reason: str, code: int = CLOSE_GOING_AWAY) -> None:
        """Ask the call to end now (drain, timeout); what the transport already holds is still
        read and the recording is still finalised."""
        self.core.close(reason, code)
        self._receive_scope.cancel()

    async def run(self) -> CallResult:
        """Record until the call ends; never raises for anything the peer or the disk does."""
        try:
            try:
                await self._receive_until_end()
            finally:
                self._ended = True  # from here the tail goes as one block: no more ticks
            with trio.CancelScope(shield=True), trio.move_on_after(FINALISE_TIMEOUT):
                if self._receive_scope.cancelled_caught and not self.core.failed:
                    await self._receive_buffered()  # stopped by us: what reached us counts
                tail = self.core.finish()
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
                stream = self._stream
                await self._receive(
                    getattr(stream, "receive_batch", stream.receive),
                    getattr(stream, "receive_batch_nowait", _nothing),
                    first=self.session.needs_first_message,
                )

    async def _receive_buffered(self) -> None:
        """After `stop`: feed the core what the transport has received but not handed out (a
        parsed chunk's messages, the socket's buffer), without waiting for more. A transport
        without ``receive_buffered`` (TLS, trio-websocket) holds nothing we can take."""
        take = getattr(self._stream, "receive_buffered", None)
        if take is None:
            return

        async def receive() -> str | bytes | TextBatch:
            data = take()
            if data is None:
                raise StreamClosed(None)  # nothing more: the ending already decided stands
            return data

        await self._receive(receive, take, first=False)

    async def _receive(self, receive: Receive, receive_nowait: Callable[[], Any], *, first: bool) -> None:
        """The hot loop: until the core has an ending, the peer closed, or the disk failed."""
        session, core = self.session, self.core
        try:
            if first:
                try:
                    event = session.first(await self._stream.receive())
                except StreamClosed as closed:
                    core.receive(session.ended(closed))
                    return
                if type(event) is tuple:  # Media (it carries no secret: only when none is asked)
                    core.receive_media([event])
                elif event is not None and core.receive(event):
                    return
            await self._place(receive, receive_nowait)
        except ProtocolError as error:
            LOGGER.warning("call %s: %s (closing %d)", core.call_id, error.reason, error.code)
            core.close(error.reason, error.code)

    async def _place(self, receive: Receive, receive_nowait: Callable[[], Any]) -> None:
        session, core, lane = self.session, self.core, self._lane
        # Messages already parsed from the last chunk are taken without an await each: between
        # two of them nothing else runs (no await), so nothing can cancel us either. A transport
        # that reads many messages at once may hand them over as one TextBatch: the front end
        # scans its Media messages in one C call, and the batch is placed whole, also when a
        # block had to wait for room on the lane meanwhile (that wait is a checkpoint); after
        # such a wait the next message or batch comes through receive() again, which checks.
        items_of, event_of = session.items, session.event
        receive_media, next_block, handle = core.receive_media, core.next_block, core.receive
        set_time = core.set_time
        while True:
            # the last batch's decoded payloads (copied into the timeline's C lanes) go now, not
            # after the wait: server RSS per call at 1,000 real-time calls fell by ~18 KB
            items = data = None
            try:
                data = await receive()
            except StreamClosed as closed:
                handle(session.ended(closed))
                return
            set_time(time.monotonic())  # once per read: what the frames may span
            while data is not None:
                waited = False
                items = items_of(data)
                i, end = 0, len(items)
                while i < end:
                    i = receive_media(items, i)  # Media tuples, until a block is ready or another item
                    block = next_block()
                    while block is not None:
                        if lane.has_room():
                            lane.send_nowait(block, time.monotonic())
                        else:
                            try:
                                await lane.send(block, time.monotonic())
                            except DiskStalledError as error:
                                self._fail(error)
                                return
                            waited = True
                        block = next_block()
                    if i < end and type(items[i]) is not tuple:  # not recognised by the scanner
                        event = event_of(items[i])
                        if type(event) is tuple:  # Media: receive_media takes it next
                            items[i] = event  # type: ignore[index]
                            continue
                        i += 1
                        if event is not None and handle(event):
                            return
                if waited:
                    break
                data = receive_nowait()

    def tick(self, now: float) -> None:
        """Once per flush interval (``now``: time.monotonic()), from the server's clock: hand
        over the aligned audio that is not yet a full block, report the counters, and stop the
        call when the core says its idle timeout or maximum duration is over. Never waits: while
        the lane is full the partial block stays in the core (the receive loop is then waiting
        for the disk anyway)."""
        if self._ended:
            return
        self._meter()
        self._log_sequence_mode()
        core = self.core
        block = core.tick(now, room=not core.failed and self._lane.has_room())
        if core.ending is not None:
            self._receive_scope.cancel()
        if block is not None:
            self._lane.send_nowait(block, now)

    def _log_sequence_mode(self) -> None:
        """docs/protocol.md: when auto-detection falls back to connection-wide ordering, say so once."""
        if not self._mode_logged and self.core.sequence_mode == "connection":
            self._mode_logged = True
            LOGGER.warning(
                "call %s: sequenceId counts across the connection, not per perspective: "
                "ordering without gap filling", self.core.call_id,
            )

    def _meter(self) -> None:
        """Report the media counters' progress since the last report (cheap: once per tick)."""
        if self._metrics is None:
            return
        totals = self.core.media_totals()
        if totals != self._metered:
            self._metrics.add_media(totals, self._metered, sample_rate=self.core.sample_rate)
            self._metered = totals

    # -- the lane's target (see diskwriter.BlockTarget) ---------------------------------------

    def open_target(self) -> None:
        """In a disk thread, before the first block: create the recording."""
        if self._recording is None:
            self._create_recording(self.core.fields)

    def write_block(self, block: StereoBlock) -> None:
        """In a disk thread: append the block."""
        assert self._recording is not None, "open_target() first"
        self._recording.write(block.left, block.right)
        self.last_block = block  # one reference per block: the live view's levels (see livecalls)

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
            metadata=self.core.sidecar_metadata(),
            durable=settings.fsync,
        )
        LOGGER.debug("call %s: recording to %s", self.core.call_id, self._recording.partial_path)
        return self._recording

    def _fail(self, error: RecordingError) -> None:
        core = self.core
        LOGGER.error("call %s session %s: recording failed: %s", core.call_id, core.session_id, error)
        core.fail(f"recording failed: {error}")
        if self._metrics is not None:
            self._metrics.disk_error()
        self._receive_scope.cancel()

    async def _close_stream(self) -> None:
        ending = self.core.ending
        if ending is not None and ending.close_code is not None:
            try:
                await self._stream.close(ending.close_code, ending.reason[:120])
            except Exception:  # the peer may already be gone; closing is best effort
                LOGGER.debug("call %s: close failed", self.core.call_id, exc_info=True)

    async def _finalise(self) -> CallResult:
        core = self.core
        self._log_sequence_mode()
        status = core.outcome().status
        statistics = core.statistics()
        self._meter()
        path = None
        # Always through the lane, whatever happened to the Start: the lane runs this after the
        # file's creation (if a block asked for one) and its last block, so it decides with the
        # recording as it is, not as it was before the disk writer opened it.
        try:
            path = await self._lane.finish(self._finish_recording, status, statistics)
        except RecordingError as error:
            recording = self._recording
            if recording is not None and not recording.finished and not isinstance(error, DiskStalledError):
                # (after a stall the finish itself still runs once the disk is back)
                self._lane.retry(lambda: self._retry_finish(statistics), recording.abandon)
            if not core.failed:
                self._fail(error)
            elif not isinstance(error, DiskStalledError):  # a stall: the file is closed when the disk is back
                LOGGER.error("call %s session %s: cannot finish the failed recording: %s",
                             core.call_id, core.session_id, error)
        outcome = core.outcome()
        frames = 0 if self._recording is None else self._recording.frames_written
        return CallResult(
            call_id=core.call_id,
            session_id=core.session_id,
            status=outcome.status,
            reason=outcome.reason,
            close_code=outcome.close_code,
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
            if not self.core.started:
                return None
            recording = self._create_recording(self.core.fields)
        if self.core.failed:  # a write failed after the status was decided
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
                       self.core.call_id, self.core.session_id, path)
        return True

    def _finish_as(self, recording: Recording, status: str, statistics: dict[str, Any]) -> Path:
        return recording.finish(
            status,
            ended=self._ended_at or datetime.now(UTC),
            metadata=self.core.sidecar_metadata(),
            statistics=statistics,
        )


def _nothing() -> None:
    """`receive_batch_nowait` for a stream without one: every message then comes from receive()."""
    return None
