"""Every recording's file work in one process, batched: a few thread hops a second, not one per block.

Theory of operation: each call gets a `Lane`. Its receive loop (and the server's clock) hand the
lane finished stereo blocks; the lane queues them, with a reference to the call's `BlockTarget`,
into one bounded trio memory channel shared by all calls. A single writer task takes everything
queued (waiting at least ``batch_interval`` seconds between batches so that batches stay large
under load) and, for a batch:
1. creates the files of calls whose first block it is, each in a thread of its own, in the
   background: the lane's items wait in the lane meanwhile, other lanes' blocks go on;
2. plans every block in the event loop (offsets reserved, no system call; see `wavbatch`) and
   prepares, per shard (a lane always uses the same shard), one C call for all of them;
3. runs each shard in a worker thread, the shards in parallel: the C call with the GIL released
   throughout, then the blocks of targets that cannot be batched (FLAC), in order, each of their
   targets flushed once. One trio-to-thread hop for the whole batch: that thread runs the first
   shard and hands the others to a pool of its own (`concurrent.futures`), because under load
   every further trip through trio's scheduler (a task per shard, waking the writer after them)
   waited for a whole round of the busy event loop (measured at 750 calls: the thread phase's
   p99 was 0.6-1.3 s for writes of a few milliseconds);
4. back in the event loop, reports the results, observes each block's write lag and frees the
   lanes' room.

Why: a trio-to-thread hop costs about as much as all the per-message work of a second of one
call; with a hop per block (one a second per call) the hops alone capped the server at a few
hundred calls per core. Batched, the hops cost at most ``shards / batch_interval`` a second
whatever the load. And Python code in the threads is kept to nothing: while the event loop is
busy a thread waits for the GIL at every turn (planning 150 blocks in a thread took 0.1-0.8 s of
wall time at 1,000 calls).

Backpressure: a lane holds at most ``per_lane`` blocks queued or being written. A receive loop
that would exceed it waits (its socket is then not read: TCP pushes back on the platform); the
clock never waits, it skips a partial block while the lane is full. The shared channel holds
``per_lane`` blocks per lane it was sized for, so it is never the limit.

A lane's last work (closing the recording) goes through `Lane.finish`: it runs in a thread of
its own once every block the lane queued is written, and the caller waits for its result. Files
are created and finished in threads of their own kind, at most OPEN_THREADS and FINISH_THREADS
at a time, and a batch has a thread to itself: calls ending or starting in a crowd never hold
back the live calls' audio. A finish the disk refused (no space for the final sidecar) is tried
again every ``retry_interval`` seconds by `DiskWriter.retry`, after its call has ended, until it
succeeds or the writer stops.

A hung disk (a dead NFS server, a failing device) blocks a system call for minutes or forever,
and no thread can be interrupted. Waits on the disk are therefore bounded by ``stall_timeout``:
a sender or a finisher that waited that long gets `DiskStalledError` (its call then fails with
1011 and the platform can retry elsewhere) and its lane is marked failed, so that what it still
has queued is skipped once the disk comes back. `DiskWriter.stalled` says when a batch has been
running for that long, so that the server can refuse new calls meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol, TypeVar

import outcome
import trio

from callstream.call.blocks import Block
from callstream.errors import DiskStalledError, RecordingError
from callstream.storage.wavbatch import AppendBatch, PlannedAppend

T = TypeVar("T")

DEFAULT_BATCH_INTERVAL: Final = 0.05  # seconds at least between the starts of two batches
DEFAULT_SHARDS: Final = 8  # worker threads a batch is spread over
DEFAULT_STALL_TIMEOUT: Final = 30.0  # seconds a wait on the disk may last before it is given up
DEFAULT_RETRY_INTERVAL: Final = 10.0  # seconds between attempts at a finish the disk refused
# Threads creating recordings, and threads finishing them, at once. Each kind has its own limit,
# and a batch its own thread, rather than all sharing trio's default limiter (40 threads): when
# many calls ended together (1,800 calls ending over 18 s on two workers), their finishes took
# all 40 and queued 60-170 more, and each batch of every live call's audio waited behind them
# for 1.5-3.6 s (write lag p99 1.5-10 s in 8 of 12 such steps). Two of each: a create or a
# finish makes ~10-25 system calls that release the GIL, and eight threads taking it in turns
# with the event loop switched context twice as often (perf over 1,000 endings: finish threads
# 5.7-5.9 k samples with eight, 4.3-5.0 k with two), while creating files in one directory they
# spun on its lock (perf over 100 creates: 400-630 samples in the creating threads with eight,
# 200-220 with two). One disk gains nothing from more: its fsyncs and inode allocations queue.
OPEN_THREADS: Final = 2
FINISH_THREADS: Final = 2


class BlockTarget(Protocol):
    """What a lane writes to (the call's recorder). ``open_target``, ``write_block`` and
    ``flush_blocks`` run in a worker thread; ``plan_block`` and ``write_failed`` in the event
    loop and must not block."""

    def open_target(self) -> None:
        """Before the lane's first block: create the file. Raises RecordingError."""

    def plan_block(self, block: Block) -> PlannedAppend | None:
        """The block as a batched append (see `wavbatch`; no system call), or None: then
        `write_block` it. Raises RecordingError (a file at its size limit)."""

    def write_block(self, block: Block) -> None:
        """Append one block. Raises RecordingError when the disk fails (or a file at its size
        limit)."""

    def flush_blocks(self) -> None:
        """After `write_block`s: make them readable (and durable, if configured). Raises
        RecordingError."""

    def write_failed(self, error: RecordingError) -> None:
        """The target's open, write or flush raised ``error``. Blocks the lane still has queued
        are then skipped."""


class _Block:
    __slots__ = ("block", "lane", "ready")

    def __init__(self, lane: Lane, block: Block, ready: float) -> None:
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
        self.opened = False  # the target's open_target ran
        self.stalled = False  # a wait on the disk was given up (see DiskStalledError)
        self.held: list[Any] | None = None  # items waiting for open_target (see DiskWriter._write)
        self._waiting = False  # a sender waits for room (its block must go first)
        self._room: trio.Event | None = None  # set when the waiting sender may go on

    def has_room(self) -> bool:
        """True when a block can be queued now: the lane is not full and no sender waits (its
        block was popped earlier and must go first)."""
        return self.queued < self._limit and not self._waiting and not self.finished

    def send_nowait(self, block: Block, ready: float) -> None:
        """Queue ``block`` (popped from the timeline at ``ready``, time.monotonic()); only
        when `has_room` (else ValueError: the lane's bound would be broken)."""
        if self.finished:
            raise RuntimeError("the lane is finished")
        if not self.has_room():
            raise ValueError("the lane is full: wait in send()")
        self._put(block, ready)

    async def send(self, block: Block, ready: float) -> None:
        """Queue ``block``, first waiting for room; one sender at a time. Once a block is popped
        from the timeline it exists nowhere else, so this wait is shielded from cancellation (a
        stop, a drain): bounded by the disk taking the lane's earlier blocks, and by the
        writer's stall timeout: then raises `DiskStalledError` and the lane is failed. On a
        failed lane the block is dropped (its call is failing already)."""
        if self._waiting:
            raise RuntimeError("another task is already waiting to send on this lane")
        if self.failed:
            return
        if self.queued >= self._limit:
            self._waiting = True
            try:
                with trio.CancelScope(shield=True), trio.move_on_after(self._writer.stall_timeout):
                    while self.queued >= self._limit:
                        self._room = room = trio.Event()
                        await room.wait()
            finally:
                self._waiting, self._room = False, None
            if self.queued >= self._limit:
                raise self._stalled("took no audio")
        self._put(block, ready)

    def open_soon(self) -> None:
        """Have the target's file created now (`open_target` in an opening thread) rather than
        when the lane's first block reaches the writer, where that block would wait for it: for a
        recorder that knows the file's name before its first block is cut (a RingCX dialog once
        its DialogInit is in). Blocks queued meanwhile are held and written, in order, once the
        file exists. Once per lane; a call after that, after the first block or after `finish`
        does nothing. Inside the writer's `running` only."""
        if self.opened or self.held is not None or self.finished or self.queued:
            return
        self.held = []
        self._writer._open_soon(self)

    def _stalled(self, what: str) -> DiskStalledError:
        self.failed = self.stalled = True
        return DiskStalledError(f"the disk {what} of this call for {self._writer.stall_timeout:g} s")

    def _put(self, block: Block, ready: float) -> None:
        if self.finished:
            raise RuntimeError("the lane is finished")
        self.queued += 1
        self._writer._put(_Block(self, block, ready))

    async def finish(self, function: Callable[..., T], *args: Any) -> T:
        """The lane's last work: ``function(*args)`` in a worker thread of its own once every block
        queued before it is written (not in the shard's batch: closing, hashing and renaming a
        file must not hold back other calls' blocks); its result or exception. The lane takes
        nothing after it. Not cancellable (the file work cannot be interrupted), but bounded by
        the writer's stall timeout (not waited at all after the lane's earlier stall): then
        raises `DiskStalledError` (``function`` still runs when the disk comes back; its result
        is dropped)."""
        if self.finished:
            raise RuntimeError("the lane is finished")
        self.finished = True
        item = _Call(self, function, args)
        self._writer._put(item)
        # After a stall the disk is known to hang: do not make the call wait a second time.
        patience = 0.0 if self.stalled else self._writer.stall_timeout
        with trio.CancelScope(shield=True), trio.move_on_after(patience):
            await item.done.wait()
        if item.result is None:
            raise self._stalled("did not finish the recording")
        return item.result.unwrap()

    def retry(self, attempt: Callable[[], bool], give_up: Callable[[], None]) -> None:
        """The lane's finish failed (a full disk): keep trying, see `DiskWriter.retry`."""
        self._writer.retry(attempt, give_up)

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
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
    ) -> None:
        """``per_lane``: blocks a lane may have queued; ``max_lanes``: lanes expected at most
        (sizes the shared channel); ``fsync``: fsync what a batch appended (batched appends; the
        targets' `flush_blocks` decide for themselves); ``observe_lag``: called in the event
        loop after each batch with each written block's seconds from ready to flushed;
        ``stall_timeout``: seconds a lane's wait on the disk may last (see the module's
        docstring); ``retry_interval``: seconds between attempts at a refused finish (see
        `retry`)."""
        if per_lane < 1 or shards < 1:
            raise ValueError("per_lane and shards must be at least 1")
        if not stall_timeout > 0:
            raise ValueError("stall_timeout must be positive")
        self.stall_timeout = stall_timeout
        self.retry_interval = retry_interval
        self._stopping = trio.Event()  # set when running() ends: retries give up
        self._batch_started: float | None = None  # trio.current_time() while a batch is written
        self._per_lane = per_lane
        self._shards = shards
        self._batch_interval = batch_interval
        self._observe_lag = observe_lag
        self._fsync = fsync
        # room for every lane's blocks, its finish and the wake-up when its file is created
        self._send, self._receive = trio.open_memory_channel[Any]((per_lane + 2) * max(1, max_lanes) + 64)
        self._reopened: list[_Block | _Call] = []  # held items of lanes whose file now exists
        self._next_shard = 0
        self._nursery: trio.Nursery | None = None
        self._pool: ThreadPoolExecutor | None = None  # shards beside the first (while running)
        self._batch_thread = trio.CapacityLimiter(1)  # one batch at a time, never behind a file's work
        self._open_threads = trio.CapacityLimiter(OPEN_THREADS)
        self._finish_threads = trio.CapacityLimiter(FINISH_THREADS)

    @property
    def stalled(self) -> bool:
        """True while the batch being written has taken longer than the stall timeout."""
        started = self._batch_started
        return started is not None and trio.current_time() - started > self.stall_timeout

    def lane(self, target: BlockTarget) -> Lane:
        """A new lane to ``target``, on the next shard in turn."""
        shard = self._next_shard
        self._next_shard = (shard + 1) % self._shards
        return Lane(self, target, shard, self._per_lane)

    def _open_soon(self, lane: Lane) -> None:
        assert self._nursery is not None, "inside running()"
        self._nursery.start_soon(self._open, lane)

    def _put(self, item: _Block | _Call) -> None:
        # The channel holds per_lane blocks per expected lane plus slack; lanes keep to per_lane,
        # and finish once: trio.WouldBlock here means more lanes than max_lanes.
        self._send.send_nowait(item)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[DiskWriter]:
        """Run the writer for the body; at its end (also when cancelled) write what is queued."""
        with ThreadPoolExecutor(self._shards - 1 or 1, thread_name_prefix="callstream-shard") as pool:
            self._pool = pool
            async with trio.open_nursery() as nursery:
                self._nursery = nursery  # also runs the lanes' finishing calls
                nursery.start_soon(self._run)
                try:
                    yield self
                finally:
                    self._stopping.set()  # pending retries give up (see retry)
                    self._send.close()  # the writer writes what is queued, then ends

    def retry(self, attempt: Callable[[], bool], give_up: Callable[[], None]) -> None:
        """Run ``attempt()`` in a finishing thread every ``retry_interval`` seconds until it
        returns True: a recording whose finish the disk refused (no space for its sidecar) is
        finished once there is space again. When the writer stops first, ``give_up()`` runs
        instead, in a thread (it leaves the files to recovery at the next start). Neither may
        raise. Only inside `running`."""
        assert self._nursery is not None, "inside running()"
        self._nursery.start_soon(self._retry, attempt, give_up)

    async def _retry(self, attempt: Callable[[], bool], give_up: Callable[[], None]) -> None:
        with trio.CancelScope(shield=True):  # ends when running() does: see _stopping
            while True:
                with trio.move_on_after(self.retry_interval):
                    await self._stopping.wait()
                if self._stopping.is_set():
                    await trio.to_thread.run_sync(give_up, limiter=self._finish_threads)
                    return
                if await trio.to_thread.run_sync(attempt, limiter=self._finish_threads):
                    return

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

    async def _write(self, batch: list[_Block | _Call | None]) -> None:
        # Items of lanes whose file is being created wait in the lane (`held`), in order, and
        # come back through `_reopened`: a slow create never holds back other calls' blocks.
        ready, self._reopened = self._reopened, []
        for item in batch:
            if item is None:  # an open finished: its held items are in `ready` already
                continue
            lane = item.lane
            if lane.held is not None:
                lane.held.append(item)
            elif not lane.opened and type(item) is _Block:
                lane.held = [item]
                assert self._nursery is not None
                self._nursery.start_soon(self._open, lane)
            else:
                ready.append(item)
        blocks = [item for item in ready if type(item) is _Block]
        failures: list[tuple[Lane, RecordingError]] = []
        shards = self._plan(blocks, failures)
        if shards:
            self._batch_started = trio.current_time()
            try:
                failures += await trio.to_thread.run_sync(self._write_shards, shards, limiter=self._batch_thread)
            finally:
                self._batch_started = None
        written: list[_Block] = []
        for shard in shards:
            if shard.batch is not None:
                errors = shard.batch.results()
                for (item, _), error in zip(shard.planned, errors, strict=True):
                    if error is None:
                        written.append(item)
                    else:
                        _fail(item.lane, error, failures)
            written += shard.written
        if self._observe_lag is not None:
            now = time.monotonic()
            for item in written:
                if not item.lane.failed:
                    self._observe_lag(now - item.ready)
        for item in blocks:
            item.lane._written(1)
        for lane, error in failures:
            lane.target.write_failed(error)
        assert self._nursery is not None
        for item in ready:  # every block of its lane is written by now
            if type(item) is _Call:
                self._nursery.start_soon(self._finish, item)

    async def _open(self, lane: Lane) -> None:
        """Create the lane's file in a thread, then hand its held items back to the writer."""
        with trio.CancelScope(shield=True):  # see _run
            try:
                await trio.to_thread.run_sync(lane.target.open_target, limiter=self._open_threads)
            except RecordingError as error:
                lane.failed = True
                lane.target.write_failed(error)
        lane.opened = True
        held, lane.held = lane.held or [], None
        self._reopened += held
        self._send.send_nowait(None)  # wake the writer

    def _plan(self, blocks: list[_Block], failures: list[tuple[Lane, RecordingError]]) -> list[_Shard]:
        """In the event loop: each block planned as a batched append, or left for the Python
        path; per shard, the appends prepared as one C call."""
        shards: dict[int, _Shard] = {}
        for item in blocks:
            lane = item.lane
            if lane.failed:
                continue
            shard = shards.get(lane.shard)
            if shard is None:
                shard = shards[lane.shard] = _Shard()
            try:
                plan = lane.target.plan_block(item.block)
            except RecordingError as error:
                _fail(lane, error, failures)
                continue
            if plan is None:
                shard.python.append(item)
            else:
                shard.planned.append((item, plan))
                if plan.after is not None:
                    shard.after.append((lane, plan.after))
        for shard in shards.values():
            if shard.planned:
                shard.batch = AppendBatch([plan for _, plan in shard.planned], fsync=self._fsync)
        return list(shards.values())

    def _write_shards(self, shards: list[_Shard]) -> list[tuple[Lane, RecordingError]]:
        """In a worker thread: every shard's writes, the first here, the others in the pool, in
        parallel; their failures."""
        pool = self._pool
        assert pool is not None, "inside running()"
        others = [pool.submit(shard.write) for shard in shards[1:]]
        failures = shards[0].write()
        for future in others:
            failures += future.result()
        return failures

    async def _finish(self, call: _Call) -> None:
        with trio.CancelScope(shield=True):  # see _run
            call.result = await trio.to_thread.run_sync(
                outcome.capture, call.function, *call.args, limiter=self._finish_threads
            )
        call.done.set()


class _Shard:
    """One shard's part of a batch: its prepared C appends and its Python-path blocks."""

    __slots__ = ("after", "batch", "planned", "python", "written")

    def __init__(self) -> None:
        self.planned: list[tuple[_Block, PlannedAppend]] = []
        self.after: list[tuple[Lane, Callable[[], None]]] = []  # plans' `after`, in order
        self.batch: AppendBatch | None = None
        self.python: list[_Block] = []
        self.written: list[_Block] = []  # Python-path blocks written and flushed

    def write(self) -> list[tuple[Lane, RecordingError]]:
        """In a worker thread: the C appends in one call (the GIL released), the planned
        appends' `after` work, then the Python-path blocks in order, each of their targets
        flushed once at the end."""
        if self.batch is not None:
            self.batch.run()
        failures: list[tuple[Lane, RecordingError]] = []
        for lane, after in self.after:
            try:
                after()
            except RecordingError as error:
                _fail(lane, error, failures)
        unflushed: dict[Lane, list[_Block]] = {}
        for item in self.python:
            lane = item.lane
            if lane.failed:
                continue
            try:
                lane.target.write_block(item.block)
            except RecordingError as error:
                _fail(lane, error, failures)
                continue
            unflushed.setdefault(lane, []).append(item)
        for lane, items in unflushed.items():
            if lane.failed:
                continue
            try:
                lane.target.flush_blocks()
            except RecordingError as error:
                _fail(lane, error, failures)
                continue
            self.written += items
        return failures


def _fail(lane: Lane, error: RecordingError, failures: list[tuple[Lane, RecordingError]]) -> None:
    """The lane's first failure is reported; its later blocks are skipped."""
    if not lane.failed:
        lane.failed = True
        failures.append((lane, error))
