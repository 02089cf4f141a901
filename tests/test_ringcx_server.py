"""The RingCX gRPC front end end to end: a real grpcio client, over TLS (trustme) and plaintext,
against the real server on 127.0.0.1; every recording read back and compared sample by sample."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile
import trio
import trustme
from google.protobuf.message import DecodeError

from callstream.cli import build_parser, settings_from
from callstream.ringcx import streaming_pb2 as pb
from callstream.ringcx import streaming_pb2_grpc
from callstream.server.ringcx_service import SERVICE, serve_ringcx
from callstream.server.server import Server
from callstream.settings import Settings, SettingsError
from callstream.sim import ringcx_client as client

TIMEOUT = 40


@dataclass
class Running:
    server: Server
    settings: Settings
    target: str


@pytest.fixture
def rsettings(tmp_path: Path) -> Settings:
    # a reorder window of 500 ms: a reader stalled longer than the window (a loaded test machine)
    # moves the audio after it; the holds below are longer than the window
    return Settings(host="127.0.0.1", port=0, output_dir=tmp_path / "recordings", flush_interval=0.2,
                    ringcx_port=0, ringcx_plaintext=True, reorder_window_ms=500)


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    issued = ca.issue_cert("recorder.example.com")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


@asynccontextmanager
async def ringcx_server(settings: Settings) -> AsyncIterator[Running]:
    server = Server(settings)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    async with server.running(), trio.open_nursery() as nursery:
        listener = await nursery.start(serve_ringcx, server, settings)
        yield Running(server, settings, f"127.0.0.1:{listener.port}")
        nursery.cancel_scope.cancel()


async def play(target: str, steps: list[client.Step], *, ca_file: Path | None = None, token: str | None = None,
               realtime: bool = True) -> grpc.StatusCode:
    """Play ``steps`` in a thread with the sync grpcio client; the RPC's status code."""

    def run() -> grpc.StatusCode:
        with client.open_channel(target, ca_file=ca_file, server_name="recorder.example.com") as channel:
            try:
                client.stream(channel, client.paced(steps, realtime=realtime), token=token, timeout=TIMEOUT)
            except grpc.RpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    return await trio.to_thread.run_sync(run)


def finished(output_dir: Path) -> list[tuple[Path, dict]]:
    """(audio path, sidecar) of every finished recording, by name."""
    found = []
    for sidecar in sorted(output_dir.rglob("*.json")):
        data = json.loads(sidecar.read_text())
        if data["status"] != "recording":
            found.append((sidecar.with_name(data["file"]), data))
    return found


def read(path: Path) -> np.ndarray:
    audio, rate = soundfile.read(path, dtype="int16", always_2d=True)
    assert rate == 8000
    return audio


async def test_platform_dialog_over_tls_with_token(rsettings: Settings, certificates) -> None:
    """Caller, agent joining at 1 s, a hold (seq going on), transfer to a second agent; TLS
    with a CA file, a bearer token: the recording matches sample by sample."""
    cert, key, ca_file = certificates
    settings = replace(rsettings, ringcx_plaintext=False, tls_cert=cert, tls_key=key, secret="s3cret")
    script = client.platform_dialog("dlg/../42", seconds=4.0, agent_join=0.5, hold=(1.2, 1.2), transfer=3.0)
    with trio.fail_after(TIMEOUT):
        async with ringcx_server(settings) as running:
            code = await play(running.target, script.steps, ca_file=ca_file, token="Bearer s3cret")
    assert code == grpc.StatusCode.OK
    [(path, sidecar)] = finished(settings.output_dir)
    assert path.name == "dlg_._42.wav" and path.parent.parent == settings.output_dir  # sanitised
    audio = read(path)
    assert client.verify(audio, script.runs) == []
    assert abs(len(audio) - 4.0 * 8000) <= 1600
    assert sidecar["status"] == "complete"
    metadata = sidecar["metadata"]
    assert metadata["dialog"]["ani"] == "+15551230001" and metadata["dialog"]["attributes"] == {"queue": "support"}
    assert metadata["account"]["rc_account_id"] == "rc-1" and metadata["session_id"] == "session-1"
    segments = {s["segment_id"]: s for s in metadata["segments"]}
    assert segments["agent-1"]["participant"]["type"] == "AGENT" and segments["agent-1"]["channel"] == 0
    assert abs(segments["agent-1"]["joined_seconds"] - 0.5) <= 0.1
    assert segments["caller"]["statistics"]["pauses"] == 1
    assert [i["event"] for i in metadata["segment_info"]] == ["HOLD", "UNHOLD"]
    assert abs(metadata["segment_info"][0]["offset_seconds"] - 1.2) <= 0.1
    assert sidecar["channel_map"]["left"].startswith("AGENT")


@pytest.mark.parametrize("token", ["Bearer s3cret", "s3cret", "wrong", None],
                         ids=["bearer", "bare", "wrong", "missing"])
async def test_authorization(rsettings: Settings, token: str | None) -> None:
    settings = replace(rsettings, secret="s3cret")
    script = client.platform_dialog(seconds=0.5, agent_join=0.2, hold=None, transfer=None)
    with trio.fail_after(TIMEOUT):
        async with ringcx_server(settings) as running:
            code = await play(running.target, script.steps, token=token, realtime=False)
            rejected = running.server.statistics().calls_rejected
    if token in ("wrong", None):
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert rejected == 1
        assert not settings.output_dir.exists() or not any(settings.output_dir.rglob("*"))
    else:
        assert code == grpc.StatusCode.OK
        [(path, sidecar)] = finished(settings.output_dir)
        assert sidecar["status"] == "complete" and read(path).any()


def test_tls_is_required_unless_plaintext_is_asked_for(rsettings: Settings, tmp_path: Path, capsys) -> None:
    with pytest.raises(SettingsError, match="--ringcx-plaintext") as refused:
        replace(rsettings, ringcx_plaintext=False)
    assert refused.value.option == "ringcx_port"
    base = ["serve", "--output-dir", str(tmp_path), "--ringcx-port", "10443"]
    with pytest.raises(SystemExit):
        settings_from(build_parser({}).parse_args(base), {})
    assert "--ringcx-port" in capsys.readouterr().err
    settings = settings_from(build_parser({}).parse_args([*base, "--ringcx-plaintext"]), {})
    assert settings.ringcx_port == 10443 and settings.ringcx_plaintext
    assert settings.ringcx_path_template == "{date}/{dialogId}" and settings.ringcx_l16_byte_order == "big"
    environ = {"CALLSTREAM_RINGCX_PORT": "443", "CALLSTREAM_RINGCX_PLAINTEXT": "true"}
    assert settings_from(build_parser(environ).parse_args(base[:3]), environ).ringcx_port == 443
    with pytest.raises(SystemExit):
        settings_from(build_parser({}).parse_args([*base, "--ringcx-plaintext", "--ringcx-path-template", "{x}"]),
                      {})
    assert "--ringcx-path-template" in capsys.readouterr().err


def _chunks(segment: str, seqs: list[int], seed: int) -> Iterator[pb.StreamEvent]:
    for seq in seqs:
        yield pb.StreamEvent(session_id="s", segment_media=pb.SegmentMediaEvent(
            segment_id=segment, audio_content=pb.AudioContent(payload=client.chunk_payload(seed, seq), seq=seq,
                                                               duration=100)))


def _start(segment: str, kind: int, codec: int = pb.PCMU, rate: int = 8000) -> pb.StreamEvent:
    return pb.StreamEvent(session_id="s", segment_start=pb.SegmentStartEvent(
        segment_id=segment, participant=pb.Participant(id=segment, type=kind),  # type: ignore[arg-type]
        audio_format=pb.AudioFormat(codec=codec, rate=rate, ptime=100)))  # type: ignore[arg-type]


def _init(dialog: str) -> pb.StreamEvent:
    return pb.StreamEvent(session_id="s", dialog_init=pb.DialogInitEvent(dialog=pb.Dialog(id=dialog)))


async def test_reordering_duplicates_unknown_segments_and_an_unsupported_codec(rsettings: Settings) -> None:
    """Sent at once: the caller's chunks reordered and repeated, media of a segment before its
    SegmentStart and of one never started, a bot in OPUS (not recorded, said why)."""
    order = [0, 2, 1, 1, 3, 5, 4, 4, 6, 7]
    events = [_init("reorder"), *_chunks("agent", [0, 1], 9), _start("caller", pb.CONTACT),
              *_chunks("caller", order, 1), _start("agent", pb.AGENT), *_chunks("ghost", [0], 3),
              _start("bot", pb.BOT, codec=pb.OPUS, rate=48000), *_chunks("bot", [0, 1], 4),
              *_chunks("agent", [2, 3, 4, 5, 6, 7], 9)]
    steps = [client.Step(0.0, event) for event in events]
    with trio.fail_after(TIMEOUT):
        async with ringcx_server(rsettings) as running:
            assert await play(running.target, steps, realtime=False) == grpc.StatusCode.OK
    [(path, sidecar)] = finished(rsettings.output_dir)
    audio = read(path)
    caller = np.concatenate([client.codec.decode_ulaw(client.chunk_payload(1, k)) for k in range(8)])
    agent = np.concatenate([client.codec.decode_ulaw(client.chunk_payload(9, k)) for k in range(8)])
    runs = [client.Run(1, 0, caller), client.Run(0, 0, agent)]
    assert client.verify(audio, runs, tolerance=800) == []
    segments = {s["segment_id"]: s for s in sidecar["metadata"]["segments"]}
    assert segments["caller"]["statistics"]["duplicates"] == 2
    assert not segments["bot"]["recorded"] and "OPUS" in segments["bot"]["not_recorded_because"]
    assert sidecar["statistics"]["unknown_segment_media"] == 1


async def test_a_malformed_message_is_a_bad_message_and_the_dialog_goes_on(rsettings: Settings) -> None:
    """Bytes that are no StreamEvent, sent between two of the caller's chunks by a client that sends
    raw bytes: counted against --max-bad-messages as a WebSocket call's malformed message; every
    chunk before and after recorded, the dialog complete."""
    garbage = b"\xff\xff\xff"
    with pytest.raises(DecodeError):
        pb.StreamEvent.FromString(garbage)
    messages = [event.SerializeToString() for event in (_init("malformed"), _start("caller", pb.CONTACT))]
    chunks = [event.SerializeToString() for event in _chunks("caller", list(range(6)), 1)]
    messages += [*chunks[:3], garbage, *chunks[3:]]

    def run(target: str) -> grpc.StatusCode:
        with client.open_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            rpc = channel.stream_unary(f"/{SERVICE}/Stream", request_serializer=None, response_deserializer=None)
            try:
                rpc(iter(messages), timeout=TIMEOUT)
            except grpc.RpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    with trio.fail_after(TIMEOUT):
        async with ringcx_server(rsettings) as running:
            assert await trio.to_thread.run_sync(run, running.target) == grpc.StatusCode.OK
    [(path, sidecar)] = finished(rsettings.output_dir)
    assert sidecar["status"] == "complete"
    assert sidecar["statistics"]["bad_messages"] == 1
    caller = np.concatenate([client.codec.decode_ulaw(client.chunk_payload(1, k)) for k in range(6)])
    assert client.verify(read(path), [client.Run(1, 0, caller)], tolerance=800) == []


async def test_cancelled_stream_is_incomplete_with_what_was_received(rsettings: Settings) -> None:
    events = [_init("cancelled"), _start("caller", pb.CONTACT), *_chunks("caller", list(range(5)), 1)]
    release = threading.Event()

    def held() -> Iterator[pb.StreamEvent]:
        yield from events
        release.wait(TIMEOUT)  # the stream stays open until the test cancels it

    with trio.fail_after(TIMEOUT):
        async with ringcx_server(rsettings) as running:
            with client.open_channel(running.target) as channel:
                future = streaming_pb2_grpc.StreamingStub(channel).Stream.future(held())
                while not any(r.front_end == "ringcx" and r.core.frames_received == 5
                              for r in running.server._live):
                    await trio.sleep(0.02)
                future.cancel()
                release.set()
                while running.server.statistics().calls_finished < 1:
                    await trio.sleep(0.02)
    [(path, sidecar)] = finished(rsettings.output_dir)
    assert sidecar["status"] == "incomplete"
    caller = np.concatenate([client.codec.decode_ulaw(client.chunk_payload(1, k)) for k in range(5)])
    assert client.verify(read(path), [client.Run(1, 0, caller)], tolerance=800) == []


async def test_the_file_is_created_at_the_dialog_init_before_any_audio(rsettings: Settings) -> None:
    """The DialogInit names the file: it is created then, not when the first block is cut (whose
    write would wait for the creation, slow while many dialogs start at once)."""
    release = threading.Event()

    def held() -> Iterator[pb.StreamEvent]:
        yield from (_init("early"), _start("caller", pb.CONTACT))
        release.wait(TIMEOUT)  # no audio until the test has seen the file

    with trio.fail_after(TIMEOUT):
        async with ringcx_server(rsettings) as running:
            with client.open_channel(running.target) as channel:
                future = streaming_pb2_grpc.StreamingStub(channel).Stream.future(held())
                try:
                    with trio.fail_after(10):
                        while not list(rsettings.output_dir.rglob("early.json")):
                            await trio.sleep(0.02)
                finally:
                    future.cancel()
                    release.set()
                while running.server.statistics().calls_finished < 1:
                    await trio.sleep(0.02)
    [(_, sidecar)] = finished(rsettings.output_dir)
    assert sidecar["status"] == "incomplete" and sidecar["metadata"]["dialog"]["id"] == "early"


async def test_the_live_sidecar_is_rewritten_when_a_segment_joins_not_before(rsettings: Settings) -> None:
    """The live sidecar, once it lists the caller, stays as it is (the same inode) until another
    segment joins; then it is rewritten. Each rewrite costs a disk thread about 0.6 ms of CPU: one a
    dialog too many was 12 % of a dialog's start and end. (The file is created at the first take,
    which waits for the take grid: with the caller already when its start came with the DialogInit,
    else with no segment and rewritten once the caller's start is taken.)"""
    agent_joins, release = threading.Event(), threading.Event()

    def held() -> Iterator[pb.StreamEvent]:
        yield from (_init("once"), _start("caller", pb.CONTACT), *_chunks("caller", [0, 1, 2], 1))
        agent_joins.wait(TIMEOUT)
        yield from (_start("agent", pb.AGENT), *_chunks("agent", [0], 2))
        release.wait(TIMEOUT)

    def live() -> tuple[int, list[str]] | None:
        """(inode, segment ids) of the live sidecar, None before it exists."""
        paths = list(rsettings.output_dir.rglob("once.json"))
        if not paths:
            return None
        # FileNotFoundError: between a rewrite's rename and our open
        with contextlib.suppress(FileNotFoundError), paths[0].open() as file:
            data = json.load(file)
            return os.fstat(file.fileno()).st_ino, [s["segment_id"] for s in data["metadata"]["segments"]]
        return None

    with trio.fail_after(TIMEOUT):
        async with ringcx_server(rsettings) as running:
            with client.open_channel(running.target) as channel:
                future = streaming_pb2_grpc.StreamingStub(channel).Stream.future(held())
                try:
                    while (first := live()) is None or first[1] != ["caller"]:
                        await trio.sleep(0.005)
                    for _ in range(100):  # 1 s: five flush intervals, and their ticks
                        await trio.sleep(0.01)
                        assert live() == first, "the live sidecar was rewritten although nothing changed"
                    agent_joins.set()
                    while (now := live()) is None or now[1] != ["caller", "agent"]:
                        await trio.sleep(0.01)
                    assert now[0] != first[0]
                finally:
                    agent_joins.set()
                    future.cancel()
                    release.set()
                while running.server.statistics().calls_finished < 1:
                    await trio.sleep(0.02)
    [(_, sidecar)] = finished(rsettings.output_dir)
    assert [s["segment_id"] for s in sidecar["metadata"]["segments"]] == ["caller", "agent"]


async def _wait_live(running: Running, count: int) -> None:
    while sum(1 for r in running.server._live if r.front_end == "ringcx" and r.core.frames_received)\
            < count:
        await trio.sleep(0.02)


async def test_max_calls_counts_dialogs_and_drain_ends_them_finalised(rsettings: Settings) -> None:
    """--max-calls 1: a second dialog gets RESOURCE_EXHAUSTED; a drain ends the live one
    (UNAVAILABLE, its recording finalised with its audio), and refuses new ones."""
    settings = replace(rsettings, max_calls=1)
    events = [_init("drained"), _start("caller", pb.CONTACT), *_chunks("caller", list(range(5)), 1)]
    release = threading.Event()

    def held() -> Iterator[pb.StreamEvent]:
        yield from events
        release.wait(TIMEOUT)

    with trio.fail_after(TIMEOUT):
        async with ringcx_server(settings) as running:
            with client.open_channel(running.target) as channel:
                future = streaming_pb2_grpc.StreamingStub(channel).Stream.future(held())
                await _wait_live(running, 1)
                assert running.server.readiness() == "1 live calls (--max-calls)"  # /readyz: not ready
                while True:  # a tick hands the dialog's first (partial) block to the disk: levels known
                    [view] = running.server.live_calls()["calls"]  # /calls.json and the page at /
                    if view["caller_dbfs"] is not None:
                        break
                    await trio.sleep(0.05)
                assert (view["call_id"], view["session_id"]) == ("drained", "s")
                assert view["caller_dbfs"] > -96 and view["agent_dbfs"] == -96
                second = client.platform_dialog("second", seconds=0.3, hold=None, transfer=None, agent_join=0.1)
                assert await play(running.target, second.steps, realtime=False) == grpc.StatusCode.RESOURCE_EXHAUSTED
                await running.server.drain(0.2)
                code = await trio.to_thread.run_sync(lambda: future.exception(TIMEOUT).code())
                release.set()
                assert code == grpc.StatusCode.UNAVAILABLE
                assert await play(running.target, second.steps, realtime=False) == grpc.StatusCode.UNAVAILABLE
            text = running.server.metrics.render().decode()
    assert 'callstream_front_end_calls_total{event="started",front_end="ringcx"} 1.0' in text
    assert 'callstream_front_end_calls_total{event="rejected",front_end="ringcx"} 2.0' in text
    assert 'callstream_front_end_calls_total{event="incomplete",front_end="ringcx"} 1.0' in text
    assert 'callstream_front_end_live_calls{front_end="ringcx"} 0.0' in text
    assert 'callstream_calls_rejected_total{reason="capacity"} 1.0' in text
    assert "callstream_media_messages_total 5.0" in text  # the drained dialog's five chunks
    assert "callstream_media_bytes_total 4000.0" in text
    [(path, sidecar)] = finished(settings.output_dir)
    assert sidecar["status"] == "incomplete" and path.name == "drained.wav"
    caller = np.concatenate([client.codec.decode_ulaw(client.chunk_payload(1, k)) for k in range(5)])
    assert client.verify(read(path), [client.Run(1, 0, caller)]) == []
    assert not list(settings.output_dir.rglob("*.partial.*"))


async def test_idle_dialog_is_ended_and_second_stream_of_a_dialog_gets_a_suffix(rsettings: Settings) -> None:
    settings = replace(rsettings, idle_timeout=0.3)
    events = [_init("same"), _start("caller", pb.CONTACT), *_chunks("caller", [0, 1], 1)]
    release = threading.Event()

    def held() -> Iterator[pb.StreamEvent]:
        yield from events
        release.wait(TIMEOUT)

    with trio.fail_after(TIMEOUT):
        async with ringcx_server(settings) as running:
            with client.open_channel(running.target) as channel:
                future = streaming_pb2_grpc.StreamingStub(channel).Stream.future(held())
                code = await trio.to_thread.run_sync(lambda: future.exception(TIMEOUT).code())
                release.set()
            assert code == grpc.StatusCode.UNAVAILABLE
            steps = [client.Step(0.0, event) for event in events]
            assert await play(running.target, steps, realtime=False) == grpc.StatusCode.OK
    names = sorted(path.name for path, _ in finished(settings.output_dir))
    assert names == ["same-2.wav", "same.wav"]
    sidecars = {path.name: data for path, data in finished(settings.output_dir)}
    assert sidecars["same.wav"]["status"] == "incomplete" and sidecars["same-2.wav"]["status"] == "complete"
    assert (sidecars["same.wav"]["stream"], sidecars["same-2.wav"]["stream"]) == (1, 2)
    assert sidecars["same.wav"]["root"] == sidecars["same-2.wav"]["root"] == "same"


async def test_simulate_ringcx_plays_and_verifies(rsettings: Settings, certificates, capsys) -> None:
    """`callstream simulate --ringcx` over TLS with a CA file and a token, two dialogs at once."""
    cert, key, ca_file = certificates
    settings = replace(rsettings, ringcx_plaintext=False, tls_cert=cert, tls_key=key, secret="tok")
    with trio.fail_after(TIMEOUT):
        async with ringcx_server(settings) as running:
            args = build_parser({}).parse_args([
                "simulate", "--ringcx", "--ringcx-target", running.target, "--cafile", str(ca_file),
                "--server-name", "recorder.example.com", "--token", "Bearer tok", "--seconds", "4",
                "--calls", "2", "--verify", str(settings.output_dir)])
            assert await trio.to_thread.run_sync(args.command, args) == 0
    assert "2 of 2 dialogs ok" in capsys.readouterr().out
    assert sorted(path.name for path, _ in finished(settings.output_dir)) == ["ringcx-sim-1.wav", "ringcx-sim-2.wav"]


async def test_message_over_the_size_limit_keeps_what_was_received(rsettings: Settings) -> None:
    settings = replace(rsettings, max_message_bytes=4096)
    huge = pb.StreamEvent(session_id="s", segment_media=pb.SegmentMediaEvent(
        segment_id="caller", audio_content=pb.AudioContent(payload=bytes(10_000), seq=5, duration=1250)))
    events = [_init("too-big"), _start("caller", pb.CONTACT), *_chunks("caller", list(range(5)), 1), huge]
    with trio.fail_after(TIMEOUT):
        async with ringcx_server(settings) as running:
            steps = [client.Step(0.0, event) for event in events]
            assert await play(running.target, steps, realtime=False) == grpc.StatusCode.RESOURCE_EXHAUSTED
    [(path, sidecar)] = finished(settings.output_dir)
    assert sidecar["status"] == "incomplete"
    caller = np.concatenate([client.codec.decode_ulaw(client.chunk_payload(1, k)) for k in range(5)])
    assert client.verify(read(path), [client.Run(1, 0, caller)]) == []
