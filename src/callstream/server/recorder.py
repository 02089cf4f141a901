"""Records one accepted call of any front end: the trio shell around the front end's session
and the sans-IO call core.

One shell for both front ends; they differ only in where the call's events come from and how
its ending is answered (`CallRecorder.websocket`, `CallRecorder.dialog`):
- Engage Voice: a `MessageStream` (reads, `TextBatch`es) and an `EngageVoiceSession`; a
  `CallCore` on a `Timeline`; the ending is answered with its WebSocket close code.
- RingCX: a `DialogChannel` (batches of call events from the gRPC thread) and a
  `DialogSession`; a `CallCore` on a `SegmentMixer`; the ending is answered with the gRPC status
  of its close code (`ringcx.session.answer`), always (the RPC waits for it).

Theory of operation: one task per call, in the call's own nursery, plus two shared services.
- The receive loop reads, has the front end's session turn each read into call events, feeds
  them to the `CallCore` and hands each full block (about one second of audio) to the call's
  `Lane` of the process's `DiskWriter`, which writes it to the call's `Recording` in a worker
  thread, batched with every other call's blocks. A lane holds a bounded number of blocks: when
  the disk is slow the loop waits, stops reading, and the transport pushes back on the platform
  (TCP, or HTTP/2 flow control through the bounded channel): memory stays bounded and nothing is
  dropped.
- The server's clock calls `tick()` once per flush interval: the core hands over whatever is
  aligned but not yet a full block (so audio reaches disk within about a second even when media
  stalls) and decides the idle timeout and the maximum call duration; the media counters are
  reported. One clock for all calls: a timer task per call cost a wake-up per call-second.
The call ends after both Stops (a dialog: when the platform closes its stream), when the peer
closes, on a fatal protocol error, when the server stops it (drain), or when the disk fails;
every way out finalises the recording with what was received. When the server stops a call
(drain, a limit), what the transport has already received but not handed out is read first
(`receive_buffered`), so a drain loses no audio that reached us.
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

from callstream.call.blocks import Block, StereoBlock
from callstream.call.core import CallCore
from callstream.call.events import CallEnded
from callstream.call.segments import SegmentMixer
from callstream.engagevoice.mediascan import MediaScanner
from callstream.engagevoice.query import QueryMetadata
from callstream.engagevoice.session import EngageVoiceSession
from callstream.engagevoice.textbatch import TextBatch
from callstream.engagevoice.transport import MessageStream, StreamClosed
from callstream.errors import CLOSE_GOING_AWAY, DiskStalledError, ProtocolError, RecordingError
from callstream.ringcx import session as ringcx_session
from callstream.ringcx.bridge import DialogChannel, DialogEnded
from callstream.server.auth import secret_matches
from callstream.server.livecalls import level_sample
from callstream.server.metrics import NO_MEDIA, Metrics
from callstream.settings import Settings
from callstream.storage.diskwriter import DiskWriter
from callstream.storage.recording import Recording
from callstream.storage.wavbatch import PlannedAppend

LOGGER = logging.getLogger("callstream.recorder")

FINALISE_TIMEOUT = 30.0  # seconds allowed to write the tail and close files after the call ends

Receive = Callable[[], Awaitable[Any]]
Answer = Callable[[CallEnded | None], Awaitable[None]]
ENDS_OF_STREAM = (StreamClosed, DialogEnded)  # what a front end's receive raises once its peer is done


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
    """One call, from the accepted stream to the finished recording. Use once: `await run()`.
    Made by `websocket` or `dialog` (the front end's parts); the constructor takes them ready."""

    def __init__(
        self,
        stream: Any,
        session: Any,
        core: CallCore,
        settings: Settings,
        disk: DiskWriter,
        *,
        front_end: str,
        path_template: str,
        answer: Answer,
        started_monotonic: float,
        clock: Callable[[], float] | None = None,
        metrics: Metrics | None = None,
        open_early: bool = False,
    ) -> None:
        """``stream``: where reads come from (``receive_batch`` or ``receive``; optionally
        ``receive_batch_nowait`` and ``receive_buffered``), raising one of ENDS_OF_STREAM once
        the peer is done; ``session``: the front end's translation of a read into call events
        (``items``, ``event``, ``ended``, ``first`` and ``needs_first_message``, see
        `EngageVoiceSession`); ``core``: the call's, fresh; ``disk``: the process's writer
        (running); ``front_end``: the live view's and the metrics' name (metrics.FRONT_ENDS);
        ``path_template``: the recording's; ``answer``: tells the peer how the call ended, once
        the recording is finished (awaited once, shielded, bounded); ``started_monotonic``: the
        ``now`` the core was made with. ``clock``: the time on the clock of the events' ``at``
        when it is not time.monotonic() (see `CallCore.tick`). ``metrics``: where the call's media counters go (at
        each tick and at the end). ``open_early``: create the file once the core has the call's fields
        (a RingCX dialog's DialogInit) rather than with the first block, whose write lag would include
        the creation (slow while many calls start at once; see `Lane.open_soon`)."""
        self._stream = stream
        self.session = session
        self.core = core
        self.front_end = front_end
        self._path_template = path_template
        self._answer = answer
        self._clock = clock
        self._lane = disk.lane(self)
        self._open_early = open_early
        self._metrics = metrics
        self._metered = NO_MEDIA
        self._settings = settings
        self._recording: Recording | None = None
        self._ended_at: datetime | None = None  # when the finish began: the sidecar's end
        # the live view's levels: the last 0.3 s of the latest block written (livecalls.level_sample)
        self.level_sample: Any = None
        # (fields, sidecar metadata, channel map) as of the first block, taken in trio: the file
        # is created in a disk thread, which must not read the core while the receive loop
        # changes it
        self._snapshot: tuple[dict[str, str], dict[str, Any], dict[str, Any] | None] | None = None
        # a layout whose channels fill as the call goes on (participants): the live recording's
        # sidecar is rewritten in a disk thread, at its next flush, with the channel map of
        # `_map_update` (taken in trio at a tick), so that a recovered file says who is on
        # each channel
        self._map_version = core.channel_map_version  # trio's
        self._map_written = self._map_version  # ... and the disk thread's
        self._map_update: tuple[int, dict[str, Any], dict[str, Any] | None] | None = None
        self._started = datetime.now(UTC)
        self.started_monotonic = started_monotonic
        self._receive_scope = trio.CancelScope()
        self._mode_logged = settings.sequence_mode != "auto"
        self._ended = False  # the receive loop is over (see run)

    @classmethod
    def websocket(
        cls,
        stream: MessageStream,
        query: QueryMetadata,
        settings: Settings,
        disk: DiskWriter,
        *,
        require_secret: str | None = None,
        metrics: Metrics | None = None,
        scanner: MediaScanner,
    ) -> CallRecorder:
        """An Engage Voice call on an accepted WebSocket. ``require_secret``: when set, the first
        message must carry this secret (else close 1008). ``scanner``: the process's, with
        ``max_bytes`` = settings.max_message_bytes (it keeps scratch space: one per process)."""
        session = EngageVoiceSession(
            query, scanner=scanner, max_bytes=settings.max_message_bytes,
            authenticate=None if require_secret is None else partial(secret_matches, require_secret),
        )
        now = time.monotonic()
        core = CallCore(
            fields=session.fields(),
            connection=session.connection(),
            now=now,  # the call's start: its audio stays within its time since (Timeline.set_time)
            max_bad_messages=settings.max_bad_messages,
            idle_timeout=settings.idle_timeout,
            max_call_seconds=settings.max_call_seconds,
            window_ms=settings.reorder_window_ms,
            discontinuity_ms=settings.discontinuity_ms,
            block_ms=settings.block_ms,
            sequence_mode=settings.sequence_mode,
        )
        return cls(stream, session, core, settings, disk, front_end="websocket",
                   path_template=settings.path_template, answer=partial(_close_websocket, stream, core),
                   started_monotonic=now, metrics=metrics)

    @classmethod
    def dialog(cls, channel: DialogChannel, settings: Settings, disk: DiskWriter, *, remote: str,
               metrics: Metrics | None = None) -> CallRecorder:
        """A RingCX dialog admitted on the gRPC listener, its events arriving on ``channel``."""
        session = ringcx_session.DialogSession(remote)
        now = time.monotonic()
        mixer = SegmentMixer(
            window_ms=settings.reorder_window_ms, block_ms=settings.block_ms,
            discontinuity_ms=settings.discontinuity_ms, l16_byte_order=settings.ringcx_l16_byte_order,
            layout=settings.channel_layout, max_channels=settings.participant_channels,
        )
        core = CallCore(
            fields=session.fields(), connection=session.connection(), now=now,
            max_bad_messages=settings.max_bad_messages, idle_timeout=settings.idle_timeout,
            max_call_seconds=settings.max_call_seconds, segments=mixer,
        )
        return cls(channel, session, core, settings, disk, front_end="ringcx",
                   path_template=settings.ringcx_path_template, answer=partial(_answer_rpc, channel),
                   started_monotonic=now, clock=channel.clock_taken, metrics=metrics, open_early=True)

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
                    if self._snapshot is None:  # the tail is the call's only block
                        self._first_block()
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
                    await self._answer(self.core.ending)
        return result

    async def _receive_until_end(self) -> None:
        with self._receive_scope:
            async with trio.open_nursery():  # the call's own nursery: its tasks end with it
                stream = self._stream
                receive = getattr(stream, "receive_batch", None) or stream.receive
                await self._receive(
                    receive,
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
                except ENDS_OF_STREAM as closed:
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
            except ENDS_OF_STREAM as closed:
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
                    if block is not None and self._snapshot is None:
                        self._first_block()
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
                    if i < end and type(items[i]) is not tuple:  # not recognised by the scanner,
                        # or an event (of segments: their media too, after a block was ready)
                        event = event_of(items[i])
                        if type(event) is tuple:  # Media: receive_media takes it next
                            items[i] = event  # type: ignore[index]
                            continue
                        i += 1
                        if event is not None and handle(event):
                            return
                if self._open_early and self._snapshot is None and core.fields:
                    self._first_block()  # the file is named: created now, while the first block fills
                    lane.open_soon()
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
        clock = self._clock
        block = core.tick(now, room=not core.failed and self._lane.has_room(),
                          clock=None if clock is None else clock())
        if core.ending is not None:
            self._receive_scope.cancel()
        if self._snapshot is not None and core.channel_map_version != self._map_version:
            self._map_version = version = core.channel_map_version
            self._map_update = (version, core.sidecar_metadata(), core.channel_map())
        if block is not None:
            if self._snapshot is None:
                self._first_block()
            self._lane.send_nowait(block, now)

    def _first_block(self) -> None:
        """In trio, as the first block leaves for the disk (or, ``open_early``, once the call's
        fields are known): what its file is created with."""
        core = self.core
        self._snapshot = (dict(core.fields), core.sidecar_metadata(), core.channel_map())
        # the file is created with the segments as of now: rewritten only when they change again
        # (the disk thread reads _map_written only once it has created the file)
        self._map_version = self._map_written = core.channel_map_version

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
            self._create_recording()

    def plan_block(self, block: Block) -> PlannedAppend | None:
        """In the event loop: a block as a batched append (`wavbatch`: the shard writes every
        planned block of a batch in one C call, without the GIL), or None: then `write_block`
        it (FLAC, a mixed block for mu-law WAV, a build without the kernel)."""
        assert self._recording is not None, "open_target() first"
        if type(block) is StereoBlock:
            plan = self._recording.plan(block.left, block.right)
        else:
            plan = self._recording.plan_pcm(block.frames)  # type: ignore[union-attr]
        if plan is not None:
            self.level_sample = level_sample(block)  # not the block: it would live a second longer
            if self._map_stale(self._map_update):
                plan.after = self._write_map_update  # no flush_blocks follows a planned block
        return plan

    def write_block(self, block: Block) -> None:
        """In a disk thread: append the block (either engine's: `Recording.append`)."""
        assert self._recording is not None, "open_target() first"
        self._recording.append(block)
        self.level_sample = level_sample(block)

    def flush_blocks(self) -> None:
        """After a batch of this call's blocks: about once per flush interval, so flushing costs
        two system calls a second and bounds what a crash can lose to one flush interval plus
        the reorder window (and the writer's batch interval). Rewrites the live sidecar when the
        channel map changed (see `tick`)."""
        recording = self._recording
        if recording is not None:
            recording.flush(fsync=self._settings.fsync)
            self._write_map_update()

    def _write_map_update(self) -> None:
        """In a disk thread, after a batch of this call's blocks: rewrite the live sidecar when
        the channel map or the segments changed since it was written (see `tick`). Raises
        RecordingError."""
        recording = self._recording
        update = self._map_update  # replaced whole by trio, never changed here
        if recording is not None and self._map_stale(update) and not recording.finished:
            assert update is not None
            self._map_written = update[0]
            channel_map = update[2]
            if channel_map is not None:
                recording.update(metadata=update[1], channel_map=channel_map, durable=self._settings.fsync)

    def _map_stale(self, update: tuple[int, dict[str, Any], dict[str, Any] | None] | None) -> bool:
        """Whether ``update`` (a `_map_update`, read once by the caller: trio replaces it from
        another thread) has a channel map or segments the live sidecar does not have yet."""
        return update is not None and update[0] != self._map_written

    def write_failed(self, error: RecordingError) -> None:
        self._fail(error)

    def _create_recording(self) -> Recording:
        """In a disk thread: with the first block's snapshot, or (no block: the finish, the core
        is done) the core as it is."""
        settings, core = self._settings, self.core
        fields, metadata, channel_map = self._snapshot or (core.fields, core.sidecar_metadata(), core.channel_map())
        self._recording = Recording.create(
            settings.output_dir,
            self._path_template,
            settings.format,
            fields=fields,
            started=self._started,
            metadata=metadata,
            durable=settings.fsync,
            channel_map=channel_map,
            channels=core.channels,
        )
        LOGGER.debug("call %s: recording to %s", core.call_id, self._recording.partial_path)
        return self._recording

    def _fail(self, error: RecordingError) -> None:
        core = self.core
        LOGGER.error("call %s session %s: recording failed: %s", core.call_id, core.session_id, error)
        core.fail(f"recording failed: {error}")
        if self._metrics is not None:
            self._metrics.disk_error()
        self._receive_scope.cancel()

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
            recording = self._create_recording()
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
            channel_map=self.core.channel_map(),
        )


async def _close_websocket(stream: MessageStream, core: CallCore, ending: CallEnded | None) -> None:
    """Engage Voice's answer: the ending's close code, when it has one (else the peer is gone)."""
    if ending is not None and ending.close_code is not None:
        try:
            await stream.close(ending.close_code, ending.reason[:120])
        except Exception:  # the peer may already be gone; closing is best effort
            LOGGER.debug("call %s: close failed", core.call_id, exc_info=True)


async def _answer_rpc(channel: DialogChannel, ending: CallEnded | None) -> None:
    """RingCX's answer: the RPC's status for the ending (always: the RPC waits for it)."""
    channel.answer(*ringcx_session.answer(ending))


def _nothing() -> None:
    """`receive_batch_nowait` for a stream without one: every message then comes from receive()."""
    return None
