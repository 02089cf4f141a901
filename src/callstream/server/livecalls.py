"""The live calls as the operator's views show them: `/calls.json` on the metrics endpoint (and
the page at `/` that reads it), and `callstream status`.

Read-only: nothing here runs per Media message, and per block only `level_sample`. A single
process computes the view on request; each worker of ``serve --workers N`` writes its own once
per flush interval (`write_snapshot`, at most `MAX_ROWS` calls) and the supervisor merges them
when asked (`merge_snapshots`). A call's levels come from the last 0.3 s of the audio it sent to the disk
(`LEVEL_SAMPLES`), which the recorder keeps a copy of per block (`level_sample`), decoded when
the view is made.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from callstream.codec import decode_ulaw

MAX_ROWS = 500  # calls listed by /calls.json at most (the longest); the counts count them all
SILENCE_DBFS = -96.0  # the floor reported for digital silence (16-bit)
FULL_SCALE = 32768.0
# A call's level is the RMS of the last LEVEL_SAMPLES of the audio it sent to the disk: 0.3 s at
# 8 kHz, a VU meter's integration time. The recorder keeps a copy of that much of each block
# (`level_sample`: a memcpy, ~0.1 us a side); keeping the whole last block instead cost every
# live call 16 KB of RSS, and a strided sample of it 0.7 us a side per block.
LEVEL_SAMPLES = 2400


class LiveCall(Protocol):
    """What a live call shows (`CallRecorder` has it, for either front end)."""

    front_end: str  # one of metrics.FRONT_ENDS
    started_monotonic: float
    level_sample: Any  # `level_sample` of the latest block sent to the disk, or None before one

    @property
    def call_id(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    @property
    def blocks_waiting(self) -> int: ...


# each mu-law code's linear value squared: a level is the mean of these over the codes (one
# numpy call, half the time of decoding then squaring)
_SQUARES = decode_ulaw(bytes(range(256))).astype(np.float64) ** 2


def level_dbfs(mulaw: bytes) -> float:
    """RMS level of mu-law audio in dBFS (0 = full scale), at least `SILENCE_DBFS`."""
    if not mulaw:
        return SILENCE_DBFS
    rms = math.sqrt(float(_SQUARES.take(np.frombuffer(mulaw, np.uint8)).sum()) / len(mulaw))
    return max(SILENCE_DBFS, 20 * math.log10(rms / FULL_SCALE)) if rms > 0 else SILENCE_DBFS


def _pcm_dbfs(pcm: np.ndarray) -> float:
    rms = math.sqrt(float(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0
    return max(SILENCE_DBFS, 20 * math.log10(rms / FULL_SCALE)) if rms > 0 else SILENCE_DBFS


def level_sample(block: Any) -> tuple[bytes, bytes] | np.ndarray:
    """What a live call keeps of a block sent to the disk for the view's levels: its last
    `LEVEL_SAMPLES` samples (all of a shorter block). Of a mu-law StereoBlock each side's last
    bytes, ``(left, right)`` (a copy, or the side itself when short); of a RingCX PcmBlock its
    first two channels' last frames (a copy: int16, shape (n, 2)). Cheap: once per block."""
    frames = getattr(block, "frames", None)
    if frames is not None:
        return frames[-LEVEL_SAMPLES:, :2].copy()
    return block.left[-LEVEL_SAMPLES:], block.right[-LEVEL_SAMPLES:]


def _levels(sample: Any) -> tuple[float, float]:
    """(left, right) in dBFS of a `level_sample`."""
    if type(sample) is tuple:
        return level_dbfs(sample[0]), level_dbfs(sample[1])
    return _pcm_dbfs(sample[:, 0]), _pcm_dbfs(sample[:, 1])


def call_view(recorder: Any, now: float, block_seconds: float) -> dict[str, Any]:
    """One live call: ids, seconds since accepted, each side's level (dBFS, None before the first
    block), and ``lag``: seconds of its audio waiting for the disk (blocks queued or being
    written, at ``block_seconds`` each)."""
    sample = recorder.level_sample
    levels = None if sample is None else _levels(sample)
    return {
        "front_end": recorder.front_end,
        "call_id": recorder.call_id,
        "session_id": recorder.session_id,
        "started": recorder.started.isoformat(timespec="seconds"),
        "seconds": round(now - recorder.started_monotonic, 1),
        "agent_dbfs": None if levels is None else round(levels[0], 1),
        "caller_dbfs": None if levels is None else round(levels[1], 1),
        "lag": round(recorder.blocks_waiting * block_seconds, 1),
    }


@dataclass(frozen=True, slots=True)
class FrozenCall:
    """A live call's facts as of one moment (`freeze`), for a view made in another thread."""

    front_end: str
    call_id: str
    session_id: str
    started: datetime
    started_monotonic: float
    level_sample: Any
    blocks_waiting: int


def freeze(recorder: Any) -> FrozenCall:
    """The facts `call_view` reads, taken now (in trio: a few attribute reads, no decoding)."""
    return FrozenCall(recorder.front_end, recorder.call_id, recorder.session_id, recorder.started,
                      recorder.started_monotonic, recorder.level_sample, recorder.blocks_waiting)


def front_ends(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Per front end (every one of `metrics.FRONT_ENDS`): ``{"live": n, "oldest": call or None}``,
    from ``calls`` (longest first)."""
    from callstream.server.metrics import FRONT_ENDS

    result: dict[str, Any] = {name: {"live": 0, "oldest": None} for name in FRONT_ENDS}
    for call in calls:
        entry = result.setdefault(call["front_end"], {"live": 0, "oldest": None})
        entry["live"] += 1
        if entry["oldest"] is None:
            entry["oldest"] = call
    return result


def shipping_view(pending: int, pending_bytes: int, oldest_enqueued: float | None) -> dict[str, Any]:
    """Recordings waiting to be shipped (uploaded and announced): how many, the local bytes of
    those waiting for the store, and the seconds since the oldest was queued (None: none)."""
    oldest = None if oldest_enqueued is None else round(max(0.0, time.time() - oldest_enqueued), 1)
    return {"pending": pending, "bytes": pending_bytes, "oldest_seconds": oldest}


def snapshot(recorders: Iterable[Any] | None, *, live: int, draining: bool, disk_stalled: bool,
             block_seconds: float, max_rows: int | None = None,
             shipping: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `/calls.json` returns. ``recorders``: the live calls of this process, or None where
    they are not known (counts only). ``calls`` is longest first, at most ``max_rows`` of them
    (None: all); ``front_ends`` counts every call all the same (see `front_ends`); ``shipping``:
    a `shipping_view`, or None without shipping."""
    now = time.monotonic()
    calls = None
    per_front_end = None
    if recorders is not None:
        # longest first; levels are decoded only for the calls listed and each front end's oldest
        ordered = sorted(recorders, key=lambda r: r.started_monotonic)
        listed = ordered if max_rows is None else ordered[:max_rows]
        calls = [call_view(r, now, block_seconds) for r in listed]
        per_front_end = front_ends(calls)
        for recorder in ordered[len(listed):]:
            entry = per_front_end.setdefault(recorder.front_end, {"live": 0, "oldest": None})
            entry["live"] += 1
            if entry["oldest"] is None:
                entry["oldest"] = call_view(recorder, now, block_seconds)
    return {"live_calls": live, "draining": draining, "disk_stalled": disk_stalled, "calls": calls,
            "front_ends": per_front_end, "shipping": shipping}


def write_snapshot(path: Path, view: dict[str, Any]) -> None:
    """Replace ``path`` with ``view`` (a `snapshot`) and the wall-clock time it was taken, at
    once (a reader sees the old file or the new one, whole). Raises OSError."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"written": time.time(), **view}))
    os.replace(temporary, path)


def merge_snapshots(paths: Iterable[Path], *, live: int, draining: bool, disk_stalled: bool,
                    max_rows: int) -> dict[str, Any]:
    """`/calls.json` across processes (``serve --workers N``): the calls of every snapshot file
    in ``paths`` (see `write_snapshot`; a missing or unreadable one is skipped), their ages
    moved on by the time since each was written, longest first, at most ``max_rows``.
    ``live``, ``draining``, ``disk_stalled``: the totals (the snapshots may be a tick old)."""
    calls: list[dict[str, Any]] = []
    per_front_end = front_ends([])
    shipping: dict[str, Any] | None = None
    now = time.time()
    for path in paths:
        try:
            view = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # not written yet (a worker starting), or gone with its worker
        age = max(0.0, now - float(view.get("written", now)))

        def aged(call: dict[str, Any]) -> dict[str, Any]:
            return {**call, "seconds": round(call["seconds"] + age, 1)}  # noqa: B023 (used at once)

        calls.extend(aged(call) for call in view.get("calls") or ())
        for name, entry in (view.get("front_ends") or {}).items():
            merged = per_front_end.setdefault(name, {"live": 0, "oldest": None})
            merged["live"] += int(entry["live"])
            oldest = entry.get("oldest")
            if oldest is not None and (merged["oldest"] is None or
                                       oldest["seconds"] + age > merged["oldest"]["seconds"]):
                merged["oldest"] = aged(oldest)
        ships = view.get("shipping")
        if ships is not None:  # every worker sees the whole spool they share: the largest, the oldest
            oldest = ships["oldest_seconds"]
            shipping = shipping or {"pending": 0, "bytes": 0, "oldest_seconds": None}
            shipping["pending"] = max(shipping["pending"], ships["pending"])
            shipping["bytes"] = max(shipping["bytes"], ships["bytes"])
            if oldest is not None:
                aged_oldest = round(oldest + age, 1)
                if shipping["oldest_seconds"] is None or aged_oldest > shipping["oldest_seconds"]:
                    shipping["oldest_seconds"] = aged_oldest
    calls.sort(key=lambda c: -c["seconds"])
    return {"live_calls": live, "draining": draining, "disk_stalled": disk_stalled, "calls": calls[:max_rows],
            "front_ends": per_front_end, "shipping": shipping}
