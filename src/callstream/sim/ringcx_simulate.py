"""`callstream simulate --ringcx`: play RingCX dialogs at a recorder as the platform would.

Each dialog (`client.platform_dialog`): DialogInit, the caller, an agent joining later, a hold
(both parties' media pause while seq goes on), a transfer to a second agent, 100 ms PCMU chunks;
over TLS with a CA file (``--cafile``) or plaintext, with a token (``--token``). ``--calls N``
plays N dialogs at once (a thread each: grpcio's sync client); ``--verify DIR`` then checks
every recording sample by sample. Exits 1 if any dialog or check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import soundfile

from callstream.sim import ringcx_client as client

DEFAULT_TARGET = "127.0.0.1:10443"


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


def verify_recording(directory: Path, script: client.Script) -> list[str]:
    """Problems with the recording of ``script`` under ``directory`` (empty: exact)."""
    sidecars = [path for path in directory.rglob("*.json")
                if json.loads(path.read_text()).get("callId") == script.dialog_id]
    if len(sidecars) != 1:
        return [f"{len(sidecars)} recordings of dialog {script.dialog_id} in {directory}"]
    data = json.loads(sidecars[0].read_text())
    if data.get("status") != "complete":
        return [f"status {data.get('status')!r}"]
    audio, rate = soundfile.read(sidecars[0].with_name(data["file"]), dtype="int16", always_2d=True)
    if rate != client.RATE:
        return [f"sample rate {rate}"]
    return client.verify(np.asarray(audio), script.runs)


def run(args: argparse.Namespace) -> int:
    """The command (see the module docstring)."""
    target = args.ringcx_target or DEFAULT_TARGET
    scripts = [_script(args, index) for index in range(args.calls)]
    results: list[Any] = [None] * len(scripts)

    def play(index: int) -> None:
        started = time.monotonic()
        try:
            with client.open_channel(target, ca_file=args.cafile, server_name=args.server_name) as channel:
                client.stream(channel, client.paced(scripts[index].steps, realtime=not args.fast), token=args.token,
                              timeout=args.seconds * 3 + 60)
            results[index] = ("OK", time.monotonic() - started)
        except grpc.RpcError as error:
            results[index] = (f"{error.code().name}: {error.details()}", time.monotonic() - started)

    threads = [threading.Thread(target=play, args=(i,), daemon=True) for i in range(len(scripts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = 0
    for script, (status, took) in zip(scripts, results, strict=True):
        problems = []
        if status == "OK" and args.verify is not None:
            problems = verify_recording(args.verify, script)
        ok = status == "OK" and not problems
        failed += not ok
        if not args.quiet or not ok:
            detail = "; ".join(problems) if problems else ("verified" if args.verify else "")
            print(f"dialog {script.dialog_id}: {status} in {took:.1f} s {detail}".rstrip(), file=sys.stderr)
    print(f"{len(scripts) - failed} of {len(scripts)} dialogs ok")
    return 1 if failed else 0
