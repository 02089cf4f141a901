"""The live view: what a live call keeps of its last block for its levels (`level_sample`: the
last 0.3 s, a copy), and the levels read from it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.call.timeline import StereoBlock
from callstream.codec import encode_ulaw
from callstream.call.blocks import PcmBlock
from callstream.server.livecalls import LEVEL_SAMPLES, _levels, level_dbfs, level_sample

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
