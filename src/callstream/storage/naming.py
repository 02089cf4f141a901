"""Where a call's files go: the path template, value sanitisation, and unique name reservation.

Field values come from the peer (query string, Start metadata) and are hostile until proven
otherwise: every value is reduced to ``[A-Za-z0-9-_.+@=]``, without runs of dots and without
leading or trailing dots, so it can never name a directory, climb out of the output directory
or hide a file. Only the template's own ``/`` separate directories; the template is checked once,
when the settings are read (``validate_template``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Final

from callstream.errors import RecordingError

DEFAULT_TEMPLATE: Final = "{date}/{callId}-{sessionId}"
METADATA_FIELDS: Final = (
    "callId", "sessionId", "agentId", "ani", "dnis", "accountId", "subaccountId",
    "rcAccountId", "productType", "productId",
    "dialogId",  # RingCX (gRPC): the dialog a stream records
)
TIME_FIELDS: Final = ("date", "time", "datetime", "year", "month", "day")
PLACEHOLDERS: Final = frozenset(METADATA_FIELDS + TIME_FIELDS)
MISSING: Final = "unknown"  # what a missing or empty value renders as
MAX_VALUE: Final = 64  # characters per sanitised value
MAX_COMPONENT: Final = 200  # characters per path component (the OS allows 255 with our suffixes)
MAX_SIBLINGS: Final = 1000  # NAME, NAME-2 ... NAME-1000, then give up
FILE_MODE: Final = 0o640
DIR_MODE: Final = 0o750
PARTIAL: Final = ".partial"  # NAME.partial.EXT is the file being written
SIDECAR: Final = ".json"

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9\-_.+@=]")
_DOTS: Final = re.compile(r"\.{2,}")
_LITERAL_OK: Final = re.compile(r"[A-Za-z0-9\-_.+@=/]*")


def sanitize(value: object) -> str:
    """Reduce one field value to a safe, bounded, non-empty file name fragment."""
    text = "" if value is None else str(value)
    safe = _DOTS.sub(".", _UNSAFE.sub("_", text)).strip(".")
    if not safe:
        return MISSING
    if len(safe) > MAX_VALUE:  # keep distinct long values distinct
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = safe[: MAX_VALUE - 9].rstrip(".") + "-" + digest
    return safe


@lru_cache(maxsize=32)
def _parse(template: str) -> tuple[tuple[str, str | None], ...]:
    if not template:
        raise ValueError("the path template is empty")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad path template {template!r}: {exc}") from None
    pieces: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parts:
        if not _LITERAL_OK.fullmatch(literal):
            raise ValueError(f"path template {template!r}: only letters, digits, '-_.+@=' and "
                             f"'/' may appear outside placeholders")
        if name is not None and name not in PLACEHOLDERS:
            raise ValueError(f"path template {template!r}: unknown placeholder {{{name}}}; "
                             f"known: {', '.join(sorted(PLACEHOLDERS))}")
        if spec or conversion:
            raise ValueError(f"path template {template!r}: placeholders take no format "
                             f"specification or conversion")
        pieces.append((literal, name))
    # Check the skeleton: every component must hold something and be no special name.
    skeleton = "".join(literal + ("x" if name is not None else "") for literal, name in pieces)
    for component in skeleton.split("/"):
        if not component or component.startswith(".") or ".." in component:
            raise ValueError(f"path template {template!r}: empty component, leading '/' or '/' "
                             f"at the end, or a component starting with '.' or holding '..'")
    return tuple(pieces)


def validate_template(template: str) -> None:
    """Raise ValueError (with a message for the operator) unless ``template`` is usable.

    Placeholders are the metadata fields (``callId`` ...) and ``date``, ``time``, ``datetime``,
    ``year``, ``month``, ``day``; literal text may hold letters, digits, ``-_.+@=`` and ``/``
    between non-empty components that do not start with a dot.
    """
    _parse(template)


def render_path(template: str, fields: Mapping[str, object], *, when: datetime) -> PurePosixPath:
    """Render ``template`` into a relative path that cannot leave the output directory.

    ``fields`` maps metadata field names to values (anything missing renders as ``unknown``);
    ``when`` is a timezone-aware datetime, rendered in UTC (naive: ValueError). The path has no
    extension; ``reserve`` adds the suffixes. Raises ValueError for a bad template.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("render_path needs a timezone-aware datetime")
    utc = when.astimezone(UTC)
    times = {
        "date": utc.strftime("%Y-%m-%d"), "time": utc.strftime("%H%M%S"),
        "datetime": utc.strftime("%Y%m%dT%H%M%SZ"), "year": utc.strftime("%Y"),
        "month": utc.strftime("%m"), "day": utc.strftime("%d"),
    }
    text = "".join(
        literal + ("" if name is None else times[name] if name in times
                   else sanitize(fields.get(name)))
        for literal, name in _parse(template)
    )
    components = [component[:MAX_COMPONENT].rstrip(".") for component in text.split("/")]
    if components[-1].lower().endswith(PARTIAL):  # NAME.EXT must never equal OTHER.partial.EXT
        components[-1] += "_"
    for component in components:  # unreachable after _parse and sanitize: defence in depth
        if not component or component.startswith(".") or ".." in component:
            raise ValueError(f"rendered path component {component!r} is unsafe")
    return PurePosixPath(*components)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A claimed name. ``base`` has no extension; the other paths derive from it."""

    base: Path  # output_dir / relative [-N]
    partial: Path  # base + ".partial.EXT", created empty by reserve()
    final: Path  # base + ".EXT", where the finished recording goes
    sidecar: Path  # base + ".json"
    root: str  # the un-numbered base name (relative.name): streams are root, root-2, ...
    number: int  # 1 for root, N for root-N
    # The partial file opened and flock()ed from its creation: while this process holds it open,
    # recovery knows the recording is live (see recovery.py); the kernel lets go when the
    # process dies. Close it (`release`) once the recording is finished. None: no lock (the
    # file system refused one).
    lock: PartialLock | None = None

    def release(self) -> None:
        """Let recovery take the partial file (the recording is finished or given up)."""
        if self.lock is not None:
            self.lock.release()


class PartialLock:
    """An flock held on a partial file through a descriptor of its own. Released by `release`,
    when the object is collected (a recording dropped after a failed finish: its file is then
    left for recovery, as after a crash) or by the kernel when the process dies."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.release()


def _check_relative(relative: PurePosixPath) -> None:
    if relative.is_absolute() or not relative.parts or any(
        part in ("", ".", "..") or part.startswith(".") for part in relative.parts
    ):
        raise ValueError(f"{str(relative)!r} is not a safe relative path")


def reserve(output_dir: Path, relative: PurePosixPath, extension: str) -> Reservation:
    """Create the directories and atomically claim a base name no recording uses.

    The claim is ``NAME.partial.EXT``, created empty with O_EXCL. A name is taken when its
    partial file, its final file ``NAME.EXT`` or its sidecar ``NAME.json`` exists (a live or
    finished recording of the same call and session); then ``NAME-2``, ``NAME-3`` ... are tried.
    The final and sidecar files are checked after the claim succeeded, so two threads or
    processes never both win a name and an existing recording is never overwritten.

    Cost: O(log N) probes for the N-th stream of a name, not N. Names are taken from the
    lowest up, so the taken ones form (nearly) a prefix: the first free number is found by
    doubling, then bisecting, and claimed from there up (a hole left below by a released claim
    stays unused; a claim lost to a concurrent reserve moves one up).
    Raises RecordingError on a disk failure or when MAX_SIBLINGS names are all taken.
    """
    _check_relative(relative)
    if not re.fullmatch(r"[a-z0-9]+", extension):
        raise ValueError(f"bad extension {extension!r}")
    directory = Path(output_dir, *relative.parts[:-1])
    root = relative.name
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise _error("create directory", directory, exc) from exc
    names = _Names(directory, root, extension)
    number = names.first_free()
    while number <= MAX_SIBLINGS:
        name = names.name(number)
        base = directory / name
        partial = base.with_name(f"{name}{PARTIAL}.{extension}")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            number += 1
            continue
        except OSError as exc:
            raise _error("create", partial, exc) from exc
        lock = _hold(fd)
        final = base.with_name(f"{name}.{extension}")
        sidecar = base.with_name(f"{name}{SIDECAR}")
        if final.exists() or sidecar.exists():
            _unlink_quietly(partial)
            if lock is not None:
                lock.release()
            number += 1
            continue
        return Reservation(base, partial, final, sidecar, root, number, lock)
    raise RecordingError(f"{str(directory / root)!r}: {MAX_SIBLINGS} recordings of this name "
                         f"exist already")


class _Names:
    """The names ROOT, ROOT-2 ... of one directory and extension, and whether each is taken."""

    __slots__ = ("_directory", "_extension", "_root")

    def __init__(self, directory: Path, root: str, extension: str) -> None:
        self._directory, self._root, self._extension = directory, root, extension

    def name(self, number: int) -> str:
        return self._root if number == 1 else f"{self._root}-{number}"

    def taken(self, number: int) -> bool:
        name = self.name(number)
        return any(
            os.path.lexists(self._directory / f"{name}{suffix}")
            for suffix in (SIDECAR, f"{PARTIAL}.{self._extension}", f".{self._extension}")
        )

    def first_free(self) -> int:
        """A number whose name looks free, just above the last taken one of the prefix: at
        most MAX_SIBLINGS + 1 (all taken)."""
        if not self.taken(1):
            return 1
        low, high = 1, 2  # low is taken; find a free high by doubling
        while high <= MAX_SIBLINGS and self.taken(high):
            low, high = high, high * 2
        high = min(high, MAX_SIBLINGS + 1)
        while high - low > 1:  # low taken, high free (or past the limit)
            middle = (low + high) // 2
            if self.taken(middle):
                low = middle
            else:
                high = middle
        return high


def _hold(fd: int) -> PartialLock | None:
    """``fd`` (a new partial file) locked and kept open in a `PartialLock`; None, with ``fd``
    closed, where the file system has no flock (recovery then relies on its other checks)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return PartialLock(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise _error("remove", path, exc) from exc


def _error(action: str, path: Path, exc: OSError) -> RecordingError:
    return RecordingError(f"cannot {action} {str(path)!r}: {exc.strerror or exc}")
