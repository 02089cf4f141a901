"""Benchmark: WebSocket messages per second and server CPU per message, per transport.

For each variant, a server process runs a minimal handler (accept, receive, count; nothing
else) and a client process blasts pre-encoded, masked ~290-byte Media text frames over
``--connections`` TCP connections on 127.0.0.1 as fast as the server takes them. The server
measures itself over a window after a warm-up: messages received, wall time and its own CPU
time (all threads). Variants run round by round, interleaved, in the same run, so the ratios
hold on a noisy machine; the best round of each is reported.

Variants: the two adapters behind ``--transport`` (``websockets``: websockets' sans-IO
``ServerProtocol`` driven by trio streams; ``trio-websocket``) and, for reference, websockets'
own trio server with a bare handler (no adapter: the most an adapter on it could reach).

    .venv/bin/python benchmarks/bench_transport.py [--connections 8] [--window 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

SEED = 20261125
VARIANTS = ("websockets", "trio-websocket", "websockets.trio (bare)")
FRAMES_PER_BUFFER = 200  # distinct frames in the client's send buffer (about 60 KB)
MAX_MESSAGE_BYTES = 64 * 1024


# --- the server process -------------------------------------------------------------------


def serve(variant: str, warmup: float, window: float) -> None:
    """Listen on a free port (printed first), count messages, print the measurement, exit."""
    import trio

    count = 0

    async def on_upgrade(upgrade) -> None:
        nonlocal count
        from callstream.engagevoice.transport import StreamClosed

        stream = await upgrade.accept()
        try:
            while True:
                await stream.receive()
                count += 1
        except StreamClosed:
            pass

    async def on_bare(connection) -> None:
        nonlocal count
        async for _ in connection:
            count += 1

    async def measure() -> dict:
        while count == 0:
            await trio.sleep(0.05)
        await trio.sleep(warmup)
        c0, cpu0, t0 = count, time.process_time(), time.perf_counter()
        await trio.sleep(window)
        c1, cpu1, t1 = count, time.process_time(), time.perf_counter()
        return {"messages": c1 - c0, "seconds": t1 - t0, "cpu_seconds": cpu1 - cpu0}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if variant == "websockets.trio (bare)":
                from websockets.trio.server import serve as serve_bare

                server = await nursery.start(
                    lambda task_status: serve_bare(
                        on_bare, 0, host="127.0.0.1", compression=None, ping_interval=None,
                        max_size=MAX_MESSAGE_BYTES, task_status=task_status,
                    )
                )
                port = server.listeners[0].socket.getsockname()[1]
            else:
                from callstream.engagevoice.transport import serve_trio_websocket
                from callstream.engagevoice.transport_websockets import serve_websockets

                adapter = serve_websockets if variant == "websockets" else serve_trio_websocket
                info = await nursery.start(
                    lambda task_status: adapter(
                        on_upgrade, host="127.0.0.1", port=0, ssl_context=None,
                        max_message_bytes=MAX_MESSAGE_BYTES, handshake_timeout=10.0,
                        task_status=task_status,
                    )
                )
                port = info.port
            print(port, flush=True)
            print(json.dumps(await measure()), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


# --- the client process -------------------------------------------------------------------


def frames_buffer() -> bytes:
    """FRAMES_PER_BUFFER masked text frames of Media messages, as the platform would send them."""
    from websockets.frames import Frame, Opcode

    from callstream.engagevoice.encoding import encode_media
    from callstream.engagevoice.messages import Perspective

    rng = random.Random(SEED)
    out = []
    for seq in range(1, FRAMES_PER_BUFFER + 1):
        payload = bytes(rng.getrandbits(8) for _ in range(160))
        perspective = Perspective.PARTICIPANT if seq % 2 else Perspective.CONFERENCE
        text = encode_media(perspective, seq, payload)
        out.append(Frame(Opcode.TEXT, text.encode()).serialize(mask=True, extensions=[]))
    return b"".join(out)


def blast(port: int, buffer: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /?callId=bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"upgrade refused: {head[:40]!r}")
    try:
        while True:
            sock.sendall(buffer)
    except OSError:
        pass
    finally:
        sock.close()


def client(port: int, connections: int) -> None:
    buffer = frames_buffer()
    threads = [
        threading.Thread(target=blast, args=(port, buffer), daemon=True) for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- the driver ---------------------------------------------------------------------------


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    script = str(Path(__file__).resolve())
    server = subprocess.Popen(
        [sys.executable, script, "--serve", variant,
         "--warmup", str(args.warmup), "--window", str(args.window)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        port = int(server.stdout.readline())
        blaster = subprocess.Popen([sys.executable, script, "--client", str(port), "--connections",
                                    str(args.connections)])
        try:
            result = json.loads(server.stdout.readline())
        finally:
            blaster.kill()
            blaster.wait()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    result["messages_per_second"] = result["messages"] / result["seconds"]
    result["cpu_us_per_message"] = 1e6 * result["cpu_seconds"] / max(result["messages"], 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=8, help="WebSocket connections")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=4.0, help="seconds measured per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each variant's best counts")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.warmup, args.window)
        return 0
    if args.client:
        client(args.client, args.connections)
        return 0

    from machine import describe_machine, write_result

    machine = describe_machine()
    print(f"machine: {machine['cpu']}, {machine['cores_usable']} usable cores, {machine['os']}, "
          f"{machine['python']}")
    frame_bytes = len(frames_buffer()) // FRAMES_PER_BUFFER
    print(f"{args.connections} connections, ~{frame_bytes}-byte frames, "
          f"{args.rounds} rounds of {args.window:g} s")
    best: dict[str, dict] = {}
    for round_index in range(args.rounds):
        for variant in VARIANTS:
            result = run_variant(variant, args)
            rate, cost = result["messages_per_second"], result["cpu_us_per_message"]
            print(f"  round {round_index + 1} {variant:<24} {rate:>10,.0f} msg/s "
                  f"{cost:6.2f} CPU-us/msg", flush=True)
            if variant not in best or rate > best[variant]["messages_per_second"]:
                best[variant] = result
    base = best["trio-websocket"]
    print(f"\n{'transport':<24} {'msg/s':>10} {'CPU-us/msg':>11} {'vs trio-websocket':>18}")
    for variant, result in best.items():
        ratio = result["messages_per_second"] / base["messages_per_second"]
        rate, cost = result["messages_per_second"], result["cpu_us_per_message"]
        print(f"{variant:<24} {rate:>10,.0f} {cost:>11.2f} {ratio:>17.2f}x")
    path = write_result("transport", {
        "connections": args.connections,
        "window_seconds": args.window,
        "rounds": args.rounds,
        "variants": best,
        "speedup_vs_trio_websocket": {
            v: r["messages_per_second"] / base["messages_per_second"] for v, r in best.items()
        },
        "machine": machine,
    })
    print(f"written {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
