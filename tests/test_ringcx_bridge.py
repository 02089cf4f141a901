"""The asyncio-to-trio hand-over of one dialog: bounded, back-pressuring, nothing lost."""

from __future__ import annotations

import asyncio
import threading
import time

import trio

from callstream.ringcx.bridge import DialogChannel, DialogEnded, TakeGrid


class AsyncioThread:
    """An asyncio loop in a thread of its own, as the gRPC front end runs it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine) -> asyncio.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


async def test_a_full_queue_stops_the_reader_until_taken_and_its_wait_leaves_the_clock() -> None:
    side = AsyncioThread()
    try:
        channel = DialogChannel(side.loop, capacity=4, interval=0.05)
        put = {"count": 0}

        async def reader() -> None:
            for i in range(10):
                await channel.put(i)
                put["count"] += 1
            channel.end("closed")

        done = side.run(reader())
        with trio.fail_after(10):
            while put["count"] < 3:
                await trio.sleep(0.01)
            await trio.sleep(0.3)  # the reader had time to go on, but the queue is full
            assert put["count"] == 3  # the fourth put waits (and so the stream is not read)
            assert channel.clock() < time.monotonic() - 0.25  # the wait is not on the dialog's clock
            taken: list[int] = []
            try:
                while True:
                    taken += await channel.receive_batch()
            except DialogEnded as ended:
                assert ended.how == "closed"
            assert taken == list(range(10))
            assert done.result(5) is None
            assert channel.clock() < time.monotonic() - 0.25  # and stays off it after
    finally:
        side.close()


async def test_events_are_taken_in_batches_every_interval() -> None:
    side = AsyncioThread()
    try:
        channel = DialogChannel(side.loop, capacity=64, interval=1.0)

        async def reader() -> None:
            for i in range(6):
                channel.put_nowait(i)
                await asyncio.sleep(0.02)

        channel.put_nowait("init")  # queued before the recorder asks (its task starts late)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, lambda: side.run(reader()).result(5))
                # the first take waits for the interval too: what follows the first event
                # within it (a dialog's segments after its DialogInit) comes in the same batch
                first = await channel.receive_batch()
            assert first == ["init", *range(6)]
            started = trio.current_time()
            side.run(reader()).result(5)
            second = await channel.receive_batch()
            assert trio.current_time() - started >= 0.6  # the next one waits for the interval
        assert second == list(range(6))
    finally:
        side.close()


async def test_a_take_grid_wakes_every_dialog_at_its_points_and_once_stopped_leaves_them_their_timers(
        autojump_clock) -> None:
    interval = 0.5
    loop = asyncio.new_event_loop()  # not run: the events are put from trio (put_nowait is thread-safe)
    try:
        grid = TakeGrid(interval)
        channels = [DialogChannel(loop, capacity=64, interval=interval, grid=grid) for _ in range(2)]
        with trio.fail_after(30):
            async with trio.open_nursery() as timer:
                timer.start_soon(grid.run)
                await trio.sleep(0.01)
                assert grid.running
                for channel in channels:  # the first take comes at a point of the grid too
                    channel.put_nowait("first")
                    assert await channel.receive_batch() == ["first"]
                first = trio.current_time()
                taken: list[float] = []

                async def take(channel: DialogChannel, item: int) -> None:
                    assert await channel.receive_batch() == [item]
                    taken.append(trio.current_time())

                async with trio.open_nursery() as takes:
                    for k, channel in enumerate(channels):
                        takes.start_soon(take, channel, k)
                    await trio.sleep(0.1)
                    channels[0].put_nowait(0)
                    await trio.sleep(0.2)
                    channels[1].put_nowait(1)
                # both at one point of the grid, at least its minimum share after the last take
                assert taken[0] == taken[1]
                assert abs(taken[0] / interval - round(taken[0] / interval)) < 1e-6
                assert taken[0] - first >= 0.7 * interval
                timer.cancel_scope.cancel()
            assert not grid.running
            channels[0].put_nowait(2)  # a wait without the grid times itself
            assert await channels[0].receive_batch() == [2]
    finally:
        loop.close()
