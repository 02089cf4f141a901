"""Benchmark: the Media hot path (JSON text frame -> ``events.Media``), per decoder.

Plain seeded script (wsproto ``bench/`` style): every variant runs in the same process, on the
same frames, interleaved round by round, so the ratios hold on a noisy machine. Each variant
does the full validation production needs (event, perspective, decimal ``sequenceId``, strict
base64, non-empty payload) and builds the same ``Media`` tuple (the batched C scan: the same
fields as a plain tuple); the script checks that they all agree before timing anything.

    .venv/bin/python benchmarks/bench_parse.py [--frames 2000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import platform
import random
import sys
import time
from array import array
from pathlib import Path
from typing import Literal

import msgspec
import orjson
import pybase64

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from callstream.engagevoice.encoding import encode_media
from callstream.engagevoice.mediascan import MediaScanner
from callstream.engagevoice.messages import Media, Perspective
from callstream.engagevoice.protocol import parse_message
from callstream.engagevoice.textbatch import TextBatch

SEED = 20240611
PAYLOAD_BYTES = 160  # 20 ms of mu-law at 8 kHz
PERSPECTIVES = {"Participant": Perspective.PARTICIPANT, "Conference": Perspective.CONFERENCE}
BAD = None


def _media_from_dict(msg, b64decode):
    if type(msg) is not dict or msg.get("event") != "Media":
        return BAD
    name = msg.get("perspective")
    seq = msg.get("sequenceId")
    media = msg.get("media")
    if type(name) is not str or type(seq) is not str or type(media) is not str:
        return BAD
    perspective = PERSPECTIVES.get(name)
    if perspective is None or not (seq.isascii() and seq.isdigit()):
        return BAD
    try:
        payload = b64decode(media)
    except ValueError:
        return BAD
    return Media(perspective, int(seq), payload) if payload else BAD


def _strict_b64(text):
    return binascii.a2b_base64(text, strict_mode=True)


def _pybase64(text):
    return pybase64.b64decode(text, validate=True)


def _stdlib_b64(text):
    return base64.b64decode(text, validate=True)


def stdlib_json_base64(frame):
    try:
        msg = json.loads(frame)
    except ValueError:
        return BAD
    return _media_from_dict(msg, _stdlib_b64)


def stdlib_json_binascii(frame):
    try:
        msg = json.loads(frame)
    except ValueError:
        return BAD
    return _media_from_dict(msg, _strict_b64)


def orjson_pybase64(frame):
    try:
        msg = orjson.loads(frame)
    except ValueError:
        return BAD
    return _media_from_dict(msg, _pybase64)


def orjson_binascii(frame):
    try:
        msg = orjson.loads(frame)
    except ValueError:
        return BAD
    return _media_from_dict(msg, _strict_b64)


def msgspec_dict_binascii(frame):
    try:
        msg = msgspec.json.decode(frame)
    except ValueError:
        return BAD
    return _media_from_dict(msg, _strict_b64)


class _MediaFrame(msgspec.Struct, gc=False):
    event: Literal["Media"]
    perspective: Literal["Participant", "Conference"]
    sequenceId: str | int  # the wire name
    media: bytes  # msgspec decodes base64 itself, strictly


_MEDIA_DECODER = msgspec.json.Decoder(_MediaFrame)


def msgspec_struct(frame):
    try:
        m = _MEDIA_DECODER.decode(frame)
    except ValueError:
        return BAD
    seq = m.sequenceId
    if type(seq) is str:
        seq = int(seq) if seq.isascii() and seq.isdigit() else -1
    if seq < 0 or not m.media:
        return BAD
    return Media(PERSPECTIVES[m.perspective], seq, m.media)


VARIANTS = {
    "stdlib json + base64.b64decode(validate)": stdlib_json_base64,
    "stdlib json + binascii strict": stdlib_json_binascii,
    "orjson + pybase64(validate)": orjson_pybase64,
    "orjson + binascii strict": orjson_binascii,
    "msgspec dict + binascii strict": msgspec_dict_binascii,
    "msgspec typed Struct": msgspec_struct,
    "callstream.protocol.parse_message": parse_message,
}
BASELINE = "stdlib json + base64.b64decode(validate)"
# The recorder's path since the websockets adapter hands a read over as one TextBatch: one C
# call per batch (building the batch is the adapter's frame split, not counted here). A
# real-time call read on every arrival (--read-interval 0) brings a pair of messages; at the
# default --read-interval of 0.5 s about 50; a backlog or a blast up to ~200.
BATCH_SIZES = (2, 50, 200)


def make_batches(frames: list[str], size: int) -> list[TextBatch]:
    batches = []
    for first in range(0, len(frames), size):
        group = frames[first : first + size]
        spans = array("I")
        position = 0
        for frame in group:
            spans.extend((position, len(frame)))
            position += len(frame)
        batches.append(TextBatch("".join(group).encode("ascii"), spans))
    return batches


def time_batches(batches: list[TextBatch], frames: int) -> float:
    """The C scan itself, however small the batch, and the tuples built from it (what the
    timeline's Python path takes; its C lanes take the scan's arrays as they are)."""
    scan = MediaScanner(min_batch=1).scan
    start = time.perf_counter_ns()
    for batch in batches:
        scan(batch).tuples()
    return (time.perf_counter_ns() - start) / frames / 1000.0  # us per message


def make_frames(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    frames = []
    for i in range(count):
        payload = rng.randbytes(PAYLOAD_BYTES)
        perspective = Perspective.PARTICIPANT if i % 2 else Perspective.CONFERENCE
        frames.append(encode_media(perspective, 100_000 + i // 2, payload))
    return frames


def time_once(fn, frames) -> float:
    start = time.perf_counter_ns()
    for frame in frames:
        fn(frame)
    return (time.perf_counter_ns() - start) / len(frames) / 1000.0  # us per message


def describe() -> dict:
    try:
        from machine import describe_machine  # type: ignore[import-not-found]
    except ImportError:
        cpuinfo = Path("/proc/cpuinfo")
        models = [
            line.split(":", 1)[1].strip()
            for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
            if line.startswith("model name")
        ]
        return {
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpu": models[0] if models else platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "msgspec": msgspec.__version__,
            "orjson": orjson.__version__,
            "pybase64": pybase64.__version__,
        }
    return describe_machine()


def write(name: str, data: dict) -> tuple[Path, bool]:
    try:
        from machine import write_result  # type: ignore[import-not-found]
    except ImportError:
        out = Path(__file__).resolve().parent / "results" / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2) + "\n")
        return out, False
    return write_result(name, data), True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    frames = make_frames(args.frames, SEED)
    sizes = [len(f) for f in frames]
    expected = [parse_message(f) for f in frames]
    for name, fn in VARIANTS.items():
        got = [fn(f) for f in frames]
        if got != expected:
            raise SystemExit(f"variant {name!r} disagrees with parse_message")

    batched = {f"callstream.mediascan.MediaScanner, batches of {n}": make_batches(frames, n) for n in BATCH_SIZES}
    as_tuples = [tuple(event) for event in expected]
    for name, batches in batched.items():
        if [item for batch in batches for item in MediaScanner(min_batch=1).scan(batch)] != as_tuples:
            raise SystemExit(f"variant {name!r} disagrees with parse_message")

    best = dict.fromkeys([*VARIANTS, *batched], float("inf"))
    for _ in range(args.rounds):  # interleaved: every variant sees the same machine noise
        for name, fn in VARIANTS.items():
            best[name] = min(best[name], time_once(fn, frames))
        for name, batches in batched.items():
            best[name] = min(best[name], time_batches(batches, len(frames)))

    machine = describe()
    print(f"machine: {machine}")
    print(
        f"{len(frames)} Media frames of {min(sizes)}-{max(sizes)} bytes "
        f"({PAYLOAD_BYTES}-byte payloads), seed {SEED}, best of {args.rounds} rounds"
    )
    base = best[BASELINE]
    width = max(map(len, best))
    for name, us in best.items():
        print(f"  {name:<{width}}  {us:6.3f} us/message   x{base / us:5.2f} vs stdlib")
    path, shared = write(
        "bench_parse",
        {
            "benchmark": "bench_parse",
            "machine": machine,
            "seed": SEED,
            "frames": len(frames),
            "frame_bytes": [min(sizes), max(sizes)],
            "payload_bytes": PAYLOAD_BYTES,
            "rounds": args.rounds,
            "us_per_message": best,
            "speedup_vs_stdlib": {name: base / us for name, us in best.items()},
            "baseline": BASELINE,
        },
    )
    print(
        f"results: {path}" + ("" if shared else " (local fallback: benchmarks/machine.py absent)")
    )


if __name__ == "__main__":
    main()
