"""`callstream simulate`: play one call at a recorder exactly as the platform would.

Upgrade with the platform's query parameters, then Connected, Start, Media for both
perspectives every 20 ms (Participant = agent, Conference = caller), and one Stop per
perspective. Operators use it to check a deployment end to end; the tests use it too.
"""

from __future__ import annotations

import argparse
import logging
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import trio
from trio_websocket import open_websocket_url

from callstream.codec import encode_ulaw
from callstream.events import Perspective
from callstream.protocol import build_query, encode_connected, encode_media, encode_start, encode_stop

LOGGER = logging.getLogger("callstream.simulate")

SAMPLE_RATE = 8000  # Hz, what the platform streams
FRAME_BYTES = 160  # 20 ms of 8 kHz G.711
DEFAULT_URL = "ws://127.0.0.1:3333"
DEFAULT_SECONDS = 10.0
TEST_TONES_HZ = (440.0, 697.0)  # agent, caller: distinct so a swapped channel is audible


@dataclass(frozen=True, slots=True)
class CallAudio:
    """One call's audio as mu-law bytes per side (equal length, 8 kHz)."""

    agent: bytes
    caller: bytes


@dataclass(slots=True)
class CallPlan:
    """What to send for one call. ``metadata`` becomes the query and the Start message."""

    audio: CallAudio
    metadata: dict[str, str] = field(default_factory=dict)
    frame_bytes: int = FRAME_BYTES
    secret: str | None = None

    def media_messages(self) -> Iterator[tuple[str, str]]:
        """Pairs of Media messages (agent, caller), one pair per frame, sequence ids from 1."""
        agent, caller, step = self.audio.agent, self.audio.caller, self.frame_bytes
        for index, offset in enumerate(range(0, len(agent), step), start=1):
            yield (
                encode_media(Perspective.PARTICIPANT, index, agent[offset : offset + step]),
                encode_media(Perspective.CONFERENCE, index, caller[offset : offset + step]),
            )


def tone_audio(seconds: float) -> CallAudio:
    """Two sine tones at -12 dBFS: agent 440 Hz, caller 697 Hz."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    amplitude = 32767 * 10 ** (-12 / 20)
    sides = [encode_ulaw(np.round(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)) for hz in TEST_TONES_HZ]
    return CallAudio(agent=sides[0], caller=sides[1])


def _to_8k_int16(data: np.ndarray, rate: int) -> np.ndarray:
    """Resample float audio in [-1, 1] to 8 kHz by linear interpolation (a test signal, not hi-fi)."""
    if rate != SAMPLE_RATE and len(data):
        positions = np.arange(0, len(data) * SAMPLE_RATE / rate) * rate / SAMPLE_RATE
        data = np.interp(positions, np.arange(len(data)), data)
    return np.clip(np.round(data * 32767), -32768, 32767).astype(np.int16)


def load_audio(*, stereo: Path | None = None, agent: Path | None = None, caller: Path | None = None) -> CallAudio:
    """Read a stereo WAV (left = agent) or two mono ones; mix down extra channels; pad to equal length."""
    import soundfile

    def read(path: Path, channel: int | None) -> np.ndarray:
        data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
        mono = data[:, channel] if channel is not None else data.mean(axis=1)
        return _to_8k_int16(mono, rate)

    if stereo is not None:
        left, right = read(stereo, 0), read(stereo, 1)
    elif agent is not None and caller is not None:
        left, right = read(agent, None), read(caller, None)
    else:
        raise ValueError("give either a stereo file or both an agent and a caller file")
    length = max(len(left), len(right))
    left = np.pad(left, (0, length - len(left)))
    right = np.pad(right, (0, length - len(right)))
    return CallAudio(agent=encode_ulaw(left), caller=encode_ulaw(right))


def default_metadata(call_id: str, session_id: str) -> dict[str, str]:
    return {
        "callId": call_id,
        "sessionId": session_id,
        "ani": "2223334444",
        "dnis": "8005550100",
        "accountId": "99990000",
        "subaccountId": "99990001",
        "rcAccountId": "123456789",
        "agentId": "123",
        "productType": "Queue",
        "productId": "1234",
    }


async def play_call(
    url: str,
    plan: CallPlan,
    *,
    realtime: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> None:
    """Play one call at ``url`` (``ws://`` or ``wss://``, no query: the plan's metadata is added)."""
    target = url.rstrip("/") + "/" + build_query(plan.metadata)
    headers = [(k.encode(), v.encode()) for k, v in extra_headers]
    frame_seconds = plan.frame_bytes / SAMPLE_RATE
    async with open_websocket_url(target, ssl_context, extra_headers=headers) as ws:
        await ws.send_message(encode_connected(secret=plan.secret))
        await ws.send_message(encode_start(plan.metadata))
        started = trio.current_time()
        for index, (agent, caller) in enumerate(plan.media_messages()):
            if realtime:
                await trio.sleep_until(started + index * frame_seconds)
            await ws.send_message(agent)
            await ws.send_message(caller)
        duration = len(plan.audio.agent) / SAMPLE_RATE
        end_time = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        for _ in Perspective:
            await ws.send_message(encode_stop(duration, end_time))


def add_arguments(sub: argparse._SubParsersAction, env_defaults: type, environ: Mapping[str, str]) -> None:
    parser = sub.add_parser(
        "simulate",
        help="play a call at a recorder as the platform would",
        description="Play one call at a callstream server (or any Call Streaming receiver) exactly as the "
        "platform would: upgrade query, Connected, Start, Media for both perspectives every 20 ms, two Stops. "
        "Audio comes from a stereo WAV (left = agent), two mono WAVs, or a generated test tone.",
    )
    add = env_defaults(parser, environ).add
    add("--url", default=DEFAULT_URL, help="the recorder's ws:// or wss:// URL")
    add("--stereo", type=Path, help="stereo audio file: left = agent, right = caller (any rate)")
    add("--agent", type=Path, help="mono audio file for the agent (Participant) side")
    add("--caller", type=Path, help="mono audio file for the caller (Conference) side")
    add("--seconds", type=float, default=DEFAULT_SECONDS, help="length of the generated test tone")
    add("--call-id", default="sim-1", help="callId sent in the query and Start")
    add("--session-id", default="1", help="sessionId sent in the query and Start")
    add("--secret", help="secret to present (Authorization header and Connected message)")
    add("--cafile", type=Path, help="CA bundle to verify a wss:// server with (default: system store)")
    add("--fast", action="store_true", default=False, help="send as fast as possible instead of in real time")
    parser.set_defaults(command=_run)


def _run(args: argparse.Namespace) -> int:
    if args.stereo or args.agent or args.caller:
        audio = load_audio(stereo=args.stereo, agent=args.agent, caller=args.caller)
    else:
        audio = tone_audio(args.seconds)
    plan = CallPlan(audio=audio, metadata=default_metadata(args.call_id, args.session_id), secret=args.secret)
    context = None
    if args.url.startswith("wss:"):
        context = ssl.create_default_context(cafile=args.cafile)
    headers = [("Authorization", f"Bearer {args.secret}")] if args.secret else []
    seconds = len(audio.agent) / SAMPLE_RATE
    print(f"playing {seconds:.1f} s call {args.call_id}/{args.session_id} at {args.url}", flush=True)
    trio.run(lambda: play_call(args.url, plan, realtime=not args.fast, ssl_context=context, extra_headers=headers))
    print("done: both Stops sent", flush=True)
    return 0
