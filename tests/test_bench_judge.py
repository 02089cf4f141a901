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
