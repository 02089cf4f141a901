"""Time from a call's end to its recording in the store and its events delivered (by hand:
`.venv/bin/python benchmarks/ship_latency.py [CALLS] [CONCURRENCY] [paced]`; not part of `make bench`).

Everything real, on loopback: `callstream serve` as its own process with --store (rclone serve s3
over a local directory), --webhook-url (an http.server receiver) and --nats-url (nats-server -js);
CALLS one-second calls, CONCURRENCY at a time, sent as fast as the socket takes them (a burst of
call ends far above a contact centre's) or, with ``paced``, at the platform's pace. A call's end
is when its client has closed the WebSocket (both Stops sent); in the store is the object file's
mtime in rclone's directory (written once, on the upload's completion); delivered is when the
receiver got the POST and when a NATS subscriber got the message.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import trio
from trio_websocket import open_websocket_url

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from callstream.engagevoice.messages import Perspective  # noqa: E402
from callstream.engagevoice.query import build_query  # noqa: E402
from conftest import call_messages, metadata, random_frames, send_all  # noqa: E402
from serverprocess import ServerProcess  # noqa: E402
from services import ACCESS_KEY, BUCKET, SECRET_KEY, NatsServer, S3Server, WebhookReceiver  # noqa: E402

SUBJECT = "callstream.recordings"
FRAMES = 50  # one second per call


def nats_arrivals(url: str, arrivals: dict[str, float], ready: threading.Event) -> None:
    async def listen() -> None:
        import nats

        async def quiet(error: Exception) -> None:
            return None

        client = await nats.connect(url, error_cb=quiet, max_reconnect_attempts=0)

        async def got(message: object) -> None:
            arrivals[json.loads(message.data)["callId"]] = time.time()  # type: ignore[attr-defined]

        await client.subscribe(SUBJECT, cb=got)
        ready.set()
        while True:
            await asyncio.sleep(3600)

    try:
        asyncio.run(listen())
    except Exception:  # the server is stopped at the end: the listener's reconnects fail
        return


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


async def play(url: str, calls: int, concurrency: int, ended: dict[str, float], paced: bool) -> None:
    """``paced``: each call's frames at the platform's pace (a pair every 20 ms), so the calls
    end at about CONCURRENCY per second; else as fast as the socket takes them (a burst)."""
    rng = np.random.default_rng(1)
    frames = random_frames(rng, FRAMES)
    media = [(p, seq, frames[seq - 1]) for seq in range(1, FRAMES + 1) for p in Perspective]
    limit = trio.CapacityLimiter(concurrency)

    async def one(call_id: str) -> None:
        async with limit:
            messages = call_messages(metadata(call_id), media)
            if not paced:
                await send_all(url, messages)
            else:
                async with open_websocket_url(url + "/" + build_query(metadata(call_id))) as ws:
                    start = trio.current_time()
                    for index, message in enumerate(messages):
                        # Connected and Start first, then a pair of Media per 20 ms, then the Stops
                        await trio.sleep_until(start + max(0, index - 2) // 2 * 0.02)
                        await ws.send_message(message)
            ended[call_id] = time.time()

    async with trio.open_nursery() as nursery:
        for index in range(calls):
            nursery.start_soon(one, f"lat{index}")


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    paced = len(sys.argv) > 3 and sys.argv[3] == "paced"
    root = Path(tempfile.mkdtemp(prefix="ship-latency-"))
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                      AWS_CONFIG_FILE=str(root / "none"), AWS_SHARED_CREDENTIALS_FILE=str(root / "none"),
                      AWS_EC2_METADATA_DISABLED="true")
    s3, natsd = S3Server(root / "s3"), NatsServer(root / "nats")
    s3.start()
    natsd.start()
    natsd.add_stream("RECORDINGS", SUBJECT)
    secret = root / "secret"
    secret.write_bytes(b"latency")
    receiver = WebhookReceiver(b"latency")
    receiver.start()
    arrivals: dict[str, float] = {}
    ready = threading.Event()
    threading.Thread(target=nats_arrivals, args=(natsd.url, arrivals, ready), daemon=True).start()
    ready.wait(10)
    server = ServerProcess(root / "recordings", "--store", f"s3://{BUCKET}/calls", "--store-endpoint", s3.endpoint,
                           "--webhook-url", receiver.url, "--webhook-secret-file", str(secret),
                           "--nats-url", natsd.url, "--metrics-port", "0")
    metrics_url = server.wait_for(r"metrics on (http://\S+/metrics)").group(1)
    ended: dict[str, float] = {}
    try:
        started = time.time()
        trio.run(play, server.url, calls, concurrency, ended, paced)
        played = time.time() - started
        deadline = time.monotonic() + 120
        while (len(receiver.accepted()) < calls or len(arrivals) < calls) and time.monotonic() < deadline:
            time.sleep(0.1)
        with urllib.request.urlopen(metrics_url) as response:
            exposition = response.read().decode()
    finally:
        server.stop()
        receiver.stop()
        natsd.stop()
        s3.stop()
    hooked = {json.loads(d.body)["callId"]: d.received for d in receiver.deliveries if d.status < 300}
    stored = {}
    for path in (root / "s3" / BUCKET / "calls").rglob("*.wav"):
        stored[path.name.rsplit("-", 1)[0]] = path.stat().st_mtime
    rows = {
        "object in the store": [stored[c] - ended[c] for c in ended if c in stored],
        "webhook delivered": [hooked[c] - ended[c] for c in ended if c in hooked],
        "NATS message received": [arrivals[c] - ended[c] for c in ended if c in arrivals],
        "both events delivered": [max(hooked[c], arrivals[c]) - ended[c] for c in ended
                                  if c in hooked and c in arrivals],
    }
    print(f"{calls} one-second calls{' at the platform pace' if paced else ''}, {concurrency} at a time "
          f"({calls / played:.1f} calls/s), loopback, "
          f"{os.cpu_count()} CPUs, --ship-threads {os.environ.get('CALLSTREAM_SHIP_THREADS', 'default')} "
          f"(seconds from the call's end)")
    for name, values in rows.items():
        print(f"  {name:24s} n={len(values):4d}  p50 {percentile(values, 50):.3f}  p99 {percentile(values, 99):.3f}"
              f"  max {max(values):.3f}")
    # the shipper's own view: from the recording's journal entry (after the finish) on
    found = re.findall(r'callstream_ship_delay_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', exposition)
    values = {(kind, stage): float(value) for kind, stage, value in found}
    for stage in ("store", "event"):
        if values.get(("count", stage)):
            print(f"  mean from the journal entry to {stage}: {values[('sum', stage)] / values[('count', stage)]:.3f}")


if __name__ == "__main__":
    main()
