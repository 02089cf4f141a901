"""Every sink, written in blocks, reads back equal to the decoded input, sample by sample."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile

from callstream.codec import decode_ulaw_stereo
from callstream.errors import RecordingError
from callstream.storage import sinks
from callstream.storage.sinks import EXTENSIONS, FORMATS, FlacSink, WavMulawSink, WavPcmSink, open_sink

BLOCK_SIZES = (160, 1, 8000, 0, 333, 8000 * 2 + 7)  # samples per channel, per write


def blocks(seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    pairs = [(rng.integers(0, 256, n, dtype=np.uint8).tobytes(),
              rng.integers(0, 256, n, dtype=np.uint8).tobytes()) for n in BLOCK_SIZES]
    pairs.append((bytes([0x7F, 0xFF, 0x00, 0x80]), bytes([0xFF, 0x7F, 0x80, 0x00])))
    return pairs


def write_all(sink: sinks.AudioSink, pairs: list[tuple[bytes, bytes]]) -> None:
    for left, right in pairs:
        sink.write(left, right)
        sink.flush()
    sink.flush(fsync=True)
    sink.close()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"a.{EXTENSIONS[fmt]}"
    pairs = blocks()
    sink = open_sink(fmt, path)
    write_all(sink, pairs)
    left = b"".join(p[0] for p in pairs)
    right = b"".join(p[1] for p in pairs)
    assert sink.frames_written == len(left)
    data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    assert rate == 8000
    assert data.shape == (len(left), 2)
    np.testing.assert_array_equal(data, decode_ulaw_stereo(left, right))


def test_formats_and_extensions() -> None:
    assert dict(FORMATS) == {"wav": WavPcmSink, "flac": FlacSink, "mulaw-wav": WavMulawSink}
    assert dict(EXTENSIONS) == {"wav": "wav", "flac": "flac", "mulaw-wav": "wav"}
    with pytest.raises(ValueError):
        open_sink("mp3", "x.mp3")


def test_flac_is_flac(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    write_all(FlacSink(path), blocks(1))
    info = soundfile.info(str(path))
    assert (info.format, info.subtype, info.channels, info.samplerate) == (
        "FLAC", "PCM_16", 2, 8000)


def test_mulaw_wav_holds_the_received_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    pairs = blocks(2)
    write_all(WavMulawSink(path), pairs)
    left = np.frombuffer(b"".join(p[0] for p in pairs), dtype=np.uint8)
    right = np.frombuffer(b"".join(p[1] for p in pairs), dtype=np.uint8)
    interleaved = np.column_stack([left, right]).tobytes()
    blob = path.read_bytes()
    assert blob[:4] == b"RIFF"
    assert int.from_bytes(blob[20:22], "little") == 7  # format tag: mu-law
    assert blob[50:54] == b"data"
    assert int.from_bytes(blob[54:58], "little") == len(interleaved)
    assert blob[58:] == interleaved


def test_pcm_wav_is_pcm(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_all(WavPcmSink(path), blocks(3))
    assert soundfile.info(str(path)).subtype == "PCM_16"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_mismatched_lengths(tmp_path: Path, fmt: str) -> None:
    sink = open_sink(fmt, tmp_path / "a")
    with pytest.raises(ValueError):
        sink.write(b"\xff" * 160, b"\xff" * 159)
    assert sink.frames_written == 0
    sink.close()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_parent_is_a_file(tmp_path: Path, fmt: str) -> None:
    blocker = tmp_path / "day"
    blocker.write_bytes(b"")
    with pytest.raises(RecordingError, match="day") as info:
        open_sink(fmt, blocker / "a")
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_directory_vanished(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(RecordingError, match="gone"):
        open_sink(fmt, tmp_path / "gone" / "a")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_refuses_to_overwrite(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "a"
    path.write_bytes(b"an earlier recording")
    with pytest.raises(RecordingError):
        open_sink(fmt, path)
    assert path.read_bytes() == b"an earlier recording"


class _FullDisk:
    """Wraps the writer's file object; every write fails as on a full disk."""

    def __init__(self, real: io.BufferedWriter) -> None:
        self._real = real

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


@pytest.mark.parametrize("fmt", ["wav", "mulaw-wav"])
def test_wav_disk_full(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.wav"
    sink = open_sink(fmt, path)
    sink.write(b"\xff" * 160, b"\xff" * 160)
    sink.flush()
    real = sink._writer._file  # type: ignore[attr-defined]
    monkeypatch.setattr(sink._writer, "_file", _FullDisk(real))  # type: ignore[attr-defined]
    with pytest.raises(RecordingError, match=r"a\.wav") as info:
        sink.write(b"\xff" * 160, b"\xff" * 160)
    assert info.value.__cause__.errno == errno.ENOSPC  # type: ignore[union-attr]
    assert sink.frames_written == 160
    monkeypatch.undo()
    sink.close()


def test_flac_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    sink = FlacSink(tmp_path / "a.flac")
    sink.write(b"\xff" * 160, b"\xff" * 160)
    monkeypatch.setattr(sinks.os, "fsync", fail)
    with pytest.raises(RecordingError, match=r"a\.flac") as info:
        sink.flush(fsync=True)
    assert info.value.__cause__.errno == errno.ENOSPC  # type: ignore[union-attr]
    monkeypatch.undo()
    sink.close()


def test_flac_libsndfile_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = FlacSink(tmp_path / "a.flac")

    def broken(data: object) -> None:
        raise soundfile.LibsndfileError(2, "Error writing: ")

    monkeypatch.setattr(sink._file, "write", broken)  # type: ignore[attr-defined]
    with pytest.raises(RecordingError, match=r"a\.flac"):
        sink.write(b"\xff", b"\xff")
    assert sink.frames_written == 0
    monkeypatch.undo()
    sink.close()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_close_is_idempotent_and_final(tmp_path: Path, fmt: str) -> None:
    sink = open_sink(fmt, tmp_path / "a")
    sink.write(b"\xff" * 10, b"\x7f" * 10)
    sink.close()
    sink.close()
    with pytest.raises(ValueError):
        sink.write(b"\xff", b"\xff")
    with pytest.raises(ValueError):
        sink.flush()
    assert sink.frames_written == 10


@pytest.mark.parametrize("fmt", ["wav", "flac", "mulaw-wav"])
def test_write_pcm_reads_back(tmp_path, fmt: str) -> None:
    """The PCM entry point (RingCX mixes and decodes A-law/L16 itself): what goes in comes back;
    mulaw-wav gives back every mu-law byte's PCM exactly (0x7F, negative zero, as 0xFF)."""
    from callstream import codec as g711

    codes = np.arange(256, dtype=np.uint8)
    frames = np.stack([g711.decode_ulaw(codes.tobytes()), g711.decode_ulaw(codes[::-1].tobytes())], axis=1)
    path = tmp_path / f"x.{EXTENSIONS[fmt]}"
    sink = open_sink(fmt, path)
    sink.write_pcm(frames)
    sink.write_pcm(frames[:0])
    sink.close()
    assert sink.frames_written == 256
    data, rate = soundfile.read(path, dtype="int16", always_2d=True)
    assert rate == 8000 and np.array_equal(data, frames)
    if fmt == "mulaw-wav":
        raw = np.frombuffer(path.read_bytes()[-512:], dtype=np.uint8).reshape(-1, 2)
        assert np.array_equal(raw[:, 0], np.where(codes == 0x7F, 0xFF, codes))
    other = open_sink(fmt, tmp_path / f"y.{EXTENSIONS[fmt]}")
    with pytest.raises(ValueError):
        other.write_pcm(frames[:, :1])
    other.close()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_multichannel_sink_takes_pcm_only(tmp_path: Path, fmt: str) -> None:
    """A sink of 3 channels (RingCX participants layout): PCM frames read back sample by sample
    (mu-law: through G.711, exact for values that are mu-law codes); the stereo-only mu-law
    pair and batched appends are refused."""
    path = tmp_path / f"a.{EXTENSIONS[fmt]}"
    sink = open_sink(fmt, path, 3)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 0x7F, (9000, 3), dtype=np.uint8)  # never the negative zero 0x7F
    frames = decode_ulaw_stereo(codes[:, 0].tobytes(), codes[:, 1].tobytes())
    pcm = np.column_stack([frames, decode_ulaw_stereo(codes[:, 2].tobytes(), codes[:, 2].tobytes())[:, 0]])
    sink.write_pcm(pcm[:4000])
    sink.write_pcm(pcm[4000:])
    with pytest.raises(ValueError, match="PCM frames"):
        sink.write(b"\xff", b"\xff")
    with pytest.raises(ValueError, match="shape"):
        sink.write_pcm(pcm[:, :2])
    assert getattr(sink, "plan", lambda left, right: None)(b"\xff", b"\xff") is None
    assert sink.frames_written == 9000 and sink.channels == 3
    sink.close()
    data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    assert rate == 8000
    np.testing.assert_array_equal(data, pcm)


def test_flac_refuses_more_channels_than_flac_holds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FLAC holds 1 to 8"):
        FlacSink(tmp_path / "a.flac", 9)
