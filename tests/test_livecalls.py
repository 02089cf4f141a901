"""The live view: what a live call keeps of its last block for its levels (`level_sample`: the
last 0.3 s, a copy), the levels read from it, and a view of some of the calls."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.call.blocks import PcmBlock
from callstream.call.timeline import StereoBlock
from callstream.codec import encode_ulaw
from callstream.server.livecalls import LEVEL_SAMPLES, _levels, level_dbfs, level_sample, snapshot

RATE = 8000
SECOND = RATE  # samples of a full block (block_ms 1000)


def tone(frequency: float, amplitude: float, samples: int = SECOND) -> np.ndarray:
    t = np.arange(samples) / RATE
    return np.round(amplitude * np.sin(2 * math.pi * frequency * t)).astype(np.int16)


def noise(seed: int, amplitude: float, samples: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, amplitude, samples), -32768, 32767).astype(np.int16)


def block_of(left: np.ndarray, right: np.ndarray) -> StereoBlock:
    return StereoBlock(encode_ulaw(left), encode_ulaw(right), 0)


def test_a_seconds_block_keeps_its_last_three_tenths() -> None:
    assert LEVEL_SAMPLES == 3 * RATE // 10  # a VU meter's integration time
    block = block_of(noise(1, 3000, SECOND), noise(2, 3000, SECOND))
    left, right = level_sample(block)
    assert (left, right) == (block.left[-LEVEL_SAMPLES:], block.right[-LEVEL_SAMPLES:])
    assert type(left) is bytes and len(left) + len(right) == 2 * LEVEL_SAMPLES  # 16 KB of audio, 4.8 KB kept


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), samples=st.integers(1, 3 * SECOND))
def test_the_level_is_the_last_three_tenths_of_the_block(seed: int, samples: int) -> None:
    quiet = min(samples, LEVEL_SAMPLES)
    loud = np.concatenate([noise(seed, 8000, samples - quiet), noise(seed + 1, 300, quiet)])
    block = block_of(loud, np.zeros(samples, np.int16))
    agent, caller = _levels(level_sample(block))
    assert agent == level_dbfs(block.left[-LEVEL_SAMPLES:])  # the quiet end, not the loud start
    assert caller == -96.0  # digital silence is the floor


@pytest.mark.parametrize("frequency", [300, 440, 1000, 2000, 3400])
def test_a_steady_tones_level_is_the_whole_blocks(frequency: float) -> None:
    block = block_of(tone(frequency, 10000), tone(frequency, 1000))
    agent, caller = _levels(level_sample(block))
    assert agent == pytest.approx(level_dbfs(block.left), abs=0.1)
    assert agent == pytest.approx(-13.3, abs=0.3)  # the RMS of a sine of peak 10,000 (mu-law rounds)
    assert caller == pytest.approx(level_dbfs(block.right), abs=0.1)


def test_a_ringcx_blocks_sample_is_a_copy_of_two_channels() -> None:
    frames = np.stack([tone(440, 9000), np.zeros(SECOND, np.int16), tone(700, 500)], axis=1)
    block = PcmBlock(np.ascontiguousarray(frames), 0)
    sample = level_sample(block)
    assert sample.shape == (LEVEL_SAMPLES, 2) and sample.base is None  # not a view of the block
    assert (sample == frames[-LEVEL_SAMPLES:, :2]).all()
    agent, caller = _levels(sample)
    whole = 20 * math.log10(math.sqrt(float(np.mean(frames[:, 0].astype(np.float64) ** 2))) / 32768)
    assert agent == pytest.approx(whole, abs=0.1) and caller == -96.0


@dataclass
class Live:
    """A live call as the view reads it (what `freeze` takes of a recorder)."""

    front_end: str
    call_id: str
    started_monotonic: float
    level_sample: object = None
    session_id: str = "s"
    blocks_waiting: int = 0
    started: datetime = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_view_of_some_rows_still_counts_every_call_and_each_front_ends_oldest() -> None:
    now = time.monotonic()
    loud = level_sample(block_of(tone(440, 9000), tone(440, 900)))
    calls = [Live("websocket", "ws-new", now - 5), Live("ringcx", "rc-old", now - 50, loud),
             Live("websocket", "ws-old", now - 100), Live("ringcx", "rc-new", now - 1)]
    view = snapshot(calls, live=4, draining=False, disk_stalled=False, block_seconds=1.0, max_rows=1)
    assert [call["call_id"] for call in view["calls"]] == ["ws-old"]  # the longest only
    ends = view["front_ends"]
    assert (ends["websocket"]["live"], ends["ringcx"]["live"]) == (2, 2)
    assert ends["websocket"]["oldest"]["call_id"] == "ws-old"
    oldest = ends["ringcx"]["oldest"]  # not listed, but the front end's oldest: with its levels
    assert oldest["call_id"] == "rc-old" and oldest["seconds"] >= 50
    assert oldest["agent_dbfs"] > oldest["caller_dbfs"] + 19 > -96
    everything = snapshot(calls, live=4, draining=False, disk_stalled=False, block_seconds=1.0)
    assert [call["call_id"] for call in everything["calls"]] == ["ws-old", "rc-old", "ws-new", "rc-new"]
    assert {name: (entry["live"], entry["oldest"]["call_id"]) for name, entry in everything["front_ends"].items()
            if entry["live"]} == {"websocket": (2, "ws-old"), "ringcx": (2, "rc-old")}
