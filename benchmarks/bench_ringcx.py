"""RingCX gRPC front end: server CPU per message of the full recorder against a bare grpc.aio
receiver, both fed the same real-time dialogs in the same run.

Each dialog: DialogInit, a caller and an agent segment, both sending a 100 ms PCMU chunk every
100 ms (20 messages a second per dialog), then two SegmentStops. The generator (grpc.aio client,
one loop per process) starts the dialogs spread over a ramp and deals them over CONNECTIONS
HTTP/2 connections in turn (``--connections``): with ``--workers N`` the kernel gives each
connection, not each dialog, to a worker (SO_REUSEPORT), so one connection would load one
worker. The server runs in processes of its own; their CPU (user + system, /proc) is read
before and after.
- ``bare``: a grpc.aio server whose servicer only collects each dialog's payloads (the price
  of the transport, the floor); with N workers, N such processes sharing the port;
- ``full``: ``callstream serve --ringcx-port [--workers N]`` (plaintext on loopback), recording
  WAV files; with N > 1 it logs each dialog's start, and the step counts the dialogs per worker.

Two modes (nothing here asserts speed):
- steps (the default; `make bench` runs it, ~5 minutes): concurrent real-time dialogs stepped up
  (STEPS) on one worker, each step run against the bare receiver and then the full recorder,
  judged like bench_e2e's WebSocket steps (on one worker the bare receiver runs before and after
  the full recorder, which is set against the mean of the two: the machine's drift between two
  runs of a few seconds' window is as large as the margin the issue's 1.3x leaves): every
  dialog answered OK, every recording exact (both channels sample for sample: the sent chunks,
  contiguous, silence elsewhere), write lag p99 (the server's histogram) under LAG_LIMIT and the
  generator on time (its dialogs end within REALTIME_SLACK of their schedule: a server that reads
  too slowly holds the platform back through HTTP/2 flow control instead of losing audio).
  Stepping stops at the first step the full recorder fails. The server's CPU is read over the
  window in which every dialog is live, STEADY_MARGIN clear of the last start and the first end
  (a step's dialogs last long enough for MIN_WINDOW of it);
  the table "CPU per 1,000 calls/dialogs" sets it beside the WebSocket front end's: from this
  run with ``--websocket`` (a WebSocket step of as many real-time calls on one worker after each
  one-worker RingCX step, bench_e2e's step), else from the last bench_e2e run
  (results/e2e-latest.json; make bench runs bench_e2e first). The generator runs in
  ceil(dialogs / GENERATOR_DIALOGS) processes. ``--workers 1,2``: every step on one worker,
  then on two (a worker count stops stepping at its first failed step).
- ratio (``--dialogs N [--seconds S] [--rounds R]``): one size; R runs of the full recorder, each
  between two runs of the bare receiver (bare, full, bare, ... bare), each full run's ratios to
  the mean of the bare runs beside it, and their medians. CPU per message over the whole run
  and over its steady state (every dialog live, STEADY_MARGIN clear of the starts and ends),
  and what the rest cost per dialog (its start and its finish: for the full recorder, creating
  and finishing the recording). The dialogs start over the steps' ramp, from the same generator
  processes. The steady CPU is also read by thread (`thread_cpu`), and each steady ratio split in
  two: the full recorder's gRPC threads over the bare receiver's whole CPU (the transport as the
  recorder runs it), and the rest (trio's thread, the disk workers: the recorder's own work).

    .venv/bin/python benchmarks/bench_ringcx.py [--steps 100,300,600,900] [--step-seconds 10]
        [--workers 1,2] [--connections 16] [--websocket]
    .venv/bin/python benchmarks/bench_ringcx.py --dialogs 300 --seconds 20 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e
from bench_e2e import REALTIME_SLACK, Server, free_port, histogram_quantile
from callstream import codec
from callstream.ringcx import streaming_pb2 as pb
from callstream.ringcx import streaming_pb2_grpc
from callstream.sim.ringcx_client import open_aio_channels
from machine import RESULTS, describe_machine, write_result

SETTLE = 1.0  # seconds after the listener is up before measuring
IDLE = 2.0  # seconds of the idle server measured before the dialogs
CHUNK = bytes(range(0x10, 0x10 + 200)) * 4  # 800 bytes: 100 ms of PCMU
HERE = Path(__file__).resolve()
STEPS = (100, 300, 600, 900)  # concurrent real-time dialogs on one worker
STEP_SECONDS = 10.0  # audio per dialog in a step
BUDGET = 330.0  # seconds of steps at most (make bench's ~17 minutes: the gRPC share; 600 on two workers fits)
STEP_OVERHEAD = 10.0  # seconds a step (bare + full) takes beyond 2 x (ramp + audio): start, checks
LAG_LIMIT = 2.0  # seconds: the write lag p99 for dialogs
ARRIVALS_PER_SECOND = 200.0  # new dialogs per second in a step's ramp (at least MIN_RAMP)
MIN_RAMP = 1.0  # seconds
# seconds between the steady window and the dialogs' starts and ends: 300 recordings created in a
# second keep the server busy for about one more (the disk threads' inodes)
STEADY_MARGIN = 2.0
MIN_WINDOW = 6.0  # seconds of steady state a step measures at least (its dialogs last longer if need be)
GENERATOR_DIALOGS = 300  # real-time dialogs one generator process (one grpc.aio loop) is given
MESSAGES_PER_SECOND = 20  # per dialog: two segments, a 100 ms chunk each every 100 ms
CONNECTIONS = 16  # HTTP/2 connections a step's dialogs are dealt over (all generator processes together)
WORKERS = (1, 2)  # worker counts each step runs with
STARTED = re.compile(r"worker-(\d+)\[\d+\] .*dialog from .* started")  # a worker's log line per dialog


def _stat_seconds(stat: str) -> float:
    """User + system CPU seconds of a /proc ``stat`` file (a process's or a thread's)."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    return _stat_seconds(f"/proc/{pid}/stat")


# the threads of a server by role, for the steady window's CPU (see thread_cpu)
ROLES = ("main", "python", "grpc core", "workers", "ended")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of the process's live threads, summed by role (ROLES): ``main``
    (its first thread: trio's in the full recorder, the asyncio loop in the bare receiver), ``python``
    (other threads Python started without a name of their own: the full recorder's gRPC loop and
    grpc.aio's completion-queue poller), ``grpc core`` (grpcio's C threads: event engine, timers),
    ``workers`` (threads trio named: its worker threads, which open, write and finish the
    recordings). Python 3.11 leaves its threads the process's name; trio names its own."""
    roles = dict.fromkeys(ROLES[:-1], 0.0)
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            seconds = _stat_seconds(f"/proc/{pid}/task/{tid}/stat")
        except OSError:  # the thread ended meanwhile
            continue
        if tid == str(pid):
            role = "main"
        elif name.startswith(("event_engine", "grpc", "lifeguard")):
            role = "grpc core"
        elif name.startswith("python"):
            role = "python"
        else:
            role = "workers"
        roles[role] += seconds
    return roles


def _process_and_threads(pid: int) -> tuple[float, dict[str, float]]:
    return cpu_seconds(pid), thread_cpu(pid)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {len(os.sched_getaffinity(0))} usable cores, CPython {platform.python_version()}, " \
           f"grpcio {grpc.__version__}, load average {os.getloadavg()[0]:.2f}"


# -- the bare receiver (a process of its own) -------------------------------------------------


class _Bare(streaming_pb2_grpc.StreamingServicer):
    async def Stream(self, request_iterator, context):
        chunks: dict[str, list[bytes]] = {}
        async for event in request_iterator:
            if event.WhichOneof("event") == "segment_media":
                media = event.segment_media
                chunks.setdefault(media.segment_id, []).append(media.audio_content.payload)
        from google.protobuf import empty_pb2

        return empty_pb2.Empty()


async def _bare_main(port: int = 0) -> None:
    """Port 0: one process on a port of its own; else this port, shared (SO_REUSEPORT)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if port else 0)])
    streaming_pb2_grpc.add_StreamingServicer_to_server(_Bare(), server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"RingCX gRPC on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    await server.wait_for_termination()


# -- the generator ------------------------------------------------------------------------------


def _events(index: int, seconds: float):
    session = f"bench-{index}"
    yield 0.0, pb.StreamEvent(session_id=session, dialog_init=pb.DialogInitEvent(dialog=pb.Dialog(id=session)))
    for segment, kind in (("caller", pb.CONTACT), ("agent", pb.AGENT)):
        yield 0.0, pb.StreamEvent(session_id=session, segment_start=pb.SegmentStartEvent(
            segment_id=segment, participant=pb.Participant(id=segment, type=kind),
            audio_format=pb.AudioFormat(codec=pb.PCMU, rate=8000, ptime=100)))
    for k in range(round(seconds * 10)):
        for segment in ("caller", "agent"):
            yield (k + 1) * 0.1, pb.StreamEvent(session_id=session, segment_media=pb.SegmentMediaEvent(
                segment_id=segment, audio_content=pb.AudioContent(payload=CHUNK, seq=k + 1, duration=100)))
    for segment in ("caller", "agent"):
        yield seconds, pb.StreamEvent(session_id=session, segment_stop=pb.SegmentStopEvent(segment_id=segment))


async def _dialog(stub: streaming_pb2_grpc.StreamingStub, index: int, seconds: float, start: float) -> float | None:
    """One dialog from ``start`` (time.time()); its lateness at the end (seconds), None if it failed."""
    await asyncio.sleep(max(0.0, start - time.time()))
    loop = asyncio.get_running_loop()
    began = loop.time()

    async def paced():
        for at, event in _events(index, seconds):
            wait = began + at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            yield event

    try:
        await stub.Stream(paced())
    except grpc.aio.AioRpcError as error:
        print(f"dialog {index}: {error.code().name} {error.details()}", file=sys.stderr)
        return None
    return loop.time() - began - seconds


async def _generate_at(target: str, first: int, count: int, total: int, seconds: float, ramp: float,
                       start: float, connections: int = 1) -> list[float | None]:
    """Dialogs ``first`` .. ``first + count - 1`` of ``total``, dealt over ``connections``
    HTTP/2 connections of their own in turn."""
    channels = await open_aio_channels(target, max(1, min(connections, count)), timeout=30)
    stubs = [streaming_pb2_grpc.StreamingStub(channel) for channel in channels]
    try:
        return await asyncio.gather(*(
            _dialog(stubs[i % len(stubs)], i, seconds, start + ramp * i / max(1, total))
            for i in range(first, first + count)))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def _sample_at(moments: list[float], read: Any, into: list[tuple[float, Any]]) -> threading.Thread:
    """A thread that appends (time.time(), read()) to ``into`` at each of ``moments``."""
    def run() -> None:
        for at in moments:
            time.sleep(max(0.0, at - time.time()))
            into.append((time.time(), read()))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def run_variant(variant: str, dialogs: int, seconds: float, connections: int = 1) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as output:
        if variant == "bare":
            command = [sys.executable, str(HERE), "--bare-server"]
        else:
            command = [sys.executable, "-m", "callstream", "serve", "--host", "127.0.0.1", "--port", "0",
                       "--ringcx-port", "0", "--ringcx-plaintext", "--output-dir", output, "--log-level", "info",
                       "--max-calls", str(dialogs + 10)]
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        try:
            port = _listening(process, variant)
            time.sleep(SETTLE)  # the rest of the server's start (the WebSocket listener, recovery)
            idle = cpu_seconds(process.pid)
            time.sleep(IDLE)
            before = cpu_seconds(process.pid)
            idle_cores = (before - idle) / IDLE
            started = time.monotonic()
            ramp = ramp_of(dialogs)
            generators, start = _generators(port, dialogs, seconds, ramp, connections)
            window: list[tuple[float, tuple[float, dict[str, float]]]] = []
            sampler = _sample_at(list(steady_window(start, ramp, seconds)),
                                 lambda: _process_and_threads(process.pid), window)
            failed, _, _ = _gather(generators)
            ok = dialogs - failed
            wall = time.monotonic() - started
            cpu = cpu_seconds(process.pid) - before
            sampler.join()
        finally:
            process.terminate()
            process.wait(30)
    messages = dialogs * (3 + 2 * round(seconds * 10) + 2)
    busy = cpu - idle_cores * wall  # what the dialogs cost beyond the idle server's own timers
    (t0, (c0, threads0)), (t1, (c1, threads1)) = window
    steady = (c1 - c0) / (t1 - t0)  # cores while every dialog is live
    roles = {role: round((threads1[role] - threads0[role]) / (t1 - t0), 4) for role in ROLES[:-1]}
    # threads that ended within the window (trio's idle workers) took their CPU with them
    roles["ended"] = round(steady - sum(roles.values()), 4)
    return {"dialogs_ok": ok, "server_cpu_s": round(cpu, 3), "wall_s": round(wall, 2),
            "idle_cores": round(idle_cores, 4), "busy_cpu_s": round(busy, 3),
            "busy_us_per_message": round(busy / messages * 1e6, 1),
            "cpu_us_per_message": round(cpu / messages * 1e6, 1), "server_cores": round(cpu / wall, 3),
            "messages": messages, "steady_cores": round(steady, 4),
            "steady_us_per_message": round(steady / (dialogs * MESSAGES_PER_SECOND) * 1e6, 1),
            "steady_cores_by_thread": roles,
            # what the run cost beyond the steady rate, per dialog: its start and its finish
            "ends_ms_per_dialog": round((cpu - steady * wall) / dialogs * 1e3, 2)}


def _listening(process: subprocess.Popen, variant: str) -> int:
    """The gRPC port a server (stderr piped, text) logs once it listens. The rest of its stderr
    is then read and dropped by a thread: a pipe nobody reads fills (64 KiB, ~300 dialogs' log
    lines) and the server's next log line blocks its event loop for good."""
    assert process.stderr is not None
    while True:
        line = process.stderr.readline()
        if not line:
            raise RuntimeError(f"{variant} server ended before listening")
        found = re.search(r"RingCX gRPC on [\d.]+:(\d+)", line)
        if found:
            threading.Thread(target=_discard, args=(process.stderr,), daemon=True).start()
            return int(found.group(1))


def _discard(stream: Any) -> None:
    for _ in stream:
        pass


# -- steps ----------------------------------------------------------------------------------------


def _generators(port: int, dialogs: int, seconds: float, ramp: float, connections: int
                ) -> tuple[list[subprocess.Popen], float]:
    """Start the generator processes (their dialogs begin together, 1.5 s from now; the
    ``connections`` shared out among them); returns them and the dialogs' start (time.time())."""
    start = time.time() + 1.5  # the processes import grpc meanwhile
    processes = []
    count_of = max(1, -(-dialogs // GENERATOR_DIALOGS))
    per = -(-dialogs // count_of)
    for index, first in enumerate(range(0, dialogs, per)):
        count = min(per, dialogs - first)
        own = connections // count_of + (index < connections % count_of)
        processes.append(subprocess.Popen(
            [sys.executable, str(HERE), "--generate", f"127.0.0.1:{port}", "--first", str(first),
             "--count", str(count), "--dialogs", str(dialogs), "--seconds", str(seconds), "--ramp", str(ramp),
             "--start", repr(start), "--connections", str(max(1, own))], stdout=subprocess.PIPE, text=True))
    return processes, start


def _gather(processes: list[subprocess.Popen]) -> tuple[int, float, float]:
    """(failed dialogs, the latest dialog's lateness in s, generator CPU s) once all have ended."""
    failed, behind, cpu = 0, 0.0, 0.0
    for process in processes:
        out, _ = process.communicate()
        report = json.loads(out.strip().splitlines()[-1])
        failed += report["failed"]
        behind = max(behind, report["behind_max"])
        cpu += report["cpu_s"]
    return failed, behind, cpu


def expected_channel(seconds: float) -> np.ndarray:
    return np.tile(codec.decode_ulaw(CHUNK), round(seconds * 10))


def exact(path: Path, expected: np.ndarray) -> bool:
    """Both channels hold the sent chunks, contiguous, and silence elsewhere."""
    frames, _ = soundfile.read(path, dtype="int16", always_2d=True)
    if frames.shape[1] != 2:
        return False
    for channel in (frames[:, 0], frames[:, 1]):
        nonzero = np.flatnonzero(channel)
        if not len(nonzero) or nonzero[0] + len(expected) > len(channel):
            return False
        first = nonzero[0]
        if not np.array_equal(channel[first : first + len(expected)], expected):
            return False
        if len(nonzero) != np.count_nonzero(expected):
            return False
    return True


def verify(output: Path, dialogs: int, seconds: float, wait: float = 60.0) -> tuple[int, int, int]:
    """(recordings finished, recordings exact, recordings with a pause), once none is still being
    written. The generator sends no pause: a recording with one had its chunks read more than
    the reorder window late (an overloaded machine), which the recorder takes for a hold."""
    deadline = time.monotonic() + wait
    while True:
        sidecars = []
        for path in output.rglob("*.json"):
            try:
                sidecars.append((path, json.loads(path.read_text())))
            except (OSError, ValueError):
                continue
        if all(data.get("status") != "recording" for _, data in sidecars) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expected = expected_channel(seconds)
    finished = good = paused = 0
    for path, data in sidecars:
        if data.get("status") != "complete":
            continue
        finished += 1
        segments = (data.get("metadata") or {}).get("segments") or []
        paused += any(segment["statistics"]["pauses"] for segment in segments)
        try:
            good += exact(path.parent / data["file"], expected)
        except (OSError, KeyError, RuntimeError):
            continue
    return finished, good, paused


def step(variant: str, dialogs: int, seconds: float, work: Path, *, workers: int = 1,
         connections: int = CONNECTIONS) -> dict:
    """One step: the bare receiver or the full recorder (``workers`` processes) under
    ``dialogs`` real-time dialogs of ``seconds`` (see `step_seconds`); CPU over the window in
    which all of them are live."""
    ramp = ramp_of(dialogs)
    output = work / f"{variant}-{dialogs}-{workers}"
    output.mkdir()
    server: Server | None = None
    bare: list[subprocess.Popen] = []
    load_start = os.getloadavg()[0]
    if variant == "bare":
        port = 0 if workers == 1 else free_port()
        for _ in range(workers):
            bare.append(subprocess.Popen([sys.executable, str(HERE), "--bare-server", "--bare-port", str(port)],
                                         stderr=subprocess.PIPE, text=True))
            port = _listening(bare[-1], "bare")
        pids = [process.pid for process in bare]
        cpu = lambda: sum(cpu_seconds(pid) for pid in pids)  # noqa: E731
    else:
        port = free_port()
        extra = ["--ringcx-port", str(port), "--ringcx-plaintext", "--max-calls", str(dialogs + 10)]
        if workers > 1:  # each worker logs its dialogs' starts: counted per worker below
            extra += ["--workers", str(workers), "--log-level", "info"]
        server = Server(output, extra, metrics=True)
        cpu = server.cpu
    try:
        time.sleep(SETTLE + (2.0 if workers > 1 else 0.0))  # workers start after the supervisor listens
        processes, start = _generators(port, dialogs, seconds, ramp, connections)
        window = steady_window(start, ramp, seconds)
        samples: list[tuple[float, float, dict | None]] = []
        for at in window:
            time.sleep(max(0.0, at - time.time()))
            samples.append((time.time(), cpu(), server.lag_histogram() if server else None))
        failed, behind, generator_cpu = _gather(processes)
    finally:
        for process in bare:
            process.terminate()
            process.wait(30)
    (t0, c0, h0), (t1, c1, h1) = samples
    share = (c1 - c0) / (t1 - t0)
    result = {"variant": variant, "dialogs": dialogs, "workers": workers, "connections": connections,
              "load_start": round(load_start, 2), "load_end": round(os.getloadavg()[0], 2),
              "seconds": seconds, "ramp_seconds": round(ramp, 2),
              "failed_dialogs": failed, "behind_seconds": round(behind, 2),
              "server_cpu_share": round(share, 3), "cores_per_1000": round(share / dialogs * 1000, 3),
              "cpu_us_per_message": round(share / (dialogs * MESSAGES_PER_SECOND) * 1e6, 1),
              "generator_cpu_us_per_message": round(
                  generator_cpu / (dialogs * (5 + 2 * round(seconds * 10))) * 1e6, 1)}
    if server is not None:
        server.stop()
        if workers > 1:
            log = Path(server.log.name).read_text(errors="replace")
            per_worker = [0] * workers
            for found in STARTED.finditer(log):
                per_worker[int(found.group(1))] += 1
            result["dialogs_per_worker"] = per_worker
        p50 = histogram_quantile(h0 or {}, h1 or {}, 0.5) if h1 else None
        p99 = histogram_quantile(h0 or {}, h1 or {}, 0.99) if h1 else None
        finished, good, paused = verify(output, dialogs, seconds)
        result.update(lag_p50_s=p50, lag_p99_s=p99, recordings=finished, exact=good, with_pauses=paused)
        result["ok"] = (failed == 0 and good == dialogs and p99 is not None and p99 < LAG_LIMIT
                        and behind <= REALTIME_SLACK)
    shutil.rmtree(output, ignore_errors=True)
    return result


def bare_share(pair: dict) -> float:
    """The bare receiver's CPU share in a step: the mean of its runs beside the full one."""
    shares = [pair[key]["server_cpu_share"] for key in ("bare", "bare_after") if key in pair]
    return sum(shares) / len(shares)


def ramp_of(dialogs: int) -> float:
    """Seconds over which a step's dialogs start."""
    return max(MIN_RAMP, dialogs / ARRIVALS_PER_SECOND)


def steady_window(start: float, ramp: float, seconds: float) -> tuple[float, float]:
    """The steady state of dialogs of ``seconds`` started over ``ramp`` from ``start`` (time.time()):
    every dialog live, STEADY_MARGIN clear of the last start and the first end (creating the
    recordings and finishing them are not the steady state)."""
    return start + ramp + STEADY_MARGIN, start + seconds - STEADY_MARGIN


def step_seconds(dialogs: int, seconds: float) -> float:
    """A step's dialog length: ``seconds``, or longer where the ramp leaves less than MIN_WINDOW
    of steady state between the margins."""
    return max(seconds, ramp_of(dialogs) + 2 * STEADY_MARGIN + MIN_WINDOW)


def websocket_per_1000() -> list[tuple[str, int, float]]:
    """(variant, calls, cores per 1,000 calls) of the one-worker WebSocket steps that passed in
    the last bench_e2e run."""
    try:
        data = json.loads((RESULTS / "e2e-latest.json").read_text())
    except (OSError, ValueError):
        return []
    rows = []
    for variant in data.get("capacity", []):
        if variant.get("variant") != "1 worker, websockets":
            continue
        for s in variant["steps"]:
            if s.get("ok") and s.get("server_cpu_share"):
                rows.append((f"WebSocket, 1 worker ({data.get('utc', '?')[:16]})", s["calls"],
                             round(s["server_cpu_share"] / s["calls"] * 1000, 3)))
    return rows


def websocket_step(calls: int, seconds: float, work: Path) -> dict:
    """bench_e2e's real-time WebSocket step on one worker, ``calls`` calls of ``seconds``."""
    output = work / f"websocket-{calls}"
    output.mkdir()
    load_start = os.getloadavg()[0]
    server = Server(output, [], metrics=True)
    try:
        time.sleep(SETTLE)
        result = bench_e2e.step(work, server, calls, seconds, bench_e2e.ramp_of(calls, MIN_RAMP), 1,
                                f"ws{calls}")
    finally:
        server.stop()
    shutil.rmtree(output, ignore_errors=True)
    share = result.get("server_cpu_share")
    result.update(variant="websocket", load_start=round(load_start, 2), load_end=round(os.getloadavg()[0], 2),
                  cores_per_1000=None if share is None else round(share / calls * 1000, 3))
    return result


def _load(result: dict) -> str:
    return f"{result.get('load_start', '-')} -> {result.get('load_end', '-')}"


def markdown(data: dict) -> str:
    lines = [f"Machine: {data['machine_line']}",
             f"Real-time dialogs of two segments (100 ms PCMU chunks), {data['step_seconds']:g} s each (longer "
             f"where a step's ramp needs it: at least {MIN_WINDOW:g} s of steady state), dealt over "
             f"{data.get('connections', 1)} HTTP/2 connections; CPU (all the server's processes) over the window "
             f"in which every dialog is live, {STEADY_MARGIN:g} s clear of the last start and the first end; "
             "load average (1 min) at the step's start and end; full / bare: against the mean of the bare "
             "runs beside it (before and after on one worker).", "",
             "| receiver | workers | dialogs | ok | server CPU | cores per 1,000 | CPU-us per message | full / bare | "
             "lag p50 (s) | lag p99 (s) | behind (s) | exact recordings | with pauses | failed | dialogs per worker "
             "| load average |",
             "|---|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for pair in data["steps"]:
        bare, full, after = pair["bare"], pair.get("full"), pair.get("bare_after")
        for result in (bare, full, after):
            if result is None:
                continue
            ratio = "" if result is not full else f"{full['full_over_bare']:.2f}"
            per_worker = result.get("dialogs_per_worker")
            lines.append(
                f"| {result['variant']} | {result.get('workers', 1)} | {result['dialogs']} | "
                f"{'-' if result is not full else ('yes' if result['ok'] else 'NO')} | "
                f"{result['server_cpu_share'] * 100:.0f} % | {result['cores_per_1000']} | "
                f"{result['cpu_us_per_message']} | "
                f"{ratio} | {result.get('lag_p50_s', '-')} | {result.get('lag_p99_s', '-')} | "
                f"{result['behind_seconds']} | {result.get('exact', '-')} | {result.get('with_pauses', '-')} | "
                f"{result['failed_dialogs']} | {'-' if per_worker is None else ' / '.join(map(str, per_worker))} | "
                f"{_load(result)} |")
    capacity = ", ".join(f"{workers} worker{'s' * (workers > 1)}: **{dialogs} dialogs**"
                         for workers, dialogs in sorted(data["capacity"].items()))
    not_run = f"; not run (beyond the budget, not failed): {', '.join(data['not_run'])}" if data.get("not_run") else ""
    lines += ["", f"- capacity, RingCX gRPC: {capacity} "
              f"(lag p99 < {LAG_LIMIT:g} s, every recording exact, generator within {REALTIME_SLACK:g} s{not_run}); "
              "'with pauses': recordings whose chunks were read more than the reorder window late "
              "(taken for a hold: the machine could not keep up)"]
    if data.get("websocket"):
        lines += ["", "WebSocket steps of this run (one worker, real-time calls, bench_e2e's step):", "",
                  "| calls | ok | server CPU | cores per 1,000 | lag p50 (s) | lag p99 (s) | behind (s) | frames lost "
                  "| load average |", "|---:|:---:|---:|---:|---:|---:|---:|---:|---|"]
        for result in data["websocket"]:
            share = result.get("server_cpu_share")
            lines.append(f"| {result['calls']} | {'yes' if result['ok'] else 'NO'} | "
                         f"{'-' if share is None else f'{share * 100:.0f} %'} | {result['cores_per_1000']} | "
                         f"{result['lag_p50_s']} | {result['lag_p99_s']} | {result['behind_seconds']} | "
                         f"{result['frames_lost']} | {_load(result)} |")
    lines += ["", "CPU per 1,000 calls/dialogs (real-time, steps that passed):", "",
              "| front end | calls/dialogs | cores per 1,000 |", "|---|---:|---:|"]
    for name, count, cores in data["per_1000"]:
        lines.append(f"| {name} | {count} | {cores} |")
    return "\n".join(lines)


def steps_main(steps: list[int], seconds: float, budget: float, workers: list[int], connections: int,
               websocket: bool) -> int:
    started = time.monotonic()
    data: dict = {"benchmark": "ringcx", "machine_line": machine(), "step_seconds": seconds,
                  "connections": connections, "load_average_start": [round(x, 2) for x in os.getloadavg()],
                  "steps": [], "websocket": [], "capacity": {n: 0 for n in workers}, "not_run": []}
    failed: set[int] = set()
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        for dialogs in steps:
            ramp = ramp_of(dialogs)
            length = step_seconds(dialogs, seconds)
            for count in workers:
                if count in failed:
                    continue
                runs = 3 if count == 1 else 2
                if time.monotonic() - started + runs * (ramp + length) + STEP_OVERHEAD > budget:
                    print(f"{dialogs} dialogs on {count} worker(s): beyond the {budget:g} s budget, not run",
                          flush=True)
                    data["not_run"].append(f"{dialogs} on {count}")
                    failed.add(count)
                    continue
                pair = {"bare": step("bare", dialogs, length, work, workers=count, connections=connections)}
                pair["full"] = full = step("full", dialogs, length, work, workers=count, connections=connections)
                if count == 1:
                    pair["bare_after"] = step("bare", dialogs, length, work, workers=count, connections=connections)
                full["full_over_bare"] = round(full["server_cpu_share"] / max(bare_share(pair), 1e-9), 3)
                data["steps"].append(pair)
                print(json.dumps(pair), flush=True)
                if not full["ok"]:
                    failed.add(count)
                else:
                    data["capacity"][count] = dialogs
                if websocket and count == 1:
                    data["websocket"].append(ws := websocket_step(dialogs, length, work))
                    print(json.dumps(ws), flush=True)
    per_1000 = [] if data["websocket"] else websocket_per_1000()
    for result in data["websocket"]:
        if result["ok"] and result["cores_per_1000"] is not None:
            per_1000.append(("WebSocket, 1 worker (this run)", result["calls"], result["cores_per_1000"]))
    for pair in data["steps"]:
        full = pair["full"]
        count, dialogs = full.get("workers", 1), full["dialogs"]
        workers = f"{count} worker{'s' * (count > 1)}"
        bare = round(bare_share(pair) / dialogs * 1000, 3)
        per_1000.append((f"RingCX gRPC, bare grpc.aio, {workers}", dialogs, bare))
        if full["ok"]:
            per_1000.append((f"RingCX gRPC, full recorder, {workers}", dialogs, full["cores_per_1000"]))
    data["per_1000"] = per_1000
    data["total_seconds"] = round(time.monotonic() - started, 1)
    data["machine"] = describe_machine()
    text = markdown(data)
    print(text)
    write_result("ringcx", data)
    (RESULTS / "ringcx-latest.md").write_text(text + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default=",".join(map(str, STEPS)),
                        help="concurrent dialogs per step, comma-separated (steps mode)")
    parser.add_argument("--step-seconds", type=float, default=STEP_SECONDS, help="audio per dialog in a step, s")
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds of steps at most")
    parser.add_argument("--workers", default=",".join(map(str, WORKERS)),
                        help="worker processes each step runs with, comma-separated (steps mode)")
    parser.add_argument("--connections", type=int, default=CONNECTIONS,
                        help="HTTP/2 connections the dialogs are dealt over (a count; all generator processes "
                        "together)")
    parser.add_argument("--websocket", action="store_true",
                        help="steps mode: after each one-worker step, as many real-time WebSocket calls "
                        "(bench_e2e's step), for CPU per 1,000 of both front ends from one run")
    parser.add_argument("--dialogs", type=int, help="ratio mode: real-time dialogs at once")
    parser.add_argument("--seconds", type=float, default=20.0, help="ratio mode: length of each dialog, s")
    parser.add_argument("--rounds", type=int, default=1,
                        help="ratio mode: runs of the full recorder, each between two of the bare receiver, for the "
                        "median of their ratios (a count)")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--generate", help=argparse.SUPPRESS)  # HOST:PORT: a generator process
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ramp", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="ratio mode: write the results here")
    args = parser.parse_args()
    if args.bare_server:
        asyncio.run(_bare_main(args.bare_port))
        return 0
    if args.generate:
        late = asyncio.run(_generate_at(args.generate, args.first, args.count, args.dialogs, args.seconds,
                                        args.ramp, args.start, args.connections))
        usage = os.times()
        print(json.dumps({"failed": sum(1 for x in late if x is None),
                          "behind_max": max((x for x in late if x is not None), default=0.0),
                          "cpu_s": usage.user + usage.system}))
        return 0
    if args.dialogs is None:
        return steps_main([int(x) for x in args.steps.split(",")], args.step_seconds, args.budget,
                          [int(x) for x in args.workers.split(",")], args.connections, args.websocket)
    shortest = ramp_of(args.dialogs) + 2 * STEADY_MARGIN + 1.0
    if args.seconds < shortest:
        parser.error(f"--seconds must be at least {shortest:g} for {args.dialogs} dialogs (the steady window "
                     f"starts {STEADY_MARGIN:g} s after the last dialog started, {ramp_of(args.dialogs):g} s after "
                     f"the first, and ends {STEADY_MARGIN:g} s before the first one ends)")
    return ratio_main(args.dialogs, args.seconds, args.connections, args.rounds, args.json)


def ratio_main(dialogs: int, seconds: float, connections: int, rounds: int, output: Path | None) -> int:
    """Ratio mode: ``rounds`` runs of the full recorder, each between two runs of the bare
    receiver (bare, full, bare, full, ..., bare: one bare run more than full ones), and each
    full run's ratios to the mean of the bare runs either side of it; then their medians. Why:
    on a shared machine one variant's run alone moves by a tenth from one run to the next (the
    bare receiver's most), and the machine drifts over minutes; a bare run on either side halves
    the first and cancels a steady drift."""
    print(f"Machine: {machine()}")
    print(f"{dialogs} real-time dialogs x {seconds:g} s, 2 segments, 100 ms chunks; {rounds} run(s) of the "
          f"full recorder, each between two of the bare receiver")
    print("| run | receiver | dialogs ok | server CPU (s) | CPU-us per message | cores | idle cores | "
          "steady: cores | CPU-us per message | start + finish, CPU-ms per dialog | full / bare | "
          "steady full / bare |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs: list[dict[str, Any]] = []
    pairs = []

    def run(variant: str) -> dict[str, Any]:
        result = {"run": len(runs) + 1, "variant": variant, **run_variant(variant, dialogs, seconds, connections)}
        runs.append(result)
        return result

    def show(result: dict[str, Any], ratios: str = " | ") -> None:
        print(f"| {result['run']} | {result['variant']} | {result['dialogs_ok']} | {result['server_cpu_s']} | "
              f"{result['cpu_us_per_message']} | {result['server_cores']} | {result['idle_cores']} | "
              f"{result['steady_cores']} | {result['steady_us_per_message']} | {result['ends_ms_per_dialog']} | "
              f"{ratios} |", flush=True)

    before = run("bare")
    show(before)
    for _ in range(rounds):
        full = run("full")
        after = run("bare")
        bare_cpu = (before["server_cpu_s"] + after["server_cpu_s"]) / 2
        bare_steady = (before["steady_cores"] + after["steady_cores"]) / 2
        ratio = full["server_cpu_s"] / max(bare_cpu, 1e-9)
        steady_ratio = full["steady_cores"] / max(bare_steady, 1e-9)
        threads = full["steady_cores_by_thread"]
        transport = (threads["python"] + threads["grpc core"]) / max(bare_steady, 1e-9)
        pairs.append({"ratio": round(ratio, 3), "steady_ratio": round(steady_ratio, 3),
                      # the steady ratio's two parts: the full recorder's gRPC threads, and the rest
                      # (trio's thread, the disk workers), each over the bare receiver's whole CPU
                      "steady_transport": round(transport, 3), "steady_recorder": round(steady_ratio - transport, 3)})
        show(full, f"{ratio:.2f} | {steady_ratio:.2f}")
        show(after)
        before = after
    medians = {}
    for key, label in (("ratio", "full / bare CPU, whole runs"),
                       ("steady_ratio", "full / bare CPU, steady (every dialog live)"),
                       ("steady_transport", "  of which the full recorder's gRPC threads (its loop, grpc.aio's "
                        "poller, grpc core)"),
                       ("steady_recorder", "  and the rest (trio's thread, the disk workers)")):
        values = [pair[key] for pair in pairs]
        medians[key] = statistics.median(values)
        print(f"{label}: {', '.join(f'{r:.2f}' for r in values)}; median {medians[key]:.2f}")
    print("\nSteady cores by thread (bench_ringcx.thread_cpu):\n")
    print("| run | receiver | " + " | ".join(ROLES) + " |")
    print("|---:|---|" + "---:|" * len(ROLES))
    for result in runs:
        threads = result["steady_cores_by_thread"]
        cells = " | ".join(f"{threads[role]:.3f}" for role in ROLES)
        print(f"| {result['run']} | {result['variant']} | {cells} |")
    if output:
        output.write_text(json.dumps({"machine": machine(), "dialogs": dialogs, "seconds": seconds, "runs": runs,
                                      "ratios": pairs, "ratio_median": medians["ratio"],
                                      "steady_ratio_median": medians["steady_ratio"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
