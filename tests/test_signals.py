"""Signals against a real server process: SIGHUP reloads (secret file, log file) and never drops a
call; a second SIGTERM/SIGINT during a drain ends it now, cleanly, exit 0; with --workers the
supervisor forwards both."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trio

from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start, encode_stop
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from conftest import expected_stereo, metadata, random_frames, read_audio, recordings
from serverprocess import ServerProcess
from test_workers import Supervisor
from wsclient import Closed, Rejected, WsClient, connect

TIMEOUT = 60
QUICK = 20  # seconds a process may take to end its drain after the second signal (--drain-timeout is 600)


def bearer(secret: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {secret}")]


async def wait_in_log(server: ServerProcess, pattern: str, count: int = 1) -> re.Match[str]:
    return await trio.to_thread.run_sync(lambda: server.wait_for(pattern, count))


async def send_frames(client: WsClient, frames: list[bytes]) -> None:
    for seq, frame in frames:
        for perspective in Perspective:
            await client.send(encode_media(perspective, seq, frame))


async def test_sighup_rotates_the_secret_without_dropping_a_call(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("old-secret\n")
    server = ServerProcess(tmp_path / "out", "--secret-file", str(secret_file))
    frames = random_frames(np.random.default_rng(5), 40)
    numbered = list(enumerate(frames, 1))
    try:
        with trio.fail_after(TIMEOUT):
            live = await connect(server.url, "/", bearer("old-secret"))
            await live.send(encode_connected())
            await live.send(encode_start(metadata("live")))
            await send_frames(live, numbered[:20])

            secret_file.write_text("new-secret\n")
            server.process.send_signal(signal.SIGHUP)
            await wait_in_log(server, "new secret read from")
            secret_file.write_text("")  # a mistake: the secret in force stays
            server.process.send_signal(signal.SIGHUP)
            await wait_in_log(server, "is empty: keeping the secret in force")

            await send_frames(live, numbered[20:])  # the live call never noticed
            for _ in range(2):
                await live.send(encode_stop(1.0, "2026-11-25T00:00:00Z"))
            with pytest.raises(Closed) as closed:
                await live.receive()
            await live.close()
            assert closed.value.code == 1000

            with pytest.raises(Rejected) as rejected:
                await (await connect(server.url, "/", bearer("old-secret"))).drop()
            assert rejected.value.status == 401
            fresh = await connect(server.url, "/" + build_query(metadata("fresh")))
            await fresh.send(encode_connected(secret="new-secret"))
            await fresh.send(encode_start(metadata("fresh")))
            await fresh.close()
            await wait_in_log(server, "call fresh .* ended")
    finally:
        assert server.stop() == 0
    by_id = {sidecar["callId"]: (path, sidecar) for path, sidecar in recordings(tmp_path / "out")}
    path, sidecar = by_id["live"]
    assert sidecar["status"] == "complete"
    np.testing.assert_array_equal(read_audio(path), expected_stereo(frames, frames))
    assert not list((tmp_path / "out").rglob("*.partial.*"))


def test_sighup_reopens_a_rotated_log_file(tmp_path: Path) -> None:
    log = tmp_path / "callstream.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "callstream", "serve", "--host", "127.0.0.1", "--port", "0",
         "--output-dir", str(tmp_path / "out"), "--log-file", str(log)],
    )

    def wait_for(pattern: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not (log.exists() and re.search(pattern, log.read_text())):
            assert process.poll() is None, f"the server exited with {process.returncode}"
            assert time.monotonic() < deadline, f"no {pattern!r} in {log}"
            time.sleep(0.05)

    try:
        wait_for("listening on")
        log.rename(tmp_path / "callstream.log.1")  # what logrotate does
        process.send_signal(signal.SIGHUP)
        wait_for("received SIGHUP")
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "listening on" in (tmp_path / "callstream.log.1").read_text()
    assert "stopped" in log.read_text()


async def stream_until_closed(
    client: WsClient, frames: list[bytes], sent: list[bytes], codes: list[int | None]
) -> None:
    """A live call that streams until the server closes it; its close code goes to ``codes``."""

    async def watch(scope: trio.CancelScope) -> None:
        try:
            while True:
                await client.receive()
        except (Closed, trio.BrokenResourceError):  # the process may be gone before our close reply
            codes.append(client.close_code)
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        await client.send(encode_connected())
        await client.send(encode_start(metadata("live")))
        try:
            for seq, frame in enumerate(frames, 1):
                for perspective in Perspective:
                    await client.send(encode_media(perspective, seq, frame))
                sent.append(frame)
                await trio.sleep(0.005)
        except Closed:
            pass
        await trio.sleep_forever()
    await client.close()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_a_second_stop_signal_ends_the_drain_now_and_cleanly(tmp_path: Path, second: signal.Signals) -> None:
    server = ServerProcess(tmp_path / "out", "--drain-timeout", "600")
    frames = random_frames(np.random.default_rng(9), 20_000)
    sent: list[bytes] = []
    codes: list[int | None] = []
    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream_until_closed, await connect(server.url, "/"), frames, sent, codes)
                while not list((tmp_path / "out").rglob("*.partial.*")):  # the first block is written
                    await trio.sleep(0.01)
                server.process.send_signal(signal.SIGTERM)
                await wait_in_log(server, "draining: 1 live calls")
                server.process.send_signal(second)
                code = await trio.to_thread.run_sync(lambda: server.process.wait(QUICK))
        assert code == 0
    finally:
        if server.alive():
            server.process.kill()
        server.stop()
    assert codes == [1001]
    assert re.search(f"received {second.name} again: closing the 1 live calls now", "".join(server.log))
    assert "Traceback" not in "".join(server.log)
    [(path, sidecar)] = recordings(tmp_path / "out")
    assert sidecar["status"] == "incomplete"
    audio = read_audio(path)  # what the server had read (reads coalesce: up to 0.5 s behind) is there
    received = len(audio) // 160
    assert 0 < received <= len(sent)
    exact = (received - 1) * 160  # the last frame may be one side's only (see test_lifecycle)
    np.testing.assert_array_equal(audio[:exact], expected_stereo(sent[: received - 1], sent[: received - 1]))
    assert not list((tmp_path / "out").rglob("*.partial.*"))


async def test_the_supervisor_forwards_sighup_and_a_second_stop_signal(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("old-secret")
    supervisor = Supervisor(tmp_path / "out", "--secret-file", str(secret_file), "--drain-timeout", "600")
    codes: list[int | None] = []
    try:
        with trio.fail_after(TIMEOUT):
            secret_file.write_text("new-secret")
            supervisor.process.send_signal(signal.SIGHUP)
            await wait_in_log(supervisor, r"worker-\d\[\d+\] .*new secret read from", count=2)
            assert supervisor.alive()
            for _ in range(4):  # whichever worker each reaches
                with pytest.raises(Rejected):
                    await (await connect(supervisor.url, "/", bearer("old-secret"))).drop()

            async def hold() -> None:
                client = await connect(supervisor.url, "/", bearer("new-secret"))
                try:
                    await client.send(encode_connected())
                    await client.receive()
                except (Closed, trio.BrokenResourceError):  # the worker may be gone before our reply
                    codes.append(client.close_code)
                finally:
                    await client.close()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hold)
                await wait_in_log(supervisor, r"worker-\d\[\d+\] .* started from")
                supervisor.process.send_signal(signal.SIGTERM)
                await wait_in_log(supervisor, r"worker-\d\[\d+\] .*draining: 1 live calls")
                supervisor.process.send_signal(signal.SIGINT)
                code = await trio.to_thread.run_sync(lambda: supervisor.process.wait(QUICK))
        assert code == 0
    finally:
        if supervisor.process.poll() != 0:
            supervisor.process.kill()
            # workers a dead supervisor left behind keep its stderr open: stop() would hang
            for pid in {int(p) for p in re.findall(r"worker-\d\[(\d+)\]", "".join(supervisor.log))}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        supervisor.stop()
    assert codes == [1001]
    assert "Traceback" not in "".join(supervisor.log)
    assert not list((tmp_path / "out").rglob("*.partial.*"))
