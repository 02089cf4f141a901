"""Every recording's file work in one process, batched: a few thread hops a second, not one per block.

Theory of operation: each call gets a `Lane`. Its receive loop (and the server's clock) hand the
lane finished stereo blocks; the lane queues them, with a reference to the call's `BlockTarget`,
into one bounded trio memory channel shared by all calls. A single writer task takes everything
queued (waiting at least ``batch_interval`` seconds between batches so that batches stay large
under load), splits it by shard (a lane always uses the same shard, so one call's work stays in
order), and runs each shard's part in its own worker thread, the shards in parallel. In a thread
a batch writes every block to its target, then flushes each target it wrote to once, then
observes each block's write lag.

Why: a trio-to-thread hop costs about as much as all the per-message work of a second of one
call; with a hop per block (one a second per call) the hops alone capped the server at a few
hundred calls per core. Batched, the hops cost at most ``shards / batch_interval`` a second
whatever the load.

Backpressure: a lane holds at most ``per_lane`` blocks queued or being written. A receive loop
that would exceed it waits (its socket is then not read: TCP pushes back on the platform); the
clock never waits, it skips a partial block while the lane is full. The shared channel holds
``per_lane`` blocks per lane it was sized for, so it is never the limit.

A lane's last work (closing the recording) goes through `Lane.finish`: it runs in a thread of
its own once every block the lane queued is written, and the caller waits for its result.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol, TypeVar

import outcome
import trio

from callstream.errors import RecordingError
from callstream.timeline import StereoBlock
from callstream.wavbatch import PlannedAppend, append_all

T = TypeVar("T")

DEFAULT_BATCH_INTERVAL: Final = 0.05  # seconds at least between the starts of two batches
DEFAULT_SHARDS: Final = 8  # worker threads a batch is spread over


class BlockTarget(Protocol):
    """What a lane writes to (the call's recorder). The first three run in a worker thread."""

    def plan_block(self, block: StereoBlock) -> PlannedAppend | None:
        """The block as a batched append (see `wavbatch`), or None: then `write_block` it.
        Raises RecordingError when the disk fails."""

    def write_block(self, block: StereoBlock) -> None:
        """Append one block. Raises RecordingError when the disk fails."""

    def flush_blocks(self) -> None:
        """Make what was written readable (and durable, if configured). Raises RecordingError."""

    def write_failed(self, error: RecordingError) -> None:
        """In trio, after the batch: the target's write or flush raised ``error``. Blocks the
        lane still has queued are then skipped."""


class _Block:
    __slots__ = ("block", "lane", "ready")

    def __init__(self, lane: Lane, block: StereoBlock, ready: float) -> None:
        self.lane = lane
        self.block = block
        self.ready = ready  # time.monotonic() when the block left the timeline


class _Call:
    __slots__ = ("args", "done", "function", "lane", "result")

    def __init__(self, lane: Lane, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.lane = lane
        self.function = function
        self.args = args
        self.result: outcome.Outcome | None = None
        self.done = trio.Event()


class Lane:
    """One call's way to the disk. Use from trio only."""

    def __init__(self, writer: DiskWriter, target: BlockTarget, shard: int, limit: int) -> None:
        self._writer = writer
        self.target = target
        self.shard = shard
        self._limit = limit
        self.queued = 0  # blocks queued or being written
        self.failed = False  # a write failed: the lane's remaining blocks are skipped
        self.finished = False  # `finish` was called: no more blocks
        self._waiting = False  # a sender waits for room (its block must go first)
        self._room: trio.Event | None = None  # set when the waiting sender may go on

    def has_room(self) -> bool:
        """True when a block can be queued now: the lane is not full and no sender waits (its
        block was popped earlier and must go first)."""
        return self.queued < self._limit and not self._waiting and not self.finished

    def send_nowait(self, block: StereoBlock, ready: float) -> None:
        """Queue ``block`` (popped from the timeline at ``ready``, time.monotonic()); only
        when `has_room` (else ValueError: the lane's bound would be broken)."""
        if self.finished:
            raise RuntimeError("the lane is finished")
        if not self.has_room():
            raise ValueError("the lane is full: wait in send()")
        self._put(block, ready)

    async def send(self, block: StereoBlock, ready: float) -> None:
        """Queue ``block``, first waiting for room; one sender at a time. Once a block is popped
        from the timeline it exists nowhere else, so this wait is shielded from cancellation (a
        stop, a drain): bounded only by the disk taking the lane's earlier blocks."""
        if self._waiting:
            raise RuntimeError("another task is already waiting to send on this lane")
        if self.queued >= self._limit:
            self._waiting = True
            try:
                with trio.CancelScope(shield=True):
                    while self.queued >= self._limit:
                        self._room = room = trio.Event()
                        await room.wait()
            finally:
                self._waiting, self._room = False, None
        self._put(block, ready)

    def _put(self, block: StereoBlock, ready: float) -> None:
        if self.finished:
            raise RuntimeError("the lane is finished")
        self.queued += 1
        self._writer._put(_Block(self, block, ready))

    async def finish(self, function: Callable[..., T], *args: Any) -> T:
        """The lane's last work: ``function(*args)`` in a worker thread of its own once every block
        queued before it is written (not in the shard's batch: closing, hashing and renaming a
        file must not hold back other calls' blocks); its result or exception. The lane takes
        nothing after it. Not cancellable (the file work cannot be interrupted)."""
        if self.finished:
            raise RuntimeError("the lane is finished")
        self.finished = True
        item = _Call(self, function, args)
        self._writer._put(item)
        with trio.CancelScope(shield=True):
            await item.done.wait()
        assert item.result is not None
        return item.result.unwrap()

    def _written(self, count: int) -> None:
        self.queued -= count
        if self._room is not None and self.queued < self._limit:
            self._room.set()


class DiskWriter:
    """The process's writer task and its shards; lanes work inside ``async with running()``."""

    def __init__(
        self,
        *,
        per_lane: int,
        max_lanes: int,
        shards: int = DEFAULT_SHARDS,
        batch_interval: float = DEFAULT_BATCH_INTERVAL,
        fsync: bool = False,
        observe_lag: Callable[[float], None] | None = None,
    ) -> None:
        """``per_lane``: blocks a lane may have queued; ``max_lanes``: lanes expected at most
        (sizes the shared channel); ``fsync``: fsync what a batch appended (batched appends; the
        targets' `flush_blocks` decide for themselves); ``observe_lag``: called in a worker
        thread with each block's seconds from ready to flushed."""
        if per_lane < 1 or shards < 1:
            raise ValueError("per_lane and shards must be at least 1")
        self._per_lane = per_lane
        self._shards = shards
        self._batch_interval = batch_interval
        self._observe_lag = observe_lag
        self._fsync = fsync
        self._send, self._receive = trio.open_memory_channel[Any](per_lane * max(1, max_lanes) + 64)
        self._next_shard = 0
        self._nursery: trio.Nursery | None = None

    def lane(self, target: BlockTarget) -> Lane:
        """A new lane to ``target``, on the next shard in turn."""
        shard = self._next_shard
        self._next_shard = (shard + 1) % self._shards
        return Lane(self, target, shard, self._per_lane)

    def _put(self, item: _Block | _Call) -> None:
        # The channel holds per_lane blocks per expected lane plus slack; lanes keep to per_lane,
        # and finish once: trio.WouldBlock here means more lanes than max_lanes.
        self._send.send_nowait(item)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[DiskWriter]:
        """Run the writer for the body; at its end (also when cancelled) write what is queued."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery  # also runs the lanes' finishing calls
            nursery.start_soon(self._run)
            try:
                yield self
            finally:
                self._send.close()  # the writer writes what is queued, then ends

    async def _run(self) -> None:
        # Shielded: the calls' finalisation (itself shielded) still needs the writer while the
        # server is being cancelled; the writer ends when the channel is closed and empty.
        with trio.CancelScope(shield=True):
            receive = self._receive
            while True:
                started = trio.current_time()
                try:
                    batch = [await receive.receive()]
                except trio.EndOfChannel:
                    return
                while True:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._write(batch)
                rest = self._batch_interval - (trio.current_time() - started)
                if rest > 0:
                    await trio.sleep(rest)

    async def _write(self, batch: list[_Block | _Call]) -> None:
        by_shard: dict[int, list[_Block]] = {}
        calls: list[_Call] = []
        for item in batch:
            if type(item) is _Block:
                by_shard.setdefault(item.lane.shard, []).append(item)
            else:
                calls.append(item)
        failures: list[tuple[Lane, RecordingError]] = []
        if len(by_shard) == 1:
            [blocks] = by_shard.values()
            failures += await trio.to_thread.run_sync(self._write_shard, blocks)
        elif by_shard:
            async with trio.open_nursery() as nursery:
                for blocks in by_shard.values():
                    nursery.start_soon(self._write_in_thread, blocks, failures)
        for item in batch:
            if type(item) is _Block:
                item.lane._written(1)
        for lane, error in failures:
            lane.target.write_failed(error)
        assert self._nursery is not None
        for call in calls:  # every block of its lane is written by now
            self._nursery.start_soon(self._finish, call)

    async def _finish(self, call: _Call) -> None:
        with trio.CancelScope(shield=True):  # see _run
            call.result = await trio.to_thread.run_sync(outcome.capture, call.function, *call.args)
        call.done.set()

    async def _write_in_thread(self, blocks: list[_Block], failures: list[Any]) -> None:
        failures += await trio.to_thread.run_sync(self._write_shard, blocks)

    def _write_shard(self, items: list[_Block]) -> list[tuple[Lane, RecordingError]]:
        """In a worker thread: one shard's blocks of a batch, in order. Blocks that plan as batched
        appends are written together in one C call; the others are written here and their
        targets flushed once at the end."""
        failures: list[tuple[Lane, RecordingError]] = []
        unflushed: dict[Lane, None] = {}  # lanes written here, not flushed yet
        planned: list[tuple[_Block, PlannedAppend]] = []
        written: list[_Block] = []

        def fail(lane: Lane, error: RecordingError) -> None:
            if not lane.failed:
                lane.failed = True
                failures.append((lane, error))

        def append_planned() -> None:
            errors = append_all([plan for _, plan in planned], fsync=self._fsync)
            for (item, _), error in zip(planned, errors, strict=True):
                if error is None:
                    written.append(item)
                else:
                    fail(item.lane, error)
            planned.clear()

        def flush(lane: Lane) -> None:
            del unflushed[lane]
            if not lane.failed:
                try:
                    lane.target.flush_blocks()
                except RecordingError as error:
                    fail(lane, error)

        for item in items:
            lane = item.lane
            if lane.failed:
                continue
            try:
                plan = lane.target.plan_block(item.block)
                if plan is None:
                    lane.target.write_block(item.block)
                    unflushed[lane] = None
                    written.append(item)
                else:
                    planned.append((item, plan))
            except RecordingError as error:
                fail(lane, error)
        append_planned()
        for lane in list(unflushed):
            flush(lane)
        if self._observe_lag is not None:
            now = time.monotonic()
            for item in written:
                if not item.lane.failed:
                    self._observe_lag(now - item.ready)
        return failures
