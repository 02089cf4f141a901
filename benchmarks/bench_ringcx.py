"""RingCX gRPC front end: server CPU per message of the full recorder against a bare grpc.aio
receiver, both fed the same real-time dialogs in the same run.

Each dialog: DialogInit, a caller and an agent segment, both sending a 100 ms PCMU chunk every
100 ms (20 messages a second per dialog), then two SegmentStops. The generator (this process,
grpc.aio client, one loop) starts the dialogs spread over one second. The server runs in a
process of its own; its CPU (user + system, /proc) is read before and after the run.
- ``bare``: a grpc.aio server whose servicer only collects each dialog's payloads (the price
  of the transport, the floor);
- ``full``: ``callstream serve --ringcx-port`` (plaintext on loopback), recording WAV files.

Usage: python benchmarks/bench_ringcx.py [--dialogs N] [--seconds S]. Not part of make bench's
default run (it takes 2 x (S + a few) seconds). Nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from callstream.ringcx import streaming_pb2 as pb
from callstream.ringcx import streaming_pb2_grpc

SETTLE = 1.0  # seconds after the listener is up before measuring
IDLE = 2.0  # seconds of the idle server measured before the dialogs
CHUNK = bytes(range(0x10, 0x10 + 200)) * 4  # 800 bytes: 100 ms of PCMU
HERE = Path(__file__).resolve()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


async def _bare_main() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    streaming_pb2_grpc.add_StreamingServicer_to_server(_Bare(), server)
    port = server.add_insecure_port("127.0.0.1:0")
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


async def _dialog(stub: streaming_pb2_grpc.StreamingStub, index: int, seconds: float, delay: float) -> bool:
    await asyncio.sleep(delay)
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
        return False
    return True


async def _generate(target: str, dialogs: int, seconds: float) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = streaming_pb2_grpc.StreamingStub(channel)
        results = await asyncio.gather(*(_dialog(stub, i, seconds, i / dialogs) for i in range(dialogs)))
    return sum(results)


def run_variant(variant: str, dialogs: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as output:
        if variant == "bare":
            command = [sys.executable, str(HERE), "--bare-server"]
        else:
            command = [sys.executable, "-m", "callstream", "serve", "--host", "127.0.0.1", "--port", "0",
                       "--ringcx-port", "0", "--ringcx-plaintext", "--output-dir", output, "--log-level", "warning",
                       "--max-calls", str(dialogs + 10)]
            command[4:4] = []
        env = dict(os.environ)
        if variant == "full":
            command[command.index("warning")] = "info"
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        try:
            port = None
            assert process.stderr is not None
            while port is None:
                line = process.stderr.readline()
                if not line:
                    raise RuntimeError(f"{variant} server ended before listening")
                found = re.search(r"RingCX gRPC on [\d.]+:(\d+)", line)
                port = int(found.group(1)) if found else None
            time.sleep(SETTLE)  # the rest of the server's start (the WebSocket listener, recovery)
            idle = cpu_seconds(process.pid)
            time.sleep(IDLE)
            before = cpu_seconds(process.pid)
            idle_cores = (before - idle) / IDLE
            started = time.monotonic()
            ok = asyncio.run(_generate(f"127.0.0.1:{port}", dialogs, seconds))
            wall = time.monotonic() - started
            cpu = cpu_seconds(process.pid) - before
        finally:
            process.terminate()
            process.wait(30)
    messages = dialogs * (3 + 2 * round(seconds * 10) + 2)
    busy = cpu - idle_cores * wall  # what the dialogs cost beyond the idle server's own timers
    return {"dialogs_ok": ok, "server_cpu_s": round(cpu, 3), "wall_s": round(wall, 2),
            "idle_cores": round(idle_cores, 4), "busy_cpu_s": round(busy, 3),
            "busy_us_per_message": round(busy / messages * 1e6, 1),
            "cpu_us_per_message": round(cpu / messages * 1e6, 1), "server_cores": round(cpu / wall, 3),
            "messages": messages}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialogs", type=int, default=50, help="real-time dialogs at once")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each dialog")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.bare_server:
        asyncio.run(_bare_main())
        return 0
    results = {variant: run_variant(variant, args.dialogs, args.seconds) for variant in ("bare", "full")}
    ratio = results["full"]["server_cpu_s"] / max(results["bare"]["server_cpu_s"], 1e-9)
    busy_ratio = results["full"]["busy_cpu_s"] / max(results["bare"]["busy_cpu_s"], 1e-9)
    print(f"Machine: {machine()}")
    print(f"{args.dialogs} real-time dialogs x {args.seconds:g} s, 2 segments, 100 ms chunks")
    print("| receiver | dialogs ok | server CPU (s) | CPU-us per message | cores | idle cores | "
          "CPU-us per message beyond idle |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, result in results.items():
        print(f"| {variant} | {result['dialogs_ok']} | {result['server_cpu_s']} | {result['cpu_us_per_message']} | "
              f"{result['server_cores']} | {result['idle_cores']} | {result['busy_us_per_message']} |")
    print(f"full / bare CPU: {ratio:.2f} (beyond idle: {busy_ratio:.2f})")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results, "ratio": ratio,
                                         "ratio_beyond_idle": busy_ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
