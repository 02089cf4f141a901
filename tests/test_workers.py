"""`serve --workers 2`: SO_REUSEPORT workers, shared --max-calls, summed metrics, restart, drain."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import trio

from callstream.cli import main as cli_main
from callstream.protocol import build_query
from conftest import expect_rejection, metadata
from serverprocess import ServerProcess
from wsclient import connect

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
    from callstream.settings import Settings
    from callstream.workers import Supervisor as WorkerSupervisor

    supervisor = WorkerSupervisor(Settings(output_dir=tmp_path), 2, tmp_path)
    assert supervisor.readiness() is None
    supervisor.disk_flags[1].value = 1
    assert supervisor.readiness() == "the disk has stopped writing"
    supervisor.disk_flags[1].value = 0
    assert supervisor.readiness() is None
