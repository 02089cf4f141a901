"""Server CPU of one tree's recorder, for comparing commits back to back (issue 13's speed rule).

Run it from the root of each tree with that tree's venv, alternating trees, e.g.:

    CALLSTREAM_SEND_INTERVAL=0.2 .venv/bin/python /path/to/bench_versus.py new 1000,2000

It uses the tree's own benchmarks/bench_e2e.py (so an old commit is measured with its own
generator and server): a blast (100 calls x 20 s sent as fast as possible, one worker) and then
each step of concurrent real-time calls on a fresh one-worker websockets server. Prints one JSON
line per measurement and leaves everything in /tmp/versus-LABEL-TIME.json.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd() / "benchmarks"))
import bench_e2e as b


def main() -> None:
    label = sys.argv[1]
    steps = [int(n) for n in sys.argv[2].split(",")]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    features = b.serve_features()
    out: dict = {"label": label, "steps": []}
    with tempfile.TemporaryDirectory(prefix="versus-") as temporary:
        work = Path(temporary)
        out["blast"] = b.blast(work, ["--transport", "websockets"], features, 100, 20.0, 1)
        print(label, "blast", json.dumps(out["blast"]), flush=True)
        for calls in steps:
            result = b.capacity(work, f"1w-{calls}", ["--transport", "websockets"], features, (calls,),
                                seconds, b.MIN_RAMP, 1, time.monotonic() + 10_000)
            out["steps"].append(result["steps"][0])
            print(label, calls, json.dumps(result["steps"][0]), flush=True)
    Path(f"/tmp/versus-{label}-{int(time.time())}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
