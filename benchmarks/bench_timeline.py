"""Benchmark: frames per second through ``Timeline.push`` + ``pop_block`` (the per-frame hot path).

Plain seeded script: the frames of one call (both perspectives, 20 ms mu-law frames) are built
once, then fed to a fresh Timeline per round, popping whenever a block is ready, as the recorder
does: frame by frame with ``push``, and in batches of 50 frames (what one read of a real-time call
brings at the default --read-interval) with ``push_run``, as lists of tuples and as the scanner's
`ScannedMedia` (which the C lanes place once both sides have been steady for STEADY_FRAMES; the
other batches then pay for building their tuples, as the scanner did before the lanes). Variants
run interleaved round by round in the same process, so their ratio holds on a noisy machine: in
order; jittered (reordered within the window, 1 % lost, 0.5 % duplicated); one side silent (the
other forces it forward with silence).

    .venv/bin/python benchmarks/bench_timeline.py [--seconds 60] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from callstream.call.batch import ScannedMedia
from callstream.call.timeline import Timeline

SEED = 20240611
FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
WINDOW_FRAMES = 10  # the default 200 ms window
BATCH = 50  # frames per push_run: a real-time call's read at --read-interval 0.5 s

Push = tuple[int, int, bytes]


def build(seconds: int, rng: random.Random) -> dict[str, list[Push]]:
    frames = seconds * 50
    payloads = [[rng.randbytes(FRAME_BYTES) for _ in range(frames)] for _ in range(2)]
    in_order = [(side, 1 + i, payloads[side][i]) for i in range(frames) for side in (0, 1)]
    keyed = []
    for side in (0, 1):
        for i in range(frames):
            roll = rng.random()
            if roll < 0.01:
                continue  # lost
            item = (side, 1 + i, payloads[side][i])
            keyed.append((i + rng.randrange(WINDOW_FRAMES), side, i, item))
            if roll > 0.995:
                keyed.append((i + rng.randrange(WINDOW_FRAMES), side, i, item))  # duplicate
    keyed.sort(key=lambda k: k[:3])
    one_side = [(0, 1 + i, payloads[0][i]) for i in range(frames)]
    return {"in order": in_order, "jittered": [k[3] for k in keyed], "one side": one_side}


def run(pushes: list[Push]) -> tuple[float, int]:
    """One frame at a time through ``push``."""
    timeline = Timeline()
    push = timeline.push
    pop = timeline.pop_block
    emitted = 0
    started = time.perf_counter()
    for perspective, sequence, payload in pushes:
        if push(perspective, sequence, payload):
            while (block := pop()) is not None:
                emitted += len(block.left)
    tail = timeline.finish()
    elapsed = time.perf_counter() - started
    return elapsed, emitted + (len(tail.left) if tail is not None else 0)


def run_scanned(pushes: list[Push]) -> tuple[float, int]:
    """As `run_batched`, the batches as MediaScanner hands them over (`ScannedMedia`): placed
    by the C lanes once both sides have been steady for a while, else as lists of tuples."""
    return run_batched(pushes, ScannedMedia.from_tuples)


def run_batched(pushes: list[Push], package: Callable[[list[Push]], Sequence[Push]] = list) -> tuple[float, int]:
    """Batches of BATCH frames through ``push_run``, popping after each return."""
    batches = [package(pushes[k : k + BATCH]) for k in range(0, len(pushes), BATCH)]
    timeline = Timeline()
    push_run = timeline.push_run
    pop = timeline.pop_block
    emitted = 0
    started = time.perf_counter()
    for batch in batches:
        i, end = 0, len(batch)
        while i < end:
            i = push_run(batch, i)
            while (block := pop()) is not None:
                emitted += len(block.left)
    tail = timeline.finish()
    elapsed = time.perf_counter() - started
    return elapsed, emitted + (len(tail.left) if tail is not None else 0)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"{platform.python_implementation()} {platform.python_version()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="call length, s")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    inputs = build(args.seconds, random.Random(SEED))
    runners = {"push": run, "push_run": run_batched, "scanned": run_scanned}
    variants = {(name, how): pushes for name, pushes in inputs.items() for how in runners}
    expected = {key: run(pushes)[1] for key, pushes in variants.items()}  # warm-up + check
    times: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for _ in range(args.rounds):
        for (name, how), pushes in variants.items():
            elapsed, emitted = runners[how](pushes)
            assert emitted == expected[name, how], (name, how)
            times[name, how].append(elapsed)
    print(f"machine: {machine()}")
    print(f"call: {args.seconds} s, 20 ms frames; {args.rounds} rounds; median (best)")
    for (name, how), pushes in variants.items():
        median, best = statistics.median(times[name, how]), min(times[name, how])
        rate = len(pushes) / median
        print(f"  {name:9s} {how:8s} {len(pushes):6d} frames  {rate / 1e3:8.0f} k frames/s "
              f"({len(pushes) / best / 1e3:.0f} k)  {1e9 / rate:6.0f} ns/frame  "
              f"~{rate / 100:,.0f} calls/core at 100 frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
