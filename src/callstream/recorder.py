"""Records one accepted stream: the trio shell around the sans-IO call state and timeline.

Theory of operation: three tasks per call, in the call's own nursery.
- The receive loop reads messages, parses them, pushes Media into the `Timeline` and sends each
  full block (about one second of stereo audio) into a bounded memory channel. When the disk is
  slow the channel fills, the loop stops reading, and TCP pushes back on the platform: memory
  stays bounded and nothing is dropped.
- The writer takes blocks from the channel and writes them to the call's `Recording` in a worker
  thread (so file I/O never blocks the event loop), flushing at least every flush interval.
- The ticker, once per flush interval, sends whatever is aligned but not yet a full block (so
  audio reaches disk within about a second even when media stalls) and enforces the idle timeout
  and the maximum call duration.
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

from callstream.auth import message_credential, secret_matches
from callstream.call import CallState
from callstream.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    ProtocolError,
    RecordingError,
)
from callstream.events import Media
from callstream.metrics import MediaTotals, Metrics
from callstream.protocol import QueryMetadata, parse_message
from callstream.recording import Recording
from callstream.settings import Settings
from callstream.timeline import StereoBlock, Timeline
from callstream.transport import MessageStream, StreamClosed

LOGGER = logging.getLogger("callstream.recorder")

FINALISE_TIMEOUT = 30.0  # seconds allowed to write the tail and close files after the call ends

Ready = tuple[StereoBlock, float]  # a block and when it left the timeline (time.monotonic())


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
        *,
        require_secret: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``require_secret``: when set, the first message must carry this secret (else close 1008).
        ``metrics``: where the call's media counters (once per flush interval) and write lags go."""
        self._stream = stream
        self._metrics = metrics
        self._metered = MediaTotals()
        self._require_secret = require_secret
        self._settings = settings
        self.call = CallState(query, max_bad_messages=settings.max_bad_messages)
        self.timeline = Timeline(
            window_ms=settings.reorder_window_ms,
            discontinuity_ms=settings.discontinuity_ms,
            block_ms=settings.block_ms,
            sequence_mode=settings.sequence_mode,
        )
        self._recording: Recording | None = None
        self._started = datetime.now(UTC)
        self._receive_scope = trio.CancelScope()
        self._mode_logged = settings.sequence_mode != "auto"
        self._reason = "closed by peer"
        self._close_code: int | None = None
        self._failure: RecordingError | None = None

    def stop(self, reason: str, code: int = CLOSE_GOING_AWAY) -> None:
        """Ask the call to end now (drain, timeout); the recording is still finalised."""
        if self._close_code is None:
            self._reason, self._close_code = reason, code
        self._receive_scope.cancel()

    async def run(self) -> CallResult:
        """Record until the call ends; never raises for anything the peer or the disk does."""
        send, receive = trio.open_memory_channel[Ready](self._settings.write_queue_blocks)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_blocks, receive)
                async with send:
                    await self._receive_until_end(send)
                    with trio.CancelScope(shield=True), trio.move_on_after(FINALISE_TIMEOUT):
                        tail = self.timeline.finish()
                        if tail is not None:
                            await send.send((tail, time.monotonic()))
        finally:
            # Also when the whole server is cancelled: close the files with what they have.
            with trio.CancelScope(shield=True), trio.move_on_after(FINALISE_TIMEOUT):
                await self._close_stream()
                result = await self._finalise()
        return result

    async def _receive_until_end(self, send: trio.MemorySendChannel[Ready]) -> None:
        with self._receive_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tick, send)
                try:
                    if await self._receive(send):
                        self._reason, self._close_code = "both Stops received", CLOSE_NORMAL
                except ProtocolError as error:
                    LOGGER.warning("call %s: %s (closing %d)", self.call.call_id, error.reason, error.code)
                    self._reason, self._close_code = error.reason, error.code
                nursery.cancel_scope.cancel()

    async def _receive(self, send: trio.MemorySendChannel[Ready]) -> bool:
        """The hot loop. Returns True after both Stops, False when the peer closed first."""
        stream, timeline, call = self._stream, self.timeline, self.call
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
        # two of them nothing else runs (no await), so nothing can cancel us either. After an
        # await (a block sent) the next message comes through receive() again, which checks.
        receive_nowait = getattr(stream, "receive_nowait", _nothing)
        while True:
            try:
                data = await stream.receive()
            except StreamClosed as closed:
                self._reason = _closed_reason(closed)
                return False
            while data is not None:
                event = parse_message(data, max_bytes=max_bytes)
                if type(event) is Media:
                    if timeline.push(event.perspective, event.sequence, event.payload):
                        block = timeline.pop_block()
                        if block is not None:
                            while block is not None:
                                await _queue(send, block)
                                block = timeline.pop_block()
                            break
                else:
                    call.handle(event)
                    if call.finished:
                        return True
                data = receive_nowait()

    async def _tick(self, send: trio.MemorySendChannel[Ready]) -> None:
        settings = self._settings
        deadline = trio.current_time() + settings.max_call_seconds
        idle_since, last_count = trio.current_time(), -1
        while True:
            await trio.sleep(settings.flush_interval)
            self._meter()
            self._log_sequence_mode()
            now = trio.current_time()
            count = self.timeline.frames_received
            if count != last_count:
                idle_since, last_count = now, count
            elif now - idle_since >= settings.idle_timeout:
                self.stop(f"no media for {settings.idle_timeout:g} s")
            if now >= deadline:
                self.stop(f"maximum call duration of {settings.max_call_seconds:g} s reached")
            block = self.timeline.pop_block(partial=True)
            if block is not None:
                await _queue(send, block)

    def _log_sequence_mode(self) -> None:
        """PROTOCOL.md: when auto-detection falls back to connection-wide ordering, say so once."""
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
        statistics = self.timeline.statistics()
        totals = MediaTotals.of(statistics, bad_messages=self.call.counters().bad_messages)
        self._metrics.add_media(totals - self._metered, sample_rate=statistics.sample_rate)
        self._metered = totals

    async def _write_blocks(self, receive: trio.MemoryReceiveChannel[Ready]) -> None:
        async with receive:
            async for block, ready in receive:
                if self._failure is not None:
                    continue  # keep draining so the receive loop is never stuck on a full channel
                fields = self.call.fields
                try:
                    await trio.to_thread.run_sync(self._write_block, block, fields, ready)
                except RecordingError as error:
                    self._fail(error)

    def _write_block(self, block: StereoBlock, fields: dict[str, str], ready: float) -> None:
        """In a worker thread: create the recording on first use, write and flush.

        Blocks come at most about once per second (full blocks, or the ticker's partial ones),
        so flushing each one costs two system calls a second and bounds what a crash can lose
        to one flush interval plus the reorder window."""
        recording = self._recording or self._create_recording(fields)
        recording.write(block.left, block.right)
        recording.flush(fsync=self._settings.fsync)
        if self._metrics is not None:
            self._metrics.observe_write_lag(time.monotonic() - ready)

    def _create_recording(self, fields: dict[str, str]) -> Recording:
        settings = self._settings
        self._recording = Recording.create(
            settings.output_dir,
            settings.path_template,
            settings.format,
            fields=fields,
            started=self._started,
            metadata=self.call.sidecar_metadata(),
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
        if self._failure is None and (self._recording is not None or call.start is not None):
            try:
                path = await trio.to_thread.run_sync(self._finish_recording, status, statistics)
            except RecordingError as error:
                self._fail(error)
                status = "failed"
        elif self._recording is not None:
            path = await trio.to_thread.run_sync(self._abandon_recording, statistics)
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

    def _finish_recording(self, status: str, statistics: dict[str, Any]) -> Path:
        recording = self._recording or self._create_recording(self.call.fields)
        return recording.finish(
            status,
            ended=datetime.now(UTC),
            metadata=self.call.sidecar_metadata(),
            statistics=statistics,
        )

    def _abandon_recording(self, statistics: dict[str, Any]) -> Path | None:
        """After a disk failure: try once to close what we have, marked failed."""
        try:
            return self._finish_recording("failed", statistics)
        except RecordingError:
            return None


async def _queue(send: trio.MemorySendChannel[Ready], block: StereoBlock) -> None:
    """Hand a block popped from the timeline to the writer. Shielded: once popped, a block exists
    nowhere else, so a cancellation here (stop, drain, the receive loop ending while the ticker
    sends) would lose its audio; bounded by FINALISE_TIMEOUT for a disk that never takes it."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + FINALISE_TIMEOUT):
        await send.send((block, time.monotonic()))


def _nothing() -> None:
    """`receive_nowait` for a stream without one: every message then comes from receive()."""
    return None


def _closed_reason(closed: StreamClosed) -> str:
    if closed.code is None or closed.code == 1006:
        return "connection lost"
    return f"stream closed with {closed.code}" + (f" ({closed.reason})" if closed.reason else "")


def _counters(call: CallState) -> dict[str, int]:
    counters = call.counters()
    return {"bad_messages": counters.bad_messages, "unknown_events": counters.unknown_events, "stops": counters.stops}
