"""`callstream status` and the live-calls page on the metrics endpoint, against a real server
process with a real call of each front end in progress (an Engage Voice WebSocket call and a
RingCX gRPC dialog), and against `serve --workers 2`; the page is rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

import debian
from callstream.engagevoice.query import build_query
from callstream.ringcx import streaming_pb2 as pb
from callstream.ringcx import streaming_pb2_grpc
from callstream.server.status import LABEL_WIDTH
from callstream.sim import ringcx_client
from conftest import metadata
from serverprocess import ServerProcess
from services import BUCKET, S3Server
from test_workers import Supervisor, scrape
from wsclient import connect

TIMEOUT = 60
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


def command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "callstream", *argv]


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CALLSTREAM_")}


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return json.load(response)


@dataclass
class LiveServer:
    server: ServerProcess
    metrics_url: str
    caller: subprocess.Popen[str]

    def calls(self) -> dict:
        return get_json(self.metrics_url + "/calls.json")


def dialog_events(dialog: str, session: str) -> list[pb.StreamEvent]:
    """DialogInit, the caller's SegmentStart and 1 s of its audio (100 ms chunks)."""
    events = [
        pb.StreamEvent(session_id=session, dialog_init=pb.DialogInitEvent(dialog=pb.Dialog(id=dialog))),
        pb.StreamEvent(session_id=session, segment_start=pb.SegmentStartEvent(
            segment_id="caller", participant=pb.Participant(id="caller", type=pb.CONTACT),
            audio_format=pb.AudioFormat(codec=pb.PCMU, rate=8000, ptime=100))),
    ]
    events += [pb.StreamEvent(session_id=session, segment_media=pb.SegmentMediaEvent(
        segment_id="caller", audio_content=pb.AudioContent(payload=ringcx_client.chunk_payload(1, seq), seq=seq,
                                                           duration=100))) for seq in range(10)]
    return events


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    """A server with --metrics-port and a call of each front end in progress: a real-time
    WebSocket call (a simulate process) and a RingCX dialog held open by a grpcio client."""
    server = ServerProcess(tmp_path / "rec", "--metrics-port", "0", "--ringcx-port", "0", "--ringcx-plaintext")
    port = int(server.wait_for(r"metrics on http://[\d.]+:(\d+)/metrics").group(1))
    ringcx_port = int(server.wait_for(r"RingCX gRPC on [\d.]+:(\d+)").group(1))
    caller = subprocess.Popen(
        command("simulate", "--url", server.url, "--seconds", "30", "--call-id", "live-1", "--session-id", "s-1",
                "--quiet"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_environ(),
    )
    release = threading.Event()

    def held() -> Iterator[pb.StreamEvent]:
        yield from dialog_events("dialog-1", "s-2")
        release.wait(TIMEOUT)  # the stream stays open until the test ends

    channel = ringcx_client.open_channel(f"127.0.0.1:{ringcx_port}")
    running = LiveServer(server, f"http://127.0.0.1:{port}", caller)
    try:
        with channel:
            dialog = streaming_pb2_grpc.StreamingStub(channel).Stream.future(held())
            deadline = time.monotonic() + TIMEOUT
            while True:  # until each call's first block reached the disk (its levels are known)
                calls = running.calls()["calls"]
                if len(calls) == 2 and all(call["agent_dbfs"] is not None for call in calls):
                    break
                assert time.monotonic() < deadline, f"the calls never showed up in /calls.json: {calls}"
                time.sleep(0.1)
            yield running
            dialog.cancel()
    finally:
        release.set()
        caller.terminate()
        caller.wait(TIMEOUT)
        server.stop()


def test_calls_json_lists_the_live_calls_of_both_front_ends(live: LiveServer) -> None:
    data = live.calls()
    assert (data["live_calls"], data["draining"], data["disk_stalled"]) == (2, False, False)
    calls = {call["front_end"]: call for call in data["calls"]}
    call, dialog = calls["websocket"], calls["ringcx"]
    assert (call["call_id"], call["session_id"]) == ("live-1", "s-1")
    assert (dialog["call_id"], dialog["session_id"]) == ("dialog-1", "s-2")
    assert call["seconds"] > 0 and dialog["seconds"] > 0
    assert -40 < call["agent_dbfs"] < 0 and -40 < call["caller_dbfs"] < 0  # simulate's test tones
    assert dialog["agent_dbfs"] == -96 and dialog["caller_dbfs"] > -96  # no agent in the dialog yet
    assert call["lag"] >= 0
    assert {name: entry["live"] for name, entry in data["front_ends"].items()} == {"websocket": 1, "ringcx": 1}
    assert data["front_ends"]["websocket"]["oldest"]["call_id"] == "live-1"
    assert data["front_ends"]["ringcx"]["oldest"]["call_id"] == "dialog-1"


def test_status_prints_the_running_server(live: LiveServer) -> None:
    result = subprocess.run(command("status", "--metrics-url", live.metrics_url, "--interval", "1.5"),
                            capture_output=True, text=True, timeout=TIMEOUT, env=clean_environ())
    assert result.returncode == 0, result.stderr
    lines = {line[:LABEL_WIDTH].strip(): line[LABEL_WIDTH:] for line in result.stdout.splitlines()}
    assert lines["live calls"].startswith("2 (oldest ")
    assert re.fullmatch(r"1 \(oldest 0:\d\d: live-1/s-1\)", lines["websocket"]), lines["websocket"]
    assert re.fullmatch(r"1 \(oldest 0:\d\d: dialog-1/s-2\)", lines["ringcx"]), lines["ringcx"]
    assert "Media messages/s" in lines["frames"]
    frames = float(lines["frames"].split()[0].replace(",", ""))
    assert frames > 0  # counters move once per flush interval (1 s): at least one move in 1.5 s
    assert lines["write lag"].startswith("p99 <= ")
    assert lines["disk"] == "writing" and lines["draining"] == "no"


def test_status_names_an_unreachable_endpoint() -> None:
    result = subprocess.run(command("status", "--metrics-url", "http://127.0.0.1:9", "--interval", "0"),
                            capture_output=True, text=True, timeout=TIMEOUT, env=clean_environ())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("callstream status: cannot read http://127.0.0.1:9/metrics: ")


def test_live_calls_page_in_headless_chromium(live: LiveServer, tmp_path: Path) -> None:
    browser = debian.program("chromium", "chromium", aliases=("chromium-browser",))
    profile = tmp_path / "chromium-profile"
    base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*base, "--dump-dom", live.metrics_url + "/"], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "2 live calls (ringcx 1, websocket 1)" in html  # drawn by the page's script from /calls.json
    assert "<td>websocket</td><td>live-1</td><td>s-1</td>" in html
    assert "<td>ringcx</td><td>dialog-1</td><td>s-2</td>" in html
    assert "not updated" not in html
    screenshot = tmp_path / "live-calls.png"
    shot = subprocess.run([*base, "--window-size=1000,400", f"--screenshot={screenshot}", live.metrics_url + "/"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 1000
    print(f"screenshot of the live-calls page: {screenshot}")


async def test_workers_list_every_workers_calls_and_each_process(tmp_path: Path) -> None:
    """`serve --workers 2`: /calls.json lists the calls of both workers (calls are opened until
    each worker has one), `status` shows them, and the process metrics are each process's."""
    supervisor = Supervisor(tmp_path / "rec")
    base = f"http://127.0.0.1:{supervisor.metrics_port}"
    held = []
    try:
        with trio.fail_after(TIMEOUT):
            workers: dict[str, str] = {}  # worker index: a call id it records
            while len(workers) < 2:
                call_id = f"held-{len(held)}"
                held.append(await connect(supervisor.url, "/" + build_query(metadata(call_id, "s"))))
                line = await trio.to_thread.run_sync(
                    lambda call_id=call_id: supervisor.wait_for(rf"worker-(\d)\[\d+\] .*call {call_id} ").group(1))
                workers.setdefault(line, call_id)
                assert len(held) < 20, "every call went to one worker"
            while True:  # each worker leaves its calls once per flush interval
                data = await trio.to_thread.run_sync(get_json, base + "/calls.json")
                if len(data["calls"]) == len(held):
                    break
                await trio.sleep(0.1)
            assert data["live_calls"] == len(held)
            assert {call["call_id"] for call in data["calls"]} == {f"held-{i}" for i in range(len(held))}
            assert all(call["front_end"] == "websocket" and call["session_id"] == "s" for call in data["calls"])
            assert data["front_ends"]["websocket"]["live"] == len(held)
            seconds = [call["seconds"] for call in data["calls"]]
            assert seconds == sorted(seconds, reverse=True)
            assert data["front_ends"]["websocket"]["oldest"]["seconds"] == seconds[0]

            result = await trio.to_thread.run_sync(lambda: subprocess.run(
                command("status", "--metrics-url", base, "--interval", "0"), capture_output=True, text=True,
                timeout=TIMEOUT, env=clean_environ()))
            assert result.returncode == 0, result.stderr
            lines = {line[:LABEL_WIDTH].strip(): line[LABEL_WIDTH:] for line in result.stdout.splitlines()}
            assert re.fullmatch(rf"{len(held)} \(oldest 0:\d\d: held-\d+/s\)", lines["live calls"])
            assert re.fullmatch(rf"{len(held)} \(oldest 0:\d\d: held-\d+/s\)", lines["websocket"])

            status, body = await scrape(supervisor.metrics_port)
            assert status == 200
            rss = {m.group(1): float(m.group(2)) for m in
                   re.finditer(r'^process_resident_memory_bytes\{process="([^"]+)"\} (\S+)$', body, re.M)}
            assert set(rss) == {"supervisor", "worker-0", "worker-1"} and all(v > 0 for v in rss.values())
            fds = dict(re.findall(r'^process_open_fds\{process="(worker-\d)"\} (\S+)$', body, re.M))
            assert len(fds) == 2 and all(float(v) > 0 for v in fds.values())
    finally:
        with trio.fail_after(TIMEOUT):
            for client in held:
                await client.close()
        assert supervisor.stop() == 0


def test_recordings_waiting_for_upload(tmp_path: Path, s3_server: S3Server) -> None:
    """With the store down a finished call's recording waits: /calls.json, `status` and the page
    show it (count, bytes, the oldest); once the store is back, none waits."""
    s3_server.stop()
    server = ServerProcess(tmp_path / "rec", "--metrics-port", "0", "--store", f"s3://{BUCKET}/calls",
                           "--store-endpoint", s3_server.endpoint, "--ship-retry-max", "0.3")
    port = int(server.wait_for(r"metrics on http://[\d.]+:(\d+)/metrics").group(1))
    base = f"http://127.0.0.1:{port}"
    try:
        done = subprocess.run(command("simulate", "--url", server.url, "--seconds", "1", "--fast", "--quiet",
                                      "--call-id", "up-1"), capture_output=True, text=True, timeout=TIMEOUT,
                              env=clean_environ() | {k: v for k, v in os.environ.items() if k.startswith("AWS_")})
        assert done.returncode == 0, done.stderr
        server.wait_for("the store unavailable", timeout=TIMEOUT)
        shipping = get_json(base + "/calls.json")["shipping"]
        assert shipping["pending"] == 1 and shipping["bytes"] > 1000 and shipping["oldest_seconds"] >= 0

        def status_line() -> str:
            result = subprocess.run(command("status", "--metrics-url", base, "--interval", "0"),
                                    capture_output=True, text=True, timeout=TIMEOUT, env=clean_environ())
            assert result.returncode == 0, result.stderr
            lines = {line[:LABEL_WIDTH].strip(): line[LABEL_WIDTH:] for line in result.stdout.splitlines()}
            return lines["uploads"]

        assert re.fullmatch(r"1 recording waiting \(0\.\d MB for the store, oldest queued 0:\d\d ago\)",
                            status_line()), status_line()
        browser = debian.program("chromium", "chromium", aliases=("chromium-browser",))
        dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                              "--virtual-time-budget=5000", "--dump-dom", base + "/"],
                             capture_output=True, text=True, timeout=TIMEOUT)
        assert re.search(r"1 recording waiting for upload \(0\.\d MB, oldest 0:\d\d\)", dom.stdout), dom.stdout

        s3_server.start()  # the store is back, on the same port
        deadline = time.monotonic() + TIMEOUT
        while get_json(base + "/calls.json")["shipping"]["pending"]:
            assert time.monotonic() < deadline, "the recording was never shipped"
            time.sleep(0.1)
        assert status_line() == "none waiting"
    finally:
        server.stop()
