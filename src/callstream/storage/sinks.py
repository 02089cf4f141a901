"""Audio sinks: one class per output format, one interface (``AudioSink``).

Every sink takes the two perspectives as G.711 mu-law bytes of equal length (left = agent,
right = caller) and appends them as one stereo file at 8 kHz, or takes 16-bit PCM frames of its
channel count (`write_pcm`: the RingCX front end, stereo or one channel per participant). A sink
opened with other than 2 channels takes PCM only: its `write` raises ValueError (and it has no
`plan`), so the stereo sinks' per-block path is the same as before channel counts existed. Disk
failures raise RecordingError naming the path, chained to the underlying error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import soundfile as sf

from callstream import codec
from callstream.errors import RecordingError
from callstream.storage import wavbatch
from callstream.storage.wavfile import CHANNELS, FILE_MODE, MAX_CHANNELS, SAMPLE_RATE, WavEncoding, WavWriter

FLAC_MAX_CHANNELS: Final = 8  # the FLAC format's limit


class AudioSink(Protocol):
    """Where one call's audio goes. Blocking I/O; one thread at a time."""

    extension: str  # file extension without the dot
    channels: int  # fixed when opened

    @property
    def frames_written(self) -> int:
        """Samples per channel accepted so far."""
        ...

    def write(self, left: bytes, right: bytes) -> None:
        """Append mu-law samples: ``left`` and ``right`` of equal length, else ValueError."""
        ...

    def write_pcm(self, frames: np.ndarray) -> None:
        """Append 16-bit PCM frames, shape (n, channels) int16 (a front end that mixes, decodes
        A-law or L16: RingCX). ``mulaw-wav`` encodes them to mu-law, which gives back every
        mu-law byte decoded to PCM except the negative zero 0x7F (written 0xFF)."""
        ...

    def flush(self, fsync: bool = False) -> None:
        """Put everything written so far in the file (and on stable storage if ``fsync``)."""
        ...

    def close(self) -> None:
        """Flush, fsync and close; idempotent."""
        ...


def _check_pair(left: bytes, right: bytes) -> int:
    n = len(left)
    if n != len(right):
        raise ValueError(f"left has {n} samples, right has {len(right)}")
    return n


def _check_pcm(frames: np.ndarray, channels: int) -> np.ndarray:
    if frames.ndim != 2 or frames.shape[1] != channels or frames.dtype != np.int16:
        raise ValueError(f"expected int16 frames of shape (n, {channels}), got {frames.dtype} {frames.shape}")
    return np.ascontiguousarray(frames, dtype="<i2")


def _check_channels(channels: int) -> None:
    if not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"channels must be 1 to {MAX_CHANNELS}, not {channels}")


def _pcm_only(self: AudioSink, left: bytes, right: bytes) -> None:
    raise ValueError(f"a {self.channels}-channel sink takes PCM frames (write_pcm), not a mu-law pair")


def _decode(left: bytes, right: bytes) -> np.ndarray:
    pcm = codec.decode_ulaw_stereo(left, right)
    return np.ascontiguousarray(pcm, dtype="<i2")


class _WavSink:
    extension = "wav"
    _encoding: WavEncoding

    def __init__(self, path: os.PathLike[str] | str, channels: int = CHANNELS) -> None:
        _check_channels(channels)
        self.path = Path(path)
        self.channels = channels
        self._writer = WavWriter(self.path, encoding=self._encoding, channels=channels)
        if channels != CHANNELS:  # set once here: the stereo write and plan test nothing per block
            self.write = _pcm_only.__get__(self)  # type: ignore[method-assign]
            self.plan = lambda left, right: None  # type: ignore[method-assign]

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written

    def flush(self, fsync: bool = False) -> None:
        self._writer.flush(fsync)

    def close(self) -> None:
        self._writer.close(fsync=True)

    def plan(self, left: bytes, right: bytes) -> wavbatch.PlannedAppend | None:
        """The block as a `wavbatch` append (what `write` + `flush` would write), or None
        without the C extension (then use `write`)."""
        if not wavbatch.AVAILABLE:
            return None
        return wavbatch.plan(self._writer, left, right)


class WavPcmSink(_WavSink):
    """16-bit PCM WAV (format tag 1): the mu-law input decoded with ``codec``."""

    _encoding = WavEncoding.PCM_16

    def write(self, left: bytes, right: bytes) -> None:
        if _check_pair(left, right):
            self._writer.write(_decode(left, right))

    def write_pcm(self, frames: np.ndarray) -> None:
        frames = _check_pcm(frames, self.channels)
        if len(frames):
            self._writer.write(frames)

    def plan_pcm(self, frames: np.ndarray) -> wavbatch.PlannedAppend | None:
        """PCM frames as a `wavbatch` append (what `write_pcm` + `flush` would write), or None
        without the C extension or for no frames (then use `write_pcm`)."""
        if not wavbatch.AVAILABLE or not len(frames):
            return None
        return wavbatch.plan_pcm(self._writer, frames)


class WavMulawSink(_WavSink):
    """G.711 mu-law WAV (format tag 7): the received bytes, interleaved, never re-encoded."""

    _encoding = WavEncoding.MULAW

    def write(self, left: bytes, right: bytes) -> None:
        n = _check_pair(left, right)
        if n:
            frames = np.empty((n, CHANNELS), dtype=np.uint8)
            frames[:, 0] = np.frombuffer(left, dtype=np.uint8)
            frames[:, 1] = np.frombuffer(right, dtype=np.uint8)
            self._writer.write(frames)

    def write_pcm(self, frames: np.ndarray) -> None:
        frames = _check_pcm(frames, self.channels)
        if len(frames):
            encoded = np.frombuffer(codec.encode_ulaw(frames.reshape(-1)), dtype=np.uint8)
            self._writer.write(encoded.reshape(-1, self.channels))


class FlacSink:
    """Lossless 16-bit FLAC through soundfile (libsndfile + libFLAC): stereo, or up to 8 channels
    (FLAC's own limit) for PCM frames.

    libFLAC writes each encoded frame (4096 samples) to the file as soon as it is complete, so
    ``flush`` has nothing to push out and only fsyncs when asked. A file never closed has a
    STREAMINFO without a total sample count; it decodes up to the last complete frame.
    libsndfile owns the descriptor (``closefd=True``): it is closed exactly once, by ``sf_close``,
    even when the SoundFile is only garbage-collected.
    """

    extension = "flac"

    def __init__(self, path: os.PathLike[str] | str, channels: int = CHANNELS) -> None:
        if not 1 <= channels <= FLAC_MAX_CHANNELS:
            raise ValueError(f"FLAC holds 1 to {FLAC_MAX_CHANNELS} channels, not {channels}")
        self.path = Path(path)
        self.channels = channels
        self._frames = 0
        self._closed = False
        if channels != CHANNELS:
            self.write = _pcm_only.__get__(self)  # type: ignore[method-assign]
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise self._error("create", exc) from exc
        try:
            empty = os.fstat(fd).st_size == 0
        except OSError as exc:
            os.close(fd)
            raise self._error("create", exc) from exc
        if not empty:
            os.close(fd)
            raise RecordingError(f"refusing to overwrite non-empty file {str(self.path)!r}")
        try:  # from here on libsndfile closes fd, also when opening fails
            self._file = sf.SoundFile(fd, "w", SAMPLE_RATE, channels, subtype="PCM_16",
                                      format="FLAC", closefd=True)
        except sf.SoundFileError as exc:
            raise self._error("create", exc) from exc
        self._fd = fd

    @property
    def frames_written(self) -> int:
        return self._frames

    def write(self, left: bytes, right: bytes) -> None:
        n = _check_pair(left, right)
        self._check_open()
        if n:
            try:
                self._file.write(_decode(left, right))
            except sf.SoundFileError as exc:
                raise self._error("write", exc) from exc
            self._frames += n

    def write_pcm(self, frames: np.ndarray) -> None:
        frames = _check_pcm(frames, self.channels)
        self._check_open()
        if len(frames):
            try:
                self._file.write(frames)
            except sf.SoundFileError as exc:
                raise self._error("write", exc) from exc
            self._frames += len(frames)

    def flush(self, fsync: bool = False) -> None:
        self._check_open()
        if fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise self._error("write", exc) from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._file.close()  # encodes the last frame, rewrites STREAMINFO, closes the fd
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except (OSError, sf.SoundFileError) as exc:
            raise self._error("close", exc) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{str(self.path)!r} is closed")

    def _error(self, action: str, exc: Exception) -> RecordingError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return RecordingError(f"cannot {action} {str(self.path)!r}: {reason}")


FORMATS: Final[dict[str, type[AudioSink]]] = {
    "wav": WavPcmSink,
    "flac": FlacSink,
    "mulaw-wav": WavMulawSink,
}
EXTENSIONS: Final = {name: cls.extension for name, cls in FORMATS.items()}


def open_sink(fmt: str, path: os.PathLike[str] | str, channels: int = CHANNELS) -> AudioSink:
    """Open a sink of format ``fmt`` (a key of FORMATS, else ValueError) writing to ``path``,
    ``channels`` wide (2; else 1 to MAX_CHANNELS, FLAC 1 to FLAC_MAX_CHANNELS, else ValueError).

    ``path`` must not exist or be empty. Raises RecordingError if it cannot be created.
    """
    try:
        cls = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}") from None
    return cls(path) if channels == CHANNELS else cls(path, channels)  # type: ignore[call-arg]
