"""Crash safety: a real server process killed with SIGKILL mid-call; a restart recovers everything."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
import trio

from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from callstream.settings import READ_INTERVAL_SHARE
from callstream.storage.recording import read_sidecar
from conftest import expected_stereo, metadata, random_frames, read_audio
from serverprocess import ServerProcess
from wsclient import Closed, connect

CALLS = 20
FLUSH_INTERVAL = 0.5  # seconds
WINDOW = 0.2  # seconds: the default reorder window holds this much back
READ = FLUSH_INTERVAL * READ_INTERVAL_SHARE  # seconds audio may wait in the socket (read coalescing)
FLAC_FRAME = 4096 / 8000  # seconds libFLAC holds until an encoded frame is complete (sinks.FlacSink)
SLACK = 0.5  # seconds: the disk writer's batching, thread hops and scheduling on a loaded machine
FRAME = 0.02  # seconds per frame


def start_server(output_dir: Path, fmt: str = "wav") -> ServerProcess:
    return ServerProcess(output_dir, "--flush-interval", str(FLUSH_INTERVAL), "--format", fmt)


async def stream_call(url: str, call_id: str, frames: list[bytes], sent_at: list[float]) -> None:
    client = await connect(url, "/" + build_query(metadata(call_id)))
    try:
        await client.send(encode_connected())
        await client.send(encode_start(metadata(call_id)))
        start = trio.current_time()
        for seq, frame in enumerate(frames, 1):
            await trio.sleep_until(start + seq * FRAME)
            for perspective in Perspective:
                await client.send(encode_media(perspective, seq, frame))
            sent_at.append(trio.current_time())
    except Closed:
        pass
    finally:
        await client.drop()


@pytest.mark.parametrize("fmt", ["wav", "mulaw-wav", "flac"])
async def test_sigkill_mid_call_then_restart_recovers_every_recording(tmp_path: Path, fmt: str) -> None:
    output = tmp_path / "recordings"
    rng = np.random.default_rng(20)
    frames = {f"crash-{i}": random_frames(rng, 400) for i in range(CALLS)}  # 8 s each
    sent = {call_id: [] for call_id in frames}
    server = start_server(output, fmt)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for call_id, call_frames in frames.items():
                nursery.start_soon(stream_call, server.url, call_id, call_frames, sent[call_id])
            await trio.sleep(4.0)
            killed_at = trio.current_time()
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    assert list(output.rglob("*.partial.*")), "nothing was left to recover"

    restarted = start_server(output)  # recovers before it listens
    assert restarted.stop(signal.SIGTERM) == 0
    assert not list(output.rglob("*.partial.*"))
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    for call_id, call_frames in frames.items():
        sidecar = read_sidecar(next(output.rglob(f"{call_id}-1.json")))
        assert sidecar["status"] == "recovered"
        path = output / next(output.rglob(f"{call_id}-1.json")).parent / sidecar["file"]
        audio = read_audio(path)
        assert soundfile.info(str(path)).frames == len(audio) == sidecar["frames"]
        encoder = FLAC_FRAME if fmt == "flac" else 0.0
        must_hold = sum(
            1 for t in sent[call_id] if t <= killed_at - FLUSH_INTERVAL - READ - WINDOW - encoder - SLACK
        )
        held = len(audio) // 160
        assert must_hold > 50
        assert held >= must_hold, (call_id, held, must_hold)
        begun = call_frames[: -(-len(audio) // 160)]  # FLAC keeps whole 4096-sample frames: may end mid-frame
        np.testing.assert_array_equal(audio, expected_stereo(begun, begun)[: len(audio)])
        decoded = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-f", "s16le", "-"],
                                 capture_output=True, check=True).stdout
        np.testing.assert_array_equal(np.frombuffer(decoded, "<i2").reshape(-1, 2), audio)
    assert os.path.isdir(output)
