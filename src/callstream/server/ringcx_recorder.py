"""Records one RingCX dialog: the trio shell around `DialogAssembler`, writing through the
process's disk writer like a WebSocket call (same lanes, files, sidecars, limits).

Theory of operation: the receive loop takes the dialog's events in batches from its
`DialogChannel` (the gRPC thread fills it), feeds the assembler and hands every full block to
the call's lane; while the lane is full it waits, the channel fills, and the gRPC reader stops
reading the RPC. The server's clock calls `tick` once per flush interval (partial blocks, the
idle timeout, the maximum duration). Every way out finalises the recording with what was
received and answers the RPC (`DialogChannel.answer`) only after that.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import trio

from callstream.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    DiskStalledError,
    ProtocolError,
    RecordingError,
)
from callstream.ringcx.assembler import SAMPLE_RATE, DialogAssembler, PcmBlock
from callstream.ringcx.bridge import DialogChannel, DialogEnded
from callstream.server.metrics import NO_MEDIA, MediaTotals, Metrics
from callstream.server.recorder import FINALISE_TIMEOUT, CallResult
from callstream.settings import Settings
from callstream.storage.diskwriter import DiskWriter
from callstream.storage.recording import Recording

LOGGER = logging.getLogger("callstream.server.ringcx_recorder")

# What the RPC answers, by the WebSocket close code the recorder would have sent.
GRPC_STATUS: Final = {
    CLOSE_NORMAL: "OK",
    CLOSE_GOING_AWAY: "UNAVAILABLE",  # drain, idle timeout, maximum duration: the platform may retry
    1003: "INVALID_ARGUMENT",
    1007: "INVALID_ARGUMENT",
    1008: "UNAUTHENTICATED",
    1009: "RESOURCE_EXHAUSTED",
    CLOSE_INTERNAL_ERROR: "INTERNAL",
}


class DialogRecorder:
    """One dialog, from its admitted RPC to the finished recording. Use once: `await run()`."""

    front_end = "ringcx"  # the live view's and the metrics' name of the front end (metrics.FRONT_ENDS)

    def __init__(self, channel: DialogChannel, settings: Settings, disk: DiskWriter, *, remote: str,
                 metrics: Metrics | None = None) -> None:
        """``metrics``: where the dialog's media counters go (at each tick and at the end)."""
        self._channel = channel
        self._metrics = metrics
        self._metered: MediaTotals = NO_MEDIA
        self._settings = settings
        self._lane = disk.lane(self)
        self._remote = remote
        self.assembler = DialogAssembler(
            window_ms=settings.reorder_window_ms, block_ms=settings.block_ms,
            discontinuity_ms=settings.discontinuity_ms, l16_byte_order=settings.ringcx_l16_byte_order,
            max_bad_events=settings.max_bad_messages, layout=settings.channel_layout,
            max_channels=settings.participant_channels,
        )
        self._recording: Recording | None = None
        # fields, metadata and channel map as of the first block, taken in trio: the file is created in a
        # disk thread, which must not read the assembler while the receive loop changes it
        self._snapshot: tuple[dict[str, str], dict[str, Any], dict[str, Any]] | None = None
        # participants layout: the sidecar of the live recording is rewritten (in a disk thread,
        # at its next flush) with the segments that joined since it was written, so that a
        # recovered file says who is on each channel; see tick
        self._sidecar_segments = 0  # segment count of the last update (trio's)
        self._sidecar_written = 0  # ... and of the last one written (the disk thread's)
        self._sidecar_update: tuple[int, dict[str, Any], dict[str, Any]] | None = None
        self._started = datetime.now(UTC)
        self.started_monotonic = time.monotonic()
        self.last_block: PcmBlock | None = None  # the latest block sent to the disk (the live view's levels)
        self._scope = trio.CancelScope()
        self._reason = "stream closed by the platform"
        self._close_code: int | None = None
        self._status: str | None = None  # decided by how the stream ended
        self._failure: RecordingError | None = None
        self._ended = False
        now = time.monotonic()
        self._deadline = now + settings.max_call_seconds
        self._idle_since, self._idle_count = now, -1

    # the names the server's log line and metrics use
    @property
    def call_id(self) -> str:
        return self.assembler.dialog_id or "unknown"

    @property
    def session_id(self) -> str:
        init = self.assembler.init
        return (init.session_id if init is not None else "") or "unknown"

    @property
    def started(self) -> datetime:
        """When the dialog was admitted (UTC)."""
        return self._started

    @property
    def blocks_waiting(self) -> int:
        """Blocks of this dialog queued for the disk or being written."""
        return self._lane.queued

    def stop(self, reason: str, code: int = CLOSE_GOING_AWAY) -> None:
        """End the dialog now (drain, timeouts); the recording is still finalised."""
        if self._close_code is None:
            self._reason, self._close_code = reason, code
        self._scope.cancel()

    async def run(self) -> CallResult:
        """Record until the dialog ends; never raises for anything the peer or the disk does."""
        try:
            try:
                with self._scope:
                    await self._receive()
            finally:
                self._ended = True
            with trio.CancelScope(shield=True), trio.move_on_after(FINALISE_TIMEOUT):
                tail = self.assembler.finish()
                self._snapshot = None  # the assembler is finished: read it as it is now
                if tail is not None and self._failure is None:
                    try:
                        await self._lane.send(tail, time.monotonic())
                    except DiskStalledError as error:
                        self._fail(error)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(FINALISE_TIMEOUT):
                result = await self._finalise()
            code = self._close_code if self._close_code is not None else CLOSE_NORMAL
            self._channel.answer(GRPC_STATUS.get(code, "UNKNOWN"), self._reason)
        return result

    async def _receive(self) -> None:
        channel, assembler, lane = self._channel, self.assembler, self._lane
        handle, pop_block = assembler.handle, assembler.pop_block
        while True:
            try:
                batch = await channel.receive_batch()
            except DialogEnded as ended:
                if ended.how == "closed":
                    self._status, self._close_code = "complete", CLOSE_NORMAL
                else:
                    self._reason = f"stream {ended.how}"
                return
            try:
                for event in batch:
                    handle(event)
                    block = pop_block()
                    if block is not None and self._snapshot is None:
                        self._snapshot = (self.fields(), self.sidecar_metadata(), self.assembler.channel_map())
                    while block is not None:
                        self.last_block = block
                        if lane.has_room():
                            lane.send_nowait(block, time.monotonic())
                        else:
                            await lane.send(block, time.monotonic())
                        block = pop_block()
            except ProtocolError as error:
                LOGGER.warning("dialog %s: %s", self.call_id, error.reason)
                self._reason, self._close_code = error.reason, error.code
                return
            except DiskStalledError as error:
                self._fail(error)
                return

    def tick(self, now: float) -> None:
        """Once per flush interval (``now``: time.monotonic()): partial blocks, idle timeout,
        maximum duration. Never waits."""
        if self._ended:
            return
        assembler, settings = self.assembler, self._settings
        assembler.tick(self._channel.clock_taken())
        self._meter()
        count = assembler.chunks_received
        if count != self._idle_count:
            self._idle_since, self._idle_count = now, count
        elif now - self._idle_since >= settings.idle_timeout:
            self.stop(f"no media for {settings.idle_timeout:g} s")
        if now >= self._deadline:
            self.stop(f"maximum call duration of {settings.max_call_seconds:g} s reached")
        if assembler.layout == "participants" and self._snapshot is not None:
            count = assembler.segment_count
            if count != self._sidecar_segments:
                self._sidecar_segments = count
                self._sidecar_update = (count, self.sidecar_metadata(), assembler.channel_map())
        if self._failure is None and self._lane.has_room():
            block = assembler.pop_block(partial=True)
            if block is not None:
                if self._snapshot is None:
                    self._snapshot = (self.fields(), self.sidecar_metadata(), self.assembler.channel_map())
                self.last_block = block
                self._lane.send_nowait(block, now)

    def _meter(self) -> None:
        """Report the media counters' progress since the last report (once per tick, and at the end)."""
        if self._metrics is None:
            return
        totals = self.assembler.media_totals()
        if totals != self._metered:
            self._metrics.add_media(totals, self._metered, sample_rate=SAMPLE_RATE)
            self._metered = totals

    # -- the lane's target (see diskwriter.BlockTarget) -----------------------------------------

    def open_target(self) -> None:
        if self._recording is None:
            self._create_recording()

    def write_block(self, block: PcmBlock) -> None:
        assert self._recording is not None, "open_target() first"
        self._recording.write_pcm(block.frames)

    def flush_blocks(self) -> None:
        recording = self._recording
        if recording is not None:
            recording.flush(fsync=self._settings.fsync)
            update = self._sidecar_update  # replaced whole by trio, never written here
            if update is not None and update[0] != self._sidecar_written and not recording.finished:
                self._sidecar_written = update[0]
                recording.update(metadata=update[1], channel_map=update[2], durable=self._settings.fsync)

    def write_failed(self, error: RecordingError) -> None:
        self._fail(error)

    # -- files -----------------------------------------------------------------------------

    def fields(self) -> dict[str, str]:
        """The path template's fields (and the sidecar's identity: callId = the dialog id)."""
        init = self.assembler.init
        if init is None:
            return {}
        account, dialog = init.account, init.dialog
        fields = {
            "dialogId": dialog.get("id") or "", "callId": dialog.get("id") or "", "sessionId": init.session_id,
            "accountId": account.get("id") or "", "subaccountId": account.get("sub_account_id") or "",
            "rcAccountId": account.get("rc_account_id") or "", "ani": dialog.get("ani") or "",
            "dnis": dialog.get("dnis") or "",
        }
        return {key: value for key, value in fields.items() if value}

    def sidecar_metadata(self) -> dict[str, Any]:
        assembler = self.assembler
        init = assembler.init
        products = [s["product"] for s in assembler.segments() if s["product"]]
        return {
            "front_end": "ringcx",
            "remote": self._remote,
            "session_id": None if init is None else init.session_id,
            "account": None if init is None else init.account,
            "dialog": None if init is None else init.dialog,
            "product": products[0] if products else None,
            "segments": assembler.segments(),
            "segment_info": assembler.infos,
            "fields": self.fields(),
        }

    def _create_recording(self) -> Recording:
        settings = self._settings
        fields, metadata, channel_map = self._snapshot or (
            self.fields(), self.sidecar_metadata(), self.assembler.channel_map())
        self._recording = Recording.create(
            settings.output_dir, settings.ringcx_path_template, settings.format, fields=fields,
            started=self._started, metadata=metadata, durable=settings.fsync,
            channel_map=channel_map, channels=self.assembler.channels,
        )
        return self._recording

    def _fail(self, error: RecordingError) -> None:
        LOGGER.error("dialog %s session %s: recording failed: %s", self.call_id, self.session_id, error)
        self._failure = error
        self._reason, self._close_code = f"recording failed: {error}", CLOSE_INTERNAL_ERROR
        self._scope.cancel()

    async def _finalise(self) -> CallResult:
        status = "failed" if self._failure is not None else self._status or "incomplete"
        statistics = self.assembler.statistics()
        self._meter()
        path: Path | None = None
        # Always through the lane, as the WebSocket recorder: it runs this after the file's
        # creation (if a block asked for one) and the last block.
        try:
            path = await self._lane.finish(self._finish_recording, status, statistics)
        except RecordingError as error:
            status = "failed"
            recording = self._recording
            if recording is not None and not recording.finished and not isinstance(error, DiskStalledError):
                # a full disk: the writer keeps trying to finish it as failed (recovery gets it else)
                self._lane.retry(lambda: self._retry_finish(statistics), recording.abandon)
            if self._failure is None:
                self._fail(error)
        if self._failure is not None:
            status = "failed"
        frames = 0 if self._recording is None else self._recording.frames_written
        return CallResult(
            call_id=self.call_id, session_id=self.session_id, status=status, reason=self._reason,
            close_code=self._close_code, path=path, frames=frames, statistics=statistics,
        )

    def _finish_recording(self, status: str, statistics: dict[str, Any]) -> Path | None:
        """In a disk thread, after every block: finish the recording (create it first for a
        dialog that sent its DialogInit but no audio); None without either. After a failed
        finish, tries once more as failed, then raises (the caller has the writer retry it)."""
        recording = self._recording
        if recording is None:
            if self.assembler.init is None:
                return None
            recording = self._create_recording()
        if self._failure is not None:
            status = "failed"
        try:
            return self._finish_as(recording, status, statistics)
        except RecordingError:
            if status == "failed":
                raise
        return self._finish_as(recording, "failed", statistics)

    def _retry_finish(self, statistics: dict[str, Any]) -> bool:
        """In a disk thread, every retry interval after the finish failed: True once finished."""
        assert self._recording is not None
        try:
            self._finish_as(self._recording, "failed", statistics)
        except RecordingError:
            return False
        return True

    def _finish_as(self, recording: Recording, status: str, statistics: dict[str, Any]) -> Path:
        return recording.finish(status, ended=datetime.now(UTC), metadata=self.sidecar_metadata(),
                                statistics=statistics, channel_map=self.assembler.channel_map())
