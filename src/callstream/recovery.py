"""Finish what a crashed recorder left behind: every `NAME.partial.EXT` under the output directory.

A recorder killed mid-call (SIGKILL, power loss, OOM) leaves the audio it had flushed in
`NAME.partial.EXT` and a sidecar with status `recording`. Recovery repairs the audio file (WAV:
header sizes from the file length; FLAC: the complete frames re-encoded into a closed file),
renames it to `NAME.EXT` and rewrites the sidecar with status `recovered`, the frames found and
the SHA-256. It runs when `callstream serve` starts, before it listens, and by hand as
`callstream recover DIR`. It must never run over a directory a live recorder is writing into.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import soundfile

from callstream.errors import RecordingError
from callstream.recording import read_sidecar, rfc3339, sha256_file, write_sidecar
from callstream.wavfile import SAMPLE_RATE, repair_wav

LOGGER = logging.getLogger("callstream.recovery")

PARTIAL_MARK = ".partial"
FLAC_CHUNK_FRAMES = 8000  # frames decoded at a time while salvaging a FLAC file


@dataclass(frozen=True, slots=True)
class Recovered:
    """One recovered recording: the final audio path, its sidecar, and the frames it holds."""

    path: Path
    sidecar: Path
    frames: int


def find_partials(output_dir: Path) -> list[Path]:
    """Every `*.partial.wav|flac` below ``output_dir``, sorted."""
    return sorted(
        path
        for path in output_dir.rglob(f"*{PARTIAL_MARK}.*")
        if path.is_file() and path.suffix in (".wav", ".flac") and path.stem.endswith(PARTIAL_MARK)
    )


def _salvage_flac(path: Path) -> int:
    """Re-encode the decodable frames of an unclosed FLAC file into a closed one, in place."""
    temporary = path.with_name(path.name + ".salvage.flac")
    frames = 0
    try:
        with soundfile.SoundFile(str(path)) as source, soundfile.SoundFile(
            str(temporary), "w", SAMPLE_RATE, source.channels, subtype="PCM_16", format="FLAC"
        ) as target:
            while True:
                try:
                    block = source.read(FLAC_CHUNK_FRAMES, dtype="int16")
                except (soundfile.LibsndfileError, RuntimeError):
                    break  # the frame the encoder was writing when the process died
                if not len(block):
                    break
                target.write(block)
                frames += len(block)
        os.replace(temporary, path)
    except (OSError, soundfile.LibsndfileError, RuntimeError) as error:
        temporary.unlink(missing_ok=True)
        raise RecordingError(f"cannot salvage {str(path)!r}: {error}") from error
    return frames


def recover_partial(partial: Path) -> Recovered:
    """Repair, rename and re-describe one partial recording. Raises RecordingError."""
    extension = partial.suffix
    base = partial.with_name(partial.stem[: -len(PARTIAL_MARK)])
    final = base.with_name(base.name + extension)
    sidecar = base.with_name(base.name + ".json")
    if final.exists():
        raise RecordingError(f"{str(final)!r} already exists; leaving {str(partial)!r} untouched")
    frames = repair_wav(partial) if extension == ".wav" else _salvage_flac(partial)
    try:
        ended = datetime.fromtimestamp(partial.stat().st_mtime, UTC)
        os.replace(partial, final)
    except OSError as error:
        raise RecordingError(f"cannot rename {str(partial)!r}: {error}") from error
    try:
        data = read_sidecar(sidecar)
    except RecordingError:
        LOGGER.warning("no readable sidecar for %s: writing a minimal one", final)
        data = {"callId": None, "sessionId": None, "metadata": {}, "statistics": {}}
    data.pop("partial_file", None)
    data.update(
        status="recovered",
        file=final.name,
        sample_rate=SAMPLE_RATE,
        channels=2,
        frames=frames,
        duration_seconds=round(frames / SAMPLE_RATE, 3),
        ended=rfc3339(ended),
        sha256=sha256_file(final),
    )
    data.setdefault("format", "flac" if extension == ".flac" else "wav")
    write_sidecar(sidecar, data)
    return Recovered(path=final, sidecar=sidecar, frames=frames)


def recover_directory(output_dir: Path) -> list[Recovered]:
    """Recover every partial recording below ``output_dir``; logs each; never raises for one file."""
    recovered = []
    if not output_dir.is_dir():
        return recovered
    for partial in find_partials(output_dir):
        try:
            result = recover_partial(partial)
        except RecordingError as error:
            LOGGER.error("recovery of %s failed: %s", partial, error)
            continue
        LOGGER.warning(
            "recovered %s: %.1f s of audio left by an interrupted recorder", result.path, result.frames / SAMPLE_RATE
        )
        recovered.append(result)
    return recovered
