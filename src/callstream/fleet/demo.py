"""`make fleet` / `python -m callstream.fleet`: a whole fleet on loopback, a few calls through it.

Starts an S3-compatible store, NATS JetStream and a webhook receiver (`callstream.fleet.services`),
three nodes shipping to them and Caddy in front of the nodes (`callstream.fleet.processes`); plays
calls through the balancer with the simulator (`callstream.sim.simulate.play_call`, retrying a
failed upgrade as the platform does); prints which node took each call, where its recording went
(the node's disk, the object in the store) and where its event went (the webhook, signature
checked; the NATS stream), and how long after the call's close the event reached the webhook;
then stops everything (nodes drain, and ship what they finished).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

import trio

from callstream.fleet.processes import Balancer, FleetError, Node, start_nodes
from callstream.fleet.services import BUCKET, STREAM, Shipping
from callstream.sim.simclient import Closed, Rejected
from callstream.sim.simulate import CallPlan, default_metadata, noisy_tone_audio, play_call
from callstream.storage.recording import read_sidecar

DEFAULT_NODES: Final = 3
DEFAULT_CALLS: Final = 6
DEFAULT_SECONDS: Final = 3.0  # seconds of audio per call
DEFAULT_SPACING: Final = 0.2  # seconds between the starts of two calls
UPGRADE_RETRIES: Final = 3  # the platform retries a failed upgrade up to three times
RETRY_DELAY: Final = 0.5  # seconds before a retry
FINISH_TIMEOUT: Final = 30.0  # seconds a node may take to finish, ship and announce a recording
NODE_FLAGS: Final = ("--flush-interval", "0.5", "--drain-timeout", "10")


@dataclass
class DemoCall:
    call_id: str
    attempts: int = 0
    close_code: int | None = None
    closed_at: float = 0.0  # time.time() when the call was over for the client
    error: str = ""


async def _play(url: str, call: DemoCall, seconds: float, seed: int) -> None:
    plan = CallPlan(audio=noisy_tone_audio(seconds, seed=seed), metadata=default_metadata(call.call_id, "1"))
    while True:
        call.attempts += 1
        try:
            call.close_code = await play_call(url, plan)
            break
        except (Rejected, Closed, OSError) as error:
            refused = isinstance(error, Rejected) and error.status < 500
            if refused or call.attempts > UPGRADE_RETRIES:
                call.error = str(error)
                break
            await trio.sleep(RETRY_DELAY)
    call.closed_at = time.time()


async def play_calls(url: str, count: int, seconds: float, spacing: float) -> list[DemoCall]:
    calls = [DemoCall(f"fleet-demo-{index + 1}") for index in range(count)]
    async with trio.open_nursery() as nursery:
        for index, call in enumerate(calls):
            nursery.start_soon(_play, url, call, seconds, index)
            await trio.sleep(spacing)
    return calls


def _finished(nodes: Sequence[Node], call_id: str, timeout: float) -> tuple[Node, Path, dict] | None:
    """The node, sidecar path and sidecar of the call once its recording is finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            for path in node.output_dir.rglob(f"{call_id}-1.json"):
                sidecar = read_sidecar(path)
                if sidecar.get("status") != "recording":
                    return node, path, sidecar
        time.sleep(0.05)
    return None


def _wait_for_events(shipping: Shipping, call_ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not call_ids <= shipping.receiver.received().keys() and time.monotonic() < deadline:
        time.sleep(0.05)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def run(root: Path, *, nodes: int, calls: int, seconds: float, out: TextIO) -> int:
    """The demo; returns the exit status (0: every call recorded complete, stored and announced,
    everything stopped cleanly)."""
    shipping = Shipping(root / "shipping")
    fleet: list[Node] = []
    balancer: Balancer | None = None
    failures = 0
    codes: dict[str, int] = {}
    try:
        fleet = start_nodes(nodes, root, (*NODE_FLAGS, *shipping.node_flags()), env=shipping.node_env())
        balancer = Balancer(root / "caddy", [node.address for node in fleet], fleet[0].metrics_port,
                            health_interval=0.5)
        print(f"balancer  caddy on {balancer.url}  (config {balancer.caddyfile})", file=out)
        for node in fleet:
            print(f"{node.name:<9} {node.address}  /readyz on {node.host}:{node.metrics_port}  "
                  f"recordings in {node.output_dir}", file=out)
        print(f"store     rclone serve s3 on {shipping.store_endpoint}, bucket {BUCKET}", file=out)
        print(f"events    webhook {shipping.receiver.url}, NATS {shipping.nats_url} stream {STREAM}", file=out)
        print(f"playing {calls} calls of {seconds:g} s through {balancer.url} ...", file=out, flush=True)
        played = trio.run(play_calls, balancer.url, calls, seconds, DEFAULT_SPACING)
        _wait_for_events(shipping, {call.call_id for call in played if not call.error}, FINISH_TIMEOUT)
        delivered = shipping.receiver.received()
        stored = shipping.stored_keys()
        published = shipping.nats_events()
        delays, per_node = [], {node.name: 0 for node in fleet}
        for call in played:
            found = _finished(fleet, call.call_id, 1.0) if not call.error else None
            delivery = delivered.get(call.call_id)
            if found is None or delivery is None:
                failures += 1
                print(f"{call.call_id:<14} FAILED after {call.attempts} attempt(s): "
                      f"{call.error or 'no finished recording' if found is None else 'no event'}", file=out)
                continue
            node, path, sidecar = found
            per_node[node.name] += 1
            key = (delivery.event.get("object") or {}).get("key", "")
            delay = delivery.received - call.closed_at
            delays.append(delay)
            ok = (sidecar["status"] == "complete" and call.close_code == 1000 and key in stored
                  and call.call_id in published)
            failures += not ok
            print(f"{call.call_id:<14} {node.name}  {sidecar['status']:<8} {sidecar['duration_seconds']:5.2f} s  "
                  f"{(path.parent / sidecar['file']).relative_to(root)}  sha256 {sidecar['sha256'][:12]}", file=out)
            print(f"{'':<14} store s3://{BUCKET}/{key} ({'in' if key in stored else 'NOT in'} the bucket)  "
                  f"webhook +{_ms(delay)} after the close (signature ok)  "
                  f"NATS {STREAM} #{published.get(call.call_id, '-')}", file=out)
        print("calls per node: " + ", ".join(f"{name} {count}" for name, count in per_node.items()), file=out)
        if delays:
            print(f"call closed -> object stored and event at the webhook: median {_ms(statistics.median(delays))}, "
                  f"max {_ms(max(delays))} over {len(delays)} calls", file=out)
    finally:
        if balancer is not None:
            codes["caddy"] = balancer.stop()
        for node in fleet:
            codes[node.name] = node.stop(signal.SIGTERM)
        services = shipping.stop()
        codes.update(services)
        print("stopped: " + ", ".join(f"{name} exit {code}" for name, code in codes.items()), file=out)
    # rclone answers SIGTERM by exiting with 128 + 15, as a shell reports a process it ended
    unclean = [name for name, code in codes.items()
               if code != 0 and not (name in services and code == 128 + signal.SIGTERM)]
    return 1 if failures or unclean else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m callstream.fleet",
        description="Start a fleet on loopback (Caddy in front of callstream nodes on 127.0.0.2 onwards), "
        "play calls through it, print where each recording went, stop everything.")
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="where the nodes record and Caddy keeps its config (default: a new temporary "
                        "directory, kept and printed)")
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES, metavar="N", help="callstream nodes (default 3)")
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS, metavar="N", help="calls to play (default 6)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, metavar="SECONDS",
                        help="audio per call, in seconds (default 3)")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 250 or args.calls < 1 or args.seconds <= 0:
        parser.error("--nodes must be 1-250, --calls at least 1 and --seconds positive")
    root = args.dir if args.dir is not None else Path(tempfile.mkdtemp(prefix="callstream-fleet-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"fleet demo in {root}", flush=True)
    try:
        return run(root, nodes=args.nodes, calls=args.calls, seconds=args.seconds, out=sys.stdout)
    except FleetError as error:
        print(f"fleet demo: {error}", file=sys.stderr)
        return 2
