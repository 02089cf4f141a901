"""A recorder killed (SIGKILL) in the middle of RingCX dialogs: the restarted one recovers each
recording with the audio received up to about a flush interval before the kill."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile
import trio

from callstream.cli import main as cli_main
from callstream.sim import ringcx_client as client
from callstream.storage.recording import read_sidecar
from serverprocess import ServerProcess

RINGCX_READY = r"RingCX gRPC on [\d.]+:(\d+)"


def _serve(output: Path) -> ServerProcess:
    return ServerProcess(output, "--ringcx-port", "0", "--ringcx-plaintext", "--flush-interval", "0.2",
                         ready=RINGCX_READY)


async def _kill_mid_dialog_then_recover(server: ServerProcess, script: client.Script, output: Path) -> dict:
    """Play ``script`` to ``server``, SIGKILL it 3 s in, restart on ``output`` (it recovers before
    it listens) and stop that cleanly; the recovered sidecar of "crashed"."""
    stop = threading.Event()

    def play() -> None:
        # the server is killed under it
        with client.open_channel(f"127.0.0.1:{server.port}") as channel, contextlib.suppress(grpc.RpcError):
            client.stream(channel, (e for e in client.paced(script.steps) if not stop.is_set()), timeout=30)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, play)
            await trio.sleep(3.0)
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
            stop.set()
    assert list(output.rglob("*.partial.*")), "nothing was left to recover"
    restarted = ServerProcess(output)  # recovers before it listens
    assert restarted.stop(signal.SIGTERM) == 0
    assert not list(output.rglob("*.partial.*"))
    [sidecar_path] = output.rglob("crashed.json")
    sidecar = read_sidecar(sidecar_path)
    sidecar["path"] = sidecar_path
    return sidecar


async def test_sigkill_mid_dialog_then_restart_recovers_it(tmp_path: Path) -> None:
    output = tmp_path / "recordings"
    script = client.platform_dialog("crashed", seconds=6.0, agent_join=0.5, hold=None, transfer=None)
    sidecar = await _kill_mid_dialog_then_recover(_serve(output), script, output)
    sidecar_path = sidecar["path"]
    assert sidecar["status"] == "recovered" and sidecar["metadata"]["front_end"] == "ringcx"
    # the agent joined after the file was created: the live sidecar was rewritten for it
    assert sorted(s["participant"]["type"] for s in sidecar["metadata"]["segments"]) == ["AGENT", "CONTACT"]
    audio, rate = soundfile.read(sidecar_path.with_name(sidecar["file"]), dtype="int16", always_2d=True)
    assert rate == 8000 and len(audio) >= 1.5 * 8000  # 3 s sent; the window, reads and a flush may be lost
    # what was kept is exact: the runs cut to the recording's length
    runs = []
    for run in script.runs:
        keep = max(0, min(len(run.pcm), len(audio) - run.start - 800))
        if keep > 800:
            runs.append(client.Run(run.channel, run.start, run.pcm[:keep]))
    problems = client.verify(np.asarray(audio), runs)
    assert len(runs) == 2
    cut = min(run.start + len(run.pcm) for run in runs)
    for problem in problems:  # only the audio past the cut runs may be unaccounted for
        assert "silence was expected" in problem and int(problem.rsplit(" ", 1)[1]) // 2 >= cut - 800, problem


async def test_workers_share_the_ringcx_port(tmp_path: Path) -> None:
    """--workers 2: both workers serve gRPC on the one port the supervisor picked; a dialog is
    recorded and verified, and SIGTERM drains both (exit 0)."""
    output = tmp_path / "recordings"
    # a wide reorder window: a fresh worker's first dialog may stall its reader (imports, the
    # first file), and a stall longer than the window moves the audio after it (see protocol.md)
    server = ServerProcess(output, "--workers", "2", "--ringcx-port", "0", "--ringcx-plaintext",
                           "--reorder-window", "1s", ready=RINGCX_READY)
    second = server.wait_for(RINGCX_READY, count=2)
    assert int(second.group(1)) == server.port
    script = client.platform_dialog("worked", seconds=1.0, agent_join=0.3, hold=None, transfer=None)

    def play() -> None:
        with client.open_channel(f"127.0.0.1:{server.port}") as channel:
            client.stream(channel, client.paced(script.steps), timeout=30)

    with trio.fail_after(60):
        await trio.to_thread.run_sync(play)
    assert server.stop(signal.SIGTERM) == 0
    [sidecar_path] = output.rglob("worked.json")
    sidecar = read_sidecar(sidecar_path)
    assert sidecar["status"] == "complete"
    audio, _ = soundfile.read(sidecar_path.with_name(sidecar["file"]), dtype="int16", always_2d=True)
    assert client.verify(np.asarray(audio), script.runs) == []


async def test_one_generator_spreads_its_dialogs_over_both_workers(tmp_path: Path) -> None:
    """`simulate --ringcx --connections K` against --workers 2: the kernel hands each HTTP/2
    connection to one worker (SO_REUSEPORT), so dialogs spread only over several connections;
    with 24 connections both workers record some (all on one: 2 x 2**-24), every one complete."""
    output = tmp_path / "recordings"
    server = ServerProcess(output, "--workers", "2", "--ringcx-port", "0", "--ringcx-plaintext",
                           "--reorder-window", "1s", ready=RINGCX_READY)
    server.wait_for(RINGCX_READY, count=2)
    dialogs = 24
    with trio.fail_after(60):
        code = await trio.to_thread.run_sync(lambda: cli_main([
            "simulate", "--ringcx", "--ringcx-target", f"127.0.0.1:{server.port}", "--calls", str(dialogs),
            "--connections", str(dialogs), "--seconds", "4", "--fast", "--quiet", "--call-id", "spread"]))
    assert code == 0
    server.wait_for(r"worker-\d\[\d+\] .*dialog from .* started", count=dialogs)
    assert server.stop(signal.SIGTERM) == 0
    per_worker = Counter(match.group(1) for line in server.log
                         if (match := re.search(r"worker-(\d)\[\d+\] .*dialog from .* started", line)))
    assert sorted(per_worker) == ["0", "1"], f"dialogs per worker: {dict(per_worker)}"
    assert sum(per_worker.values()) == dialogs
    sidecars = [read_sidecar(path) for path in output.rglob("spread-*.json")]
    assert len(sidecars) == dialogs and all(sidecar["status"] == "complete" for sidecar in sidecars)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
async def test_sigkill_mid_transfer_in_participants_layout_recovers_every_channel(tmp_path: Path, fmt: str) -> None:
    """--channel-layout participants, killed after the transfer: the recovered file keeps its 4
    channels (the sidecar says so), each participant's audio on its own, exact up to the cut."""
    output = tmp_path / "recordings"
    script = client.platform_dialog("crashed", seconds=5.0, agent_join=0.3, hold=None, transfer=1.0)
    server = ServerProcess(output, "--ringcx-port", "0", "--ringcx-plaintext", "--flush-interval", "0.2",
                           "--format", fmt, "--channel-layout", "participants", ready=RINGCX_READY)
    sidecar = await _kill_mid_dialog_then_recover(server, script, output)
    sidecar_path = sidecar["path"]
    assert sidecar["status"] == "recovered" and sidecar["channels"] == 4
    assert [s["channel"] for s in sidecar["metadata"]["segments"]] == [0, 1, 2]
    audio, rate = soundfile.read(sidecar_path.with_name(sidecar["file"]), dtype="int16", always_2d=True)
    assert rate == 8000 and audio.shape[1] == 4 and len(audio) >= 1.5 * 8000
    runs = []  # one run per segment (no hold), on the channel of its order of joining; cut as recorded
    for index, run in enumerate(script.runs):
        keep = max(0, min(len(run.pcm), len(audio) - run.start - 800))
        if keep > 800:
            runs.append(client.Run(index, run.start, run.pcm[:keep]))
    assert len(runs) == 3
    cut = min(run.start + len(run.pcm) for run in runs)
    for problem in client.verify(np.asarray(audio), runs):  # only audio past the cut may be unaccounted for
        assert "silence was expected" in problem and int(problem.rsplit(" ", 1)[1]) // 4 >= cut - 800, problem
