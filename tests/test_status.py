"""`callstream status` and the live-calls page on the metrics endpoint, against a real server
process with a real call in progress; the page is rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from callstream.server.status import LABEL_WIDTH
from serverprocess import ServerProcess

TIMEOUT = 60
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


def command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "callstream", *argv]


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CALLSTREAM_")}


@dataclass
class LiveServer:
    server: ServerProcess
    metrics_url: str
    caller: subprocess.Popen[str]

    def calls(self) -> dict:
        with urllib.request.urlopen(self.metrics_url + "/calls.json", timeout=TIMEOUT) as response:
            return json.load(response)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    """A server with --metrics-port and one real-time call in progress (a simulate process)."""
    server = ServerProcess(tmp_path / "rec", "--metrics-port", "0")
    port = int(server.wait_for(r"metrics on http://[\d.]+:(\d+)/metrics").group(1))
    caller = subprocess.Popen(
        command("simulate", "--url", server.url, "--seconds", "30", "--call-id", "live-1", "--session-id", "s-1",
                "--quiet"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_environ(),
    )
    running = LiveServer(server, f"http://127.0.0.1:{port}", caller)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:  # until the call's first block reached the disk (its levels are known)
            calls = running.calls()["calls"]
            if calls and calls[0]["agent_dbfs"] is not None:
                break
            assert time.monotonic() < deadline, "the call never showed up in /calls.json"
            time.sleep(0.1)
        yield running
    finally:
        caller.terminate()
        caller.wait(TIMEOUT)
        server.stop()


def test_calls_json_lists_the_live_call(live: LiveServer) -> None:
    data = live.calls()
    assert (data["live_calls"], data["draining"], data["disk_stalled"]) == (1, False, False)
    [call] = data["calls"]
    assert (call["call_id"], call["session_id"]) == ("live-1", "s-1")
    assert call["seconds"] > 0
    assert -40 < call["agent_dbfs"] < 0 and -40 < call["caller_dbfs"] < 0  # simulate's test tones
    assert call["lag"] >= 0


def test_status_prints_the_running_server(live: LiveServer) -> None:
    result = subprocess.run(command("status", "--metrics-url", live.metrics_url, "--interval", "1.5"),
                            capture_output=True, text=True, timeout=TIMEOUT, env=clean_environ())
    assert result.returncode == 0, result.stderr
    lines = {line[:LABEL_WIDTH].strip(): line[LABEL_WIDTH:] for line in result.stdout.splitlines()}
    assert lines["live calls"].startswith("1 (oldest ") and "live-1/s-1" in lines["live calls"]
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


def chromium() -> str:
    """The Chromium binary; installs Debian's package when missing (apt-get update first), or
    skips saying why it cannot."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("no chromium, and no apt-get as root to install Debian's chromium package")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 900}
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "update"], env=env, **quiet).returncode != 0 or subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env, **quiet
    ).returncode != 0:
        pytest.skip("chromium is not installed and apt-get could not install it")
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("apt-get installed chromium but no chromium binary is on PATH")
    return found


def test_live_calls_page_in_headless_chromium(live: LiveServer, tmp_path: Path) -> None:
    browser = chromium()
    profile = tmp_path / "chromium-profile"
    base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*base, "--dump-dom", live.metrics_url + "/"], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "1 live call" in html  # drawn by the page's script from /calls.json
    assert "<td>live-1</td><td>s-1</td>" in html
    assert "not updated" not in html
    screenshot = tmp_path / "live-calls.png"
    shot = subprocess.run([*base, "--window-size=1000,400", f"--screenshot={screenshot}", live.metrics_url + "/"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 1000
    print(f"screenshot of the live-calls page: {screenshot}")
