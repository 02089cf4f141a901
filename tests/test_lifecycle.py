"""Admission control (--max-calls), drain and idle timeout against a real server."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import trio

from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start
from callstream.engagevoice.query import build_query
from callstream.events import Perspective
from conftest import (
    expect_rejection,
    expected_stereo,
    metadata,
    random_frames,
    read_audio,
    recordings,
    start_server,
    wait_for_calls,
)
from wsclient import Closed, WsClient, connect

TIMEOUT = 30


async def open_call(url: str, call_id: str) -> WsClient:
    return await connect(url, "/" + build_query(metadata(call_id)))


async def stream_until_closed(client: WsClient, frames: list[bytes], sent: list[bytes]) -> int | None:
    """Send Connected, Start and frames (both sides) until the server closes; returns its close code."""
    code: list[int | None] = []

    async def watch(cancel_scope: trio.CancelScope) -> None:
        try:
            while True:
                await client.receive()
        except Closed as closed:
            code.append(closed.code)
        cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        await client.send(encode_connected())
        await client.send(encode_start(metadata("live")))
        try:
            for seq, frame in enumerate(frames, 1):
                for perspective in Perspective:
                    await client.send(encode_media(perspective, seq, frame))
                sent.append(frame)
                await trio.sleep(0.002)
        except Closed:
            pass
        await trio.sleep_forever()
    await client.close()
    return code[0] if code else None


async def test_max_calls_rejects_with_503_and_retry_after(nursery, settings) -> None:
    running = await start_server(nursery, replace(settings, max_calls=2))
    with trio.fail_after(TIMEOUT):
        first, second = await open_call(running.url, "a"), await open_call(running.url, "b")
        rejection = await expect_rejection(running.url)
        assert rejection.status == 503
        assert rejection.headers["retry-after"] == "5"
        await first.close()
        await second.close()
        await wait_for_calls(running, 2)
        third = await open_call(running.url, "d")  # capacity is back
        await third.close()
    assert running.server.statistics().calls_rejected == 1


async def test_drain_refuses_new_calls_then_closes_live_ones_1001_and_finalises(nursery, settings) -> None:
    running = await start_server(nursery, settings)
    frames = random_frames(np.random.default_rng(11), 5000)
    sent: list[bytes] = []
    codes: list[int | None] = []

    async def live_call() -> None:
        codes.append(await stream_until_closed(await open_call(running.url, "live"), frames, sent))

    with trio.fail_after(TIMEOUT):
        nursery.start_soon(live_call)
        while len(sent) < 100:
            await trio.sleep(0.01)
        async with trio.open_nursery() as inner:
            inner.start_soon(running.server.drain, 0.3)
            await trio.sleep(0.05)
            assert (await expect_rejection(running.url)).status == 503
        await wait_for_calls(running, 1)
        while not codes:
            await trio.sleep(0.01)
    assert codes == [1001]
    [(path, sidecar)] = recordings(running.settings.output_dir)
    assert sidecar["status"] == "incomplete"
    assert not list(running.settings.output_dir.rglob("*.partial.*"))
    audio = read_audio(path)
    # everything the server took in is there, in order; the client may have sent a little more. The
    # stop may fall between the two perspectives' copies of the last frame, so that one may be silence
    # on one side (padding at the end), never anything else.
    received = len(audio) // 160
    assert 100 <= received <= len(sent)
    exact = (received - 1) * 160
    np.testing.assert_array_equal(audio[:exact], expected_stereo(sent[: received - 1], sent[: received - 1]))
    last = expected_stereo([sent[received - 1]], [sent[received - 1]])
    silence = expected_stereo([None], [None])
    for channel in (0, 1):
        tail = audio[exact:, channel]
        assert np.array_equal(tail, last[:, channel]) or np.array_equal(tail, silence[:, channel])


async def test_idle_call_is_finalised_and_closed_1001(nursery, settings) -> None:
    running = await start_server(nursery, replace(settings, idle_timeout=0.5, flush_interval=0.1))
    with trio.fail_after(TIMEOUT):
        client = await open_call(running.url, "idle")
        await client.send(encode_connected())
        await client.send(encode_start(metadata("idle")))
        for perspective in Perspective:
            await client.send(encode_media(perspective, 1, b"\x10" * 160))
        with pytest.raises(Closed) as closed:
            await client.receive()
        await client.close()
        assert closed.value.code == 1001
        await wait_for_calls(running, 1)
    [(_, sidecar)] = recordings(running.settings.output_dir)
    assert sidecar["status"] == "incomplete"
    assert sidecar["frames"] == 160


async def test_cancelling_the_server_still_finalises_live_recordings(settings) -> None:
    frames = random_frames(np.random.default_rng(15), 150)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as server_nursery:
            running = await start_server(server_nursery, settings)
            client = await open_call(running.url, "cut")
            await client.send(encode_connected())
            await client.send(encode_start(metadata("cut")))
            for seq, frame in enumerate(frames, 1):
                for perspective in Perspective:
                    await client.send(encode_media(perspective, seq, frame))
            while running.server.statistics().live_calls < 1:
                await trio.sleep(0.01)
            await trio.sleep(0.3)
            server_nursery.cancel_scope.cancel()
        await client.drop()
    [(path, sidecar)] = recordings(settings.output_dir)
    assert sidecar["status"] == "incomplete"
    assert not list(settings.output_dir.rglob("*.partial.*"))
    audio = read_audio(path)
    held = len(audio) // 160
    np.testing.assert_array_equal(audio, expected_stereo(frames[:held], frames[:held]))
