"""Shared fixtures: a real recorder on 127.0.0.1 (port 0) and helpers to play and read calls."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import trio
from hypothesis import settings as hypothesis_settings
from trio_websocket import open_websocket_url

from callstream.codec import decode_ulaw_stereo
from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start, encode_stop
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from callstream.server.server import Server, serve
from callstream.settings import DEFAULT_TRANSPORT, Settings
from services import ACCESS_KEY, SECRET_KEY, NatsServer, S3Server
from wsclient import Rejected, connect

# No per-example deadline: these machines are shared and noisy, and speed is measured in the
# benchmarks, never asserted in tests (an example over hypothesis's 200 ms default failed once).
hypothesis_settings.register_profile("callstream", deadline=None)
hypothesis_settings.load_profile("callstream")

SILENCE = 0xFF


TRANSPORTS = ("websockets", "trio-websocket")  # every --transport the server offers
# For a test that must also run on every transport (the adapter contract tests in test_transport.py
# take each adapter themselves): the server suite as a whole runs on the default transport only.
on_every_transport = pytest.mark.parametrize("settings", TRANSPORTS, indirect=True)


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """A test server's settings, on the default transport unless the test is marked
    `on_every_transport` (then once per transport)."""
    output_dir = tmp_path / "recordings"
    transport = getattr(request, "param", DEFAULT_TRANSPORT)
    return Settings(host="127.0.0.1", port=0, output_dir=output_dir, flush_interval=0.2,
                    transport=transport)


@dataclass
class RunningServer:
    url: str
    server: Server
    settings: Settings


async def start_server(nursery: trio.Nursery, settings: Settings) -> RunningServer:
    server = Server(settings)
    info = await nursery.start(serve, settings, server)
    return RunningServer(url=f"ws://127.0.0.1:{info.port}", server=server, settings=settings)


@pytest.fixture
async def server(nursery: trio.Nursery, settings: Settings) -> RunningServer:
    return await start_server(nursery, settings)


async def wait_for_calls(server: RunningServer, count: int) -> None:
    """Wait until ``count`` calls have finished on the server (recordings finalised)."""
    while server.server.statistics().calls_finished < count:
        await trio.sleep(0.01)


async def expect_rejection(url: str, target: str = "/", headers: list[tuple[str, str]] | None = None) -> Rejected:
    """Attempt an upgrade that the server must refuse; returns the refusal (status, headers)."""
    try:
        client = await connect(url, target, headers)
    except Rejected as rejected:
        return rejected
    await client.drop()
    raise AssertionError("the upgrade was accepted")


def metadata(call_id: str, session_id: str = "1") -> dict[str, str]:
    return {"callId": call_id, "sessionId": session_id, "agentId": "7", "productType": "Queue"}


async def send_all(url: str, messages: Iterable[str], *, query: dict[str, str] | None = None) -> None:
    """Open one WebSocket, send every message, close normally."""
    target = url + "/" + (build_query(query) if query else "")
    async with open_websocket_url(target) as ws:
        for message in messages:
            await ws.send_message(message)


def call_messages(
    meta: dict[str, str], media: Iterable[tuple[Perspective, int, bytes]], *, stops: int = 2
) -> list[str]:
    """Connected, Start, the given Media in the given order, then ``stops`` Stops."""
    out = [encode_connected(), encode_start(meta)]
    out += [encode_media(p, seq, payload) for p, seq, payload in media]
    out += [encode_stop(1.0, "2026-11-25T00:00:00Z") for _ in range(stops)]
    return out


def expected_stereo(agent: list[bytes | None], caller: list[bytes | None], frame: int = 160) -> np.ndarray:
    """The decode a correct recorder must produce: frames in order, a missing frame (None) as
    silence of the frame length, the shorter side padded with silence."""

    def side(frames: list[bytes | None]) -> bytes:
        return b"".join(bytes([SILENCE]) * frame if f is None else f for f in frames)

    left, right = side(agent), side(caller)
    length = max(len(left), len(right))
    left = left.ljust(length, bytes([SILENCE]))
    right = right.ljust(length, bytes([SILENCE]))
    return decode_ulaw_stereo(left, right)


def recordings(output_dir: Path) -> list[tuple[Path, dict]]:
    """Every finished recording under output_dir with its sidecar, sorted by path."""
    found = []
    for sidecar in sorted(output_dir.rglob("*.json")):
        data = json.loads(sidecar.read_text())
        found.append((sidecar.parent / data["file"], data))
    return found


def read_audio(path: Path) -> np.ndarray:
    data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    assert rate == 8000
    assert data.shape[1] == 2
    return data


def random_frames(rng: np.random.Generator, count: int, frame: int = 160) -> list[bytes]:
    return [rng.integers(0, 256, frame, dtype=np.uint8).tobytes() for _ in range(count)]



@pytest.fixture
def s3_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterable[S3Server]:
    """A real S3-compatible store (`rclone serve s3`); its keys in the AWS_* variables, where the
    recorder's credential chain (and a recorder process started by the test) finds them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = S3Server(tmp_path / "s3")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterable[NatsServer]:
    """A real NATS server with JetStream, its store under tmp_path."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()
