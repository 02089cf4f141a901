"""A disk error under one call closes that call with 1011; other calls and the server go on."""

from __future__ import annotations

import errno
import multiprocessing
import os
from dataclasses import replace

import numpy as np
import pytest
import trio

from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from callstream.errors import RecordingError
from callstream.storage.recording import Recording
from callstream.storage.wavbatch import AppendBatch
from conftest import (
    RunningServer,
    call_messages,
    expect_rejection,
    expected_stereo,
    metadata,
    random_frames,
    read_audio,
    recordings,
    send_all,
    start_server,
    wait_for_calls,
)
from wsclient import Closed, connect

TIMEOUT = 30


@pytest.fixture(params=["kernel", "python"])
def failing_disk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes of recordings whose name starts with 'doomed' fail as a full disk would.

    "kernel": once created, the audio file's descriptor is /dev/full's, so every write and
    pwrite gets ENOSPC from the kernel, on the batched C path and the Python one alike.
    "python": `Recording.write` raises and batched appends are off (the path a build without
    the C extension, or FLAC, takes)."""
    if request.param == "kernel":
        create = Recording.create.__func__  # type: ignore[attr-defined]

        def doomed(cls: type[Recording], *args: object, **kwargs: object) -> Recording:
            recording = create(cls, *args, **kwargs)
            if recording.name.startswith("doomed"):
                full = os.open("/dev/full", os.O_WRONLY)
                os.dup2(full, recording._sink._writer.fileno())  # type: ignore[attr-defined]
                os.close(full)
            return recording

        monkeypatch.setattr(Recording, "create", classmethod(doomed))
        return
    write = Recording.write

    def faulty(self: Recording, left: bytes, right: bytes) -> None:
        if self.name.startswith("doomed"):
            raise RecordingError(f"cannot write {self.partial_path}: {errno.errorcode[errno.ENOSPC]}")
        write(self, left, right)

    monkeypatch.setattr(Recording, "write", faulty)
    monkeypatch.setattr(Recording, "plan", lambda self, left, right: None)


async def test_disk_error_closes_only_that_call_with_1011(server: RunningServer, failing_disk: None) -> None:
    rng = np.random.default_rng(13)
    good = random_frames(rng, 200)
    media = [(p, seq, f) for seq, f in enumerate(good, 1) for p in Perspective]
    codes: list[int | None] = []

    async def doomed_call() -> None:
        client = await connect(server.url, "/" + build_query(metadata("doomed")))
        messages = call_messages(metadata("doomed"), media, stops=0)
        try:
            for message in messages:
                await client.send(message)
            while True:
                await client.receive()
        except Closed as closed:
            codes.append(closed.code)
        await client.close()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(doomed_call)
            nursery.start_soon(send_all, server.url, call_messages(metadata("healthy"), media))
        await wait_for_calls(server, 2)
        # the server still serves
        await send_all(server.url, call_messages(metadata("after"), media[:20]))
        await wait_for_calls(server, 3)
    assert codes == [1011]
    found = {sidecar["callId"]: (path, sidecar) for path, sidecar in recordings(server.settings.output_dir)}
    assert found["doomed"][1]["status"] == "failed"
    for call_id, frames in (("healthy", good), ("after", good[:10])):
        path, sidecar = found[call_id]
        assert sidecar["status"] == "complete"
        np.testing.assert_array_equal(read_audio(path), expected_stereo(frames, frames))


async def test_unwritable_output_directory_fails_the_call_not_the_server(nursery, settings) -> None:
    running = await start_server(nursery, replace(settings, path_template="blocked/{callId}"))
    # A file where the call's directory must go: fails for root too, which ignores permissions.
    (running.settings.output_dir / "blocked").write_text("not a directory")
    frames = random_frames(np.random.default_rng(14), 150)
    media = [(p, seq, f) for seq, f in enumerate(frames, 1) for p in Perspective]
    with trio.fail_after(TIMEOUT):
        client = await connect(running.url, "/")
        with pytest.raises(Closed) as closed:
            for message in call_messages(metadata("blocked-call"), media, stops=0):
                await client.send(message)
            while True:
                await client.receive()
        await client.close()
        await wait_for_calls(running, 1)
        (running.settings.output_dir / "blocked").unlink()
        await send_all(running.url, call_messages(metadata("next"), media))
        await wait_for_calls(running, 2)
    assert closed.value.code == 1011
    [(path, sidecar)] = recordings(running.settings.output_dir)
    assert sidecar["callId"] == "next"
    np.testing.assert_array_equal(read_audio(path), expected_stereo(frames, frames))


async def test_a_hung_disk_fails_the_waiting_call_refuses_new_ones_and_recovers(
    nursery, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write hangs (a dead NFS server) until released: the call whose lane is full is
    closed with 1011 after --disk-stall-timeout instead of waiting forever, new calls are
    refused with 503 and /readyz says why; once the disk is back, calls are recorded again."""
    import threading

    disk = threading.Event()
    run = AppendBatch.run

    def hung(self: AppendBatch) -> None:
        assert disk.wait(TIMEOUT)
        run(self)

    monkeypatch.setattr(AppendBatch, "run", hung)
    running = await start_server(nursery, replace(settings, disk_stall_timeout=1.0, write_queue_blocks=1))
    flag = running.server._disk_flag = multiprocessing.Value("b", 0)  # what a worker tells its supervisor
    frames = random_frames(np.random.default_rng(15), 500)
    media = [(p, seq, f) for seq, f in enumerate(frames, 1) for p in Perspective]
    with trio.fail_after(TIMEOUT):
        client = await connect(running.url, "/")
        started = trio.current_time()
        with pytest.raises(Closed) as closed:
            for message in call_messages(metadata("stalled"), media, stops=0):
                await client.send(message)
            while True:
                await client.receive()
        waited = trio.current_time() - started
        await client.close()
        await wait_for_calls(running, 1)
        # the writer's stall clock started with its batch, which may be a moment after the call
        # began to wait (a read's blocks come out together): it says so within that moment
        while running.server.readiness() != "the disk has stopped writing":
            await trio.sleep(0.01)
        while not flag.value:  # set by the server's clock
            await trio.sleep(0.01)
        assert b"\ncallstream_disk_stalled 1.0\n" in running.server.metrics.render()
        rejected = await expect_rejection(running.url)
        assert rejected.status == 503
        disk.set()
        while running.server.readiness() is not None or flag.value:
            await trio.sleep(0.01)
        assert b"\ncallstream_disk_stalled 0.0\n" in running.server.metrics.render()
        await send_all(running.url, call_messages(metadata("after"), media[:200]))
        await wait_for_calls(running, 2)
        while len(found := {s["callId"]: (p, s) for p, s in recordings(running.settings.output_dir)}) < 2:
            await trio.sleep(0.05)  # the stalled call's file is closed once the disk is back
    assert closed.value.code == 1011
    assert 1.0 <= waited < 5.0
    assert found["stalled"][1]["status"] == "failed"
    path, sidecar = found["after"]
    assert sidecar["status"] == "complete"
    np.testing.assert_array_equal(read_audio(path), expected_stereo(frames[:100], frames[:100]))
