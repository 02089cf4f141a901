"""The end-to-end benchmark's capacity rules (benchmarks/bench_e2e.py): what makes a step pass, and a
variant's capacity from its steps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_e2e


def step(calls: int, **changes: object) -> dict:
    """A passing step of ``calls`` real-time calls of 30 s, ramped over 10 s."""
    result = {"calls": calls, "seconds": 30.0, "ramp_seconds": 10.0, "wall_seconds": 41.0,
              "failed_calls": 0, "frames_lost": 0, "lag_p99_s": 0.25}
    return {**result, **changes}


def test_a_step_passes_within_every_limit() -> None:
    result = bench_e2e.judge(step(100))
    assert result["ok"] and result["behind_seconds"] == 1.0


@pytest.mark.parametrize(
    "changes",
    [
        {"failed_calls": 1},
        {"frames_lost": 1},
        {"lag_p99_s": bench_e2e.LAG_LIMIT},  # the limit itself fails: p99 must stay below it
        {"lag_p99_s": None},  # no lag measured: nothing shows the recordings were written
        {"wall_seconds": 40.0 + bench_e2e.REALTIME_SLACK + 0.1},  # behind real time
    ],
    ids=["a call failed", "frames lost", "lag at the limit", "no lag measured", "behind real time"],
)
def test_a_step_fails_on_any_limit(changes: dict) -> None:
    assert not bench_e2e.judge(step(100, **changes))["ok"]


def test_behind_real_time_up_to_the_slack_passes() -> None:
    assert bench_e2e.judge(step(100, wall_seconds=40.0 + bench_e2e.REALTIME_SLACK))["ok"]


def test_a_step_stored_without_its_ramp_gets_the_default_one() -> None:
    stored = step(1000)
    del stored["ramp_seconds"]
    ramp = bench_e2e.ramp_of(1000)
    assert ramp == 1000 / bench_e2e.ARRIVALS_PER_SECOND
    result = bench_e2e.judge({**stored, "wall_seconds": ramp + 30.0 + 2.0})
    assert result["ok"] and result["behind_seconds"] == 2.0


def test_capacity_is_the_largest_step_before_the_first_failure() -> None:
    """A step passing after a failed one does not count (a noisy machine let it through)."""
    data = {"capacity": [
        {"steps": [step(100), step(250), step(500, frames_lost=3), step(750)]},
        {"steps": [step(100, lag_p99_s=5.0), step(250)]},
        {"steps": [step(100), step(250)]},
    ]}
    judged = bench_e2e.rejudge(data)
    assert [variant["capacity_calls"] for variant in judged["capacity"]] == [250, 0, 250]
    assert [s["ok"] for s in judged["capacity"][0]["steps"]] == [True, True, False, True]


STORED = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "e2e-latest.json"


def test_the_plot_marks_failed_steps_and_shows_behind_and_lost() -> None:
    data = {"utc": "2026-12-02T08:18:04+00:00", "commit": "abc1234",
            "machine": {"cpu": "AMD EPYC", "cores": 2, "cores_usable": 2, "virtualized": True},
            "capacity": [{"variant": "1 worker", "steps": [
                step(100, server_cpu_share=0.2),
                step(250, server_cpu_share=0.5, frames_lost=3),
                step(500, server_cpu_share=0.9, wall_seconds=60.0),
            ]}]}
    series = bench_e2e.plot_series(data)
    assert set(series) == {"cpu_percent", "lag_p99_s", "behind_seconds", "frames_lost"}
    for lines in series.values():
        [line] = lines
        assert line["x"] == [100, 250, 500] and line["failed"] == [False, True, True]
    assert series["cpu_percent"][0]["y"] == pytest.approx([20, 50, 90])
    assert series["behind_seconds"][0]["y"] == [1.0, 1.0, 20.0]
    assert series["frames_lost"][0]["y"] == [0, 3, 0]
    title = bench_e2e.plot_title(data)
    assert "2026-12-02 08:18 UTC" in title and "commit abc1234" in title and "AMD EPYC, 2 cores" in title


def test_the_plot_of_a_stored_run(tmp_path: Path) -> None:
    import json

    data = json.loads(STORED.read_text())
    series = bench_e2e.plot_series(data)
    assert any(any(line["failed"]) for line in series["lag_p99_s"])  # that run had failed steps
    assert "commit not recorded" in bench_e2e.plot_title(data)  # stored before commits were
    pytest.importorskip("matplotlib", reason="matplotlib is in the bench extra only: the drawing is not tried")
    path = tmp_path / "e2e.png"
    assert bench_e2e.plot(data, path)
    assert path.read_bytes().startswith(b"\x89PNG")
    print(f"plot of the stored run: {path}")


def test_the_benchmark_reads_the_serve_flags_it_varies() -> None:
    """bench_e2e picks its variants from `serve --help` (the transports as argparse prints
    choices): a help text that hid them would silently drop variants from a run."""
    assert bench_e2e.serve_features() == {
        "metrics": True, "workers": True, "transports": ["websockets", "trio-websocket"]}
