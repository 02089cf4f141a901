"""The asyncio-to-trio hand-over of one dialog: bounded, back-pressuring, nothing lost."""

from __future__ import annotations

import asyncio
import threading
import time

import trio

from callstream.ringcx.bridge import DialogChannel, DialogEnded


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
        channel = DialogChannel(side.loop, capacity=64, interval=0.3)

        async def reader() -> None:
            for i in range(6):
                channel.put_nowait(i)
                await asyncio.sleep(0.02)

        side.run(reader()).result(5)
        with trio.fail_after(10):
            first = await channel.receive_batch()  # the first take is not held back
            started = trio.current_time()
            side.run(reader()).result(5)
            second = await channel.receive_batch()
            assert trio.current_time() - started >= 0.2  # the next one waits for the interval
        assert first == list(range(6)) and second == list(range(6))
    finally:
        side.close()
