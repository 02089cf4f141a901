"""Benchmark: what each C kernel is worth end to end (issue 13: a kernel stays where dropping it
costs at least 3 % of the all-native server CPU at 1,000 real-time calls).

Each run is a fresh one-worker websockets server (bench_e2e's ``Server``) with ``CALLSTREAM_NATIVE``
set for the server only -- all kernels (``1``), every kernel but one (``-wsframe`` ...), every twin
(``0``); the generator always runs all-native. Configurations alternate back to back, round by
round, so a shared machine's drift falls on all of them alike. Per run:

- ``window_share``: server CPU (cores) over the window in which at least 95 % of the calls are live;
- ``cpu_per_1000_calls``: the server's whole CPU of the run (connects, every frame, finalising)
  divided by calls x seconds, x 1,000: the cores 1,000 real-time calls cost, start to end;
- ``lag_p50_s`` / ``lag_p99_s``: the server's write lag (``callstream_write_lag_seconds``, a
  block's seconds from leaving the timeline to flushed; the histogram's bucket bounds) over the
  whole run, when the server has --metrics-port.

    .venv/bin/python benchmarks/bench_kernels.py [--rounds 2] [--calls 1000] [--seconds 20]

Not part of ``make bench``; the result goes to ``benchmarks/results/kernels-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import bench_e2e as b
from machine import describe_machine, write_result

CONFIGS = ("1", "-wsframe", "-mediascan", "-inorder", "-append", "-mulaw", "0")
LIVE_FRACTION = 0.95  # of the calls: the CPU window starts once this many are live


def run(work: Path, name: str, config: str, calls: int, seconds: float, metrics: bool) -> dict:
    os.environ["CALLSTREAM_NATIVE"] = config
    try:
        server = b.Server(work / name, ["--transport", "websockets"], metrics)
    finally:
        os.environ.pop("CALLSTREAM_NATIVE", None)  # the generator stays all-native
    samples: list[tuple[float, float, int | None]] = []
    lag: dict[float, float] = {}  # the write-lag histogram at the last scrape
    try:
        cpu0 = server.cpu()

        def sample() -> None:
            text = server.scrape()
            samples.append((time.monotonic(), server.cpu(), server.live_calls(text)))
            histogram = server.lag_histogram(text) if metrics else None
            if histogram:
                lag.clear()
                lag.update(histogram)

        report, wall = b.simulate(server, calls, seconds, fast=False, ramp=b.ramp_of(calls), tag=name,
                                  processes=1, work=work, sample=sample)
        sidecars = b.recordings_of(server.output, name)
        cpu1 = server.cpu()
        if metrics:
            lag.update(server.lag_histogram() or {})  # the blocks written since the last sample
    finally:
        server.stop()
    live = [s for s in samples if s[2] is not None and s[2] >= LIVE_FRACTION * calls]
    share = (live[-1][1] - live[0][1]) / (live[-1][0] - live[0][0]) if len(live) >= 4 else None
    return {
        "config": config,
        "at": time.strftime("%H:%M:%S", time.gmtime()),
        "load1": round(os.getloadavg()[0], 2),
        "cpu_seconds": round(cpu1 - cpu0, 2),
        "cpu_per_1000_calls": round((cpu1 - cpu0) / calls * 1000 / seconds, 3),
        "window_share": None if share is None else round(share, 3),
        "window_seconds": round(live[-1][0] - live[0][0], 1) if len(live) >= 2 else None,
        "lag_p50_s": b.histogram_quantile({}, lag, 0.5) if lag else None,
        "lag_p99_s": b.histogram_quantile({}, lag, 0.99) if lag else None,
        "recordings": len(sidecars),
        "failed_calls": report["summary"]["failed"],
        "frames_lost": b.frames_lost(sidecars, round(seconds * 50)),
        "wall_seconds": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs of every configuration (default 2)")
    parser.add_argument("--calls", type=int, default=1000, help="concurrent real-time calls (default 1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per call, seconds (default 20)")
    parser.add_argument("--configs", default=";".join(CONFIGS),
                        help="CALLSTREAM_NATIVE values separated by ';' (default: all, each one dropped, none)")
    args = parser.parse_args()
    configs = args.configs.split(";")
    metrics = b.serve_features()["metrics"]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-kernels-") as tmp:
        for r in range(args.rounds):
            for i, config in enumerate(configs):
                result = {"round": r, **run(Path(tmp), f"r{r}k{i}", config, args.calls, args.seconds, metrics)}
                runs.append(result)
                print(json.dumps(result), flush=True)
    for key in ("window_share", "cpu_per_1000_calls", "lag_p99_s"):
        base = statistics.median(x[key] for x in runs if x["config"] == configs[0] and x[key] is not None)
        print(f"\n{key} (vs {configs[0]!r} median {base}):")
        for config in configs:
            values = [x[key] for x in runs if x["config"] == config and x[key] is not None]
            if values:
                print(f"  {config:12} {min(values):.3f}-{max(values):.3f}  median {statistics.median(values):.3f}"
                      f"  {100 * (statistics.median(values) - base) / base:+.1f} %")
    path = write_result("kernels", {"machine": describe_machine(), "calls": args.calls, "seconds": args.seconds,
                                    "runs": runs})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
