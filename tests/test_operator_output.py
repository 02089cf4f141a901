"""What the commands print for an operator: recover, the end-of-call line in text and JSON, and
no reprs of internal objects at shutdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from serverprocess import ServerProcess

TIMEOUT = 60


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CALLSTREAM_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "callstream", *argv], capture_output=True, text=True,
                          env=environ, timeout=TIMEOUT)


def test_recover_reports_each_file_once(tmp_path: Path) -> None:
    day = tmp_path / "2026-01-01"
    day.mkdir()
    for name in ("a", "b"):
        soundfile.write(str(day / f"{name}.partial.wav"), np.zeros((800, 2), np.int16), 8000, subtype="PCM_16")
    result = run("recover", str(tmp_path))
    assert result.returncode == 0, result.stderr
    both = result.stdout + result.stderr
    for name in ("a", "b"):
        assert both.count(f"recovered {day / name}.wav") == 1, both
    assert result.stdout == "2 recordings recovered\n"


def test_recover_without_shipping_flags_says_a_shipped_directory_was_not_queued(tmp_path: Path) -> None:
    (tmp_path / ".spool").mkdir()  # some serve ships from this directory
    soundfile.write(str(tmp_path / "a.partial.wav"), np.zeros((800, 2), np.int16), 8000, subtype="PCM_16")
    result = run("recover", str(tmp_path), env={"CALLSTREAM_PORT": "not a port"})  # serve's: not read
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 recordings recovered\n"
    [line] = [line for line in result.stderr.splitlines() if "not queued" in line]
    assert "give recover the serve's shipping flags" in line
    assert list((tmp_path / ".spool").iterdir()) == []


def test_recover_checks_the_shipping_options_as_serve_does(tmp_path: Path) -> None:
    partial = tmp_path / "a.partial.wav"
    soundfile.write(str(partial), np.zeros((800, 2), np.int16), 8000, subtype="PCM_16")
    for argv, env, wanted in (
        (("--webhook-url", "http://127.0.0.1:9/hook"), {}, "--webhook-url needs --webhook-secret-file"),
        ((), {"CALLSTREAM_SHIP_THREADS": "0"}, "CALLSTREAM_SHIP_THREADS (for --ship-threads)"),
        (("--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret-file", str(tmp_path / "missing")), {},
         f"--webhook-secret-file: cannot read {tmp_path / 'missing'}"),
    ):
        result = run("recover", str(tmp_path), *argv, env=env)
        assert result.returncode == 2, result
        [line] = result.stderr.splitlines()
        assert line.startswith("callstream recover: ") and wanted in line, line
    assert partial.exists()  # nothing recovered on a mistake


def play(server: ServerProcess, call_id: str) -> None:
    result = run("simulate", "--url", server.url, "--seconds", "0.5", "--fast", "--quiet", "--call-id", call_id)
    assert result.returncode == 0, result.stdout + result.stderr


def test_text_log_end_of_call_is_short_key_value(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    try:
        play(server, "short")
        line = server.wait_for(r"call short session \S+ ended: .*").group(0)
    finally:
        code = server.stop()
    assert code == 0
    assert len(line) < 300, line
    for key in ("status=complete", "duration=0.5s", "frames=25/25", "gaps=0", "late=0", "path="):
        assert key in line, line
    log = "".join(server.log)
    assert "{" not in line and "Statistics(" not in log and "Traceback" not in log, log
    assert "stopped: 1 calls recorded, 0 refused" in log


def test_json_log_one_object_per_line(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "--log-format", "json", ready=r'"event":"listening on [\d.]+:(\d+)')
    try:
        play(server, "json")
        server.wait_for(r'"event":"call json session')
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in server.log]  # every line is one object
    for record in records:
        assert {"time", "level", "logger", "event"} <= record.keys()
    ended = next(r for r in records if r["event"].startswith("call json session") and "ended" in r["event"])
    assert (ended["call_id"], ended["status"], ended["duration"]) == ("json", "complete", 0.5)
    assert ended["session_id"] == "1"
    assert ended["statistics"]["participant"]["frames_received"] == 25
    assert ended["time"].endswith("Z") and ended["level"] == "info" and ended["logger"] == "callstream.server"
