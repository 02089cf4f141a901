"""One call's files: the audio (through a sink) and its JSON sidecar.

Life of a recording: ``create`` reserves ``NAME`` (see ``naming.reserve``), opens the sink on
``NAME.partial.EXT`` and writes ``NAME.json`` with ``"status": "recording"`` at once, so a crash
leaves the metadata beside the audio for recovery. ``finish`` commits the recording in an order
that is safe at every instant (see `Recording.finish`): close the sink, hash the partial file,
write the final sidecar (the commit record), and only then rename the audio to ``NAME.EXT``.
Whatever a kill interrupts, ``recovery`` completes: it repairs every recording whose sidecar is
not final, and completes the rename of one whose sidecar is.

Streams of the same call and session get ``NAME``, ``NAME-2`` ...; each sidecar says which
(``root``, ``stream``) and nothing about the others, so creating or finishing a stream touches
its own files only: no sidecar of another recording is read or written, and no lock is shared
between recordings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from callstream.call.blocks import Block, PcmBlock
from callstream.errors import RecordingError
from callstream.storage.naming import FILE_MODE, Reservation, render_path, reserve
from callstream.storage.sinks import EXTENSIONS, AudioSink, open_sink
from callstream.storage.wavbatch import PlannedAppend
from callstream.storage.wavfile import CHANNELS, SAMPLE_RATE

LOGGER = logging.getLogger("callstream.recording")

STATUSES: Final = frozenset({"complete", "incomplete", "recovered", "failed"})
RECORDING: Final = "recording"  # the status of a sidecar whose audio is still being written
CHANNEL_MAP: Final = {"left": "agent (Participant)", "right": "caller (Conference)"}
SIDECAR_VERSION: Final = 2  # 2: "root" and "stream" instead of the list of "siblings"
# what `json.dumps(indent=2, default=str)` would write: datetimes and dataclasses through ``default``
# (orjson has its own forms of them), keys that are not strings as strings
_ORJSON_OPTIONS: Final = (orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                          | orjson.OPT_PASSTHROUGH_DATACLASS)
# Bytes read at a time for the SHA-256, into one reused buffer: a fresh large bytes object
# per read costs page faults (~0.4 ms of a 30 s call's ~1 ms hash); each read and update
# releases the GIL, so a few large reads rather than many small ones.
_HASH_CHUNK: Final = 1 << 18
# NAME.failed: an empty file left beside a recording whose failed finish could not write its
# sidecar (a full disk: creating an empty file takes no data block); recovery then marks the
# recording "failed" instead of "recovered", and removes the mark.
FAILED_MARK: Final = ".failed"


def rfc3339(when: datetime) -> str:
    """``2024-05-01T12:00:00.250Z``: UTC, milliseconds. A naive datetime raises ValueError."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(action: str, path: Path, exc: OSError) -> RecordingError:
    return RecordingError(f"cannot {action} {str(path)!r}: {exc.strerror or exc}")


def open_directory(directory: Path) -> int:
    """A descriptor of ``directory`` to fsync (the caller closes it); raises OSError."""
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable; raises OSError."""
    fd = open_directory(directory)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_sidecar(data: Mapping[str, Any]) -> bytes:
    """A sidecar's JSON: indented by two spaces, UTF-8, a newline at the end; what JSON cannot
    hold (a datetime, a path, a dataclass) as ``str(value)``. orjson writes it (120 us a sidecar
    with the standard library's indenting encoder, which is pure Python, against 3 us); the
    standard library, as ASCII with escapes, only for what orjson refuses: a string with a lone
    surrogate (which UTF-8 cannot hold), an integer beyond 64 bits. Raises TypeError for a key
    JSON cannot have, as `json.dumps` does."""
    try:
        return orjson.dumps(data, default=str, option=_ORJSON_OPTIONS) + b"\n"
    except orjson.JSONEncodeError:
        return (json.dumps(data, indent=2, default=str) + "\n").encode("ascii")


def write_sidecar(path: Path, data: Mapping[str, Any], *, durable: bool = True,
                  directory: int | None = None) -> None:
    """Atomically replace the JSON file ``path`` with ``data``.

    Writes ``path.tmp``, fsyncs it, ``os.replace``s it over ``path`` and fsyncs the directory
    (without ``durable``: the same, less both fsyncs, which cost more than all the rest).
    ``directory``: an open descriptor of ``path``'s directory to fsync (the caller's, left
    open), which spares opening and closing the directory here.
    Values JSON cannot hold are written as ``str(value)`` (see `encode_sidecar`). Not locked:
    callers that may race with a running recorder must not rewrite sidecars of live recordings.
    Raises RecordingError.
    """
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    encoded = memoryview(encode_sidecar(data))
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:  # the bytes as they are: a text file object costs four more system calls
            while encoded:
                encoded = encoded[os.write(fd, encoded):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        if durable:
            if directory is None:
                fsync_directory(path.parent)
            else:
                os.fsync(directory)
    except OSError as exc:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            LOGGER.warning("cannot remove %s", temporary)
        raise _error("write", path, exc) from exc


def read_sidecar(path: Path) -> dict[str, Any]:
    """Read a sidecar; RecordingError if it cannot be read or is not a JSON object."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except OSError as exc:
        raise _error("read", path, exc) from exc
    except ValueError as exc:
        raise RecordingError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RecordingError(f"{str(path)!r} does not hold a JSON object")
    return data


def sha256_file(path: Path, chunk: int = _HASH_CHUNK) -> str:
    """Hex SHA-256 of a file's content, read ``chunk`` bytes at a time; RecordingError on failure."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    try:
        with open(path, "rb", buffering=0) as file:
            while size := file.readinto(buffer):
                digest.update(view[:size])
    except OSError as exc:
        raise _error("read", Path(path), exc) from exc
    return digest.hexdigest()


class Recording:
    """The audio file and sidecar of one call stream. Blocking; one thread at a time."""

    def __init__(self, reservation: Reservation, sink: AudioSink, fmt: str, *,
                 fields: Mapping[str, Any], started: datetime,
                 metadata: Mapping[str, Any], channel_map: Mapping[str, Any] | None = None) -> None:
        """Use ``create``; this only assembles the parts."""
        self._channel_map = dict(CHANNEL_MAP if channel_map is None else channel_map)
        self._reservation = reservation
        self._sink = sink
        self._format = fmt
        self._call_id = _identity(fields.get("callId"))
        self._session_id = _identity(fields.get("sessionId"))
        self._started = rfc3339(started)
        self._metadata = dict(metadata)
        self._finished = False
        self._marked = False  # a failed finish left NAME.failed (to remove once finished)

    @classmethod
    def create(cls, output_dir: Path, template: str, fmt: str, *, fields: Mapping[str, Any],
               started: datetime, metadata: Mapping[str, Any], durable: bool = True,
               channel_map: Mapping[str, Any] | None = None, channels: int = CHANNELS) -> Recording:
        """Reserve the name, open the sink on ``NAME.partial.EXT`` and write the sidecar.

        ``fields`` are the mapped metadata fields (they name the file and identify the call);
        ``metadata`` is stored in the sidecar as it is. ``durable``: fsync the first sidecar (a
        server without --fsync does not: nothing of a live recording is durable then, and the
        fsyncs cost more than the rest of a create; the final sidecar always is). ValueError for
        an unknown ``fmt``, a bad template or a naive ``started``; RecordingError if the disk
        fails (nothing is left). ``channel_map``: what the sidecar says each channel holds
        (default: the WebSocket front end's CHANNEL_MAP). ``channels``: the audio file's channel
        count (2; more only for PCM written with `write_pcm`, see `sinks.open_sink`).
        """
        if fmt not in EXTENSIONS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(EXTENSIONS)}")
        rfc3339(started)
        relative = render_path(template, fields, when=started)
        reservation = reserve(Path(output_dir), relative, EXTENSIONS[fmt])
        try:
            sink = open_sink(fmt, reservation.partial, channels)
        except BaseException:
            reservation.partial.unlink(missing_ok=True)
            reservation.release()
            raise
        recording = cls(reservation, sink, fmt, fields=fields, started=started,
                        metadata=metadata, channel_map=channel_map)
        try:
            recording._publish(RECORDING, ended=None, sha256=None, statistics={}, durable=durable)
        except BaseException:
            with contextlib.suppress(RecordingError):
                sink.close()
            reservation.partial.unlink(missing_ok=True)
            reservation.release()
            raise
        return recording

    @property
    def path(self) -> Path:
        """Where the finished audio file is (or will be)."""
        return self._reservation.final

    @property
    def partial_path(self) -> Path:
        return self._reservation.partial

    @property
    def sidecar_path(self) -> Path:
        return self._reservation.sidecar

    @property
    def name(self) -> str:
        """The base name: ``NAME`` or ``NAME-N``."""
        return self._reservation.base.name

    @property
    def format(self) -> str:
        return self._format

    @property
    def frames_written(self) -> int:
        """Samples per channel written so far."""
        return self._sink.frames_written

    @property
    def finished(self) -> bool:
        """True once `finish` has succeeded."""
        return self._finished

    @property
    def stream(self) -> int:
        """1 for ``NAME``, N for ``NAME-N``: which stream of this name the recording is."""
        return self._reservation.number

    def write(self, left: bytes, right: bytes) -> None:
        """Append mu-law samples of both channels (equal lengths, else ValueError)."""
        self._sink.write(left, right)

    def write_pcm(self, frames: Any) -> None:
        """Append 16-bit PCM frames, (n, channels) int16 (see `AudioSink.write_pcm`)."""
        self._sink.write_pcm(frames)

    def append(self, block: Block) -> None:
        """Append one block of the call core, whichever engine cut it: a `StereoBlock`'s mu-law
        pair (`write`) or a `PcmBlock`'s frames (`write_pcm`). ValueError for a block the file
        cannot hold (a mu-law pair in a file of other than 2 channels, frames of another
        channel count)."""
        if type(block) is PcmBlock:
            self.write_pcm(block.frames)
        else:
            self.write(block.left, block.right)  # type: ignore[union-attr]

    def flush(self, fsync: bool = False) -> None:
        """Make everything written so far readable in the partial file (durable if fsync)."""
        self._sink.flush(fsync)

    def update(self, *, metadata: Mapping[str, Any], channel_map: Mapping[str, Any],
               durable: bool = True) -> None:
        """Rewrite the sidecar of the live recording (status ``recording``) with new metadata and
        channel map: what recovery keeps if the recorder dies (a participant that joined after
        the file was created). Before `finish` only (else ValueError); raises RecordingError."""
        if self._finished:
            raise ValueError(f"{self.name!r} is already finished")
        self._metadata = dict(metadata)
        self._channel_map = dict(channel_map)
        self._publish(RECORDING, ended=None, sha256=None, statistics={}, durable=durable)

    def plan(self, left: bytes, right: bytes) -> PlannedAppend | None:
        """The block as a batched append (`wavbatch.append_all` writes it), or None when this
        format or build has none (then use `write` and `flush`)."""
        planner = getattr(self._sink, "plan", None)
        return None if planner is None else planner(left, right)

    def plan_pcm(self, frames: Any) -> PlannedAppend | None:
        """16-bit PCM frames, (n, channels) int16, as a batched append, or None when this format
        or build has none (then use `write_pcm` and `flush`)."""
        planner = getattr(self._sink, "plan_pcm", None)
        return None if planner is None else planner(frames)

    def finish(self, status: str, *, ended: datetime, metadata: Mapping[str, Any],
               statistics: Mapping[str, Any] | Any, channel_map: Mapping[str, Any] | None = None) -> Path:
        """Close the audio, hash it, write the final sidecar, move the audio to its final name.

        ``status`` is one of STATUSES; ``statistics`` a dict (or a dataclass); ``channel_map``
        replaces the one given to `create` (a layout whose channels fill as the call goes on).
        Returns the final
        path. The steps, in this order, make finishing safe at every instant:
        1. close the sink (fsynced); 2. hash ``NAME.partial.EXT``; 3. write the final sidecar
        atomically and durably, naming ``NAME.EXT`` and the hash: the commit record, after which
        the recording is finished whatever happens; 4. rename the audio to ``NAME.EXT`` and
        fsync the directory; 5. let recovery have the files (release the claim's lock).
        A kill before 3 leaves a ``recording`` sidecar: recovery repairs the partial file and
        marks it ``recovered``. A kill between 3 and 4 leaves a final sidecar beside the partial
        file: recovery checks the hash and completes the rename.

        Raises RecordingError if the disk fails, or if a file already sits at the final name
        (then the audio stays at ``partial_path``). After a RecordingError ``finish`` may be
        called again, for example with ``"failed"``; when a ``"failed"`` finish cannot write its
        sidecar, it leaves the empty file ``NAME.failed`` (if it can) so that recovery marks
        the recording failed, not recovered. Call `abandon` when giving up.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {sorted(STATUSES)}")
        if self._finished:
            raise ValueError(f"{self.name!r} is already finished")
        ended_text = rfc3339(ended)
        if dataclasses.is_dataclass(statistics) and not isinstance(statistics, type):
            statistics = dataclasses.asdict(statistics)
        try:
            self._sink.close()
        except RecordingError as exc:
            if status != "failed":
                raise
            # already failed (a full disk): keep what is on disk, and say so in the sidecar
            LOGGER.warning("closing failed recording %s: %s", self.name, exc)
        final, partial = self._reservation.final, self._reservation.partial
        if final.exists():
            raise RecordingError(f"{str(final)!r} exists already; the recording stays at "
                                 f"{str(partial)!r}")
        mark = self._reservation.base.with_name(self.name + FAILED_MARK)
        # One descriptor of the directory for both its fsyncs (the sidecar's and the rename's):
        # every blocking call here is a GIL hand-off with the busy event loop, and call endings
        # come in thousands.
        directory: int | None = None
        try:
            try:
                directory = open_directory(final.parent)
            except OSError as exc:
                raise _error("open", final.parent, exc) from exc
            digest = sha256_file(partial)
            self._metadata = dict(metadata)
            if channel_map is not None:
                self._channel_map = dict(channel_map)
            self._publish(status, ended=ended_text, sha256=digest, statistics=dict(statistics),
                          directory=directory)
        except RecordingError:
            if directory is not None:
                with contextlib.suppress(OSError):
                    os.close(directory)
            if status == "failed":
                self._marked = True
                _touch(mark)
            raise
        try:
            if self._marked:  # left by an earlier attempt; the sidecar says it now
                with contextlib.suppress(OSError):
                    mark.unlink(missing_ok=True)
            try:
                os.replace(partial, final)
            except OSError as exc:
                raise _error("rename", partial, exc) from exc
            self._finished = True
            self._reservation.release()
            try:
                os.fsync(directory)
            except OSError as exc:  # the sidecar is durable: recovery would complete the rename
                LOGGER.warning("cannot make the rename of %s durable: %s", final,
                               exc.strerror or exc)
        finally:
            with contextlib.suppress(OSError):  # read-only: nothing to lose
                os.close(directory)
        return final

    def abandon(self) -> None:
        """Give up after `finish` failed: close what is open and let recovery have the files
        (``recover`` finishes them, as after a crash). Never raises."""
        with contextlib.suppress(RecordingError):
            self._sink.close()
        self._reservation.release()

    # -- sidecars ----------------------------------------------------------------------------

    def _publish(self, status: str, *, ended: str | None, sha256: str | None,
                 statistics: dict[str, Any], durable: bool = True,
                 directory: int | None = None) -> None:
        frames = self._sink.frames_written
        data: dict[str, Any] = {
            "callId": self._call_id,
            "sessionId": self._session_id,
            "status": status,
            "format": self._format,
            "file": self._reservation.final.name,
        }
        if status == RECORDING:
            data["partial_file"] = self._reservation.partial.name
        data.update({
            "sample_rate": SAMPLE_RATE,
            "channels": self._sink.channels,
            "channel_map": dict(self._channel_map),
            "frames": frames,
            "duration_seconds": round(frames / SAMPLE_RATE, 3),
            "started": self._started,
            "ended": ended,
            "sha256": sha256,
            "metadata": self._metadata,
            "statistics": statistics,
            "root": self._reservation.root,
            "stream": self._reservation.number,
            "sidecar_version": SIDECAR_VERSION,
        })
        write_sidecar(self._reservation.sidecar, data, durable=durable, directory=directory)


def _touch(mark: Path) -> None:
    """Create the empty file ``mark`` (an inode and a directory entry: no data block, so it
    works on a full disk); logs when it cannot."""
    try:
        os.close(os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
    except OSError as exc:
        LOGGER.error("cannot create %s: %s", mark, exc.strerror or exc)


def _identity(value: Any) -> str | None:
    text = None if value is None else str(value)
    return text or None
