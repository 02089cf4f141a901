"""One dialog's events handed from the gRPC thread (asyncio) to its recorder (trio), bounded.

Theory of operation: the gRPC thread's reader appends each event to a deque; when the deque
holds ``capacity`` events it stops reading the RPC (so HTTP/2 flow control pushes back on the
platform) until the recorder has taken them. The recorder takes everything queued at once
(`receive_batch`) every ``interval`` seconds, or as soon as half the capacity is queued or the
stream has ended, so that a real-time dialog (20 events a second) costs two cross-thread
wake-ups a second, not twenty; those takes fall on a grid shared by every dialog, so that trio's
thread wakes once per interval for all of them (see GRID_MIN_SHARE), and one timer (`TakeGrid`)
wakes them all rather than a timeout of each dialog's own. The reader is woken
(``loop.call_soon_threadsafe``) only when it waits for room, the recorder
(``TrioToken.run_sync_soon``) only early. A lock guards the waiting
flags against the race between "found nothing" and "asleep".

The dialog's clock (`clock`): ``time.monotonic()`` less the time the reader spent waiting for
room. While the recorder cannot keep up (a slow disk) the platform's chunks queue up in the
transport and then arrive in a burst; without this, the segment mixer would take the wait for a
pause of the media (a hold) and insert silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from typing import Any, Final

import trio

DEFAULT_CAPACITY: Final = 64  # events (~3 s of a two-segment dialog at 100 ms chunks)
DEFAULT_INTERVAL: Final = 0.5  # seconds between takes of a dialog that keeps up
# A take by the clock comes on a grid of ``interval`` shared by every dialog (trio's clock), at
# least this share of an interval after the last take: all dialogs' takes fall due in one tick of
# trio's loop, which wakes once per interval for all of them instead of once per dialog (the
# wake-ups, each a handover of the GIL from the gRPC thread, cost more than the takes).
GRID_MIN_SHARE: Final = 0.7


class DialogEnded(Exception):
    """The RPC's side is over: ``how`` is "closed" (the platform ended the stream), "cancelled"
    (it cancelled the RPC) or "failed: ..." (the transport failed)."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class TakeGrid:
    """The timer of every dialog's takes by the clock: a task (`run`) that wakes, at each point
    of the grid of ``interval`` seconds on trio's clock, every channel that waits for one.
    Why: a timeout per wait (a cancel scope and its deadline in trio's heap, set and expired
    twice a second per dialog) took about a tenth of trio's thread in a profile at 300 dialogs
    (benchmarks/RESULTS.md, 2026-12-06 12:09 UTC). Use from trio only. While `run` is not
    running, channels time their waits themselves."""

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.running = False
        self._waiting: list[trio.Event] = []

    def wake_at_next_point(self, event: trio.Event) -> None:
        """Set ``event`` at the grid's next point (an event already set stays set)."""
        self._waiting.append(event)

    async def run(self) -> None:
        """Wake the waiting channels at every point of the grid, until cancelled."""
        interval = self.interval
        self.running = True
        try:
            while True:
                # the same points as DialogChannel._next_point: k * interval
                await trio.sleep_until((math.floor(trio.current_time() / interval) + 1) * interval)
                waiting, self._waiting = self._waiting, []
                for event in waiting:
                    event.set()
        finally:  # the channels still waiting time their next waits themselves
            self.running = False
            waiting, self._waiting = self._waiting, []
            for event in waiting:
                event.set()


class DialogChannel:
    """Create in trio (it keeps the trio token); the reader side runs on ``loop``. ``grid``:
    the shared timer of the takes by the clock (its interval must be ``interval``); without
    one, or while it is not running, each wait has a timeout of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, capacity: int = DEFAULT_CAPACITY,
                 interval: float = DEFAULT_INTERVAL, grid: TakeGrid | None = None) -> None:
        if grid is not None and grid.interval != interval:
            raise ValueError("the grid's interval differs from the channel's")
        self._grid_timer = grid
        self._loop = loop
        self._token = trio.lowlevel.current_trio_token()
        self._capacity = capacity
        self._wake_at = max(1, capacity // 2)
        self._interval = interval
        # trio.current_time() of the next take by the clock. The first waits for the grid too:
        # a DialogInit taken alone (the recorder's task starting just after it was queued)
        # would create the file before the segments that follow it within milliseconds, and
        # the live sidecar would be written again for them at the next block.
        self._next_take = self._next_point(trio.current_time())
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()
        self._ended: str | None = None
        self._trio_wait: trio.Event | None = None  # set while the recorder waits for events
        self._room: asyncio.Event | None = None  # set while the reader waits for room
        self._stalled = 0.0  # seconds the reader waited for room, in all
        self._stall_since: float | None = None
        # answered by the recorder once the recording is finished: (grpc status name, details)
        self.done: asyncio.Future[tuple[str, str]] = loop.create_future()

    # -- the gRPC thread ---------------------------------------------------------------------

    def clock(self) -> float:
        """The dialog's clock in seconds (any thread): monotonic time less the reader's waits."""
        since = self._stall_since
        now = time.monotonic()
        return now - self._stalled - (0.0 if since is None else now - since)

    def clock_taken(self) -> float:
        """The dialog's clock as far as the recorder knows it (trio): the stamp (``at``) of the
        oldest event still queued, else `clock`. A recorder that is behind must not take the
        time its events wait in the queue for a pause of the media."""
        now = self.clock()
        try:
            return min(now, getattr(self._items[0], "at", now))
        except IndexError:  # nothing queued
            return now

    def stamp(self) -> float:
        """The dialog's clock, for the reader (which is not waiting when it reads)."""
        return time.monotonic() - self._stalled

    def put_nowait(self, item: Any) -> asyncio.Event | None:
        """Queue one event. Below half the capacity this takes no lock (the deque's append is
        atomic, and the recorder takes items with popleft). Returns an event to pass to
        `wait_room` when the queue is full: the reader must not read on until it is set."""
        items = self._items
        items.append(item)
        if len(items) < self._wake_at:
            return None
        with self._lock:
            wake, self._trio_wait = self._trio_wait, None
            room = None
            if len(items) >= self._capacity:
                room = self._room = asyncio.Event()
        if wake is not None:
            self._token.run_sync_soon(wake.set)
        return room

    async def wait_room(self, room: asyncio.Event) -> None:
        """Wait until the recorder has taken the queue; the wait is taken out of the clock."""
        self._stall_since = started = time.monotonic()
        try:
            await room.wait()
        finally:
            self._stalled += time.monotonic() - started
            self._stall_since = None

    async def put(self, item: Any) -> None:
        """`put_nowait`, waiting for room when the queue is full."""
        room = self.put_nowait(item)
        if room is not None:
            await self.wait_room(room)

    def end(self, how: str) -> None:
        """No more events (any thread, once; later calls are ignored)."""
        with self._lock:
            if self._ended is not None:
                return
            self._ended = how
            wake, self._trio_wait = self._trio_wait, None
        if wake is not None:
            self._token.run_sync_soon(wake.set)

    def answer(self, status: str, details: str) -> None:
        """From trio: the recording is finished; the RPC may answer (status name, details)."""
        with contextlib.suppress(RuntimeError):  # a closed gRPC loop: nobody is left to answer
            self._loop.call_soon_threadsafe(_resolve, self.done, (status, details))

    # -- trio ----------------------------------------------------------------------------------

    async def receive_batch(self) -> list[Any]:
        """Everything queued (at least one event), once the interval has passed since the last
        take, half the capacity is queued or the stream has ended; raises DialogEnded once the
        queue is empty and the reader has ended."""
        while True:
            now = trio.current_time()
            with self._lock:
                ended = self._ended  # read first: the reader's last event is queued before it ends
                queued = len(self._items)
                if queued and (queued >= self._wake_at or ended is not None or now >= self._next_take):
                    popleft = self._items.popleft  # never clear(): the reader appends without the lock
                    items = [popleft() for _ in range(queued)]
                    room, self._room = self._room, None
                    break
                if self._ended is not None:
                    raise DialogEnded(self._ended)
                self._trio_wait = event = trio.Event()
            grid = self._grid_timer
            if grid is not None and grid.running:  # woken at the next point (deadlines are points)
                grid.wake_at_next_point(event)
                await event.wait()
            else:
                with trio.move_on_at(self._next_take if queued else max(self._next_take, self._next_point(now))):
                    await event.wait()
            with self._lock:
                self._trio_wait = None
        self._next_take = self._next_point(trio.current_time())
        if room is not None:
            with contextlib.suppress(RuntimeError):  # a closed gRPC loop: the reader is gone
                self._loop.call_soon_threadsafe(room.set)
        return items

    def _next_point(self, now: float) -> float:
        """The first point of the shared grid at least GRID_MIN_SHARE of an interval after ``now``."""
        interval = self._interval
        return math.ceil((now + interval * GRID_MIN_SHARE) / interval) * interval


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
