"""Server CPU of one tree's recorder, for comparing commits back to back (issue 13's speed rule).

Run it from the root of each tree with that tree's venv, alternating trees, e.g.:

    CALLSTREAM_SEND_INTERVAL=0.2 .venv/bin/python /path/to/bench_versus.py new 1000,2000

or both trees at once, side by side (``--barrier DIR``: each measurement starts when every
peer has reached it), so that both see the same machine load: on a shared machine the load
moves the CPU share of one run by 10-20 %, more than the differences being looked for:

    (cd NEW && CALLSTREAM_SEND_INTERVAL=0.2 .venv/bin/python bench_versus.py new 1000 --barrier B) &
    (cd OLD && CALLSTREAM_SEND_INTERVAL=0.2 .venv/bin/python bench_versus.py old 1000 --barrier B)

It uses the tree's own benchmarks/bench_e2e.py (so an old commit is measured with its own
generator and server): a blast (100 calls x 20 s sent as fast as possible, one worker) and then
each step of concurrent real-time calls on a fresh one-worker websockets server. Prints one JSON
line per measurement and leaves everything in /tmp/versus-LABEL-TIME.json.

    bench_versus.py LABEL STEPS [SECONDS] [--barrier DIR] [--peers N] [--no-blast]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd() / "benchmarks"))
import bench_e2e as b

BARRIER_TIMEOUT = 600.0  # seconds a measurement waits for its peers before giving up


def wait_for_peers(barrier: Path | None, peers: int, label: str, what: str) -> None:
    """Mark ``what`` reached by ``label`` in ``barrier`` and wait until ``peers`` have."""
    if barrier is None:
        return
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / f"{what}.{label}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while len(list(barrier.glob(f"{what}.*"))) < peers:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_versus: the peers did not reach {what!r} in {BARRIER_TIMEOUT:g} s")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("label", help="name of this tree in the output")
    parser.add_argument("steps", help="comma-separated numbers of concurrent real-time calls")
    parser.add_argument("seconds", nargs="?", type=float, default=30.0, help="length of each call, in seconds")
    parser.add_argument("--barrier", type=Path, help="directory shared with the peers run side by side")
    parser.add_argument("--peers", type=int, default=2, help="trees run side by side with --barrier")
    parser.add_argument("--no-blast", action="store_true", help="skip the blast")
    args = parser.parse_args()
    steps = [int(n) for n in args.steps.split(",")]
    features = b.serve_features()
    out: dict = {"label": args.label, "steps": []}
    with tempfile.TemporaryDirectory(prefix="versus-") as temporary:
        work = Path(temporary)
        if not args.no_blast:
            wait_for_peers(args.barrier, args.peers, args.label, "blast")
            out["blast"] = b.blast(work, ["--transport", "websockets"], features, 100, 20.0, 1)
            print(args.label, "blast", json.dumps(out["blast"]), flush=True)
        for calls in steps:
            wait_for_peers(args.barrier, args.peers, args.label, f"step-{calls}")
            result = b.capacity(work, f"1w-{calls}", ["--transport", "websockets"], features, (calls,),
                                args.seconds, b.MIN_RAMP, 1, time.monotonic() + 10_000)
            out["steps"].append(result["steps"][0])
            print(args.label, calls, json.dumps(result["steps"][0]), flush=True)
    Path(f"/tmp/versus-{args.label}-{int(time.time())}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
