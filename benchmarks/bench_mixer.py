"""Benchmark: CPU per chunk of the segment mixer (RingCX's placement engine) as the recorder drives it.

Plain seeded script: DIALOGS dialogs of two segments (caller and agent, 100 ms PCMU chunks, in
order, each chunk arriving as it is spoken), taken round-robin in batches of 10 events (a dialog's
take at the default 0.5 s), ``receive_run`` then ``pop_block`` until None, a tick after each take:
the work of trio's thread at 300 real-time dialogs, without the transport. The same events feed
the mixer with the C kernel's writes and cuts (``cs_mix_g711``, ``cs_mix_cut``) and with their
numpy twins (`mixing.apply_numpy`, `mixing.cut_numpy`), round after round in one process, so their
ratio holds on a noisy machine.

    .venv/bin/python benchmarks/bench_mixer.py [--dialogs 300] [--seconds 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from callstream.call import mixing
from callstream.call.events import AGENT, CONTACT, SegmentMedia, SegmentStarted
from callstream.call.segments import SegmentMixer
from machine import describe_machine

SEED = 20261206
TAKE = 10  # events per take: 0.5 s of a two-segment dialog


def dialogs(count: int, seconds: int) -> list[list[list[object]]]:
    """Per dialog, its takes: the segments' starts, then batches of TAKE media events."""
    rng = np.random.default_rng(SEED)
    payloads = [rng.integers(0, 256, 800, dtype=np.uint8).tobytes() for _ in range(64)]
    result = []
    for d in range(count):
        t0 = 1000.0 + d * 0.001
        takes: list[list[object]] = [[SegmentStarted("c", "p-c", CONTACT, at=t0),
                                      SegmentStarted("a", "p-a", AGENT, at=t0)]]
        events: list[object] = []
        for k in range(seconds * 10):
            at = t0 + 0.1 * (k + 1)
            events.append(SegmentMedia("c", payloads[(7 * k + d) % 64], k, 100, at + 0.0003))
            events.append(SegmentMedia("a", payloads[(5 * k + d) % 64], k, 100, at + 0.0005))
        takes += [events[i : i + TAKE] for i in range(0, len(events), TAKE)]
        result.append(takes)
    return result


def one_round(plan: list[list[list[object]]]) -> tuple[float, int]:
    """CPU seconds of trio's share of the work, and the chunks placed."""
    mixers = [SegmentMixer() for _ in plan]
    for mixer, takes in zip(mixers, plan, strict=True):
        for event in takes[0]:
            mixer.handle(event)  # type: ignore[arg-type]
    chunks = 0
    started = time.process_time()
    for round_ in range(1, len(plan[0])):
        for mixer, takes in zip(mixers, plan, strict=True):
            items = takes[round_]
            i, end = 0, len(items)
            while i < end:
                i = mixer.receive_run(items, i)
                while mixer.pop_block() is not None:
                    pass
                if i < end:
                    mixer.handle(items[i])  # type: ignore[arg-type]
                    i += 1
            chunks += end
            mixer.tick(items[-1].at)  # type: ignore[attr-defined]
            mixer.pop_block(partial=True)
    return time.process_time() - started, chunks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogs", type=int, default=300, help="dialogs at once (a count)")
    parser.add_argument("--seconds", type=int, default=10, help="audio per dialog, s")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant, interleaved")
    args = parser.parse_args()
    plan = dialogs(args.dialogs, args.seconds)
    variants = {"C kernel": mixing._lib, "numpy twin": None}
    if mixing._lib is None:
        del variants["C kernel"]
    per_chunk: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, lib in variants.items():
            mixing._lib = lib  # a benchmark's switch: the twin runs where the kernel would
            seconds, chunks = one_round(plan)
            per_chunk[name].append(seconds / chunks * 1e6)
    mixing._lib = variants.get("C kernel")
    print(f"machine: {describe_machine()}")
    print(f"{args.dialogs} dialogs x {args.seconds} s, two segments, 100 ms PCMU chunks, takes of {TAKE} events; "
          f"{args.rounds} rounds: median (best) CPU per chunk")
    for name, values in per_chunk.items():
        print(f"  {name:10s} {statistics.median(values):6.2f} us ({min(values):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
