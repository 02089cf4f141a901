"""Many simulated calls at once: the load generator behind `callstream simulate --calls N`.

Theory of operation. Every call plays frames from one shared *pool* of mu-law frames per side
(the given audio, or a tone with faint seeded noise so that no two frames are alike). Call i
plays pool frame ``(offset + stride * k) mod P`` as its frame k, with ``offset`` and ``stride``
derived from i: each call's content is distinct and reproducible, so `verify` rebuilds exactly
what every call sent. Media messages are pre-encoded and pre-masked: `encode_media` builds each
pool frame's message once per side, cut at the sequence id, and the frames of a load run are
masked with the all-zero key (legal: RFC 6455 asks clients for unpredictable keys to protect
proxies' caches, which a load test has none of; the server unmasks exactly as for any key), so
a frame is a cached prefix (header, key, message head), the sequence id and the cached tail:
no base64, no JSON, no XOR, and one join per write.

One trio task per call for its handshake, Start and Stops. In real time one pacer task per
process wakes once per 20 ms tick and writes every live call's due pair (both perspectives'
frames) in one ``os.write`` on the call's socket; a call stays on its own schedule (its start
plus 20 ms per frame, a random offset within the ramp), so it does not drift, and a call that
fell behind sends all its due pairs at once. In fast mode each call sends batches of pairs with
a checkpoint between batches. With ``processes > 1`` the calls are split among child processes,
each running its own trio loop and pacer.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import resource
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio

from callstream.audio import FRAME_BYTES, SAMPLE_RATE
from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start, encode_stop
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from callstream.sim.simclient import Client, Closed, Rejected, connect, masked_text_header

FRAME_SECONDS = FRAME_BYTES / SAMPLE_RATE  # FRAME_BYTES: 20 ms of 8 kHz mu-law
FAST_BATCH = 25  # pairs of Media messages per write in fast mode (0.5 s of audio)
POOL_FRAMES = 251  # frames of generated audio the calls of a load run share (a prime: ~5 s)
PACER_TICK = FRAME_SECONDS  # seconds between pacer rounds (20 ms): the jitter of real-time sends
ZERO_KEY = b"\x00\x00\x00\x00"  # the masking key of pre-masked Media frames (see above)
CLOSE_WAIT = (
    60.0  # seconds to wait for the server's close after the Stops (it writes the tail first)
)
PROGRESS_INTERVAL = 0.25  # seconds between progress line refreshes
_SENTINEL = 987654321  # a sequence id that cannot occur elsewhere in a Media message


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """Everything a (child) process needs to rebuild the same calls; picklable."""

    url: str
    calls: int
    frames: int | None  # Media pairs per call; None: the whole audio once
    realtime: bool = True
    ramp: float = 0.0  # seconds over which call starts are spread at random
    seed: int = 0
    call_id: str = "sim"
    session_id: str = "1"
    secret: str | None = None
    cafile: Path | None = None
    audio: tuple[Path | None, Path | None, Path | None] = (
        None,
        None,
        None,
    )  # stereo, agent, caller
    tone_seconds: float = POOL_FRAMES * FRAME_SECONDS  # length of the generated audio (no file)
    noisy_tone: bool = True  # a noisy pool (distinct frames) rather than the plain test tone
    processes: int = 1
    send_interval: float = PACER_TICK  # real time: seconds between a call's writes (all that is due)


@dataclass(frozen=True, slots=True)
class CallSpec:
    index: int
    call_id: str
    session_id: str
    offset: int  # first pool frame
    stride: int  # pool frames advanced per frame sent
    frames: int  # Media pairs
    delay: float  # seconds after the run's start at which the call connects

    def metadata(self) -> dict[str, str]:
        from callstream.sim.simulate import default_metadata

        return default_metadata(self.call_id, self.session_id)


@dataclass(slots=True)
class CallOutcome:
    call_id: str
    ok: bool = False
    messages: int = 0  # Media messages sent
    close_code: int | None = None
    error: str = ""
    connected: float = 0.0  # epoch seconds
    ended: float = 0.0


@dataclass(slots=True)
class Counters:
    live: int = 0
    finished: int = 0
    failed: int = 0
    messages: int = 0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.live, self.finished, self.failed, self.messages


@dataclass(slots=True)
class LoadReport:
    outcomes: list[CallOutcome]
    wall_seconds: float
    cpu_seconds: float  # this process and its children
    messages: int = field(init=False)

    def __post_init__(self) -> None:
        self.messages = sum(o.messages for o in self.outcomes)

    @property
    def failed(self) -> list[CallOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def summary(self) -> dict:
        return {
            "calls": len(self.outcomes),
            "ok": len(self.outcomes) - len(self.failed),
            "failed": len(self.failed),
            "messages": self.messages,
            "wall_seconds": round(self.wall_seconds, 3),
            "messages_per_second": round(self.messages / self.wall_seconds, 1)
            if self.wall_seconds
            else None,
            "generator_cpu_seconds": round(self.cpu_seconds, 3),
            "generator_cpu_us_per_message": round(1e6 * self.cpu_seconds / self.messages, 2)
            if self.messages
            else None,
        }


class FramePool:
    """The frames calls play, per side, and their Media messages cut at the sequence id."""

    def __init__(self, agent: bytes, caller: bytes, frame_bytes: int = FRAME_BYTES) -> None:
        """``agent`` and ``caller``: mu-law bytes; both padded with silence to whole frames."""
        length = max(1, math.ceil(max(len(agent), len(caller)) / frame_bytes)) * frame_bytes
        agent, caller = agent.ljust(length, b"\xff"), caller.ljust(length, b"\xff")
        self.size = length // frame_bytes
        self.frames = tuple(
            tuple(side[i : i + frame_bytes] for i in range(0, length, frame_bytes))
            for side in (agent, caller)
        )
        self.heads: list[bytes] = []
        self.tails: list[tuple[bytes, ...]] = []
        marker = f'"sequenceId":"{_SENTINEL}"'
        for perspective, frames in zip(Perspective, self.frames, strict=True):
            tails = []
            for frame in frames:
                head, found, tail = encode_media(perspective, _SENTINEL, frame).partition(marker)
                if not found:
                    raise AssertionError(
                        "encode_media no longer writes the sequence id as a string"
                    )
                tails.append(('"' + tail).encode())
            self.heads.append((head + '"sequenceId":"').encode())
            self.tails.append(tuple(tails))
        # digits of the sequence id -> per side, per pool index: frame header + ZERO_KEY + head
        self._prefixes: dict[int, tuple[list[bytes], list[bytes]]] = {}

    def prefixes(self, digits: int) -> tuple[list[bytes], list[bytes]]:
        """Per side (agent, caller), per pool index: the bytes of a zero-key masked text frame
        of that pool frame up to its sequence id of ``digits`` digits (built once per count of
        digits: the header depends only on the length)."""
        found = self._prefixes.get(digits)
        if found is None:
            found = self._prefixes[digits] = tuple(  # type: ignore[assignment]
                [masked_text_header(len(head) + digits + len(tail)) + ZERO_KEY + head for tail in tails]
                for head, tails in zip(self.heads, self.tails, strict=True)
            )
        return found  # type: ignore[return-value]

    def expected(self, spec: CallSpec) -> tuple[bytes, bytes]:
        """The mu-law bytes (agent, caller) that ``spec`` sends."""
        order = [(spec.offset + spec.stride * k) % self.size for k in range(spec.frames)]
        return tuple(b"".join(side[i] for i in order) for side in self.frames)  # type: ignore[return-value]


def build_pool(spec: LoadSpec) -> FramePool:
    from callstream.sim.simulate import load_audio, noisy_tone_audio, tone_audio

    stereo, agent, caller = spec.audio
    if stereo or agent or caller:
        audio = load_audio(stereo=stereo, agent=agent, caller=caller)
    elif spec.noisy_tone:
        audio = noisy_tone_audio(spec.tone_seconds)
    else:
        audio = tone_audio(spec.tone_seconds)
    return FramePool(audio.agent, audio.caller)


def plan_calls(spec: LoadSpec, pool: FramePool) -> list[CallSpec]:
    """The calls of a run: ids, content and start offsets, the same for the same spec."""
    rng = random.Random(spec.seed)
    size = pool.size
    frames = spec.frames if spec.frames is not None else size
    calls = []
    for i in range(spec.calls):
        call_id = spec.call_id if spec.calls == 1 else f"{spec.call_id}-{i + 1}"
        stride = 1 + (i // size) % max(1, size - 1)
        calls.append(
            CallSpec(
                i, call_id, spec.session_id, i % size, stride, frames, rng.uniform(0, spec.ramp)
            )
        )
    return calls


async def play(
    spec: LoadSpec,
    call: CallSpec,
    pool: FramePool,
    counters: Counters,
    t0: float,
    pacer: Pacer | None = None,
) -> CallOutcome:
    """Play one call at ``t0 + call.delay`` (trio clock); never raises for what the server does."""
    outcome = CallOutcome(call.call_id)
    await trio.sleep_until(t0 + call.delay)
    metadata = call.metadata()
    context = (
        ssl.create_default_context(cafile=spec.cafile) if spec.url.startswith("wss:") else None
    )
    headers = [("Authorization", f"Bearer {spec.secret}")] if spec.secret else []
    try:
        client = await connect(
            spec.url.rstrip("/") + "/" + build_query(metadata), ssl_context=context, headers=headers
        )
    except (OSError, Rejected, Closed) as error:
        outcome.error = f"connect: {error}"
        counters.failed += 1
        return outcome
    outcome.connected = time.time()
    counters.live += 1
    try:
        await client.send_text(encode_connected(secret=spec.secret))
        await client.send_text(encode_start(metadata))
        media = CallMedia(client, call, pool, counters, outcome)
        if pacer is not None and client.fd is not None:
            await pacer.play(media)
        else:
            await _send_media(media, spec.realtime)
        end_time = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        for _ in Perspective:
            await client.send_text(encode_stop(call.frames * FRAME_SECONDS, end_time))
        with trio.move_on_after(CLOSE_WAIT):
            outcome.close_code = await client.wait_closed()
        if outcome.close_code == 1000:
            outcome.ok = True
        else:
            outcome.error = f"server closed with {outcome.close_code} {client.close_reason}".strip()
    except Closed as closed:
        outcome.close_code = client.close_code
        outcome.error = f"after {outcome.messages} messages: {closed}"
    finally:
        counters.live -= 1
        await client.aclose()
        outcome.ended = time.time()
    if outcome.ok:
        counters.finished += 1
    else:
        counters.failed += 1
    return outcome


class CallMedia:
    """The Media frames of one call, made on demand in order: one pair per `next_pair`."""

    __slots__ = (
        "call",
        "client",
        "counters",
        "due",
        "error",
        "frames",
        "index",
        "outcome",
        "pending",
        "pool",
        "seq",
        "size",
        "stride",
        "wake",
    )

    def __init__(
        self,
        client: Client,
        call: CallSpec,
        pool: FramePool,
        counters: Counters,
        outcome: CallOutcome,
    ) -> None:
        self.client, self.call, self.pool = client, call, pool
        self.counters, self.outcome = counters, outcome
        self.frames, self.index, self.seq = call.frames, call.offset, 0
        self.size, self.stride = pool.size, call.stride
        self.pending = b""  # what the pacer could not write without blocking
        self.due = 0.0  # when the next pair not yet built is due (trio clock)
        self.error = ""
        self.wake = trio.Event()  # the pacer needs the call's task: blocked, failed or done

    def add_pair(self, parts: list[bytes]) -> None:
        """Append the next pair of Media frames (agent, caller), zero-key masked, to ``parts``,
        as six pieces (the pacer joins a write's pieces once: a join per pair, then one of the
        pairs, cost twice as much)."""
        pool = self.pool
        self.seq = seq = self.seq + 1
        number = b"%d" % seq
        index = self.index
        self.index = (index + self.stride) % self.size
        agent, caller = pool.prefixes(len(number))
        agent_tails, caller_tails = pool.tails
        parts += (agent[index], number, agent_tails[index], caller[index], number, caller_tails[index])

    def next_pair(self) -> bytes:
        """The next pair of Media frames as one bytes (counted as sent)."""
        parts: list[bytes] = []
        self.add_pair(parts)
        self._count(1)
        return b"".join(parts)

    def _count(self, pairs: int) -> None:
        self.outcome.messages += 2 * pairs
        self.counters.messages += 2 * pairs

    def send_due(self, now: float) -> bool:
        """The pacer's step: write every pair due by ``now`` in one write, without blocking.
        True if the call stays with the pacer; False once it has handed the call back to its
        task (the socket would block, it failed, or the last pair is sent)."""
        due, frames = self.due, self.frames
        parts: list[bytes] = []
        pairs = 0
        while True:  # the pair due, and any others due by now: a call behind catches up
            self.add_pair(parts)
            pairs += 1
            due += FRAME_SECONDS
            if due > now or self.seq >= frames:
                break
        self.due = due
        self._count(pairs)
        data = b"".join(parts)  # (os.writev of the pieces cost more in the kernel than this join)
        try:
            written = os.write(self.client.fd, data)
        except BlockingIOError:
            written = 0
        except OSError as error:
            self.error = error.strerror or str(error)
            self.wake.set()
            return False
        if written < len(data):
            self.pending = data[written:]
            self.wake.set()
            return False
        if self.seq >= frames:
            self.wake.set()
            return False
        return True


class Pacer:
    """Writes the Media of every real-time call on plain TCP from one task.

    A trio task wake-up per call every 20 ms costs more than building and writing the frames, so
    the pacer wakes once per 20 ms tick and writes, for every call whose next pair is due, all its
    due pairs in one write. A call whose socket would block goes back to its own task, which
    waits until the socket takes the rest and then hands the call back."""

    def __init__(self, tick: float = PACER_TICK) -> None:
        """``tick``: seconds between rounds (see `LoadSpec.send_interval`)."""
        self._tick = tick
        self._calls: list[CallMedia] = []

    def add(self, media: CallMedia) -> None:
        self._calls.append(media)

    async def run(self) -> None:
        tick, step = trio.current_time(), self._tick
        while True:
            tick += step
            now = trio.current_time()
            if tick < now - step:  # the loop was late: do not try to make up for it
                tick = now
            await trio.sleep_until(tick)
            now = trio.current_time()
            calls, self._calls = self._calls, []
            keep = self._calls.append
            for media in calls:  # no await in here: `add` cannot run meanwhile
                if media.due > now or media.send_due(now):
                    keep(media)

    async def play(self, media: CallMedia) -> None:
        """Send all of ``media``'s frames in real time from now; raises Closed."""
        media.due = trio.current_time()
        self.add(media)
        while True:
            await media.wake.wait()
            media.wake = trio.Event()
            if media.error:
                raise Closed(None, media.error)
            if media.pending:
                data, media.pending = media.pending, b""
                await media.client.send_raw(data)
                if media.seq < media.frames:
                    self.add(media)
                    continue
            if media.seq >= media.frames:
                return


async def _send_media(media: CallMedia, realtime: bool) -> None:
    """Without the pacer: fast mode (batches of pairs) or real time over TLS."""
    send, started = media.client.send_raw, trio.current_time()
    batch: list[bytes] = []
    for seq in range(1, media.frames + 1):
        batch.append(media.next_pair())
        if realtime:
            await trio.sleep_until(started + (seq - 1) * FRAME_SECONDS)
        elif len(batch) < FAST_BATCH and seq < media.frames:
            continue
        await send(b"".join(batch))
        batch.clear()
        if not realtime:
            await trio.lowlevel.checkpoint()


async def run_calls(
    spec: LoadSpec,
    calls: Sequence[CallSpec],
    pool: FramePool,
    counters: Counters,
    on_tick: Callable[[], None] | None = None,
) -> list[CallOutcome]:
    """Play ``calls`` concurrently; ``on_tick`` is called every PROGRESS_INTERVAL meanwhile."""
    outcomes: list[CallOutcome] = []
    t0 = trio.current_time()
    pacer = Pacer(spec.send_interval) if spec.realtime else None

    async def one(call: CallSpec) -> None:
        outcomes.append(await play(spec, call, pool, counters, t0, pacer))

    async with trio.open_nursery() as nursery:
        if on_tick is not None:

            async def ticker() -> None:
                while True:
                    on_tick()
                    await trio.sleep(PROGRESS_INTERVAL)

            nursery.start_soon(ticker)
        if pacer is not None:
            nursery.start_soon(pacer.run)
        async with trio.open_nursery() as calls_nursery:
            for call in calls:
                calls_nursery.start_soon(one, call)
        nursery.cancel_scope.cancel()
    order = {call.call_id: call.index for call in calls}
    return sorted(outcomes, key=lambda o: order[o.call_id])


class Progress:
    """One stderr line, rewritten in place: live / finished / failed calls and messages/s."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = (time.monotonic(), 0)

    def show(self, live: int, finished: int, failed: int, messages: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        then, count = self._last
        rate = (messages - count) / (now - then) if now > then else 0.0
        self._last = (now, messages)
        sys.stderr.write(
            f"\rcalls: {live} live, {finished} finished, {failed} failed | {rate:,.0f} msg/s   "
        )
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _cpu_seconds() -> float:
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_load(
    spec: LoadSpec, calls: list[CallSpec], pool: FramePool, progress: Progress
) -> LoadReport:
    """Play every call of ``calls``, in this process or in ``spec.processes`` children."""
    cpu, wall = _cpu_seconds(), time.monotonic()
    if spec.processes <= 1 or len(calls) < 2:
        counters = Counters()
        outcomes = trio.run(
            run_calls, spec, calls, pool, counters, lambda: progress.show(*counters.as_tuple())
        )
    else:
        outcomes = _run_children(spec, calls, progress)
    progress.done()
    return LoadReport(outcomes, time.monotonic() - wall, _cpu_seconds() - cpu)


def _run_children(spec: LoadSpec, calls: list[CallSpec], progress: Progress) -> list[CallOutcome]:
    context = multiprocessing.get_context("spawn")
    count = min(spec.processes, len(calls))
    shared = context.Array("q", 4 * count, lock=False)
    children = []
    for k in range(count):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_child, args=(spec, k, count, shared, send), daemon=True)
        process.start()
        send.close()
        children.append((process, receive))
    results: dict[int, list[CallOutcome]] = {}
    while len(results) < count:
        for k, (_process, receive) in enumerate(children):
            if k not in results and receive.poll(0):
                try:
                    results[k] = [CallOutcome(**item) for item in receive.recv()]
                except EOFError:
                    results[k] = [
                        CallOutcome(c.call_id, error="generator process died")
                        for c in calls[k::count]
                    ]
        totals = [sum(shared[4 * k + i] for k in range(count)) for i in range(4)]
        progress.show(*totals)
        time.sleep(PROGRESS_INTERVAL)
    for process, receive in children:
        process.join()
        receive.close()
    order = {call.call_id: call.index for call in calls}
    return sorted((o for part in results.values() for o in part), key=lambda o: order[o.call_id])


def _child(spec: LoadSpec, k: int, count: int, shared, send) -> None:
    pool = build_pool(spec)
    calls = plan_calls(spec, pool)[k::count]
    counters = Counters()

    def publish() -> None:
        shared[4 * k : 4 * k + 4] = counters.as_tuple()

    outcomes = trio.run(run_calls, spec, calls, pool, counters, publish)
    publish()
    send.send([asdict(o) for o in outcomes])
    send.close()
