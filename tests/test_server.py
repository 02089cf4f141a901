"""End to end: a real server on 127.0.0.1, real WebSocket clients, real files read back."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import trio

from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start, encode_stop
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from conftest import (
    RunningServer,
    call_messages,
    expected_stereo,
    metadata,
    on_every_transport,
    random_frames,
    read_audio,
    recordings,
    send_all,
    start_server,
    wait_for_calls,
)
from wsclient import connect

P, C = Perspective.PARTICIPANT, Perspective.CONFERENCE
TIMEOUT = 60  # seconds: a hang fails the test instead of blocking the suite


def in_order(agent: list[bytes], caller: list[bytes]) -> list[tuple[Perspective, int, bytes]]:
    media = []
    for seq, (a, c) in enumerate(zip(agent, caller, strict=True), start=1):
        media += [(P, seq, a), (C, seq, c)]
    return media


@on_every_transport
async def test_one_call_in_order_is_sample_exact(server: RunningServer) -> None:
    rng = np.random.default_rng(1)
    agent, caller = random_frames(rng, 120), random_frames(rng, 120)
    with trio.fail_after(TIMEOUT):
        await send_all(server.url, call_messages(metadata("call-1"), in_order(agent, caller)))
        await wait_for_calls(server, 1)
    [(path, sidecar)] = recordings(server.settings.output_dir)
    np.testing.assert_array_equal(read_audio(path), expected_stereo(agent, caller))
    assert sidecar["status"] == "complete"
    assert sidecar["callId"] == "call-1"
    assert path.name == "call-1-1.wav"
    assert not list(server.settings.output_dir.rglob("*.partial.*"))


def perturbed(
    rng: np.random.Generator, frames: list[bytes], perspective: Perspective
) -> tuple[list[tuple[float, Perspective, int, bytes]], list[bytes | None]]:
    """Drop ~3 %, duplicate ~3 %, and delay every frame by up to 5 frames (inside the 10-frame window).
    Returns (arrivals keyed by arrival time, the expected frames with None where dropped)."""
    arrivals, expected = [], []
    last = len(frames)
    for seq, payload in enumerate(frames, start=1):
        dropped = 2 < seq < last and rng.random() < 0.03
        expected.append(None if dropped else payload)
        if dropped:
            continue
        arrivals.append((seq + rng.uniform(0, 5), perspective, seq, payload))
        if rng.random() < 0.03:
            arrivals.append((seq + rng.uniform(0, 5), perspective, seq, payload))
    return arrivals, expected


async def test_fifty_concurrent_calls_with_reorder_duplicates_and_drops(server: RunningServer) -> None:
    rng = np.random.default_rng(50)
    calls = []
    for index in range(50):
        agent, caller = random_frames(rng, 100), random_frames(rng, 100)
        agent_arrivals, agent_expected = perturbed(rng, agent, P)
        caller_arrivals, caller_expected = perturbed(rng, caller, C)
        arrivals = sorted(agent_arrivals + caller_arrivals, key=lambda item: item[0])
        media = [(p, seq, payload) for _, p, seq, payload in arrivals]
        calls.append((f"conc-{index}", media, expected_stereo(agent_expected, caller_expected)))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for call_id, media, _ in calls:
                nursery.start_soon(send_all, server.url, call_messages(metadata(call_id), media))
        await wait_for_calls(server, len(calls))

    found = {sidecar["callId"]: (path, sidecar) for path, sidecar in recordings(server.settings.output_dir)}
    assert len(found) == len(calls)
    for call_id, _, expected in calls:
        path, sidecar = found[call_id]
        np.testing.assert_array_equal(read_audio(path), expected, err_msg=call_id)
        assert sidecar["status"] == "complete"


async def send_then_drop(url: str, messages: list[str], *, query: dict[str, str]) -> None:
    """Handshake, send, then close the TCP connection without a WebSocket close frame."""
    client = await connect(url, "/" + build_query(query))
    for message in messages:
        await client.send(message)
    await client.drop()


async def test_socket_dropped_without_stop_keeps_everything_received(server: RunningServer) -> None:
    rng = np.random.default_rng(3)
    agent, caller = random_frames(rng, 75), random_frames(rng, 75)
    messages = call_messages(metadata("dropped"), in_order(agent, caller), stops=0)
    with trio.fail_after(TIMEOUT):
        await send_then_drop(server.url, messages, query=metadata("dropped"))
        await wait_for_calls(server, 1)
    [(path, sidecar)] = recordings(server.settings.output_dir)
    np.testing.assert_array_equal(read_audio(path), expected_stereo(agent, caller))
    assert sidecar["status"] == "incomplete"


async def test_one_stop_then_close_is_incomplete_two_stops_complete(server: RunningServer) -> None:
    rng = np.random.default_rng(4)
    agent, caller = random_frames(rng, 20), random_frames(rng, 20)
    with trio.fail_after(TIMEOUT):
        await send_all(server.url, call_messages(metadata("one-stop"), in_order(agent, caller), stops=1))
        await send_all(server.url, call_messages(metadata("two-stops"), in_order(agent, caller), stops=2))
        await wait_for_calls(server, 2)
    status = {sidecar["callId"]: sidecar["status"] for _, sidecar in recordings(server.settings.output_dir)}
    assert status == {"one-stop": "incomplete", "two-stops": "complete"}


async def test_audio_content_type_and_garbage_in_the_middle(server: RunningServer) -> None:
    rng = np.random.default_rng(5)
    agent, caller = random_frames(rng, 60), random_frames(rng, 60)
    start = json.dumps(
        {"event": "Start", "metadata": {"callId": 555, "sessionId": 9, "audioContentType": "audio/x-mulaw",
                                        "sampleRateHertz": 8000}}
    )
    media = [encode_media(p, seq, payload) for p, seq, payload in in_order(agent, caller)]
    garbage = ["not json", "[1,2]", '{"event": "Media", "perspective": "Participant", "sequenceId": "x", '
               '"media": "AAAA"}', '{"event": "Media", "perspective": "Participant", "sequenceId": "3", '
               '"media": "!!!"}', '{"event": "Dance"}', "{}"]
    messages = [encode_connected(), start, *media[:40], *garbage, *media[40:]]
    messages += [encode_stop(1.0, "2026-11-25T00:00:00Z")] * 2
    with trio.fail_after(TIMEOUT):
        await send_all(server.url, messages)
        await wait_for_calls(server, 1)
    [(path, sidecar)] = recordings(server.settings.output_dir)
    np.testing.assert_array_equal(read_audio(path), expected_stereo(agent, caller))
    assert sidecar["callId"] == "555"
    assert sidecar["sessionId"] == "9"
    assert sidecar["status"] == "complete"
    assert sidecar["statistics"]["bad_messages"] == 5


async def test_media_before_start_uses_query_ids_and_start_completes_metadata(server: RunningServer) -> None:
    rng = np.random.default_rng(6)
    agent, caller = random_frames(rng, 150), random_frames(rng, 150)
    media = [encode_media(p, seq, payload) for p, seq, payload in in_order(agent, caller)]
    start = encode_start({"callId": "early", "sessionId": "4", "agentId": "77", "dnis": "5550100"})
    messages = [encode_connected(), *media[:100], start, *media[100:]]
    messages += [encode_stop(1.0, "2026-11-25T00:00:00Z")] * 2
    with trio.fail_after(TIMEOUT):
        await send_all(server.url, messages, query={"call_id": "early", "SessionID": "4"})
        await wait_for_calls(server, 1)
    [(path, sidecar)] = recordings(server.settings.output_dir)
    np.testing.assert_array_equal(read_audio(path), expected_stereo(agent, caller))
    assert path.name == "early-4.wav"
    assert sidecar["metadata"]["fields"]["agentId"] == "77"
    assert sidecar["metadata"]["query"]["mapped"]["callId"] == "early"


async def test_hostile_call_id_stays_inside_output_dir(server: RunningServer) -> None:
    rng = np.random.default_rng(7)
    agent, caller = random_frames(rng, 10), random_frames(rng, 10)
    with trio.fail_after(TIMEOUT):
        await send_all(server.url, call_messages(metadata("../../x", "../y"), in_order(agent, caller)))
        await wait_for_calls(server, 1)
    root = server.settings.output_dir.resolve()
    files = [p for p in root.parent.rglob("*") if p.is_file()]
    assert files, "nothing recorded"
    for file in files:
        assert file.resolve().is_relative_to(root), file


async def test_second_stream_of_same_call_gets_a_sibling(server: RunningServer) -> None:
    rng = np.random.default_rng(8)
    agent, caller = random_frames(rng, 10), random_frames(rng, 10)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(send_all, server.url, call_messages(metadata("twice"), in_order(agent, caller)))
        await wait_for_calls(server, 2)
    found = recordings(server.settings.output_dir)
    assert sorted(path.name for path, _ in found) == ["twice-1-2.wav", "twice-1.wav"]
    for path, _ in found:
        np.testing.assert_array_equal(read_audio(path), expected_stereo(agent, caller))


async def test_flac_and_mulaw_formats(nursery: trio.Nursery, settings) -> None:
    rng = np.random.default_rng(9)
    agent, caller = random_frames(rng, 50), random_frames(rng, 50)
    for fmt, suffix in (("flac", ".flac"), ("mulaw-wav", ".wav")):
        fmt_settings = replace(settings, format=fmt, output_dir=settings.output_dir / fmt)
        running = await start_server(nursery, fmt_settings)
        with trio.fail_after(TIMEOUT):
            await send_all(running.url, call_messages(metadata(f"fmt-{fmt}"), in_order(agent, caller)))
            await wait_for_calls(running, 1)
        [(path, sidecar)] = recordings(fmt_settings.output_dir)
        assert path.suffix == suffix
        assert sidecar["format"] == fmt
        np.testing.assert_array_equal(read_audio(path), expected_stereo(agent, caller))


async def test_connection_wide_sequence_ids_are_ordered_without_gaps(server: RunningServer, caplog) -> None:
    rng = np.random.default_rng(16)
    agent, caller = random_frames(rng, 100), random_frames(rng, 100)
    media = []
    for index, (a, c) in enumerate(zip(agent, caller, strict=True)):
        media += [(P, 2 * index + 1, a), (C, 2 * index + 2, c)]  # one counter across both sides
    with trio.fail_after(TIMEOUT):
        await send_all(server.url, call_messages(metadata("conn-wide"), media))
        await wait_for_calls(server, 1)
    [(path, sidecar)] = recordings(server.settings.output_dir)
    np.testing.assert_array_equal(read_audio(path), expected_stereo(agent, caller))
    assert sidecar["statistics"]["sequence_mode"] == "connection"
    warnings = [r for r in caplog.records if "across the connection" in r.getMessage()]
    assert len(warnings) == 1
