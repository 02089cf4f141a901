"""G.711 mu-law decoding: the C kernel against numpy (and the stdlib audioop where it exists).

Mono decode and stereo decode-and-interleave of a 160-byte frame (20 ms), a 1-second block
(8,000 bytes per channel) and 16 MiB per channel, all in one run on data built once from a fixed
seed.  Variants are timed round by round, interleaved, so that every one sees the same machine
noise; the best round counts.  Throughput is MB/s (10^6 bytes) of mu-law input, both channels
counted for stereo.  C and numpy write into a preallocated ``out=``, as a recorder reusing its
buffers would; "c new array" is the C kernel allocating its result on every call; audioop (mono
only) always returns new bytes.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np

from callstream import codec
from machine import describe_machine, write_result

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # audioop: deprecated in 3.11, gone in 3.13
    try:
        import audioop
    except ImportError:
        audioop = None

SEED = 20_240_611
SIZES = {"160 B": 160, "1 s": 8000, "16 MiB": 16 << 20}  # bytes per channel
SAMPLE_SECONDS = 0.01  # each timed sample repeats the call for about this long
TARGETS = {  # from the kernel's brief
    "mono 16 MiB MB/s": 4000.0,
    "mono 16 MiB c/numpy": 8.0,
    "stereo 1 s MB/s": 1500.0,
}


def make_variants(op: str, left: bytes, right: bytes) -> dict[str, Callable[[], object]]:
    n = len(left)
    found = codec.backends()
    out = np.empty(n, dtype=np.int16) if op == "mono" else np.empty((n, 2), dtype=np.int16)
    variants: dict[str, Callable[[], object]] = {}
    for name in ("c", "c-portable", "numpy"):
        if name not in found:
            continue
        backend = found[name]
        if op == "mono":
            variants[name] = lambda b=backend: b.decode_ulaw(left, out=out)
        else:
            variants[name] = lambda b=backend: b.decode_ulaw_stereo(left, right, out=out)
    if "c" in found:
        c = found["c"]
        if op == "mono":
            variants["c new array"] = lambda: c.decode_ulaw(left)
        else:
            variants["c new array"] = lambda: c.decode_ulaw_stereo(left, right)
    if op == "mono" and audioop is not None:
        variants["audioop"] = lambda: audioop.ulaw2lin(left, 2)
    return variants


def check(op: str, variants: dict[str, Callable[[], object]]) -> None:
    """Every variant must produce the numpy backend's samples before it is timed."""
    expected = np.asarray(variants["numpy"]()).copy().reshape(-1)
    for name, call in variants.items():
        result = call()
        got = np.frombuffer(result, dtype=np.int16) if isinstance(result, bytes) else result
        if not np.array_equal(np.asarray(got).reshape(-1), expected):
            raise SystemExit(f"{op}: variant {name!r} disagrees with numpy")


def calibrate(call: Callable[[], object]) -> int:
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    return max(1, int(SAMPLE_SECONDS / max(once, 1e-7)))


def measure(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best seconds per call of each variant over interleaved rounds."""
    numbers = {name: calibrate(call) for name, call in variants.items()}
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, call in variants.items():
            number = numbers[name]
            start = time.perf_counter()
            for _ in range(number):
                call()
            best[name] = min(best[name], (time.perf_counter() - start) / number)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per case")
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    biggest = max(SIZES.values())
    left_all = rng.integers(0, 256, biggest, dtype=np.uint8).tobytes()
    right_all = rng.integers(0, 256, biggest, dtype=np.uint8).tobytes()

    started = time.perf_counter()
    rows = []
    for op in ("mono", "stereo"):
        for label, n in SIZES.items():
            left, right = left_all[:n], right_all[:n]
            variants = make_variants(op, left, right)
            check(op, variants)
            seconds = measure(variants, args.rounds)
            input_bytes = n if op == "mono" else 2 * n
            mb_s = {name: input_bytes / s / 1e6 for name, s in seconds.items()}
            rows.append(
                {
                    "op": op,
                    "size": label,
                    "bytes_per_channel": n,
                    "input_bytes": input_bytes,
                    "us_per_call": {name: s * 1e6 for name, s in seconds.items()},
                    "mb_per_s": mb_s,
                    "c_vs_numpy": mb_s["c"] / mb_s["numpy"] if "c" in mb_s else None,
                    "c_vs_audioop": mb_s["c"] / mb_s["audioop"]
                    if "c" in mb_s and "audioop" in mb_s
                    else None,
                }
            )
    elapsed = time.perf_counter() - started

    machine = describe_machine()
    c_path = codec.CBackend.path() if "c" in codec.backends() else None
    names = list(dict.fromkeys(name for row in rows for name in row["mb_per_s"]))
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['os']}, "
        f"{machine['python']}, numpy {machine['numpy']}, {machine['compiler']}"
    )
    print(
        f"C path: {c_path}; seed {SEED}; best of {args.rounds} rounds; {elapsed:.1f} s. "
        "MB/s of mu-law input (10^6 bytes/s)"
    )
    header = f"{'op':<7}{'size':>7}" + "".join(f"{name:>13}" for name in names)
    print(header + f"{'c/numpy':>9}{'c/audioop':>10}")
    for row in rows:
        cells = "".join(
            f"{row['mb_per_s'][name]:13.0f}" if name in row["mb_per_s"] else f"{'-':>13}"
            for name in names
        )
        ratios = "".join(
            f"{row[key]:{width}.1f}x" if row[key] else f"{'-':>{width + 1}}"
            for key, width in (("c_vs_numpy", 8), ("c_vs_audioop", 9))
        )
        print(f"{row['op']:<7}{row['size']:>7}{cells}{ratios}")

    targets = evaluate_targets(rows)
    for name, (goal, got) in targets.items():
        verdict = "met" if got is not None and got >= goal else "NOT met"
        shown = "n/a" if got is None else f"{got:.1f}"
        print(f"target {name} >= {goal:g}: {shown} ({verdict})")

    path = write_result(
        "codec",
        {
            "machine": machine,
            "c_path": c_path,
            "backend": codec.BACKEND,
            "seed": SEED,
            "rounds": args.rounds,
            "unit": "MB/s of mu-law input (both channels for stereo), best round",
            "results": rows,
            "targets": {
                name: {"goal": goal, "measured": got, "met": got is not None and got >= goal}
                for name, (goal, got) in targets.items()
            },
        },
    )
    print(f"results: {path}")


def evaluate_targets(rows: list[dict]) -> dict[str, tuple[float, float | None]]:
    def row(op: str, size: str) -> dict:
        return next(r for r in rows if r["op"] == op and r["size"] == size)

    mono_big = row("mono", "16 MiB")
    stereo_1s = row("stereo", "1 s")
    measured = {
        "mono 16 MiB MB/s": mono_big["mb_per_s"].get("c"),
        "mono 16 MiB c/numpy": mono_big["c_vs_numpy"],
        "stereo 1 s MB/s": stereo_1s["mb_per_s"].get("c"),
    }
    return {name: (goal, measured[name]) for name, goal in TARGETS.items()}


if __name__ == "__main__":
    main()
