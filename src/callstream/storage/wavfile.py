"""A crash-tolerant writer of 8 kHz RIFF/WAVE files (2 channels, or up to MAX_CHANNELS for the
RingCX participants layout), and its repair.

Theory of operation: the header is written first, with sizes for the data present (none). Sample
bytes are appended behind it. ``flush()`` writes the buffered bytes, then rewrites the whole header
in one ``pwrite`` with the RIFF size, the data size and (mu-law) the ``fact`` sample count of the
data now on disk, then optionally fsyncs. A process killed at any moment therefore leaves a file
whose header is at most one flush behind its data: every reader plays at least the audio up to the
last flush, and ``repair_wav`` recovers the rest from the file length.

Two layouts, both fixed for a channel count (``repair_wav`` recognises exactly these and nothing
else; the count is read from the header's ``fmt `` chunk):

- PCM 16-bit (format tag 1): ``RIFF`` ``WAVE`` ``fmt `` (16 bytes) ``data``: 44-byte header.
- G.711 mu-law (format tag 7, 8 bits): ``RIFF`` ``WAVE`` ``fmt `` (18 bytes, cbSize 0)
  ``fact`` (frames per channel) ``data``: 58-byte header. Bytes are stored as received.

Every frame holds all channels, interleaved. With an odd channel count the mu-law data size may be
odd: the RIFF pad byte is never written (readers, libsndfile included, take the data size), and
``repair_wav`` cuts a file to whole frames. More than 2 channels use the plain PCM/mu-law format
tag, not WAVE_FORMAT_EXTENSIBLE: no speaker positions are claimed (the channels are participants,
not loudspeakers); libsndfile, sox, ffmpeg and Python's ``wave`` read it.
"""

from __future__ import annotations

import contextlib
import enum
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from callstream import audio
from callstream.errors import RecordingError

SAMPLE_RATE: Final = audio.SAMPLE_RATE  # Hz
CHANNELS: Final = audio.CHANNELS  # the default, and the WebSocket front end's only layout
MAX_CHANNELS: Final = 64  # what repair_wav accepts in a header (the RingCX cap is far below)
RIFF_LIMIT: Final = 0xFFFF_FFFF  # bytes: the largest RIFF chunk size a 32-bit field can hold
FILE_MODE: Final = 0o640  # recordings are personal data: no access for others
_BUFFER_SIZE: Final = 64 * 1024  # bytes held in user space between flushes


class WavEncoding(enum.IntEnum):
    """The sample encoding of a file; the value is the WAVE format tag."""

    PCM_16 = 1
    MULAW = 7

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self is WavEncoding.PCM_16 else 1

    @property
    def block_align(self) -> int:
        """Bytes per stereo sample frame (a writer's own: `WavWriter.block_align`)."""
        return self.bytes_per_sample * CHANNELS


@dataclass(frozen=True, slots=True)
class _Layout:
    encoding: WavEncoding
    prefix: bytes  # everything from "WAVE" up to (excluding) the fact/data chunk headers
    header_size: int
    channels: int
    block_align: int  # bytes per sample frame (all channels)

    def header(self, data_bytes: int) -> bytes:
        frames = data_bytes // self.block_align
        fact = b""
        if self.encoding is WavEncoding.MULAW:
            fact = b"fact" + struct.pack("<II", 4, frames)
        riff_size = self.header_size - 8 + data_bytes
        return b"".join(
            (b"RIFF", struct.pack("<I", riff_size), self.prefix, fact,
             b"data", struct.pack("<I", data_bytes))
        )


def _layout(encoding: WavEncoding, channels: int = CHANNELS) -> _Layout:
    bits = encoding.bytes_per_sample * 8
    align = encoding.bytes_per_sample * channels
    fmt = struct.pack("<HHIIHH", encoding, channels, SAMPLE_RATE, SAMPLE_RATE * align, align, bits)
    if encoding is WavEncoding.PCM_16:
        prefix = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
        return _Layout(encoding, prefix, 12 + 8 + 16 + 8, channels, align)
    prefix = b"WAVE" + b"fmt " + struct.pack("<I", 18) + fmt + struct.pack("<H", 0)
    return _Layout(encoding, prefix, 12 + 8 + 18 + 12 + 8, channels, align)


_LAYOUTS: Final = {encoding: _layout(encoding) for encoding in WavEncoding}  # stereo


def _layout_for(encoding: WavEncoding, channels: int) -> _Layout:
    if not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"channels must be 1 to {MAX_CHANNELS}, not {channels}")
    return _LAYOUTS[encoding] if channels == CHANNELS else _layout(encoding, channels)


def _error(path: os.PathLike[str] | str, action: str, exc: OSError) -> RecordingError:
    return RecordingError(f"cannot {action} {os.fspath(path)!r}: {exc.strerror or exc}")


class WavWriter:
    """Appends interleaved sample frames to a new WAV file (see the module docstring).

    ``path`` must not exist or be empty (it may be the placeholder ``naming.reserve`` created);
    a non-empty file is never overwritten. Raises RecordingError (chaining the OSError) on any
    disk failure, with the path in the message. Not thread-safe; one owner at a time.
    """

    def __init__(self, path: os.PathLike[str] | str, *,
                 encoding: WavEncoding = WavEncoding.PCM_16, channels: int = CHANNELS) -> None:
        """``channels``: 1 to MAX_CHANNELS (else ValueError), fixed for the file's life."""
        self.path = Path(path)
        self.encoding = WavEncoding(encoding)
        self._layout = _layout_for(self.encoding, channels)
        self.channels = channels
        self.block_align = self._layout.block_align  # bytes per sample frame
        self._data_bytes = 0
        self._reserved = 0  # bytes reserved behind the data for an append made outside (wavbatch)
        self._appended_outside = False  # the buffered file's position is behind the data
        self._flushed_bytes = -1  # data size the header on disk states; -1: no header yet
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise _error(self.path, "create", exc) from exc
        try:
            if os.fstat(fd).st_size != 0:
                raise RecordingError(f"refusing to overwrite non-empty file {str(self.path)!r}")
            self._file = open(fd, "wb", buffering=_BUFFER_SIZE, closefd=True)  # noqa: SIM115
        except BaseException:
            os.close(fd)
            raise
        self._closed = False
        try:
            self._file.write(self._layout.header(0))
            self._file.flush()
        except OSError as exc:
            self._abandon()
            raise _error(self.path, "write", exc) from exc
        self._flushed_bytes = 0

    @property
    def frames_written(self) -> int:
        """Sample frames (samples per channel) accepted so far, flushed or not."""
        return self._data_bytes // self.block_align

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def header_size(self) -> int:
        return self._layout.header_size

    def fileno(self) -> int:
        """The file's descriptor, for appends made outside (`reserve` / `appended`)."""
        self._check_open()
        return self._file.fileno()

    def reserve(self, size: int) -> int:
        """Reserve ``size`` more bytes of whole frames for an append made outside this object
        (`wavbatch`, with ``pwrite`` at the returned file offset); report it with `appended`, or
        drop every reservation with `cancel_reserved`. Raises like `write`."""
        self._check_open()
        if size % self.block_align:
            raise ValueError(f"{size} bytes is not a whole number of {self.block_align}-byte frames")
        end = self._data_bytes + self._reserved
        if self._layout.header_size - 8 + end + size > RIFF_LIMIT:
            raise RecordingError(f"{str(self.path)!r} would exceed the 4 GiB RIFF size limit")
        self._reserved += size
        return self._layout.header_size + end

    def header_for_reserved(self) -> bytes:
        """The header for the data written plus everything reserved."""
        return self._layout.header(self._data_bytes + self._reserved)

    def appended(self, size: int, *, header: bool) -> None:
        """The oldest ``size`` reserved bytes are on disk; ``header``: and so is the header of
        `header_for_reserved` as it was for them."""
        self._reserved -= size
        self._data_bytes += size
        self._appended_outside = True
        if header:
            self._flushed_bytes = self._data_bytes

    def cancel_reserved(self) -> None:
        """Forget every reservation not reported (their append failed)."""
        self._reserved = 0

    def write(self, data: object) -> None:
        """Append whole interleaved frames: any C-contiguous buffer (bytes, a numpy array).

        PCM samples must be little-endian int16. Raises ValueError for a partial frame,
        RecordingError when the file would exceed the 4 GiB RIFF limit or the disk fails.
        """
        self._check_open()
        if self._reserved:
            raise ValueError("an append made outside is not reported yet")
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        size = view.nbytes
        if size % self.block_align:
            raise ValueError(f"{size} bytes is not a whole number of {self.block_align}-byte frames")
        if self._layout.header_size - 8 + self._data_bytes + size > RIFF_LIMIT:
            raise RecordingError(f"{str(self.path)!r} would exceed the 4 GiB RIFF size limit")
        try:
            if self._appended_outside:
                self._file.seek(self._layout.header_size + self._data_bytes)
                self._appended_outside = False
            self._file.write(view)
        except OSError as exc:
            raise _error(self.path, "write", exc) from exc
        self._data_bytes += size

    def flush(self, fsync: bool = False) -> None:
        """Write buffered frames, then the header with the sizes now on disk; fsync if asked."""
        self._check_open()
        try:
            self._file.flush()
            if self._flushed_bytes != self._data_bytes:
                os.pwrite(self._file.fileno(), self._layout.header(self._data_bytes), 0)
                self._flushed_bytes = self._data_bytes
            if fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            raise _error(self.path, "write", exc) from exc

    def close(self, fsync: bool = False) -> None:
        """Flush (fsync if asked) and close. Idempotent; the descriptor is released even when
        the final flush fails (which raises RecordingError)."""
        if self._closed:
            return
        try:
            self.flush(fsync)
        finally:
            self._abandon()

    def _abandon(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):  # a lost buffered tail: flush() has reported it
            self._file.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{str(self.path)!r} is closed")


def _header_cut_short(header: bytes, encoding: WavEncoding, channels: int) -> _Layout | None:
    """The layout whose first header ``header`` is the beginning of (``encoding``'s if both
    fit; the channel count from the header when it got that far, else ``channels``), or None."""
    if len(header) >= 24:  # the fmt chunk's channel count is there
        channels = int.from_bytes(header[22:24], "little")
        if not 1 <= channels <= MAX_CHANNELS:
            return None
    candidates = [_layout_for(each, channels) for each in WavEncoding]
    fits = [layout for layout in candidates
            if 0 < len(header) < layout.header_size and layout.header(0).startswith(header)]
    if not fits:
        return None
    preferred = [layout for layout in fits if layout.encoding is encoding]
    return (preferred or fits)[0]


def _identify(header: bytes) -> _Layout | None:
    if len(header) < 24 or header[:4] != b"RIFF":
        return None
    channels = int.from_bytes(header[22:24], "little")
    if not 1 <= channels <= MAX_CHANNELS:
        return None
    for encoding in WavEncoding:
        layout = _layout_for(encoding, channels)
        size = layout.header_size
        if len(header) < size:
            continue
        body = header[8:size]
        expected = layout.header(0)[8:size]
        if layout.encoding is WavEncoding.MULAW:
            # compare all but the fact count (bytes 46..50 of the file) and the data size
            if body[:38] == expected[:38] and body[42:46] == expected[42:46]:
                return layout
        elif body[:-4] == expected[:-4]:
            return layout
    return None


def repair_wav(path: os.PathLike[str] | str, encoding: WavEncoding = WavEncoding.PCM_16,
               channels: int = CHANNELS) -> int:
    """Make the header of a WAV file written by ``WavWriter`` match its length on disk.

    Truncates a trailing partial sample frame, rewrites the RIFF size, data size and fact count
    (only if they differ) and fsyncs. Returns the number of sample frames the file holds.
    A file that ends inside the header ``WavWriter`` writes first (its writer died writing it)
    holds no audio: its header is completed, for ``encoding`` if what is there fits either, and
    for ``channels`` (the sidecar's) if it ends before the header's channel count.
    Raises RecordingError if the file is not a WAV written by ``WavWriter`` or on any disk
    failure.
    """
    path = Path(path)
    try:
        with open(path, "r+b") as file:
            header = file.read(max(layout.header_size for layout in _LAYOUTS.values()))
            layout = _identify(header) or _header_cut_short(header, encoding, channels)
            if layout is None:
                raise RecordingError(f"{str(path)!r} is not a WAV file written by callstream")
            length = os.fstat(file.fileno()).st_size
            align = layout.block_align
            data_bytes = max(0, length - layout.header_size) // align * align
            data_bytes = min(data_bytes, (RIFF_LIMIT - layout.header_size + 8) // align * align)
            if layout.header_size + data_bytes != length:
                file.truncate(layout.header_size + data_bytes)
            fixed = layout.header(data_bytes)
            if header[: layout.header_size] != fixed:
                file.seek(0)
                file.write(fixed)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        raise _error(path, "repair", exc) from exc
    return data_bytes // align
