"""`callstream simulate --verify DIR`: check every recording a load run left against what it sent.

A call passes when its sidecar (found by callId and sessionId) says ``complete``, holds exactly
the frames sent, and the audio file decodes to the sent mu-law sample for sample.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from callstream.codec import decode_ulaw_stereo
from callstream.sim.loadgen import FRAME_BYTES, CallSpec, FramePool

FINALISE_WAIT = 60.0  # seconds to wait for recordings still being written to be finished
MISSING_WAIT = 3.0  # seconds to wait for a recording that has no sidecar at all yet
POLL_INTERVAL = 0.2  # seconds


@dataclass(frozen=True, slots=True)
class Verdict:
    call_id: str
    ok: bool
    detail: str
    path: Path | None = None


def find_sidecars(directory: Path) -> dict[tuple[str, str], list[dict]]:
    """Sidecars below ``directory`` by (callId, sessionId); each with its path under ``_path``."""
    found: dict[tuple[str, str], list[dict]] = {}
    for path in directory.rglob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or not ours
        if isinstance(data, dict) and "callId" in data:
            data["_path"] = path
            found.setdefault((str(data.get("callId")), str(data.get("sessionId"))), []).append(data)
    return found


def wait_for_sidecars(
    directory: Path, calls: Sequence[CallSpec], timeout: float = FINALISE_WAIT
) -> dict:
    """Poll until every call has a finished sidecar, giving up after ``timeout`` seconds while
    some are still being written, or after MISSING_WAIT when the rest have none at all (the
    server writes the sidecar with the first audio, so a finished call without one has none)."""
    start = time.monotonic()
    while True:
        found = find_sidecars(directory)
        writing = missing = 0
        for call in calls:
            sidecars = found.get((call.call_id, call.session_id), [])
            if not sidecars:
                missing += 1
            elif all(d.get("status") == "recording" for d in sidecars):
                writing += 1
        waited = time.monotonic() - start
        if not (writing or missing) or waited > timeout or (not writing and waited > MISSING_WAIT):
            return found
        time.sleep(POLL_INTERVAL)


def verify_call(call: CallSpec, sidecars: list[dict], pool: FramePool) -> Verdict:
    import soundfile

    if not sidecars:
        return Verdict(call.call_id, False, "no recording")
    data = max(sidecars, key=lambda d: str(d.get("started")))  # the newest, if a name was reused
    path = data["_path"].parent / str(data.get("file"))
    if data.get("status") != "complete":
        return Verdict(call.call_id, False, f"status {data.get('status')}", path)
    want = call.frames * FRAME_BYTES
    if data.get("frames") != want:
        return Verdict(
            call.call_id, False, f"{data.get('frames')} frames recorded, {want} sent", path
        )
    try:
        audio, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        return Verdict(call.call_id, False, f"cannot read audio: {error}", path)
    expected = decode_ulaw_stereo(*pool.expected(call))
    if rate != 8000 or audio.shape != expected.shape:
        return Verdict(
            call.call_id,
            False,
            f"audio is {audio.shape} at {rate} Hz, expected {expected.shape}",
            path,
        )
    differs = np.flatnonzero((audio != expected).any(axis=1))
    if len(differs):
        first = int(differs[0])
        return Verdict(
            call.call_id,
            False,
            f"{len(differs)} samples differ, the first at {first} "
            f"(frame {first // FRAME_BYTES + 1})",
            path,
        )
    return Verdict(call.call_id, True, f"{want / 8000:.2f} s identical", path)


def verify(
    directory: Path, calls: Sequence[CallSpec], pool: FramePool, timeout: float = FINALISE_WAIT
) -> list[Verdict]:
    found = wait_for_sidecars(directory, calls, timeout)
    return [
        verify_call(call, found.get((call.call_id, call.session_id), []), pool) for call in calls
    ]
