"""Admission control (--max-calls), drain and idle timeout against a real server."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import trio

from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from callstream.errors import RecordingError
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


async def test_every_call_that_created_a_recording_finishes_it_whatever_its_start(
    server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12, bug 2: Media-only calls (ids in the query), a Start refused with 1003 and a
    Start that does not parse left `NAME.partial.wav`, a `recording` sidecar, and the file's lock
    and descriptors held until a garbage collection: the recorder decided whether to finish
    before the disk writer had created the file. The creation is slowed here (a slow disk) so
    that it always comes after the end of the call. Seen failing before the fix (3 partial
    files left, 'recorded to None')."""
    from callstream.storage.recording import Recording
    from callstream.storage.recovery import recover_directory

    create = Recording.create.__func__  # type: ignore[attr-defined]

    def slow(cls: type[Recording], *args: object, **kwargs: object) -> Recording:
        import time

        time.sleep(0.3)  # in the disk writer's thread
        return create(cls, *args, **kwargs)

    monkeypatch.setattr(Recording, "create", classmethod(slow))
    frames = random_frames(np.random.default_rng(16), 30)
    codes: dict[str, int | None] = {}

    async def call(call_id: str, start: str | None) -> None:
        client = await open_call(server.url, call_id)
        await client.send(encode_connected())
        for seq, frame in enumerate(frames, 1):
            for perspective in Perspective:
                await client.send(encode_media(perspective, seq, frame))
        if start is not None:
            await client.send(start)
        if call_id == "refused":
            with pytest.raises(Closed) as closed:
                await client.receive()
            codes[call_id] = closed.value.code
        await client.close()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "media-only", None)
            nursery.start_soon(call, "refused", encode_start(metadata("refused"), sample_rate=16000))
            nursery.start_soon(call, "unparsable", '{"event":"Start","metadata":[1,2')
        await wait_for_calls(server, 3)
    output = server.settings.output_dir
    assert codes == {"refused": 1003}
    assert not list(output.rglob("*.partial.*"))
    found = {sidecar["callId"]: (path, sidecar) for path, sidecar in recordings(output)}
    assert sorted(found) == ["media-only", "refused", "unparsable"]
    for path, sidecar in found.values():
        assert sidecar["status"] == "incomplete"
        np.testing.assert_array_equal(read_audio(path), expected_stereo(frames, frames))
    assert recover_directory(output) == []  # nothing left unfinished, no lock held
    assert "recorded to None" not in caplog.text


async def test_close_1000_comes_after_the_recording_is_finished(
    server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: the close was sent before the recording was finished. When the platform sees
    1000, the file and its final sidecar are there. Seen failing before the fix (the close came
    first: no final file yet when the client saw 1000)."""
    from callstream.engagevoice.encoding import encode_stop
    from callstream.storage.recording import Recording

    finish = Recording.finish

    def slow_finish(self: Recording, *args: object, **kwargs: object):
        import time

        time.sleep(0.3)
        return finish(self, *args, **kwargs)  # type: ignore[arg-type]

    frames = random_frames(np.random.default_rng(17), 50)
    monkeypatch.setattr(Recording, "finish", slow_finish)
    with trio.fail_after(TIMEOUT):
        client = await open_call(server.url, "safe")
        await client.send(encode_connected())
        await client.send(encode_start(metadata("safe")))
        for seq, frame in enumerate(frames, 1):
            for perspective in Perspective:
                await client.send(encode_media(perspective, seq, frame))
        for _ in range(2):
            await client.send(encode_stop(1.0, "2026-12-06T00:00:00Z"))
        with pytest.raises(Closed) as closed:
            await client.receive()
        [(path, sidecar)] = recordings(server.settings.output_dir)  # at once, not after a wait
        await client.close()
    assert closed.value.code == 1000
    assert sidecar["status"] == "complete" and path.exists()
    np.testing.assert_array_equal(read_audio(path), expected_stereo(frames, frames))


async def test_a_recording_that_cannot_be_finished_is_closed_1011_and_ends_failed_once_there_is_space(
    server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both Stops came, but the final sidecar cannot be written (a full disk): the platform is
    told 1011, not 1000 (seen failing before the fix: 1000, sent before finishing). The
    recording is left partial beside NAME.failed, and the server tries again: once there is
    space the sidecar says `failed` and the file has its final name (seen failing before the
    retry: still partial; see test_finish_crash for the next start's recovery)."""
    from callstream.engagevoice.encoding import encode_stop
    from callstream.storage import recording as recording_module

    write = recording_module.write_sidecar

    def full_disk(path, data, **options):  # the live sidecar goes through; the final one not
        if data.get("status") != recording_module.RECORDING:
            raise RecordingError(f"cannot write {path}: No space left on device")
        write(path, data, **options)

    monkeypatch.setattr(recording_module, "write_sidecar", full_disk)
    assert server.server._disk is not None
    server.server._disk.retry_interval = 0.1
    frames = random_frames(np.random.default_rng(18), 50)
    output = server.settings.output_dir
    with trio.fail_after(TIMEOUT):
        client = await open_call(server.url, "full")
        await client.send(encode_connected())
        await client.send(encode_start(metadata("full")))
        for seq, frame in enumerate(frames, 1):
            for perspective in Perspective:
                await client.send(encode_media(perspective, seq, frame))
        for _ in range(2):
            await client.send(encode_stop(1.0, "2026-12-06T00:00:00Z"))
        with pytest.raises(Closed) as closed:
            await client.receive()
        await client.close()
        await wait_for_calls(server, 1)
        [mark] = list(output.rglob("*.failed"))  # for recovery, if the server stops first
        await trio.sleep(0.3)  # a few retries on the full disk
        assert list(output.rglob("*.partial.wav"))
        monkeypatch.setattr(recording_module, "write_sidecar", write)  # space again
        while list(output.rglob("*.partial.wav")):
            await trio.sleep(0.05)
    assert closed.value.code == 1011
    [(path, sidecar)] = recordings(output)
    assert sidecar["status"] == "failed" and not mark.exists()
    np.testing.assert_array_equal(read_audio(path), expected_stereo(frames, frames))


async def test_a_drained_call_records_the_audio_already_in_its_socket(nursery, settings) -> None:
    """Read coalescing leaves up to a read interval of audio unread in the socket (here: 4 s). A
    drain that stops the call meanwhile must record it too: it reached us. (The maximum duration
    and the idle timeout stop a call the same way, `CallRecorder.stop`.)"""
    running = await start_server(nursery, replace(settings, read_interval=4.0, flush_interval=10.0))
    frames = random_frames(np.random.default_rng(12), 60)
    with trio.fail_after(TIMEOUT):
        client = await open_call(running.url, "buffered")
        await client.send(encode_connected())
        await client.send(encode_start(metadata("buffered")))
        for seq, frame in enumerate(frames, 1):
            for perspective in Perspective:
                await client.send(encode_media(perspective, seq, frame))
        # on loopback the frames are in the server's socket now; its reader waits for its tick
        await running.server.drain(0)
        with pytest.raises(Closed) as closed:
            await client.receive()
        await client.close()
        await wait_for_calls(running, 1)
    assert closed.value.code == 1001
    [(path, sidecar)] = recordings(running.settings.output_dir)
    assert sidecar["status"] == "incomplete"
    np.testing.assert_array_equal(read_audio(path), expected_stereo(frames, frames))
