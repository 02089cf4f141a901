"""Benchmark: the whole recorder, end to end: `callstream serve` in one process, `callstream
simulate` in another, over loopback.

1. blast: calls sent as fast as possible (--fast); server CPU time per Media message through
   receive, parse, timeline, decode and write, on one worker.
2. capacity: steps of concurrent real-time calls; per step the server's CPU share, write lag
   p50/p99, frames lost and RSS. Capacity is the largest step with no failed call, nothing lost,
   lag p99 under 1.5 s and the generator on time: it must finish within REALTIME_SLACK seconds
   of ramp + audio, or the server read so slowly that TCP held the generator back (frames
   "delivered" minutes late, which the write lag, measured from the timeline, does not show).
   Stepping stops at the first step that fails. ``--render FILE`` judges a stored result again
   with these rules and rewrites e2e-latest.md and the plot from it.
3. the same with two workers, and 4. per transport, where `serve --help` offers them.

The server's CPU time and RSS are summed over the process and all its descendants (with
--workers the supervisor and every worker), read from /proc. The generator runs in
ceil(calls / GENERATOR_CALLS) processes (at least --processes).

Write lag comes from the server's `callstream_write_lag_seconds` histogram when it has
--metrics-port; otherwise from the client side: for each live call, the seconds since the
recording started minus the seconds of audio in its .partial file (so it includes the block
the server holds in memory by design: about 1 s).

    .venv/bin/python benchmarks/bench_e2e.py [--quick] [--steps 25,50,100] [--step-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import RESULTS, describe_machine, write_result

FULL_STEPS = (100, 250, 500, 750, 1000, 1250, 1500, 2000)  # concurrent calls
QUICK_STEPS = (50, 100, 200)
LAG_LIMIT = 1.5  # seconds: write lag p99 a step may have
REALTIME_SLACK = 5.0  # seconds the generator may finish after ramp + audio (start-up, closing)
FULL_BUDGET = 600.0  # seconds of stepping in a full run (all variants and the target); the blast comes first;
# with bench_ringcx.py's ~4 minutes of gRPC steps make bench stays within ~17 minutes
QUICK_BUDGET = 100.0
ARRIVALS_PER_SECOND = 100.0  # new calls per second in a step's ramp (at least MIN_RAMP seconds)
MIN_RAMP = 5.0  # seconds
STEP_OVERHEAD = 8.0  # seconds a step takes beyond ramp + audio: connects, finalising, checks
# The target for two workers on the 2-core development machine, checked in one step
# after the variants. The generator then writes every 0.2 s (ten frame pairs per call at a
# time): at the platform's pace it costs ~0.75 core per 1,000 calls, and 1,800 calls would take
# 1.35 of the 2 cores the two workers need.
TARGET_NAME = "2 workers, websockets, generator every 0.2 s"
TARGET_CALLS = 1800
TARGET_SEND_INTERVAL = "0.2"
GENERATOR_CALLS = 500  # real-time calls one generator process is given at most (~60 % of a core)
CLK_TCK = os.sysconf("SC_CLK_TCK")
WAV_HEADER = 44  # bytes before the PCM of a 16-bit WAV (the default format)
STEREO_PCM_BYTES = 4  # per sample frame: 2 channels x 16 bit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_features() -> dict:
    """Which optional flags `callstream serve` has right now."""
    text = subprocess.run(
        [sys.executable, "-m", "callstream", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    transports = re.search(r"--transport \{([^}]*)\}", text)
    return {
        "metrics": "--metrics-port" in text,
        "workers": "--workers" in text,
        "transports": transports.group(1).split(",") if transports else [],
    }


class Server:
    """`python -m callstream serve` on 127.0.0.1 with its own output directory."""

    def __init__(self, output: Path, extra: list[str], metrics: bool) -> None:
        self.port = free_port()
        self.metrics_port = free_port() if metrics else None
        self.output = output
        argv = [
            sys.executable,
            "-m",
            "callstream",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--output-dir",
            str(output),
            "--log-level",
            "warning",
            *extra,
        ]
        if self.metrics_port:
            argv += ["--metrics-port", str(self.metrics_port)]
        self.log = open(output.parent / f"server-{self.port}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(argv, stderr=self.log, stdout=self.log)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {' '.join(argv)}") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The server process and all its live descendants (workers of --workers N)."""
        found, queue = [], [self.process.pid]
        while queue:
            pid = queue.pop()
            found.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    queue.extend(int(child) for child in children.read_text().split())
                except OSError:
                    continue
        return found

    def cpu(self) -> float:
        """Seconds of CPU (user + system, all threads) the server and its descendants used."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def rss_mb(self) -> float:
        """Resident memory of the server and its descendants, MB."""
        total = 0
        for pid in self.pids():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024

    def scrape(self) -> str | None:
        """The /metrics text, or None without metrics (or when it does not answer)."""
        if not self.metrics_port:
            return None
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
            ) as reply:
                return reply.read().decode()
        except OSError:
            return None

    def live_calls(self, text: str | None) -> int | None:
        """callstream_live_calls from a scrape (summed over the workers' series)."""
        if text is None:
            return None
        found = re.findall(r"^callstream_live_calls(?:\{[^}]*\})?\s+(\S+)", text, re.M)
        return round(sum(float(value) for value in found)) if found else None

    def lag_histogram(self, text: str | None = None) -> dict[float, float] | None:
        """Cumulative bucket counts of callstream_write_lag_seconds, by upper bound."""
        if text is None:
            text = self.scrape()
        if text is None:
            return None
        buckets: dict[float, float] = {}
        for found in re.finditer(
            r'^callstream_write_lag_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\}\s+(\S+)', text, re.M
        ):
            bound = float("inf") if found.group(1) == "+Inf" else float(found.group(1))
            buckets[bound] = buckets.get(bound, 0.0) + float(found.group(2))
        return buckets or None

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def histogram_quantile(
    before: dict[float, float], after: dict[float, float], q: float
) -> float | None:
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * total:
            return bound
    return bounds[-1]


def client_side_lags(output: Path) -> list[float]:
    """Per live recording: seconds since it started minus seconds of audio in its .partial file."""
    now = time.time()
    lags = []
    for sidecar in output.rglob("*.json"):
        try:
            data = json.loads(sidecar.read_text())
            if data.get("status") != "recording" or data.get("format") != "wav":
                continue
            partial = sidecar.parent / data["partial_file"]
            size = partial.stat().st_size
        except (OSError, ValueError, KeyError):
            continue
        started = datetime.fromisoformat(data["started"].replace("Z", "+00:00")).timestamp()
        audio = max(0, size - WAV_HEADER) / STEREO_PCM_BYTES / 8000
        lags.append(now - started - audio)
    return lags


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def simulate(
    server: Server,
    calls: int,
    seconds: float,
    *,
    fast: bool,
    ramp: float,
    tag: str,
    processes: int,
    work: Path,
    sample,
) -> tuple[dict, float]:
    """Run the generator, calling ``sample()`` every 0.5 s; its JSON report and wall time."""
    report = work / f"{tag}.json"
    processes = max(processes, -(-calls // GENERATOR_CALLS))
    argv = [
        sys.executable,
        "-m",
        "callstream",
        "simulate",
        "--url",
        server.url,
        "--calls",
        str(calls),
        "--seconds",
        str(seconds),
        "--ramp",
        str(ramp),
        "--quiet",
        "--json",
        str(report),
        "--call-id",
        tag,
        "--session-id",
        tag,
        "--processes",
        str(processes),
    ]
    if fast:
        argv.append("--fast")
    started = time.monotonic()
    generator = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    while generator.poll() is None:
        sample()
        time.sleep(0.5)
    wall = time.monotonic() - started
    return json.loads(report.read_text()), wall


def recordings_of(output: Path, tag: str, wait: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + wait
    while True:
        found = []
        for path in output.rglob(f"{tag}-*.json"):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        if all(d.get("status") != "recording" for d in found) or time.monotonic() > deadline:
            return found


def frames_lost(sidecars: list[dict], frames_per_call: int) -> int:
    """20 ms frames missing from the recordings: shortfall, gaps and late drops."""
    lost = 0
    for data in sidecars:
        stats = data.get("statistics") or {}
        short = max(0, frames_per_call * 160 - int(data.get("frames") or 0)) // 160
        sides = [stats.get(side) or {} for side in ("participant", "conference")]
        lost += short + sum(int(s.get("gaps", 0)) + int(s.get("late_drops", 0)) for s in sides)
    return lost


def blast(
    work: Path, extra: list[str], features: dict, calls: int, seconds: float, processes: int
) -> dict:
    output = work / "blast"
    server = Server(output, extra, features["metrics"])
    try:
        cpu0 = server.cpu()
        report, wall = simulate(
            server,
            calls,
            seconds,
            fast=True,
            ramp=0.5,
            tag="blast",
            processes=processes,
            work=work,
            sample=lambda: None,
        )
        cpu = server.cpu() - cpu0
    finally:
        server.stop()
    summary = report["summary"]
    messages = summary["messages"]
    lost = frames_lost(recordings_of(output, "blast"), round(seconds * 50))
    shutil.rmtree(output, ignore_errors=True)
    return {
        "calls": calls,
        "seconds_of_audio": seconds,
        "messages": messages,
        "wall_seconds": round(wall, 2),
        "messages_per_second": round(messages / summary["wall_seconds"]),
        "server_cpu_seconds": round(cpu, 2),
        "server_cpu_us_per_message": round(1e6 * cpu / messages, 1),
        "generator_cpu_us_per_message": summary["generator_cpu_us_per_message"],
        "failed_calls": summary["failed"],
        "frames_lost": lost,
    }


def step(
    work: Path, server: Server, calls: int, seconds: float, ramp: float, processes: int, tag: str
) -> dict:
    cpu_samples: list[tuple[float, float]] = []
    rss: list[float] = []
    lags: list[float] = []
    started = time.monotonic()
    steady = (started + ramp + 2, started + ramp + seconds - 1)  # all calls live
    hist: dict[str, dict | None] = {"before": None, "after": None}
    rss_idle = server.rss_mb()

    live_seen: list[int] = []

    def sample() -> None:
        now = time.monotonic()
        rss.append(server.rss_mb())
        text = server.scrape()
        live = server.live_calls(text)
        if live is not None:
            live_seen.append(live)
        # the window: after the ramp, once every call is live (when the server says so)
        if steady[0] <= now <= steady[1] and (live is None or live >= calls or cpu_samples):
            cpu_samples.append((now, server.cpu()))
            if server.metrics_port:
                histogram = server.lag_histogram(text)
                if hist["before"] is None:
                    hist["before"] = histogram
                hist["after"] = histogram
            else:
                lags.extend(client_side_lags(server.output))

    report, wall = simulate(
        server,
        calls,
        seconds,
        fast=False,
        ramp=ramp,
        tag=tag,
        processes=processes,
        work=work,
        sample=sample,
    )
    summary = report["summary"]
    sidecars = recordings_of(server.output, tag)
    frames = round(seconds * 50)
    lost = frames_lost(sidecars, frames) + frames * max(0, calls - len(sidecars))
    share = None
    if len(cpu_samples) >= 2:
        (t0, c0), (t1, c1) = cpu_samples[0], cpu_samples[-1]
        share = (c1 - c0) / (t1 - t0) if t1 > t0 else None
    if hist["before"] and hist["after"]:
        method = "server histogram"
        p50 = histogram_quantile(hist["before"], hist["after"], 0.5)
        p99 = histogram_quantile(hist["before"], hist["after"], 0.99)
    else:
        method = "client side (.partial sizes)"
        p50, p99 = quantile(lags, 0.5), quantile(lags, 0.99)
    result = {
        "calls": calls,
        "seconds": seconds,
        "ramp_seconds": ramp,
        "failed_calls": summary["failed"],
        "frames_lost": lost,
        "server_cpu_share": None if share is None else round(share, 3),
        "lag_p50_s": None if p50 is None else round(p50, 3),
        "lag_p99_s": None if p99 is None else round(p99, 3),
        "lag_method": method,
        "live_calls_max": max(live_seen, default=None),
        "window_seconds": round(cpu_samples[-1][0] - cpu_samples[0][0], 1)
        if len(cpu_samples) >= 2
        else None,
        "rss_mb_max": round(max(rss), 1) if rss else None,
        "rss_kb_per_call": round(1024 * (max(rss) - rss_idle) / calls, 1) if rss else None,
        "generator_cpu_us_per_message": summary["generator_cpu_us_per_message"],
        "wall_seconds": round(wall, 1),
    }
    return judge(result)


def ramp_of(calls: int, base_ramp: float = MIN_RAMP) -> float:
    """A step's ramp: ARRIVALS_PER_SECOND new calls a second, at least ``base_ramp``."""
    return max(base_ramp, calls / ARRIVALS_PER_SECOND) if base_ramp else 0.0


def judge(result: dict) -> dict:
    """``result`` with ``behind_seconds`` and ``ok`` set by the capacity rules (see the module's
    docstring); results stored before the ramp was recorded get the default one."""
    ramp = result.get("ramp_seconds", ramp_of(result["calls"]))
    behind = result["wall_seconds"] - ramp - result["seconds"]
    p99 = result["lag_p99_s"]
    result["behind_seconds"] = round(behind, 1)
    result["ok"] = (
        result["failed_calls"] == 0 and result["frames_lost"] == 0 and p99 is not None
        and p99 < LAG_LIMIT and behind <= REALTIME_SLACK
    )
    return result


def rejudge(data: dict) -> dict:
    """A stored run judged again: every step (all are kept), and each variant's capacity: the
    largest step before its first failing one, as if the run had stopped there."""
    for variant in data["capacity"]:
        capacity = 0
        for result in variant["steps"]:
            judge(result)
        for result in variant["steps"]:
            if not result["ok"]:
                break
            capacity = result["calls"]
        variant["capacity_calls"] = capacity
    return data


def capacity(
    work: Path,
    name: str,
    extra: list[str],
    features: dict,
    steps: tuple[int, ...],
    seconds: float,
    base_ramp: float,
    processes: int,
    deadline: float,
) -> dict:
    output = work / name
    results = []
    server = Server(output, extra, features["metrics"])
    try:
        for calls in steps:
            ramp = ramp_of(calls, base_ramp)
            if time.monotonic() + seconds + ramp + STEP_OVERHEAD > deadline:
                print(f"  {name}: out of time before {calls} calls", flush=True)
                break
            tag = re.sub(r"\W+", "", name) + f"-{calls}"
            result = step(work, server, calls, seconds, ramp, processes, tag)
            results.append(result)
            print(f"  {name}: {calls} calls: {json.dumps(result)}", flush=True)
            for path in list(output.rglob("*")):  # keep the disk small between steps
                if path.is_file() and not path.name.endswith(".partial.wav"):
                    path.unlink(missing_ok=True)
            if not result["ok"]:
                break
    finally:
        server.stop()
        shutil.rmtree(output, ignore_errors=True)
    passed = [r["calls"] for r in results if r["ok"]]
    return {
        "variant": name,
        "server_args": extra,
        "steps": results,
        "capacity_calls": max(passed, default=0),
    }


def markdown(data: dict) -> str:
    b = data["blast"]
    lines = [
        f"# End to end ({data['utc']})",
        "",
        f"Machine: {data['machine']['cpu']}, {data['machine']['cores_usable']} usable cores; "
        "load average at start "
        f"{data['load_average_start']}.",
        "",
        f"Blast ({b['calls']} calls x {b['seconds_of_audio']} s, --fast, one worker): "
        f"{b['messages_per_second']:,} Media messages/s, server "
        f"{b['server_cpu_us_per_message']} us CPU per "
        f"message, generator {b['generator_cpu_us_per_message']} us per message; "
        f"{b['failed_calls']} failed calls, {b['frames_lost']} frames lost.",
        "",
        "| variant | calls | ok | server CPU | lag p50 (s) | lag p99 (s) | behind real time (s) |"
        " frames lost | failed | RSS max (MB) | KB per call | generator us/msg |",
        "|---|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in data["capacity"]:
        for s in variant["steps"]:
            share = "-" if s["server_cpu_share"] is None else f"{100 * s['server_cpu_share']:.0f} %"
            lines.append(
                f"| {variant['variant']} | {s['calls']} | {'yes' if s['ok'] else 'NO'} | {share} "
                f"| {s['lag_p50_s']} | {s['lag_p99_s']} | {s.get('behind_seconds', '-')} "
                f"| {s['frames_lost']} | {s['failed_calls']} "
                f"| {s['rss_mb_max']} | {s.get('rss_kb_per_call', '-')} | "
                f"{s['generator_cpu_us_per_message']} |"
            )
    lines.append("")
    for variant in data["capacity"]:
        method = variant["steps"][0]["lag_method"] if variant["steps"] else "-"
        lines.append(
            f"- capacity of {variant['variant']}: **{variant['capacity_calls']} calls** "
            f"(lag measured: {method})"
        )
    lines += [f"- {note}" for note in data["notes"]]
    return "\n".join(lines) + "\n"


PANELS = (  # (key of a step, y label, panel title, the step's limit or None)
    ("cpu_percent", "server CPU (% of one core)", "Server CPU", None),
    ("lag_p99_s", "write lag p99 (s)", "Write lag p99", LAG_LIMIT),
    ("behind_seconds", "behind real time (s)", "Generator behind real time", REALTIME_SLACK),
    ("frames_lost", "frames lost", "Frames lost", None),
)


def plot_title(data: dict) -> str:
    """The figure's title: date, commit and machine of the run (older runs stored no commit)."""
    machine = data["machine"]
    cores = f"{machine.get('cores_usable', machine.get('cores'))} cores"
    virtual = ", virtualized" if machine.get("virtualized") else ""
    return (f"callstream end to end - {data['utc'][:16].replace('T', ' ')} UTC - "
            f"commit {data.get('commit') or 'not recorded'} - {machine['cpu']}, {cores}{virtual}")


def plot_series(data: dict) -> dict[str, list[dict]]:
    """What each panel draws, per variant: the steps' x (calls) and y, and which steps failed
    (judged by the capacity rules), so that a failed step is marked wherever it is drawn."""
    panels: dict[str, list[dict]] = {key: [] for key, *_ in PANELS}
    for variant in data["capacity"]:
        steps = [judge(dict(s)) for s in variant["steps"]]
        for key, *_ in PANELS:
            points = [
                (s["calls"], 100 * s["server_cpu_share"] if key == "cpu_percent" else s[key], not s["ok"])
                for s in steps
                if (s.get("server_cpu_share") if key == "cpu_percent" else s.get(key)) is not None
            ]
            panels[key].append({
                "label": variant["variant"],
                "x": [x for x, _, _ in points],
                "y": [y for _, y, _ in points],
                "failed": [failed for _, _, failed in points],
            })
    return panels


def plot(data: dict, path: Path) -> bool:
    """Draw ``data`` (a run) into ``path`` (PNG): CPU, write lag p99, behind real time and frames
    lost against concurrent calls, one line per variant, every failed step marked with a red x,
    each limit dotted, and the run's date, commit and machine in the title."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", flush=True)
        return False
    series = plot_series(data)
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for axis, (key, ylabel, title, limit) in zip(axes.flat, PANELS, strict=True):
        for line in series[key]:
            axis.plot(line["x"], line["y"], "o-", label=line["label"])
            failed = [(x, y) for x, y, bad in zip(line["x"], line["y"], line["failed"], strict=True) if bad]
            if failed:
                axis.plot(*zip(*failed, strict=True), "x", color="red", markersize=11, markeredgewidth=2.5)
        if key == "cpu_percent":
            axis.axhline(100, color="grey", linestyle=":", linewidth=1)
        if key == "frames_lost":  # a count: whole numbers, from 0 even when nothing was lost
            highest = max((y for line in series[key] for y in line["y"]), default=0)
            axis.set_ylim(-0.5, max(1, highest * 1.1))
            axis.yaxis.get_major_locator().set_params(integer=True)
        if limit is not None:
            axis.axhline(limit, color="red", linestyle=":", linewidth=1, label=f"limit {limit:g}")
        axis.plot([], [], "x", color="red", markersize=9, markeredgewidth=2.5, label="failed step")
        axis.set(xlabel="concurrent real-time calls", ylabel=ylabel, title=title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(plot_title(data), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of about two minutes")
    parser.add_argument("--steps", help="comma-separated concurrent call counts")
    parser.add_argument("--step-seconds", type=float, help="seconds of audio per call in a step")
    parser.add_argument("--blast-calls", type=int)
    parser.add_argument("--processes", type=int, default=1, help="generator processes")
    parser.add_argument(
        "--only", help="run only the variants whose name contains this text, and no blast; the "
        "result goes to e2e-partial-*.json, not to the e2e-latest files the README shows",
    )
    parser.add_argument(
        "--send-interval", type=float,
        help="the generator's --send-interval (default: its own, 0.02 s: every frame pair "
        "written on its own, as the platform does)",
    )
    parser.add_argument(
        "--render", type=Path, metavar="FILE",
        help="run nothing: judge the stored result FILE by the current rules, rewrite it and "
        "e2e-latest.md/.png from it",
    )
    args = parser.parse_args()
    if args.render is not None:
        return render(args.render)
    if args.send_interval is not None:  # the generator reads it from its environment
        os.environ["CALLSTREAM_SEND_INTERVAL"] = str(args.send_interval)
    quick = args.quick
    steps = (
        tuple(int(n) for n in args.steps.split(","))
        if args.steps
        else (QUICK_STEPS if quick else FULL_STEPS)
    )
    seconds = args.step_seconds or (8.0 if quick else 30.0)
    ramp = 2.0 if quick else MIN_RAMP
    features = serve_features()
    notes = []
    if os.environ.get("CALLSTREAM_SEND_INTERVAL"):
        notes.append(f"generator --send-interval {os.environ['CALLSTREAM_SEND_INTERVAL']} s")
    load = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as temporary:
        work = Path(temporary)
        print(f"serve features: {features}", flush=True)
        blast_result = None if args.only else blast(
            work,
            [],
            features,
            args.blast_calls or (50 if quick else 100),
            10.0 if quick else 20.0,
            args.processes,
        )
        print(f"blast: {json.dumps(blast_result)}", flush=True)
        variants: list[tuple[str, list[str]]] = [("1 worker", [])]
        if features["workers"]:
            variants.append(("2 workers", ["--workers", "2"]))
        else:
            notes.append("two workers: skipped, `serve` has no --workers yet")
        if features["transports"]:
            transports = features["transports"][:1] if quick else features["transports"]
            # The default transport (listed first) runs last: each variant gets an equal share
            # of the time left, so what the slower transport leaves unused goes to the default.
            variants = [
                (f"{name}, {t}", [*extra, "--transport", t])
                for t in reversed(transports)
                for name, extra in variants
            ]
            if quick:
                notes.append(f"--quick: only the {transports[0]} transport")
        else:
            notes.append("transports: only the built-in one, `serve` has no --transport yet")
        if not features["metrics"]:
            notes.append(
                "write lag measured from the client side: `serve` has no --metrics-port yet; "
                "it includes "
                "the ~1 s block the server holds before writing"
            )
        if args.only:
            variants = [(name, extra) for name, extra in variants if args.only in name]
        budget = QUICK_BUDGET if quick else FULL_BUDGET
        with_target = (
            not quick and not args.steps and features["workers"] and "websockets" in features["transports"]
            and (not args.only or args.only in TARGET_NAME)
        )
        if with_target:  # the target step comes out of the same budget: make bench stays within 15 minutes
            budget -= seconds + ramp_of(TARGET_CALLS, ramp) + STEP_OVERHEAD
        deadline = time.monotonic() + budget
        results = []
        for index, (name, extra) in enumerate(variants):
            share = (deadline - time.monotonic()) / (len(variants) - index)
            results.append(
                capacity(
                    work,
                    name,
                    extra,
                    features,
                    steps,
                    seconds,
                    ramp,
                    args.processes,
                    time.monotonic() + share,
                )
            )
        if with_target:
            results.append(target(work, features, seconds, ramp, args.processes))
    data = {
        "quick": quick,
        "features": features,
        "load_average_start": [round(x, 2) for x in load],
        "blast": blast_result,
        "capacity": results,
        "notes": notes,
        "total_seconds": round(time.monotonic() - started, 1),
        "machine": describe_machine(),
    }
    if args.only:
        path = write_result("e2e-partial", data)
        print(f"results: {path}")
        return 0
    path = write_result("e2e", data)
    publish(json.loads(path.read_text()))
    print(f"results: {path}")
    return 0


def target(work: Path, features: dict, seconds: float, ramp: float, processes: int) -> dict:
    """The TARGET_CALLS step on two workers, the generator at TARGET_SEND_INTERVAL (unless
    --send-interval set another pace for the whole run)."""
    own = "CALLSTREAM_SEND_INTERVAL" not in os.environ
    if own:
        os.environ["CALLSTREAM_SEND_INTERVAL"] = TARGET_SEND_INTERVAL
    try:
        # (the servers start within the deadline: a minute for that)
        deadline = time.monotonic() + seconds + ramp_of(TARGET_CALLS, ramp) + STEP_OVERHEAD + 60.0
        return capacity(
            work, TARGET_NAME, ["--workers", "2", "--transport", "websockets"], features, (TARGET_CALLS,),
            seconds, ramp, processes, deadline,
        )
    finally:
        if own:
            del os.environ["CALLSTREAM_SEND_INTERVAL"]


def publish(data: dict) -> None:
    """e2e-latest.md and e2e-latest.png from a run's result."""
    table = markdown(data)
    print("\n" + table)
    (RESULTS / "e2e-latest.md").write_text(table)
    if plot(data, RESULTS / "e2e-latest.png"):
        print(f"plot: {RESULTS / 'e2e-latest.png'}")


def render(path: Path) -> int:
    """``--render``: the stored run judged again, written back (and as e2e-latest.json), and
    published."""
    data = rejudge(json.loads(path.read_text()))
    text = json.dumps(data, indent=2) + "\n"
    path.write_text(text)
    (RESULTS / "e2e-latest.json").write_text(text)
    publish(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
