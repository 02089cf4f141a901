"""Benchmark: the recorder's receive loop alone (front end + call core), old commit against new.

What a call costs between the transport and the disk writer: `CallRecorder`'s own receive loop
over the batches a transport hands out (`TextBatch`es of Media messages), scanning them, placing
them and cutting blocks, with a lane that takes every block at once (no disk, no sockets). The
same seeded batches are played at a source tree given by ``--src`` in a child process per round,
the variants alternating round by round, so the ratio holds on a shared machine. Two read
shapes: ``batch`` (a read every 0.5 s: 50 messages, the fast scan and the C lanes) and ``pairs``
(a read per arrival: 2 messages, each through the general parser).

    .venv/bin/python benchmarks/bench_receive.py --old /tmp/old/src --new src [--rounds 7]

A tree is any checkout's ``src`` with the compiled extension beside it (copy
``src/callstream/_mulaw*.so`` into an exported old commit).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261206
SHAPES = {"batch": 50, "pairs": 2}  # messages per read


def child(shape: str, calls: int, seconds: float) -> dict[str, float]:
    """In the child: time every call's receive loop (seconds in all, and per message)."""
    import tempfile
    import time
    from array import array

    import trio

    from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start
    from callstream.engagevoice.mediascan import MediaScanner
    from callstream.engagevoice.messages import Perspective
    from callstream.engagevoice.query import parse_query
    from callstream.engagevoice.textbatch import TextBatch
    from callstream.engagevoice.transport import StreamClosed
    from callstream.server.recorder import CallRecorder
    from callstream.settings import Settings

    rng = random.Random(SEED)
    per_read = SHAPES[shape]
    frames = int(seconds * 50)
    payloads = [bytes(rng.randrange(256) for _ in range(160)) for _ in range(64)]
    messages = [encode_connected(), encode_start({"callId": "bench", "sessionId": "1"})]
    messages += [encode_media(p, seq, payloads[(seq + p) % 64]) for seq in range(1, frames + 1) for p in Perspective]
    reads = []
    for i in range(0, len(messages), per_read):
        chunk = [m.encode() for m in messages[i : i + per_read]]
        spans, offset = array("I"), 0
        for m in chunk:
            spans.extend((offset, len(m)))
            offset += len(m)
        reads.append((b"".join(chunk), spans))

    class Stream:
        def __init__(self) -> None:
            self._reads = iter(reads)

        async def receive(self):
            return await self.receive_batch()

        async def receive_batch(self):
            for buffer, spans in self._reads:
                return TextBatch(buffer, spans)
            raise StreamClosed(1000)

        def receive_batch_nowait(self) -> None:
            return None

        async def close(self, code: int, reason: str = "") -> None:
            pass

    class Lane:
        blocks = 0

        def has_room(self) -> bool:
            return True

        def send_nowait(self, block: object, ready: float) -> None:
            Lane.blocks += 1

    class Disk:
        def lane(self, target: object) -> Lane:
            return Lane()

    settings = Settings(output_dir=Path(tempfile.gettempdir()) / "bench_receive")
    scanner = MediaScanner(max_bytes=settings.max_message_bytes)
    query = parse_query("/?callId=bench")
    total = 0.0

    async def main() -> None:
        nonlocal total
        for _ in range(calls):
            # (a tree before the RingCX unification has no CallRecorder.websocket: its constructor)
            make = getattr(CallRecorder, "websocket", CallRecorder)
            recorder = make(Stream(), query, settings, Disk(), scanner=scanner)  # type: ignore[arg-type]
            started = time.perf_counter()
            await recorder._receive_until_end()
            total += time.perf_counter() - started

    trio.run(main)
    expected = calls * (frames * 160 // 8000 - 1)  # the last block is the tail: not the loop's
    assert Lane.blocks >= expected, (Lane.blocks, expected)
    return {"seconds": total, "us_per_message": total / (calls * len(messages)) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the old tree's src directory")
    parser.add_argument("--new", type=Path, default=HERE.parent / "src", help="the new tree's src directory")
    parser.add_argument("--rounds", type=int, default=7, help="child runs per variant and shape")
    parser.add_argument("--calls", type=int, default=100, help="calls per child run")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of audio per call")
    parser.add_argument("--child", nargs=3, metavar=("SHAPE", "CALLS", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), float(args.child[2]))))
        return
    sys.path.insert(0, str(HERE))
    from machine import describe_machine

    runs: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for shape in SHAPES:
            for variant, src in (("old", args.old), ("new", args.new)):
                env = {**os.environ, "PYTHONPATH": str(src.resolve())}
                out = subprocess.run(
                    [sys.executable, __file__, "--old", str(args.old), "--child", shape, str(args.calls),
                     str(args.seconds)], env=env, check=True, capture_output=True, text=True,
                ).stdout
                runs.setdefault((shape, variant), []).append(json.loads(out)["us_per_message"])
    print(json.dumps(describe_machine(), default=str)[:300])
    for shape in SHAPES:
        old = statistics.median(runs[(shape, "old")])
        new = statistics.median(runs[(shape, "new")])
        print(f"{shape:6} ({SHAPES[shape]:2} messages a read): old {old:.3f} us/message, new {new:.3f}, "
              f"new/old {new / old:.3f} (medians of {args.rounds}; min old {min(runs[(shape, 'old')]):.3f}, "
              f"min new {min(runs[(shape, 'new')]):.3f})")


if __name__ == "__main__":
    main()
