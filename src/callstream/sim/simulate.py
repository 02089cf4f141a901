"""`callstream simulate`: play calls at a recorder exactly as the platform would.

Upgrade with the platform's query parameters, then Connected, Start, Media for both
perspectives every 20 ms (Participant = agent, Conference = caller), and one Stop per
perspective. One call checks a deployment end to end; ``--calls N`` makes it a load generator
(`callstream.loadgen`) and ``--verify DIR`` checks every recording against what was sent
(`callstream.simverify`). The tests and benchmarks/bench_e2e.py use it too.
"""

from __future__ import annotations

import argparse
import json
import logging
import ssl
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import trio

from callstream.audio import FRAME_BYTES, SAMPLE_RATE
from callstream.codec import encode_ulaw
from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start, encode_stop
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from callstream.sim.simclient import connect

LOGGER = logging.getLogger("callstream.simulate")

DEFAULT_URL = "ws://127.0.0.1:3333"
DEFAULT_SECONDS = 10.0
DEFAULT_RAMP = 1.0  # seconds over which the starts of several calls are spread
TEST_TONES_HZ = (440.0, 697.0)  # agent, caller: distinct so a swapped channel is audible
NOISE_DBFS = -40.0  # the seeded noise on the pool's tone: every frame differs
POOL_SEED = 20261125
CLOSE_WAIT = 60.0  # seconds to wait for the server's close after the Stops


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
    sides = [
        encode_ulaw(np.round(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16))
        for hz in TEST_TONES_HZ
    ]
    return CallAudio(agent=sides[0], caller=sides[1])


def noisy_tone_audio(seconds: float, seed: int = POOL_SEED) -> CallAudio:
    """The test tones with seeded noise at NOISE_DBFS, so that no two frames are alike."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    amplitude, noise = 32767 * 10 ** (-12 / 20), 32767 * 10 ** (NOISE_DBFS / 20)
    sides = [
        encode_ulaw(
            np.round(amplitude * np.sin(2 * np.pi * hz * t) + rng.normal(0, noise, len(t))).astype(
                np.int16
            )
        )
        for hz in TEST_TONES_HZ
    ]
    return CallAudio(agent=sides[0], caller=sides[1])


def _to_8k_int16(data: np.ndarray, rate: int) -> np.ndarray:
    """Resample float audio in [-1, 1] to 8 kHz by linear interpolation (a test signal)."""
    if rate != SAMPLE_RATE and len(data):
        positions = np.arange(0, len(data) * SAMPLE_RATE / rate) * rate / SAMPLE_RATE
        data = np.interp(positions, np.arange(len(data)), data)
    return np.clip(np.round(data * 32767), -32768, 32767).astype(np.int16)


def load_audio(
    *, stereo: Path | None = None, agent: Path | None = None, caller: Path | None = None
) -> CallAudio:
    """Read a stereo WAV (left = agent) or two mono ones; mix down extra channels; pad the
    shorter side to the same length."""
    import soundfile

    def read(path: Path, channel: int | None) -> np.ndarray:
        if not path.is_file():
            raise ValueError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}")
        try:
            data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
        except soundfile.LibsndfileError as error:
            raise ValueError(f"{path}: not an audio file soundfile can read ({error.error_string})") from None
        if channel is not None and data.shape[1] <= channel:
            raise ValueError(f"{path}: has {data.shape[1]} channel, a stereo file needs 2")
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
) -> int | None:
    """Play one call at ``url`` (``ws://`` or ``wss://``, no query: the plan's metadata is added).

    Returns the server's close code (None if it did not close within `CLOSE_WAIT` seconds of the
    Stops, when the client closes). Raises simclient.Rejected, simclient.Closed or OSError."""
    target = url.rstrip("/") + "/" + build_query(plan.metadata)
    frame_seconds = plan.frame_bytes / SAMPLE_RATE
    client = await connect(target, ssl_context=ssl_context, headers=extra_headers)
    try:
        await client.send_text(encode_connected(secret=plan.secret))
        await client.send_text(encode_start(plan.metadata))
        started = trio.current_time()
        for index, (agent, caller) in enumerate(plan.media_messages()):
            if realtime:
                await trio.sleep_until(started + index * frame_seconds)
            else:
                await trio.lowlevel.checkpoint()
            await client.send_text(agent)
            await client.send_text(caller)
        duration = len(plan.audio.agent) / SAMPLE_RATE
        end_time = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        for _ in Perspective:
            await client.send_text(encode_stop(duration, end_time))
        with trio.move_on_after(CLOSE_WAIT):
            return await client.wait_closed()
        return await client.close()
    finally:
        await client.aclose()


def add_arguments(
    sub: argparse._SubParsersAction, env_defaults: type, environ: Mapping[str, str]
) -> None:
    parser = sub.add_parser(
        "simulate",
        help="play calls at a recorder as the platform would (one, or a load test)",
        description="Play calls at a callstream server (or any Call Streaming receiver) exactly as "
        "the platform would: upgrade query, Connected, Start, Media for both perspectives every 20 "
        "ms, two Stops. Audio comes from a stereo WAV (left = agent), two mono WAVs, or a "
        "generated test tone. With --calls N it is a load generator (each call with its own "
        "content), and --verify DIR checks every recording against what was sent. Exits 1 if any "
        "call or check fails.",
    )
    add = env_defaults(parser, environ).add
    add("--url", default=DEFAULT_URL, help="the recorder's ws:// or wss:// URL")
    add("--stereo", type=Path, help="stereo audio file: left = agent, right = caller (any rate)")
    add("--agent", type=Path, help="mono audio file for the agent (Participant) side")
    add("--caller", type=Path, help="mono audio file for the caller (Conference) side")
    add(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help="length of each call with generated audio",
    )
    add("--calls", type=int, default=1, metavar="N", help="calls to play at once")
    add(
        "--ramp",
        type=float,
        metavar="SECONDS",
        help="each call starts at a random offset within this many seconds "
        f"(default: {DEFAULT_RAMP:g} for several calls, 0 for one)",
    )
    add(
        "--processes",
        type=int,
        default=1,
        metavar="K",
        help="client processes to spread the calls over, if one core cannot generate enough",
    )
    add("--seed", type=int, default=0, help="seed of the start offsets")
    add(
        "--call-id",
        help="callId (one call; default sim-1), or the prefix of PREFIX-1 ... PREFIX-N "
        "(default sim)",
    )
    add(
        "--session-id",
        help="sessionId sent in the query and Start (default: 1 for one call, the start "
        "time for several, so that runs do not collide)",
    )
    add("--secret", help="secret to present (Authorization header and Connected message)")
    add(
        "--cafile",
        type=Path,
        help="CA bundle to verify a wss:// server with (default: system store)",
    )
    add(
        "--send-interval",
        type=float,
        default=0.02,
        metavar="SECONDS",
        help="real time: each call writes what is due every this many seconds (0.02: every "
        "frame pair on its own, as the platform does; 0.1: five pairs per write, which costs the "
        "generator about a third as much CPU, for load tests where it shares the server's cores)",
    )
    add(
        "--fast",
        action="store_true",
        default=False,
        help="send as fast as possible instead of in real time",
    )
    add(
        "--verify",
        type=Path,
        metavar="DIR",
        help="after the run, check each call's recording in DIR (the server's --output-dir) "
        "sample for sample",
    )
    add(
        "--json",
        type=Path,
        metavar="PATH",
        help="write the summary and every call's result to PATH",
    )
    add("--quiet", action="store_true", default=False,
        help="print only failures (no progress line, no summary when everything passed)")
    add("--ringcx", action="store_true", default=False,
        help="play RingCX (gRPC) dialogs instead: DialogInit, the caller, an agent joining later, a hold, "
        "a transfer to a second agent, 100 ms PCMU chunks (--seconds, --calls, --fast, --verify, --cafile, "
        "--call-id as the dialog id apply)")
    add("--ringcx-target", metavar="HOST:PORT", help="the recorder's gRPC address (default 127.0.0.1:10443)")
    add("--connections", type=int, default=1, metavar="K",
        help="RingCX: HTTP/2 connections (K of them, at most one per dialog) to spread the dialogs over in turn "
        "(1: every dialog on one connection, as the platform may do). A recorder with --workers gets each "
        "connection's dialogs on one worker, so K of at least a few per worker spreads them")
    add("--token", help="RingCX: the authorization metadata to send (for example 'Bearer SECRET')")
    add("--server-name", help="RingCX over TLS: the name to check the certificate against, if not the host's")
    parser.set_defaults(command=_run)


class _Say:
    """Prints a progress or summary line unless --quiet (failures are printed regardless)."""

    def __init__(self, *, quiet: bool) -> None:
        self._quiet = quiet

    def __call__(self, line: str) -> None:
        if not self._quiet:
            print(line, flush=True)


def _print(line: str) -> None:
    print(line, flush=True)


def _run(args: argparse.Namespace) -> int:
    if args.ringcx:
        from callstream.sim.ringcx_simulate import run as run_ringcx

        if args.calls < 1 or args.seconds < 4:
            print("callstream simulate --ringcx: --calls must be positive, --seconds at least 4", file=sys.stderr)
            return 2
        if args.connections is not None and args.connections < 1:
            print("callstream simulate --ringcx: --connections must be at least 1", file=sys.stderr)
            return 2
        return run_ringcx(args)
    from callstream.sim.loadgen import (
        FRAME_SECONDS,
        POOL_FRAMES,
        LoadSpec,
        Progress,
        build_pool,
        plan_calls,
        run_load,
    )

    if (args.calls < 1 or args.processes < 1 or args.seconds <= 0 or (args.ramp or 0) < 0
            or not 0 < args.send_interval <= 1):
        print(
            "callstream simulate: --calls, --processes and --seconds must be positive, --ramp >= 0, "
            "--send-interval in (0, 1]",
            file=sys.stderr,
        )
        return 2
    many = args.calls > 1
    files = (args.stereo, args.agent, args.caller)
    spec = LoadSpec(
        url=args.url,
        calls=args.calls,
        frames=None if any(files) or not many else max(1, round(args.seconds / FRAME_SECONDS)),
        realtime=not args.fast,
        ramp=(DEFAULT_RAMP if many else 0.0) if args.ramp is None else args.ramp,
        seed=args.seed,
        call_id=args.call_id or ("sim" if many else "sim-1"),
        session_id=args.session_id or (time.strftime("%Y%m%d%H%M%S") if many else "1"),
        secret=args.secret,
        cafile=args.cafile,
        audio=files,
        tone_seconds=POOL_FRAMES * FRAME_SECONDS if many else args.seconds,
        noisy_tone=many,
        processes=args.processes,
        send_interval=args.send_interval,
    )
    for flag, path in (("--stereo", args.stereo), ("--agent", args.agent), ("--caller", args.caller)):
        if path is not None and not path.is_file():
            print(f"callstream simulate: {flag}: {path}: {'is a directory' if path.is_dir() else 'no such file'}",
                  file=sys.stderr)
            return 2
    if args.verify is not None and not args.verify.is_dir():
        print(f"callstream simulate: --verify: {args.verify} is not a directory", file=sys.stderr)
        return 2
    try:
        pool = build_pool(spec)
    except ValueError as error:
        print(f"callstream simulate: {error}", file=sys.stderr)
        return 2
    calls = plan_calls(spec, pool)
    seconds = calls[0].frames * FRAME_SECONDS
    say = _Say(quiet=args.quiet)
    if many:
        pace = (
            "as fast as possible"
            if args.fast
            else f"in real time, starts spread over {spec.ramp:g} s"
        )
        say(f"playing {args.calls} calls of {seconds:.1f} s at {args.url} {pace}")
    else:
        say(f"playing {seconds:.1f} s call {spec.call_id}/{spec.session_id} at {args.url}")
    report = run_load(spec, calls, pool, Progress(enabled=not args.quiet and sys.stderr.isatty()))
    for outcome in report.failed:
        print(f"FAIL {outcome.call_id}: {outcome.error}", flush=True)  # failures always, in full
    summary = report.summary()
    if not many and not report.failed:
        say("done: both Stops sent")
    (_print if report.failed else say)(
        f"{summary['ok']}/{summary['calls']} calls ok; {summary['messages']} Media messages in "
        f"{summary['wall_seconds']:.1f} s ({summary['messages_per_second'] or 0:,.0f}/s); "
        f"generator CPU {summary['generator_cpu_seconds']:.2f} s, "
        f"{summary['generator_cpu_us_per_message'] or 0:.1f} us per message"
    )
    verdicts = []
    if args.verify is not None:
        from callstream.sim.simverify import verify

        verdicts = verify(args.verify, calls, pool)
        for verdict in verdicts:  # a failure in full; passes are counted
            if not verdict.ok:
                print(f"FAIL {verdict.call_id}: {verdict.detail} ({verdict.path})", flush=True)
        passed = sum(v.ok for v in verdicts)
        failed = len(verdicts) - passed
        (_print if failed else say)(f"verify: {passed} passed, {failed} failed")
    if args.json is not None:
        detail = {
            "summary": summary,
            "spec": {
                "calls": args.calls,
                "seconds": seconds,
                "fast": args.fast,
                "ramp": spec.ramp,
                "processes": spec.processes,
            },
            "calls": [asdict(o) for o in report.outcomes],
            "verify": [
                {"call_id": v.call_id, "ok": v.ok, "detail": v.detail, "path": str(v.path)}
                for v in verdicts
            ],
        }
        args.json.write_text(json.dumps(detail, indent=1) + "\n")
    failed = report.failed or any(not v.ok for v in verdicts)
    return 1 if failed else 0
