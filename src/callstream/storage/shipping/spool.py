"""The durable shipping queue: one journal per finished recording in ``OUTPUT_DIR/.spool``.

Theory of operation. A recording enters the queue as ``ID.job`` (its audio and sidecar paths,
relative to the output directory, its size and its event id; ``ID`` is the time in nanoseconds,
the size and a random part, so a listing alone orders the jobs and sums their bytes), written to a temporary name,
fsynced and renamed into place, the directory fsynced: once `enqueue` returns, a crash of any
kind (SIGKILL, power loss) leaves the job on disk. Each step the job takes afterwards leaves a
marker beside it, written the same way and never changed again:

- ``ID.event``: the upload is verified (when a store is configured) and this is the event to send;
- ``ID.<sink>`` (``ID.webhook``, ``ID.nats``): that sink acknowledged the event (not fsynced:
  losing one to a power cut only sends the event to that sink again).

A job is done when every sink has its marker; then ``ID.job`` is removed first (it is what makes a
job exist) and the markers after it (a marker without its job is a leftover, swept at start).

Claims. Several processes may share a spool (``serve --workers N``, or the recovery of a dead
worker's files). A process works on a job only while it holds an ``flock`` on ``ID.job``, taken
without waiting (`claim`); the kernel drops it when the process dies, so a job is never lost
to a dead owner and never shipped by two processes at once. ``ID.job`` is never rewritten, so the
lock stays on the file that names the job.

Blocking file I/O throughout: call it from a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

LOGGER = logging.getLogger("callstream.storage.shipping.spool")

SPOOL_DIR: Final = ".spool"  # under the output directory
JOB: Final = ".job"
EVENT: Final = ".event"
BAD: Final = ".bad"  # a journal that cannot be read, set aside for a person to look at
STALE_TEMPORARY_SECONDS: Final = 600.0  # a temporary journal this old was left by a dead process
FILE_MODE: Final = 0o640
JOURNAL_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Job:
    """One recording to ship. Paths are relative to the output directory; ``audio`` is None for
    a recording whose audio could not be kept (a failed FLAC with no frame)."""

    id: str
    event_id: str
    audio: str | None
    sidecar: str
    bytes: int  # audio and sidecar, as enqueued: what waits on local disk for the store
    enqueued: float  # Unix time, seconds


class Listed(NamedTuple):
    """A job as a directory listing shows it (see `Spool.listing`)."""

    id: str
    bytes: int
    uploaded: bool  # its event is saved: nothing of it waits for the store


class Claim:
    """A job this process owns until `release` (or its death). Holds the flock's descriptor."""

    def __init__(self, job: Job, fd: int) -> None:
        self.job = job
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Spool:
    """The journal directory of one output directory. Thread safe (each call its own files)."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.directory = self.output_dir / SPOOL_DIR

    def open(self) -> None:
        """Create the directory; remove markers whose job is gone (see the module's docstring)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        jobs = {path.stem for path in self.directory.glob("*" + JOB)}
        old = time.time() - STALE_TEMPORARY_SECONDS
        for path in self.directory.iterdir():
            if path.suffix == ".tmp":
                stale = path.stat().st_mtime < old  # else another process may be writing it now
            else:
                stale = path.suffix not in (JOB, BAD) and path.name.split(".", 1)[0] not in jobs
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def enqueue(self, audio: Path | None, sidecar: Path) -> Job:
        """Journal a finished recording durably (see the module's docstring); returns its job.
        ``audio`` and ``sidecar`` must lie under the output directory. Raises OSError."""
        size = sum(path.stat().st_size for path in (audio, sidecar) if path is not None and path.exists())
        now = time.time()
        # the name sorts by time: jobs are shipped oldest first
        job = Job(
            id=f"{time.time_ns():020d}-{size}-{uuid.uuid4().hex[:12]}",  # see `listing`
            event_id=str(uuid.uuid4()),
            audio=None if audio is None else self._relative(audio),
            sidecar=self._relative(sidecar),
            bytes=size,
            enqueued=now,
        )
        record = {"version": JOURNAL_VERSION, **{name: getattr(job, name) for name in Job.__slots__}}
        self.directory.mkdir(parents=True, exist_ok=True)  # recovery journals before `open`
        self._write(self.directory / (job.id + JOB), record)
        return job

    def listing(self) -> list[Listed]:
        """Every job on disk (anyone's), oldest first, from one directory listing: a job's id
        carries its size, so nothing is opened (a long outage can leave many thousands)."""
        names = set(os.listdir(self.directory))
        listed = []
        for name in names:
            if name.endswith(JOB):
                job_id = name.removesuffix(JOB)
                listed.append(Listed(job_id, self.size_of(job_id), job_id + EVENT in names))
        listed.sort()
        return listed

    @staticmethod
    def size_of(job_id: str) -> int:
        """The bytes a job's id says it has (``NANOSECONDS-BYTES-RANDOM``; 0 if it says none)."""
        try:
            return int(job_id.split("-")[1])
        except (IndexError, ValueError):
            return 0

    def waiting_bytes(self) -> int:
        """Bytes of every job (anyone's) whose upload is not done yet: it has no event."""
        return sum(item.bytes for item in self.listing() if not item.uploaded)

    def claim(self, job_id: str) -> Claim | None:
        """Take the job if no other process has it and it is not done; else None."""
        path = self.directory / (job_id + JOB)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:  # finished by its owner between our open and lock
                raise BlockingIOError
            with open(os.dup(fd), encoding="utf-8") as file:
                record = json.load(file)
            job = Job(**{name: record[name] for name in Job.__slots__})
        except BlockingIOError:
            os.close(fd)
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            os.close(fd)
            LOGGER.error("spool: cannot read %s (%s): set aside as %s%s", path, error, path.name, BAD)
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(path.name + BAD))
            return None
        return Claim(job, fd)

    def event(self, job: Job) -> dict[str, Any] | None:
        """The event stored by `save_event`, or None before it."""
        try:
            with open(self.directory / (job.id + EVENT), encoding="utf-8") as file:
                return json.load(file)
        except FileNotFoundError:
            return None

    def save_event(self, job: Job, event: dict[str, Any]) -> None:
        self._write(self.directory / (job.id + EVENT), event)

    def delivered(self, job: Job, sink: str) -> bool:
        return (self.directory / f"{job.id}.{sink}").exists()

    def mark_delivered(self, job: Job, sink: str) -> None:
        """Not fsynced: a marker lost in a power cut only sends the event to that sink again
        (at least once), and two fsyncs per sink were most of a job's journal time."""
        self._write(self.directory / f"{job.id}.{sink}", {"delivered": time.time()}, durable=False)

    def complete(self, claim: Claim, sinks: tuple[str, ...]) -> None:
        """The job is done: remove its journal, then its markers; release the claim."""
        job = claim.job
        try:
            (self.directory / (job.id + JOB)).unlink()
            _fsync_directory(self.directory)
            for suffix in (EVENT, *(f".{sink}" for sink in sinks)):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / (job.id + suffix)).unlink()
        finally:
            claim.release()

    def _relative(self, path: Path) -> str:
        return Path(path).relative_to(self.output_dir).as_posix()

    def _write(self, path: Path, data: dict[str, Any], *, durable: bool = True) -> None:
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            with open(fd, "w", encoding="utf-8") as file:
                json.dump(data, file)
                file.flush()
                if durable:
                    os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        if durable:
            _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def journal_recovered(output_dir: Path, recordings: Iterable[tuple[Path | None, Path]]) -> int:
    """Journal recordings a recovery finished, each (audio or None, sidecar) under ``output_dir``,
    in its spool: whichever `serve` ships from that directory next (or one running there now,
    which lists its spool every few seconds) ships them. What `serve --workers N` and `callstream
    recover` do; a single `serve` journals through its `Shipper`. Returns how many were journalled:
    one that cannot be is logged once and stays on local disk, not shipped (as `Shipper.enqueue`)."""
    spool = Spool(output_dir)
    spool.open()
    journalled = 0
    for audio, sidecar in recordings:
        try:
            spool.enqueue(audio, sidecar)
        except OSError as error:
            LOGGER.error("cannot journal %s for shipping: %s", sidecar, error)
        else:
            journalled += 1
    return journalled
