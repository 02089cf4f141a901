"""Finish what an interrupted recorder left behind, under the output directory.

A recorder killed mid-call (SIGKILL, power loss, OOM) leaves the audio it had flushed in
`NAME.partial.EXT` and a sidecar with status `recording`. Recovery repairs the audio file (WAV:
header sizes from the file length; FLAC: the complete frames re-encoded into a closed file; of
any channel count, the RingCX participants layout's included: the sidecar's ``channels`` says
the file's),
writes the sidecar with status `recovered` (`failed` when the recorder left the mark
`NAME.failed`: its failed finish could not write the sidecar), the frames found and the
SHA-256, and only then renames the audio to `NAME.EXT`: the same order as a live finish (see
`Recording.finish`), so recovery itself may be killed at any instant and run again.

Besides: a partial file whose sidecar is already final (a finish killed between its sidecar and
its rename) is renamed when its hash matches the sidecar's (else repaired as above); a final
`NAME.EXT` whose sidecar still says `recording` (left by a recorder or recovery that renamed
before writing the sidecar, as versions before sidecar version 2 did) is hashed and its sidecar
marked `recovered`. Recovery runs when `callstream serve` starts, before it listens, when a
worker of `serve --workers N` has died (for what it left), and by hand as `callstream recover
DIR`.

A live recording is never touched, even by another process: its recorder holds an flock on the
partial file from the moment it claims the name (see `naming.reserve`) until the recording is
finished, and the kernel drops the lock when the recorder dies. Recovery takes the same lock
without waiting, and skips the file when it cannot. (An empty partial file younger than
`FRESH_CLAIM_SECONDS` is also skipped: a name claimed a moment ago, its lock being taken. An
older one is removed: its recorder died between claiming the name and writing the header,
so it holds nothing and has no sidecar.) A live recorder's sidecar says `recording` only while
its partial file exists, so a `recording` sidecar beside a final file is never a live one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from callstream.errors import RecordingError
from callstream.storage.recording import (
    FAILED_MARK,
    RECORDING,
    STATUSES,
    fsync_directory,
    read_sidecar,
    rfc3339,
    sha256_file,
    write_sidecar,
)
from callstream.storage.wavfile import SAMPLE_RATE, WavEncoding, repair_wav

LOGGER = logging.getLogger("callstream.recovery")

PARTIAL_MARK = ".partial"
FLAC_CHUNK_FRAMES = 8000  # frames decoded at a time while salvaging a FLAC file
EXTENSIONS = (".wav", ".flac")  # of the audio files recordings have
FRESH_CLAIM_SECONDS = 60.0  # an empty partial file this young may be a claim whose lock is coming


@dataclass(frozen=True, slots=True)
class Recovered:
    """One recovered recording: the final audio path (None when not one complete FLAC frame was
    left: libsndfile cannot write a FLAC file without audio, so there is no file), its sidecar,
    and the frames it holds."""

    path: Path | None
    sidecar: Path
    frames: int
    status: str = "recovered"  # or "failed" (the recorder's mark), or the committed finish's


def find_partials(output_dir: Path) -> list[Path]:
    """Every `*.partial.wav|flac` below ``output_dir``, sorted."""
    return sorted(
        path
        for path in output_dir.rglob(f"*{PARTIAL_MARK}.*")
        if path.is_file() and path.suffix in EXTENSIONS and path.stem.endswith(PARTIAL_MARK)
    )


def _salvage_flac(path: Path, channels: int) -> tuple[int, int]:
    """Re-encode every decodable frame of an unclosed FLAC file into a closed one, in place.

    Returns the frames (samples per channel) kept and the channel count (the file's; else, when
    its header was cut short, ``channels``). Raises RecordingError when the file cannot be read
    or the salvaged copy cannot be written."""
    temporary = path.with_name(path.name + ".salvage.flac")
    frames = 0
    try:
        if _flac_header_cut_short(path):
            return 0, channels
        with _UnclosedFlacReader(str(path)) as source, soundfile.SoundFile(
            str(temporary), "w", SAMPLE_RATE, source.channels, subtype="PCM_16", format="FLAC"
        ) as target:
            channels = source.channels
            block = np.empty((FLAC_CHUNK_FRAMES, channels), dtype=np.int16)
            while True:
                got, complete = _read_decodable(source, block)
                target.write(block[:got])
                frames += got
                if not complete:
                    break
        os.replace(temporary, path)
    except (OSError, soundfile.LibsndfileError, RuntimeError) as error:
        temporary.unlink(missing_ok=True)
        raise RecordingError(f"cannot salvage {str(path)!r}: {error}") from error
    return frames, channels


def _channels(data: dict[str, Any]) -> int:
    """The channel count the sidecar states (2 when it states none: sidecars before the RingCX
    participants layout)."""
    channels = data.get("channels")
    return channels if isinstance(channels, int) and channels > 0 else 2


def _wav_channels(path: Path, default: int) -> int:
    """The channel count in a repaired WAV header (``default`` if unreadable)."""
    try:
        with open(path, "rb") as file:
            header = file.read(24)
    except OSError:
        return default
    return int.from_bytes(header[22:24], "little") if len(header) == 24 else default


def _flac_header_cut_short(path: Path) -> bool:
    """Whether the file ends inside its FLAC header: a recorder killed while libsndfile wrote
    it (at the first write; 86 bytes) left no audio, and libsndfile cannot open the file.
    Raises OSError."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        magic = file.read(4)
        if magic != b"fLaC":
            return b"fLaC".startswith(magic)
        while True:  # metadata blocks: 1 byte last-block flag and type, 3 bytes length, the body
            block = file.read(4)
            if len(block) < 4:
                return True
            end = file.seek(int.from_bytes(block[1:], "big"), os.SEEK_CUR)
            if end > size:
                return True
            if block[0] & 0x80:
                return False


class _UnclosedFlacReader(soundfile.SoundFile):
    """A SoundFile reading a FLAC file whose writer never closed it.

    Its STREAMINFO has no sample count, and after every read of a seekable file soundfile seeks
    to where it thinks the read ended; libsndfile cannot seek in such a file, so the read that
    reaches the end of the audio fails after it had read it. Declared unseekable, soundfile
    leaves the position to libsndfile, whose ``tell()`` stays exact."""

    def seekable(self) -> bool:
        return False


def _read_decodable(source: soundfile.SoundFile, block: np.ndarray) -> tuple[int, bool]:
    """Fill ``block`` from ``source``; returns (frames filled, whether reading may go on).

    The frame the encoder was writing when the process died is cut short, and libsndfile reports
    "lost sync" for the whole read that reaches it, although the read decoded every complete
    FLAC frame before it into ``block`` and advanced its position past them. The position says
    how many: taking it instead of dropping the read keeps up to a read's worth of audio (found
    when a crash test lost the last second it had flushed)."""
    start = source.tell()
    try:
        got = len(source.read(out=block, dtype="int16"))
    except (soundfile.LibsndfileError, RuntimeError):
        try:
            position = source.tell()
        except (soundfile.LibsndfileError, RuntimeError):
            position = start  # the position is lost too: keep what earlier reads gave
        return min(max(position - start, 0), len(block)), False
    return got, got == len(block)


def recover_partial(partial: Path) -> Recovered:
    """Finish one partial recording that no recorder holds: complete its committed finish, or
    repair it, write its sidecar, then rename it (see the module's docstring). Raises
    RecordingError."""
    extension = partial.suffix
    base = partial.with_name(partial.stem[: -len(PARTIAL_MARK)])
    final = base.with_name(base.name + extension)
    sidecar = base.with_name(base.name + ".json")
    mark = base.with_name(base.name + FAILED_MARK)
    if final.exists():
        raise RecordingError(f"{str(final)!r} already exists; leaving {str(partial)!r} untouched")
    try:
        data = read_sidecar(sidecar)
    except RecordingError:
        LOGGER.warning("no readable sidecar for %s: writing a minimal one", final)
        data = {"callId": None, "sessionId": None, "metadata": {}, "statistics": {}}
    if data.get("status") in STATUSES and _complete_commit(partial, final, data):
        _remove_mark(mark)
        return Recovered(path=None if data.get("file") is None else final, sidecar=sidecar,
                         frames=_frames(data), status=str(data["status"]))
    channels = _channels(data)
    if extension == ".wav":
        encoding = WavEncoding.MULAW if data.get("format") == "mulaw-wav" else WavEncoding.PCM_16
        frames, channels = repair_wav(partial, encoding, channels), _wav_channels(partial, channels)
    else:
        frames, channels = _salvage_flac(partial, channels)
    audio: Path | None = None if extension == ".flac" and frames == 0 else final
    try:
        ended = datetime.fromtimestamp(partial.stat().st_mtime, UTC)
    except OSError as error:
        raise RecordingError(f"cannot read {str(partial)!r}: {error}") from error
    status = "failed" if mark.exists() else "recovered"
    data.pop("partial_file", None)
    data.update(
        status=status,
        # None: the salvaged copy is empty, an unplayable zero-byte file: only the sidecar stays
        file=None if audio is None else audio.name,
        sample_rate=SAMPLE_RATE,
        channels=channels,
        frames=frames,
        duration_seconds=round(frames / SAMPLE_RATE, 3),
        ended=rfc3339(ended),
        sha256=None if audio is None else sha256_file(partial),
    )
    data.setdefault("format", "flac" if extension == ".flac" else "wav")
    write_sidecar(sidecar, data)  # the commit record, before the rename (as a live finish)
    _remove_mark(mark)  # the sidecar says it now
    _move(partial, audio)
    return Recovered(path=audio, sidecar=sidecar, frames=frames, status=status)


def _complete_commit(partial: Path, final: Path, data: dict[str, Any]) -> bool:
    """Make the rename a finish killed after writing its final sidecar did not make. True when
    done; False when the partial file is not what the sidecar describes (its SHA-256 differs:
    a power loss took audio the sidecar had counted), then it is to be repaired."""
    if data.get("file") is None:  # recovery's own sidecar of an empty FLAC file
        _move(partial, None)
        return True
    if data.get("file") != final.name or data.get("sha256") != sha256_file(partial):
        LOGGER.warning("%s does not match its final sidecar: repairing it", partial)
        return False
    _move(partial, final)
    return True


def _move(partial: Path, final: Path | None) -> None:
    """Rename ``partial`` to ``final`` (None: remove it) and make that durable."""
    try:
        if final is None:
            partial.unlink()
        else:
            os.replace(partial, final)
        fsync_directory(partial.parent)
    except OSError as error:
        raise RecordingError(f"cannot rename {str(partial)!r}: {error.strerror or error}") from error


def _remove_mark(mark: Path) -> None:
    try:
        mark.unlink(missing_ok=True)
    except OSError as error:
        LOGGER.error("cannot remove %s: %s", mark, error.strerror or error)


def _frames(data: dict[str, Any]) -> int:
    frames = data.get("frames")
    return frames if isinstance(frames, int) else 0


@contextmanager
def _orphaned(partial: Path) -> Iterator[os.stat_result | None]:
    """``partial``'s status when no live recorder holds it, else None (see the module's
    docstring); while not None, this process holds the file's lock, so that two recoveries
    never work on one file."""
    try:
        fd = os.open(partial, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # finished meanwhile
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        except OSError:  # a file system without flock: recorders could not lock either
            pass
        status = os.fstat(fd)
        young = time.time() - status.st_mtime < FRESH_CLAIM_SECONDS
        yield None if status.st_size == 0 and young else status
    finally:
        os.close(fd)


def _remove_claim(partial: Path) -> None:
    """Remove an orphaned claim that never got a header (see the module's docstring)."""
    try:
        partial.unlink()
    except OSError as error:
        LOGGER.error("cannot remove the empty claim %s: %s", partial, error)
        return
    LOGGER.warning("removed %s: an empty claim left by a recorder that died before recording", partial)


def recover_renamed(sidecar: Path) -> Recovered | None:
    """Finish a recording whose audio is at its final name while its sidecar still says
    `recording` (see the module's docstring): hash it, count its frames, mark the sidecar
    `recovered` (`failed` with the recorder's mark). None when the sidecar is not such a one
    (final, or its partial file is still there). Raises RecordingError."""
    data = read_sidecar(sidecar)
    base = sidecar.with_name(sidecar.name[: -len(".json")])
    mark = base.with_name(base.name + FAILED_MARK)
    if data.get("status") != RECORDING:
        if data.get("status") in STATUSES and mark.exists():
            _remove_mark(mark)  # a kill came between the sidecar that says failed and this
        return None
    for extension in EXTENSIONS:
        if base.with_name(f"{base.name}{PARTIAL_MARK}{extension}").exists():
            return None  # the partial pass's (or a live recorder's)
    finals = [base.with_name(base.name + extension) for extension in EXTENSIONS]
    final = next((path for path in finals if path.exists()), None)
    if final is None:
        raise RecordingError(f"{str(sidecar)!r} says recording, but its audio is gone")
    if read_sidecar(sidecar).get("status") != RECORDING:
        return None  # a live finish committed meanwhile (it renames after its sidecar)
    channels = _channels(data)
    if final.suffix == ".wav":
        encoding = WavEncoding.MULAW if data.get("format") == "mulaw-wav" else WavEncoding.PCM_16
        frames, channels = repair_wav(final, encoding, channels), _wav_channels(final, channels)
    else:
        try:
            info = soundfile.info(str(final))
            frames, channels = info.frames, info.channels
        except (soundfile.LibsndfileError, RuntimeError):
            frames, channels = _salvage_flac(final, channels)
    status = "failed" if mark.exists() else "recovered"
    try:
        ended = datetime.fromtimestamp(final.stat().st_mtime, UTC)
    except OSError as error:
        raise RecordingError(f"cannot read {str(final)!r}: {error}") from error
    data.pop("partial_file", None)
    data.update(
        status=status,
        file=final.name,
        sample_rate=SAMPLE_RATE,
        channels=channels,
        frames=frames,
        duration_seconds=round(frames / SAMPLE_RATE, 3),
        ended=rfc3339(ended),
        sha256=sha256_file(final),
    )
    write_sidecar(sidecar, data)
    _remove_mark(mark)
    return Recovered(path=final, sidecar=sidecar, frames=frames, status=status)


def recover_directory(output_dir: Path) -> list[Recovered]:
    """Recover every interrupted recording below ``output_dir`` that no live recorder holds:
    partial files, then final files whose sidecar says `recording`; logs each; never raises
    for one file."""
    recovered = []
    if not output_dir.is_dir():
        return recovered
    live = 0
    for partial in find_partials(output_dir):
        with _orphaned(partial) as status:
            if status is None:
                live += 1
                continue
            if status.st_size == 0:
                _remove_claim(partial)
                continue
            try:
                result = recover_partial(partial)
            except RecordingError as error:
                LOGGER.error("recovery of %s failed: %s", partial, error)
                continue
        _log(result)
        recovered.append(result)
    for sidecar in sorted(output_dir.rglob("*.json")):
        try:
            renamed = recover_renamed(sidecar)
        except RecordingError as error:
            LOGGER.error("recovery of %s failed: %s", sidecar, error)
            continue
        if renamed is not None:
            _log(renamed)
            recovered.append(renamed)
    if live:
        LOGGER.info("left %d partial recordings alone: a live recorder is writing them", live)
    return recovered


def _log(result: Recovered) -> None:
    what = result.sidecar if result.path is None else result.path
    if result.status in ("recovered", "failed"):
        LOGGER.warning("recovered %s (%s): %.1f s of audio left by an interrupted recorder",
                       what, result.status, result.frames / SAMPLE_RATE)
    else:
        LOGGER.warning("completed the interrupted finish of %s (%s, %.1f s)",
                       what, result.status, result.frames / SAMPLE_RATE)
