"""`callstream simulate --ringcx`: play RingCX dialogs at a recorder as the platform would.

Each dialog (`client.platform_dialog`): DialogInit, the caller, an agent joining later, a hold
(both parties' media pause while seq goes on), a transfer to a second agent, 100 ms PCMU chunks;
over TLS with a CA file (``--cafile``) or plaintext, with a token (``--token``). ``--calls N``
plays N dialogs at once (grpc.aio: one loop, the starts spread over ``--ramp``), on one HTTP/2
connection or, with ``--connections K``, on K connections in turn (a recorder with ``--workers``
gets a connection's dialogs on one worker: the kernel spreads connections, not streams);
``--verify DIR`` then checks every recording sample by sample. Exits 1 if any dialog or check
fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import soundfile

from callstream.sim import ringcx_client as client

DEFAULT_TARGET = "127.0.0.1:10443"
DEFAULT_RAMP = 1.0  # seconds over which the starts of several dialogs are spread


def _dialog_id(args: argparse.Namespace, index: int) -> str:
    prefix = args.call_id or "ringcx-sim"
    return prefix if args.calls == 1 else f"{prefix}-{index + 1}"


def _script(args: argparse.Namespace, index: int) -> client.Script:
    seconds = args.seconds
    return client.platform_dialog(
        _dialog_id(args, index), session_id=args.session_id or time.strftime("%Y%m%d%H%M%S"), seconds=seconds,
        # a hold of at least a second: longer than the reorder window, or it is not a pause
        agent_join=round(seconds * 0.15, 1), hold=(round(seconds * 0.4, 1), max(1.0, round(seconds * 0.15, 1))),
        transfer=round(seconds * 0.7, 1),
    )


def _sidecars(directory: Path) -> dict[str, list[Path]]:
    """Every sidecar under ``directory`` by its callId (a RingCX dialog's id)."""
    found: dict[str, list[Path]] = {}
    for path in directory.rglob("*.json"):
        try:
            call_id = json.loads(path.read_text()).get("callId")
        except (OSError, ValueError):
            continue
        found.setdefault(str(call_id), []).append(path)
    return found


def verify_recording(directory: Path, script: client.Script, sidecars: dict[str, list[Path]] | None = None
                     ) -> list[str]:
    """Problems with the recording of ``script`` under ``directory`` (empty: exact)."""
    paths = (_sidecars(directory) if sidecars is None else sidecars).get(script.dialog_id, [])
    if len(paths) != 1:
        return [f"{len(paths)} recordings of dialog {script.dialog_id} in {directory}"]
    data = json.loads(paths[0].read_text())
    if data.get("status") != "complete":
        return [f"status {data.get('status')!r}"]
    audio, rate = soundfile.read(paths[0].with_name(data["file"]), dtype="int16", always_2d=True)
    if rate != client.RATE:
        return [f"sample rate {rate}"]
    runs = script.runs
    if "left" not in data.get("channel_map", {}):  # --channel-layout participants: the sidecar's channels
        channels = {s["segment_id"]: s["channel"] for s in data.get("metadata", {}).get("segments", [])}
        runs = [client.Run(channels.get(run.segment, -1), run.start, run.pcm, run.segment) for run in runs]
        if any(run.channel is None or run.channel < 0 for run in runs):
            return [f"the sidecar gives no channel to a segment of {sorted({run.segment for run in runs})}"]
    return client.verify(np.asarray(audio), runs)


async def _play_all(args: argparse.Namespace, target: str, scripts: list[client.Script]) -> list[tuple[str, float]]:
    """Every dialog, its start spread over the ramp, on ``--connections`` HTTP/2 connections in
    turn (one by default: the platform may put every dialog on one); (status, seconds) each."""
    loop = asyncio.get_running_loop()
    ramp = (DEFAULT_RAMP if len(scripts) > 1 else 0.0) if args.ramp is None else args.ramp
    rng = random.Random(args.seed)
    timeout = args.seconds * 3 + ramp + 60
    count = max(1, min(args.connections or 1, len(scripts)))
    channels = await client.open_aio_channels(target, count, ca_file=args.cafile, server_name=args.server_name,
                                              timeout=timeout)

    async def one(index: int, script: client.Script) -> tuple[str, float]:
        await asyncio.sleep(rng.uniform(0, ramp) if ramp else 0)
        started = loop.time()
        try:
            await client.stream_aio(channels[index % count], script.steps, token=args.token,
                                    realtime=not args.fast, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}", loop.time() - started
        return "OK", loop.time() - started

    try:
        return await asyncio.gather(*(one(index, script) for index, script in enumerate(scripts)))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def run(args: argparse.Namespace) -> int:
    """The command (see the module docstring)."""
    target = args.ringcx_target or DEFAULT_TARGET
    scripts = [_script(args, index) for index in range(args.calls)]
    results = asyncio.run(_play_all(args, target, scripts))
    sidecars = _sidecars(args.verify) if args.verify is not None else None
    failed = 0
    for script, (status, took) in zip(scripts, results, strict=True):
        problems = []
        if status == "OK" and args.verify is not None:
            problems = verify_recording(args.verify, script, sidecars)
        ok = status == "OK" and not problems
        failed += not ok
        if not args.quiet or not ok:
            detail = "; ".join(problems) if problems else ("verified" if args.verify else "")
            print(f"dialog {script.dialog_id}: {status} in {took:.1f} s {detail}".rstrip(), file=sys.stderr)
    print(f"{len(scripts) - failed} of {len(scripts)} dialogs ok")
    return 1 if failed else 0
