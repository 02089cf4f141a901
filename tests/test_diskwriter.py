"""The disk writer: per-call order, bounded lanes that push back, finishing after the last block,
a failing call that stops alone. Real worker threads, a fake target that records what it got."""

from __future__ import annotations

import threading

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.call.timeline import StereoBlock
from callstream.errors import DiskStalledError, RecordingError
from callstream.storage.diskwriter import DiskWriter, Lane


class Target:
    """Records blocks by their start; can be made to fail at a block or to hold writes."""

    def __init__(self, fail_at: int | None = None, gate: threading.Event | None = None) -> None:
        self.blocks: list[int] = []
        self.flushes = 0
        self.errors: list[RecordingError] = []
        self.fail_at = fail_at
        self.gate = gate
        self.opened = 0

    def open_target(self) -> None:
        self.opened += 1

    def plan_block(self, block: StereoBlock) -> None:
        assert self.opened == 1
        return None  # the Python path: write_block + flush_blocks

    def write_block(self, block: StereoBlock) -> None:
        if self.gate is not None:
            assert self.gate.wait(10)
        if block.start == self.fail_at:
            raise RecordingError("disk full")
        self.blocks.append(block.start)

    def flush_blocks(self) -> None:
        self.flushes += 1

    def write_failed(self, error: RecordingError) -> None:
        self.errors.append(error)


def block(start: int) -> StereoBlock:
    return StereoBlock(left=b"\xff", right=b"\xff", start=start)


@settings(max_examples=25, deadline=None)
@given(
    plan=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), max_size=60),
    shards=st.integers(1, 3),
    limit=st.integers(1, 4),
)
def test_every_lane_gets_its_blocks_in_order_then_finishes(
    plan: list[tuple[int, int]], shards: int, limit: int
) -> None:
    """Five calls send blocks in a random interleaving, sometimes yielding in between; each
    target gets exactly its blocks, in order, and its finishing call sees all of them."""
    targets = [Target() for _ in range(5)]
    finished: list[list[int]] = [[] for _ in range(5)]

    async def main() -> None:
        writer = DiskWriter(per_lane=limit, max_lanes=5, shards=shards, batch_interval=0.001)
        async with writer.running():
            lanes = [writer.lane(target) for target in targets]
            sent = [0] * 5

            async def call(index: int) -> None:
                for lane_index, pause in plan:
                    if lane_index != index:
                        continue
                    await lanes[index].send(block(sent[index]), 0.0)
                    sent[index] += 1
                    assert lanes[index].queued <= limit
                    if pause:
                        await trio.sleep(0.001 * pause)
                finished[index] = await lanes[index].finish(lambda t=targets[index]: list(t.blocks))

            async with trio.open_nursery() as nursery:
                for index in range(5):
                    nursery.start_soon(call, index)

    trio.run(main)
    for index, target in enumerate(targets):
        expected = list(range(sum(1 for lane_index, _ in plan if lane_index == index)))
        assert target.blocks == expected
        assert finished[index] == expected
        assert target.errors == []


async def test_a_full_lane_waits_and_keeps_its_order() -> None:
    """While the disk holds, a lane takes `per_lane` blocks; the next send waits and meanwhile
    has_room() is False (a partial block popped by the clock must not overtake it)."""
    gate = threading.Event()
    target = Target(gate=gate)
    writer = DiskWriter(per_lane=2, max_lanes=1, shards=1, batch_interval=0.001)
    async with writer.running():
        lane = writer.lane(target)
        lane.send_nowait(block(0), 0.0)
        lane.send_nowait(block(1), 0.0)
        assert not lane.has_room()
        with pytest.raises(ValueError, match="full"):
            lane.send_nowait(block(2), 0.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lane.send, block(2), 0.0)
            await trio.sleep(0.05)
            assert lane.queued == 2  # still waiting: the disk has not taken anything
            assert not lane.has_room()
            gate.set()
        assert await lane.finish(lambda: list(target.blocks)) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="finished"):
        lane.send_nowait(block(3), 0.0)


async def test_a_hung_disk_gives_up_after_the_stall_timeout_then_recovers() -> None:
    """A write that hangs: the writer says it is stalled once the timeout has passed, the
    waiting sender gets DiskStalledError (its lane is failed, so its queued blocks are skipped
    when the disk is back), finishing does not wait a second timeout, and another call works
    again once the write returns."""
    gate = threading.Event()
    hung, later = Target(gate=gate), Target()
    writer = DiskWriter(per_lane=1, max_lanes=2, shards=1, batch_interval=0.001, stall_timeout=0.5)
    with trio.fail_after(10):
        await _hang_then_recover(writer, gate, hung, later)
    assert hung.blocks == [0]


async def _hang_then_recover(writer: DiskWriter, gate: threading.Event, hung: Target, later: Target) -> None:
    async with writer.running():
        lane = writer.lane(hung)
        lane.send_nowait(block(0), 0.0)
        await trio.sleep(0.2)
        assert not writer.stalled  # writing, but not for long yet
        started = trio.current_time()
        with pytest.raises(DiskStalledError, match="took no audio"):
            await lane.send(block(1), 0.0)
        assert trio.current_time() - started >= 0.5 - 0.01
        assert writer.stalled and lane.failed
        await lane.send(block(2), 0.0)  # dropped: the call is failing already
        started = trio.current_time()
        with pytest.raises(DiskStalledError, match="did not finish"):
            await lane.finish(lambda: "closed")
        assert trio.current_time() - started < 0.25
        gate.set()
        other = writer.lane(later)
        await other.send(block(7), 0.0)
        assert await other.finish(lambda: list(later.blocks)) == [7]
        assert not writer.stalled


async def test_a_failing_lane_stops_alone() -> None:
    doomed, healthy = Target(fail_at=1), Target()
    writer = DiskWriter(per_lane=8, max_lanes=2, shards=1, batch_interval=0.001)
    async with writer.running():
        lanes = [writer.lane(doomed), writer.lane(healthy)]
        for start in range(4):
            for lane in lanes:
                await lane.send(block(start), 0.0)
        await lanes[0].finish(lambda: None)
        await lanes[1].finish(lambda: None)
    assert doomed.blocks == [0]  # block 1 failed, 2 and 3 were skipped
    assert [str(error) for error in doomed.errors] == ["disk full"]
    assert healthy.blocks == [0, 1, 2, 3] and healthy.errors == []


async def test_a_waiting_sender_is_not_overtaken_when_room_comes() -> None:
    """The clock sends a partial block whenever has_room(): once the disk frees the lane, the
    block the receive loop waits with (popped earlier) must still go first."""
    for _ in range(20):
        gate = threading.Event()
        target = Target(gate=gate)
        writer = DiskWriter(per_lane=2, max_lanes=1, shards=1, batch_interval=0.001)
        async with writer.running():
            lane = writer.lane(target)
            lane.send_nowait(block(0), 0.0)
            lane.send_nowait(block(1), 0.0)

            async def clock(lane: Lane) -> None:
                while not lane.has_room():
                    await trio.sleep(0)
                lane.send_nowait(block(3), 0.0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(lane.send, block(2), 0.0)
                await trio.sleep(0.01)
                nursery.start_soon(clock, lane)
                await trio.sleep(0.01)
                gate.set()
            await lane.finish(lambda: None)
        assert target.blocks == [0, 1, 2, 3]


async def test_a_file_that_cannot_be_created_fails_its_lane() -> None:
    class Unopenable(Target):
        def open_target(self) -> None:
            raise RecordingError("cannot create directory")

    doomed, healthy = Unopenable(), Target()
    writer = DiskWriter(per_lane=8, max_lanes=2, shards=2, batch_interval=0.001)
    async with writer.running():
        lanes = [writer.lane(doomed), writer.lane(healthy)]
        for start in range(3):
            for lane in lanes:
                await lane.send(block(start), 0.0)
        for lane in lanes:
            await lane.finish(lambda: None)
    assert doomed.blocks == [] and [str(e) for e in doomed.errors] == ["cannot create directory"]
    assert healthy.blocks == [0, 1, 2] and healthy.opened == 1


def test_finishes_that_hang_never_hold_back_a_live_calls_blocks() -> None:
    """Calls ending together: their finishes (closing, hashing, renaming a file) run a bounded
    number at a time in threads of their own, so a live call's file is still created and its
    blocks still written while 50 finishes hang. (All sharing trio's default limiter of 40
    threads, the batch waited behind them: 1,800 calls ending over 18 s had write lag p99 5 s.)"""
    gate = threading.Event()
    live = Target()

    async def main() -> None:
        writer = DiskWriter(per_lane=4, max_lanes=60, batch_interval=0.001)
        async with writer.running():
            ending = [writer.lane(Target()) for _ in range(50)]
            for lane in ending:
                await lane.send(block(0), 0.0)
            async with trio.open_nursery() as nursery:
                for lane in ending:
                    nursery.start_soon(lane.finish, gate.wait, 30)
                await trio.sleep(0.2)  # the finishes have taken their threads
                lane = writer.lane(live)
                try:
                    with trio.fail_after(5):
                        await lane.send(block(0), 0.0)
                        while live.blocks != [0]:
                            await trio.sleep(0.01)
                finally:
                    gate.set()

    trio.run(main)
    assert live.blocks == [0]


async def test_a_retry_runs_until_it_succeeds_or_the_writer_stops() -> None:
    """A finish the disk refused is tried again every retry_interval until it succeeds; when the
    writer stops first, give_up runs instead (the files go to recovery at the next start)."""
    attempts: list[int] = []
    gave_up: list[str] = []

    def third_time_lucky() -> bool:
        attempts.append(1)
        return len(attempts) >= 3

    writer = DiskWriter(per_lane=2, max_lanes=2, retry_interval=0.01)
    with trio.fail_after(10):
        async with writer.running():
            writer.retry(third_time_lucky, lambda: gave_up.append("lucky"))
            writer.retry(lambda: False, lambda: gave_up.append("hopeless"))
            while len(attempts) < 3:
                await trio.sleep(0.01)
            await trio.sleep(0.05)
    assert len(attempts) == 3
    assert gave_up == ["hopeless"]


async def test_open_soon_creates_the_file_before_the_first_block_which_waits_for_it() -> None:
    """`Lane.open_soon`: the file is created with no block queued; blocks sent while it is being
    created are written after it, in order; the file is created once."""

    class SlowToOpen(Target):
        def __init__(self) -> None:
            super().__init__()
            self.opening = threading.Event()
            self.release = threading.Event()

        def open_target(self) -> None:
            self.opening.set()
            assert self.release.wait(10)
            super().open_target()

    target = SlowToOpen()
    writer = DiskWriter(per_lane=8, max_lanes=1, shards=1, batch_interval=0.001)
    with trio.fail_after(10):
        async with writer.running():
            lane = writer.lane(target)
            lane.open_soon()
            assert await trio.to_thread.run_sync(target.opening.wait, 5), "not created before a block"
            lane.open_soon()  # once only
            for start in range(3):
                await lane.send(block(start), 0.0)
            await trio.sleep(0.05)
            assert target.blocks == []  # held until the file exists
            target.release.set()
            await lane.finish(lambda: None)
    assert target.opened == 1 and target.blocks == [0, 1, 2] and target.errors == []
