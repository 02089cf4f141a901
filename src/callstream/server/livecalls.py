"""The live calls as the operator's views show them: `/calls.json` on the metrics endpoint (and
the page at `/` that reads it), and `callstream status`.

Read-only and computed on request: nothing here runs per Media message or per block. A call's
levels come from the last block it sent to the disk (about the last second of audio), decoded
when asked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from callstream.codec import decode_ulaw

SILENCE_DBFS = -96.0  # the floor reported for digital silence (16-bit)
FULL_SCALE = 32768.0


class LiveCall(Protocol):
    """What a live call shows (`CallRecorder` and `DialogRecorder` have it)."""

    started_monotonic: float
    last_block: Any  # StereoBlock | None

    @property
    def call_id(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    @property
    def blocks_waiting(self) -> int: ...


def level_dbfs(mulaw: bytes) -> float:
    """RMS level of mu-law audio in dBFS (0 = full scale), at least `SILENCE_DBFS`."""
    if not mulaw:
        return SILENCE_DBFS
    pcm = decode_ulaw(mulaw).astype(np.float64)
    rms = math.sqrt(float(np.mean(pcm * pcm)))
    return max(SILENCE_DBFS, 20 * math.log10(rms / FULL_SCALE)) if rms > 0 else SILENCE_DBFS


def _pcm_dbfs(pcm: np.ndarray) -> float:
    rms = math.sqrt(float(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0
    return max(SILENCE_DBFS, 20 * math.log10(rms / FULL_SCALE)) if rms > 0 else SILENCE_DBFS


def _levels(block: Any) -> tuple[float, float]:
    """(left, right) in dBFS of a mu-law StereoBlock, or of a RingCX PcmBlock (``frames``)."""
    frames = getattr(block, "frames", None)
    if frames is not None:
        return _pcm_dbfs(frames[:, 0]), _pcm_dbfs(frames[:, 1])
    return level_dbfs(block.left), level_dbfs(block.right)


def call_view(recorder: Any, now: float, block_seconds: float) -> dict[str, Any]:
    """One live call: ids, seconds since accepted, each side's level (dBFS, None before the first
    block), and ``lag``: seconds of its audio waiting for the disk (blocks queued or being
    written, at ``block_seconds`` each)."""
    block = recorder.last_block
    levels = None if block is None else _levels(block)
    return {
        "call_id": recorder.call_id,
        "session_id": recorder.session_id,
        "started": recorder.started.isoformat(timespec="seconds"),
        "seconds": round(now - recorder.started_monotonic, 1),
        "agent_dbfs": None if levels is None else round(levels[0], 1),
        "caller_dbfs": None if levels is None else round(levels[1], 1),
        "lag": round(recorder.blocks_waiting * block_seconds, 1),
    }


def snapshot(recorders: Iterable[Any] | None, *, live: int, draining: bool, disk_stalled: bool,
             block_seconds: float) -> dict[str, Any]:
    """What `/calls.json` returns. ``recorders``: the live calls of this process, longest first,
    or None where they live in other processes (``serve --workers N``: counts only)."""
    now = time.monotonic()
    calls = None
    if recorders is not None:
        calls = sorted((call_view(r, now, block_seconds) for r in recorders), key=lambda c: -c["seconds"])
    return {"live_calls": live, "draining": draining, "disk_stalled": disk_stalled, "calls": calls}
