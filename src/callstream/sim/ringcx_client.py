"""Plays RingCX dialogs at a recorder as the platform would (grpcio client), and checks what
was recorded: for `callstream simulate --ringcx` and the tests.

A dialog is a script of `Step`s (a StreamEvent and when to send it, seconds from the start);
`platform_dialog` writes the platform's typical one (DialogInit, the caller, an agent joining
later, a hold with ``seq`` going on, a transfer to a second agent, 100 ms PCMU chunks) and says
where each run of chunks belongs (`Run`), so that `verify` can compare a recording sample by
sample: every run found within ``tolerance`` samples of its place (arrival decides a
segment's place to within a chunk), equal to what was sent, and silence everywhere else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from callstream import codec
from callstream.ringcx import streaming_pb2 as pb
from callstream.ringcx import streaming_pb2_grpc

RATE = 8000
METHOD = "/ringcentral.ringcx.streaming.v1beta2.Streaming/Stream"


@dataclass(frozen=True, slots=True)
class Step:
    at: float  # seconds from the dialog's start
    event: pb.StreamEvent


@dataclass(slots=True)
class Run:
    """Consecutive chunks of one segment: ``pcm`` belongs at sample ``start`` of ``channel`` (in
    the stereo layout; in the participants layout the sidecar says the segment's channel)."""

    channel: int
    start: int
    pcm: np.ndarray
    segment: str = ""  # its segment id


@dataclass(slots=True)
class Script:
    steps: list[Step] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    dialog_id: str = ""


def chunk_payload(seed: int, k: int, samples: int = 800) -> bytes:
    """Mu-law chunk k of a segment: distinct per (seed, k), every sample non-zero (0x00-0x7E)."""
    rng = np.random.default_rng(seed * 1_000_003 + k)
    return bytes(rng.integers(0, 0x7F, samples, dtype=np.uint8))


def _event(session: str, **kind: object) -> pb.StreamEvent:
    return pb.StreamEvent(session_id=session, **kind)  # type: ignore[arg-type]


class _Builder:
    def __init__(self, script: Script, session: str, chunk_ms: int) -> None:
        self.script, self.session, self.chunk_ms = script, session, chunk_ms
        self.samples = chunk_ms * RATE // 1000
        self.seeds = 0

    def add(self, at: float, **kind: object) -> None:
        self.script.steps.append(Step(at, _event(self.session, **kind)))

    def segment(self, segment_id: str, kind: int, name: str, join: float, talks: Sequence[tuple[float, float]],
                channel: int, leave: float | None, *, fmt: pb.AudioFormat | None = None, first_seq: int = 1) -> None:
        """``talks``: (from, to) seconds when its media flows; seq goes on across the gaps."""
        self.seeds += 1
        seed = self.seeds
        start = pb.SegmentStartEvent(segment_id=segment_id, participant=pb.Participant(
            id=f"participant-{segment_id}", type=kind, name=name))  # type: ignore[arg-type]
        if fmt is not None:
            start.audio_format.CopyFrom(fmt)
        self.add(join, segment_start=start)
        seq, k = first_seq, 0
        for begin, end in talks:
            chunks = round((end - begin) * 1000 / self.chunk_ms)
            pcm = []
            for i in range(chunks):
                payload = chunk_payload(seed, k, self.samples)
                k += 1
                sent = round(begin + (i + 1) * self.chunk_ms / 1000, 6)  # a chunk leaves once spoken
                self.add(sent, segment_media=pb.SegmentMediaEvent(segment_id=segment_id, audio_content=pb.AudioContent(
                    payload=payload, seq=seq, duration=self.chunk_ms)))
                seq += 1
                pcm.append(codec.decode_ulaw(payload))
            if pcm:
                self.script.runs.append(Run(channel, round(begin * RATE), np.concatenate(pcm), segment_id))
        if leave is not None:
            self.add(leave, segment_stop=pb.SegmentStopEvent(segment_id=segment_id))


def platform_dialog(dialog_id: str = "dialog-1", *, session_id: str = "session-1", seconds: float = 6.0,
                    agent_join: float = 1.0, hold: tuple[float, float] | None = (2.0, 1.0),
                    transfer: float | None = 4.0, chunk_ms: int = 100) -> Script:
    """The platform's typical dialog (times in seconds from its start): the caller from 0 to
    ``seconds``; an agent from ``agent_join``; during ``hold`` = (start, length) the caller's
    and the agent's media pause (seq goes on) and SegmentInfo HOLD/UNHOLD are sent; at
    ``transfer`` the agent leaves and a second agent joins. Chunk times are multiples of
    ``chunk_ms``."""
    script = Script(dialog_id=dialog_id)
    build = _Builder(script, session_id, chunk_ms)
    build.add(0.0, dialog_init=pb.DialogInitEvent(
        account=pb.Account(id="acc-1", sub_account_id="sub-1", rc_account_id="rc-1"),
        dialog=pb.Dialog(id=dialog_id, type=pb.INBOUND, ani="+15551230001", dnis="+15551230002", language="en-US",
                         attributes={"queue": "support"})))

    def talking(begin: float, end: float) -> list[tuple[float, float]]:
        if hold is None or not begin < hold[0] < end:
            return [(begin, end)]
        return [(begin, hold[0]), (min(end, hold[0] + hold[1]), end)]

    fmt = pb.AudioFormat(codec=pb.PCMU, rate=RATE, ptime=chunk_ms)
    first_end = transfer if transfer is not None else seconds
    build.segment("caller", pb.CONTACT, "Caller", 0.0, talking(0.0, seconds), 1, seconds, fmt=fmt)
    build.segment("agent-1", pb.AGENT, "First Agent", agent_join, talking(agent_join, first_end), 0, first_end,
                  first_seq=7)
    if transfer is not None:
        # the second agent speaks a moment after the first has left (a transfer takes that
        # long anyway): arrival places each to within a chunk, so back to back they could overlap
        build.segment("agent-2", pb.AGENT, "Second Agent", transfer, talking(transfer + 0.2, seconds), 0, seconds)
    if hold is not None:
        build.add(hold[0], segment_info=pb.SegmentInfoEvent(segment_id="caller", event="HOLD"))
        build.add(hold[0] + hold[1], segment_info=pb.SegmentInfoEvent(segment_id="caller", event="UNHOLD",
                                                                       data='{"reason": "agent"}'))
    script.steps.sort(key=lambda step: step.at)  # stable: a segment's start before its media
    return script


def paced(steps: Sequence[Step], *, realtime: bool = True, speed: float = 1.0) -> Iterator[pb.StreamEvent]:
    """The steps' events, each sent at its time (``realtime``) or at once."""
    began = time.monotonic()
    for step in steps:
        if realtime:
            delay = began + step.at / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield step.event


def open_channel(target: str, *, ca_file: Path | None = None, server_name: str | None = None) -> grpc.Channel:
    """A channel to ``target`` (host:port): TLS when ``ca_file`` is given, else plaintext."""
    if ca_file is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, credentials, options=options)


def stream(channel: grpc.Channel, events: Iterator[pb.StreamEvent], *, token: str | None = None,
           timeout: float | None = None) -> None:
    """One Stream RPC (blocking); raises grpc.RpcError with the server's status."""
    metadata = [] if token is None else [("authorization", token)]
    # connected first: a paced script's clock must not run while the connection is being made
    # (its first events would then arrive together, and the joins look earlier than they are)
    grpc.channel_ready_future(channel).result(timeout=timeout)
    streaming_pb2_grpc.StreamingStub(channel).Stream(events, metadata=metadata, timeout=timeout)


def open_aio_channel(target: str, *, ca_file: Path | None = None, server_name: str | None = None,
                     own_connection: bool = False) -> grpc.aio.Channel:
    """As `open_channel`, for grpc.aio (use ``async with``). ``own_connection``: the channel
    makes its own HTTP/2 connection; else grpcio lets channels of equal target and options share
    one (its global subchannel pool), so N channels would still be one connection."""
    options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
    if ca_file is None:
        return grpc.aio.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, credentials, options=options)


async def open_aio_channels(target: str, count: int, *, ca_file: Path | None = None,
                            server_name: str | None = None, timeout: float | None = None
                            ) -> list[grpc.aio.Channel]:
    """``count`` grpc.aio channels to ``target``, each on an HTTP/2 connection of its own (so
    that a server whose workers share the port with SO_REUSEPORT, where the kernel hands each
    connection to one worker, gets them spread), all connected (within ``timeout`` seconds,
    else TimeoutError; the caller closes them: ``await channel.close()``)."""
    channels = [open_aio_channel(target, ca_file=ca_file, server_name=server_name, own_connection=True)
                for _ in range(count)]
    try:
        await asyncio.wait_for(asyncio.gather(*(channel.channel_ready() for channel in channels)), timeout)
    except BaseException:
        await asyncio.gather(*(channel.close() for channel in channels))
        raise
    return channels


async def stream_aio(channel: grpc.aio.Channel, steps: Sequence[Step], *, token: str | None = None,
                     realtime: bool = True, timeout: float | None = None) -> None:
    """One Stream RPC on a grpc.aio channel, each step sent at its time (``realtime``) or at
    once; raises grpc.aio.AioRpcError with the server's status."""
    loop = asyncio.get_running_loop()
    began = loop.time()

    async def events() -> AsyncIterator[pb.StreamEvent]:
        for step in steps:
            if realtime:
                delay = began + step.at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield step.event

    metadata = () if token is None else (("authorization", token),)
    await streaming_pb2_grpc.StreamingStub(channel).Stream(events(), metadata=metadata, timeout=timeout)


def verify(audio: np.ndarray, runs: Sequence[Run], *, tolerance: int = 800) -> list[str]:
    """What is wrong with ``audio`` ((n, 2) int16) against ``runs`` (non-overlapping per
    channel); empty when every run is where it belongs (within ``tolerance`` samples), equal
    sample by sample, and every other sample is silence."""
    problems: list[str] = []
    covered = np.zeros(audio.shape, dtype=bool)
    for index, run in enumerate(runs):
        n = len(run.pcm)
        found = None
        for offset in sorted(range(-tolerance, tolerance + 1), key=abs):
            where = run.start + offset
            if where < 0 or where + n > len(audio):
                continue
            column = audio[where : where + n, run.channel]
            if column[0] == run.pcm[0] and np.array_equal(column, run.pcm):
                found = where
                break
        if found is None:
            problems.append(f"run {index} (channel {run.channel}, {n} samples at {run.start}) not found")
            continue
        covered[found : found + n, run.channel] = True
    stray = np.flatnonzero((audio != 0) & ~covered)
    if len(stray):
        problems.append(f"{len(stray)} samples of audio where silence was expected, first at {stray[0]}")
    return problems
