"""`serve --workers 2`: SO_REUSEPORT workers, shared --max-calls, summed metrics, restart, drain."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import trio

from callstream.cli import main as cli_main
from callstream.engagevoice.encoding import encode_stop
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from conftest import call_messages, expect_rejection, metadata, recordings
from serverprocess import ServerProcess
from wsclient import Closed, WsClient, connect

TIMEOUT = 60


class Supervisor(ServerProcess):
    """`serve --workers 2` with its metrics endpoint, once both workers listen."""

    def __init__(self, output_dir: Path, *extra: str) -> None:
        super().__init__(
            output_dir,
            "--workers",
            "2",
            "--metrics-port",
            "0",
            "--drain-timeout",
            "2",
            *extra,
            ready=r"starting 2 workers on [\d.]+:(\d+)",
        )
        self.wait_for(r"worker-\d\[\d+\] .*listening on", count=2)
        self.metrics_port = int(self.wait_for(r"metrics on http://[\d.]+:(\d+)/metrics").group(1))


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def metric(body: str, name: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in body.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


async def test_two_workers_share_the_port_the_limit_and_the_metrics(tmp_path: Path) -> None:
    output = tmp_path / "recordings"
    supervisor = Supervisor(output, "--max-calls", "12")
    try:
        with trio.fail_after(TIMEOUT):
            code = await trio.to_thread.run_sync(
                lambda: cli_main(
                    [
                        "simulate",
                        "--url",
                        supervisor.url,
                        "--calls",
                        "12",
                        "--seconds",
                        "1",
                        "--fast",
                        "--quiet",
                        "--ramp",
                        "0.5",
                        "--verify",
                        str(output),
                    ]
                )
            )
            assert code == 0
            workers = {
                m.group(1) for m in (re.search(r"worker-(\d)\[\d+\] .*started", line) for line in supervisor.log) if m
            }
            assert workers == {"0", "1"}, "calls were not spread over both workers"
            status, body = await scrape(supervisor.metrics_port)
            assert status == 200
            assert metric(body, "callstream_calls_started_total") == 12
            assert metric(body, 'callstream_calls_finished_total{status="complete"}') == 12

            held = [await connect(supervisor.url, "/" + build_query(metadata(f"hold-{i}"))) for i in range(12)]
            while metric((await scrape(supervisor.metrics_port))[1], "callstream_live_calls") < 12:
                await trio.sleep(0.05)
            assert (await expect_rejection(supervisor.url)).status == 503  # whichever worker it reached
            assert (await scrape(supervisor.metrics_port, "/readyz"))[0] == 503
            for client in held:
                await client.close()

            victim = int(supervisor.wait_for(r"worker-0\[(\d+)\]").group(1))
            os.kill(victim, signal.SIGKILL)
            await trio.to_thread.run_sync(lambda: supervisor.wait_for(r"worker 0 .* restarting it"))
            await trio.to_thread.run_sync(lambda: supervisor.wait_for(rf"worker-0\[(?!{victim}\])\d+\] .*listening"))
    finally:
        assert supervisor.stop() == 0
    assert not list(output.rglob("*.partial.*"))


def test_the_supervisor_is_not_ready_while_a_workers_disk_hangs(tmp_path: Path) -> None:
    """Each worker flags its hung disk (see Server._watch_disk); the supervisor's /readyz says so."""
    from callstream.server.workers import Supervisor as WorkerSupervisor
    from callstream.settings import Settings

    supervisor = WorkerSupervisor(Settings(output_dir=tmp_path), 2, tmp_path)
    assert supervisor.readiness() is None
    supervisor.disk_flags[1].value = 1
    assert supervisor.readiness() == "the disk has stopped writing"
    supervisor.disk_flags[1].value = 0
    assert supervisor.readiness() is None


async def test_a_dead_workers_recordings_are_recovered_beside_the_live_ones(tmp_path: Path) -> None:
    """SIGKILL a worker mid-call: the supervisor finishes what it was recording (status
    `recovered`, the audio it had flushed) while the other worker's live recordings, locked by
    it, are left alone and then finish normally."""
    output = tmp_path / "recordings"
    supervisor = Supervisor(output)
    frames = [bytes([(7 * i) % 256]) * 160 for i in range(300)]  # 6 s per side
    media = [(p, seq, f) for seq, f in enumerate(frames, 1) for p in Perspective]
    clients: dict[str, WsClient] = {}
    by_worker: dict[str, list[str]] = {"0": [], "1": []}
    try:
        with trio.fail_after(TIMEOUT):
            while not (by_worker["0"] and by_worker["1"]):  # the kernel picks the worker
                call_id = f"live-{len(clients)}"
                client = clients[call_id] = await connect(supervisor.url, "/" + build_query(metadata(call_id)))
                for message in call_messages(metadata(call_id), media, stops=0):
                    await client.send(message)
                found = await trio.to_thread.run_sync(
                    lambda c=call_id: supervisor.wait_for(rf"worker-(\d)\[\d+\] .*call {c} session"))
                by_worker[found.group(1)].append(call_id)
            while sum(p.stat().st_size > 32_000 for p in output.rglob("*.partial.wav")) < len(clients):
                await trio.sleep(0.05)  # a second of audio in each file at least

            victim = int(supervisor.wait_for(r"worker-0\[(\d+)\]").group(1))
            os.kill(victim, signal.SIGKILL)
            await trio.to_thread.run_sync(
                lambda: supervisor.wait_for(rf"recovered {len(by_worker['0'])} recordings left by the dead worker"))
            found = {data["callId"]: (path, data) for path, data in recordings(output)}
            for call_id in by_worker["0"]:
                assert found[call_id][1]["status"] == "recovered"
                assert found[call_id][1]["frames"] >= 8000
            for call_id in by_worker["1"]:
                assert found[call_id][1]["status"] == "recording"  # live: untouched
                assert found[call_id][0].with_suffix(".partial.wav").exists()

            for call_id in by_worker["1"]:
                client = clients.pop(call_id)
                await client.send(encode_stop(1.0, "2026-12-01T00:00:00Z"))
                await client.send(encode_stop(1.0, "2026-12-01T00:00:00Z"))
                try:
                    while True:
                        await client.receive()
                except Closed as closed:
                    assert closed.code == 1000
                await client.close()
            while {data["callId"]: data["status"] for _, data in recordings(output)}.get(
                by_worker["1"][-1]) != "complete":
                await trio.sleep(0.05)
            for client in clients.values():
                await client.drop()
            await trio.to_thread.run_sync(lambda: supervisor.wait_for(rf"worker-0\[(?!{victim}\])\d+\] .*listening"))
    finally:
        assert supervisor.stop() == 0
    found = {data["callId"]: data for _, data in recordings(output)}
    for call_id in by_worker["1"]:
        assert found[call_id]["status"] == "complete"
        assert found[call_id]["frames"] == 300 * 160
