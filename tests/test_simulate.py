"""`callstream simulate`: the load generator against a real in-process recorder, and --verify."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import soundfile
import trio

from callstream.cli import main
from callstream.settings import Settings
from callstream.sim.loadgen import FRAME_BYTES, FRAME_SECONDS, LoadSpec, build_pool, plan_calls
from callstream.sim.simverify import verify
from conftest import RunningServer, start_server, wait_for_calls

TIMEOUT = 60  # seconds: a hang fails instead of blocking the suite


async def simulate(*argv: str) -> int:
    """`callstream simulate ...` in a worker thread (it runs its own trio loop)."""
    return await trio.to_thread.run_sync(main, ["simulate", *argv])


def load_args(server: RunningServer, *extra: str, quiet: bool = True) -> list[str]:
    return ["--url", server.url, "--calls", "5", "--seconds", "2", "--fast", *(["--quiet"] if quiet else []), *extra]


async def test_five_fast_calls_verify(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    output = server.settings.output_dir
    with trio.fail_after(TIMEOUT):
        code = await simulate(*load_args(server, "--verify", str(output), "--call-id", "five", quiet=False))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "5/5 calls ok" in out
    assert "verify: 5 passed, 0 failed" in out
    assert "PASS" not in out and len(out.splitlines()) == 3, out  # passes are counted, not listed
    sidecars = sorted(output.rglob("five-*.json"))
    assert len(sidecars) == 5
    assert {json.loads(p.read_text())["frames"] for p in sidecars} == {2 * 8000}


async def test_real_time_calls_through_the_pacer_verify(
    server: RunningServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Real time with several calls: the pacer writes each call's due pairs (several per write
    at --send-interval 0.1), and every recording holds exactly what its call sent."""
    output, report = server.settings.output_dir, tmp_path / "report.json"
    with trio.fail_after(TIMEOUT):
        code = await simulate(
            "--url", server.url, "--calls", "3", "--seconds", "1", "--send-interval", "0.1", "--quiet",
            "--call-id", "paced", "--verify", str(output), "--json", str(report),
        )
    out = capsys.readouterr().out
    assert code == 0, out
    assert out == ""  # --quiet: nothing when everything passed
    # never ahead of real time (a slow machine only makes it longer): each pair goes out when its
    # 20 ms begin, so the last of a second's 50 at 0.98 s (then the Stops and the close)
    calls = json.loads(report.read_text())["calls"]
    assert min(call["ended"] - call["connected"] for call in calls) >= 1.0 - FRAME_SECONDS


async def test_calls_have_distinct_content(server: RunningServer, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    with trio.fail_after(TIMEOUT):
        code = await simulate(*load_args(server, "--json", str(report), "--call-id", "distinct"))
        await wait_for_calls(server, 5)  # the client is done before the server has renamed the files
    assert code == 0
    assert json.loads(report.read_text())["summary"]["messages"] == 5 * 2 * 100
    audio = [
        soundfile.read(str(path), dtype="int16")[0].tobytes()
        for path in sorted(server.settings.output_dir.rglob("distinct-*.wav"))
    ]
    assert len(audio) == 5 and len(set(audio)) == 5


async def test_tampered_recording_fails_verification(server: RunningServer, tmp_path: Path) -> None:
    output = server.settings.output_dir
    argv = load_args(server, "--call-id", "tamper", "--session-id", "77")
    with trio.fail_after(TIMEOUT):
        assert await simulate(*argv) == 0
    spec = LoadSpec(
        url=server.url, calls=5, frames=100, realtime=False, call_id="tamper", session_id="77"
    )
    pool = build_pool(spec)
    calls = plan_calls(spec, pool)
    verdicts = await trio.to_thread.run_sync(verify, output, calls, pool)
    assert all(v.ok for v in verdicts), "untouched recordings must pass"

    victim = verdicts[2].path
    assert victim is not None
    data = bytearray(victim.read_bytes())
    sample = 44 + 4 * (30 * FRAME_BYTES + 7)  # PCM 16-bit stereo after the 44-byte header
    data[sample] ^= 0x40
    victim.write_bytes(bytes(data))
    verdicts = await trio.to_thread.run_sync(verify, output, calls, pool)
    assert [v.ok for v in verdicts] == [True, True, False, True, True]
    assert "differ, the first at 4807 (frame 31)" in verdicts[2].detail


async def test_missing_recordings_fail_the_run(
    server: RunningServer, tmp_path: Path, capsys
) -> None:
    elsewhere = tmp_path / "not-the-output-dir"
    elsewhere.mkdir()
    with trio.fail_after(TIMEOUT):
        code = await simulate(*load_args(server, "--verify", str(elsewhere)))
    out = capsys.readouterr().out
    assert code == 1
    assert "verify: 0 passed, 5 failed" in out and "no recording" in out


async def test_server_closing_first_is_a_failure_without_leaks(
    nursery: trio.Nursery, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    guarded = await start_server(nursery, replace(settings, secret="s3cret"))  # we present none
    with trio.fail_after(TIMEOUT):
        code = await simulate("--url", guarded.url, "--calls", "3", "--seconds", "1", "--quiet")
    out = capsys.readouterr().out
    assert code == 1
    assert out.count("FAIL ") == 3 and "1008" in out
    assert "0/3 calls ok" in out


async def test_single_call_real_time(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    output = server.settings.output_dir
    with trio.fail_after(TIMEOUT):
        code = await simulate("--url", server.url, "--seconds", "0.5", "--verify", str(output))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "playing 0.5 s call sim-1/1" in out and "done: both Stops sent" in out
    assert "verify: 1 passed, 0 failed" in out
