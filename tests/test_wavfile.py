"""The WAV writer and repair, checked against an independent header parser, soundfile and wave."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile

from callstream.codec import decode_ulaw_stereo
from callstream.errors import RecordingError
from callstream.storage import wavfile
from callstream.storage.wavfile import WavEncoding, WavWriter, repair_wav


def parse_header(blob: bytes) -> dict:
    """Walk the RIFF chunks independently of the writer."""
    assert blob[:4] == b"RIFF"
    assert blob[8:12] == b"WAVE"
    info = {"riff_size": struct.unpack_from("<I", blob, 4)[0], "chunks": []}
    offset = 12
    while offset + 8 <= len(blob):
        cid, size = struct.unpack_from("<4sI", blob, offset)
        info["chunks"].append(cid)
        body = offset + 8
        if cid == b"fmt ":
            (info["tag"], info["channels"], info["rate"], info["byte_rate"], info["align"],
             info["bits"]) = struct.unpack_from("<HHIIHH", blob, body)
            info["fmt_size"] = size
            if size >= 18:
                info["cb_size"] = struct.unpack_from("<H", blob, body + 16)[0]
        elif cid == b"fact":
            info["fact_size"] = size
            info["fact"] = struct.unpack_from("<I", blob, body)[0]
        elif cid == b"data":
            info["data_offset"] = body
            info["data_size"] = size
            break
        offset = body + size + (size & 1)
    return info


def random_pcm(rng: np.random.Generator, frames: int) -> np.ndarray:
    return rng.integers(-32768, 32768, size=(frames, 2), dtype=np.int16)


def random_mulaw(rng: np.random.Generator, frames: int) -> np.ndarray:
    return rng.integers(0, 256, size=(frames, 2), dtype=np.uint8)


def test_pcm_header_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    pcm = random_pcm(np.random.default_rng(1), 1000)
    writer = WavWriter(path)
    writer.write(pcm)
    writer.close()
    blob = path.read_bytes()
    h = parse_header(blob)
    assert h["chunks"] == [b"fmt ", b"data"]
    assert (h["tag"], h["channels"], h["rate"], h["byte_rate"], h["align"], h["bits"]) == (
        1, 2, 8000, 32000, 4, 16)
    assert h["fmt_size"] == 16
    assert h["data_offset"] == 44
    assert h["data_size"] == 4000
    assert h["riff_size"] == len(blob) - 8 == 36 + 4000
    assert blob[44:] == pcm.astype("<i2").tobytes()
    assert writer.frames_written == 1000


def test_mulaw_header_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    data = random_mulaw(np.random.default_rng(2), 999)
    writer = WavWriter(path, encoding=WavEncoding.MULAW)
    writer.write(data)
    writer.close()
    blob = path.read_bytes()
    h = parse_header(blob)
    assert h["chunks"] == [b"fmt ", b"fact", b"data"]
    assert (h["tag"], h["channels"], h["rate"], h["byte_rate"], h["align"], h["bits"]) == (
        7, 2, 8000, 16000, 2, 8)
    assert (h["fmt_size"], h["cb_size"]) == (18, 0)
    assert (h["fact_size"], h["fact"]) == (4, 999)
    assert (h["data_offset"], h["data_size"]) == (58, 1998)
    assert h["riff_size"] == len(blob) - 8
    assert blob[58:] == data.tobytes()


def test_empty_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    WavWriter(path).close()
    h = parse_header(path.read_bytes())
    assert h["data_size"] == 0
    assert h["riff_size"] == 36
    assert soundfile.info(str(path)).frames == 0


def test_readers_agree_pcm(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    pcm = random_pcm(np.random.default_rng(3), 8000)
    writer = WavWriter(path)
    for block in np.array_split(pcm, 7):
        writer.write(block)
        writer.flush()
    writer.close()
    data, rate = soundfile.read(str(path), dtype="int16")
    assert rate == 8000
    np.testing.assert_array_equal(data, pcm)
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (
            2, 2, 8000, 8000)
        frames = np.frombuffer(w.readframes(8000), dtype="<i2").reshape(-1, 2)
    np.testing.assert_array_equal(frames, pcm)


def test_soundfile_reads_mulaw(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    data = random_mulaw(np.random.default_rng(4), 4000)
    writer = WavWriter(path, encoding=WavEncoding.MULAW)
    writer.write(data[:1000])
    writer.write(data[1000:])
    writer.close()
    info = soundfile.info(str(path))
    assert (info.subtype, info.channels, info.samplerate, info.frames) == ("ULAW", 2, 8000, 4000)
    decoded, _ = soundfile.read(str(path), dtype="int16")
    expected = decode_ulaw_stereo(data[:, 0].tobytes(), data[:, 1].tobytes())
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("encoding", list(WavEncoding))
def test_abandoned_writer_leaves_readable_file(tmp_path: Path, encoding: WavEncoding) -> None:
    """A crash at any moment after a flush: the file plays at least up to that flush."""
    path = tmp_path / "a.wav"
    rng = np.random.default_rng(5)
    make = random_pcm if encoding is WavEncoding.PCM_16 else random_mulaw
    flushed, unflushed = make(rng, 3000), make(rng, 500)
    writer = WavWriter(path, encoding=encoding)
    writer.write(flushed[:1000])
    writer.flush()
    writer.write(flushed[1000:])
    writer.flush()
    writer.write(unflushed)  # no flush: the process dies here
    snapshot = tmp_path / "crash.wav"
    snapshot.write_bytes(path.read_bytes())
    writer.close()

    h = parse_header(snapshot.read_bytes())
    assert h["data_size"] == 3000 * encoding.block_align
    with soundfile.SoundFile(str(snapshot)) as f:
        assert f.frames >= 3000
        raw = f.read(3000, dtype="int16")
    if encoding is WavEncoding.PCM_16:
        np.testing.assert_array_equal(raw, flushed)
    else:
        expected = decode_ulaw_stereo(flushed[:, 0].tobytes(), flushed[:, 1].tobytes())
        np.testing.assert_array_equal(raw, expected)
    # repair recovers what reached the file beyond the last flush
    frames = repair_wav(snapshot)
    assert 3000 <= frames <= 3500
    assert soundfile.info(str(snapshot)).frames == frames


@pytest.mark.parametrize("encoding", list(WavEncoding))
def test_repair_fixes_sizes_and_trailing_partial_frame(tmp_path: Path,
                                                        encoding: WavEncoding) -> None:
    path = tmp_path / "a.wav"
    rng = np.random.default_rng(6)
    data = random_pcm(rng, 1234) if encoding is WavEncoding.PCM_16 else random_mulaw(rng, 1234)
    writer = WavWriter(path, encoding=encoding)
    writer.write(data)
    writer.close()
    blob = bytearray(path.read_bytes())
    h = parse_header(bytes(blob))
    header_size = h["data_offset"]
    struct.pack_into("<I", blob, 4, 0xDEAD)  # wrong RIFF size
    struct.pack_into("<I", blob, header_size - 4, 17)  # wrong data size
    if encoding is WavEncoding.MULAW:
        struct.pack_into("<I", blob, 46, 3)  # wrong fact count
    blob += b"\x01"  # a partial frame after the last whole one
    path.write_bytes(bytes(blob))

    assert repair_wav(path) == 1234
    fixed = path.read_bytes()
    h = parse_header(fixed)
    assert len(fixed) == header_size + 1234 * encoding.block_align
    assert h["data_size"] == 1234 * encoding.block_align
    assert h["riff_size"] == len(fixed) - 8
    if encoding is WavEncoding.MULAW:
        assert h["fact"] == 1234
    assert fixed[header_size:] == data.tobytes()
    assert repair_wav(path) == 1234  # idempotent
    assert path.read_bytes() == fixed


def test_repair_after_truncation_mid_frame(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    pcm = random_pcm(np.random.default_rng(7), 100)
    with_writer = WavWriter(path)
    with_writer.write(pcm)
    with_writer.close()
    path.write_bytes(path.read_bytes()[:-3])  # the disk lost the end of the last frame
    assert repair_wav(path) == 99
    data, _ = soundfile.read(str(path), dtype="int16")
    np.testing.assert_array_equal(data, pcm[:99])


@pytest.mark.parametrize("encoding", list(WavEncoding))
@pytest.mark.parametrize("hint", list(WavEncoding))
def test_repair_completes_a_header_cut_short(tmp_path: Path, encoding: WavEncoding, hint: WavEncoding) -> None:
    """A writer killed while writing its first header leaves a prefix of it: no audio, so the
    file becomes a valid empty WAV; of the hinted encoding while the prefix fits both."""
    path = tmp_path / "a.wav"
    WavWriter(path, encoding=encoding).close()
    header = path.read_bytes()
    for cut in range(1, len(header)):
        path.write_bytes(header[:cut])
        assert repair_wav(path, hint) == 0, cut
        with soundfile.SoundFile(str(path)) as f:
            assert (f.frames, f.channels, f.samplerate) == (0, 2, 8000)
        kept = hint if cut <= 4 else encoding  # the RIFF sizes differ: the headers part after "RIFF"
        assert parse_header(path.read_bytes())["tag"] == kept.value, cut


@pytest.mark.parametrize("blob", [
    b"",
    b"RIFX",
    b"RIFF\x25\x00\x00\x00WAVEfmt ",  # a header's beginning, but not one callstream writes
    b"not a wav file at all, but long enough to hold a header of fifty-eight bytes",
])
def test_repair_rejects_foreign_files(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(blob)
    with pytest.raises(RecordingError):
        repair_wav(path)
    assert path.read_bytes() == blob  # untouched


def test_repair_rejects_other_wav_layouts(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    soundfile.write(str(path), np.zeros((10, 2), dtype=np.int16), 16000, subtype="PCM_16")
    before = path.read_bytes()
    with pytest.raises(RecordingError):
        repair_wav(path)
    assert path.read_bytes() == before


def test_repair_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecordingError) as info:
        repair_wav(tmp_path / "missing.wav")
    assert isinstance(info.value.__cause__, OSError)


def test_partial_frame_write_is_refused(tmp_path: Path) -> None:
    writer = WavWriter(tmp_path / "a.wav")
    with pytest.raises(ValueError):
        writer.write(b"\x00\x01\x02")
    writer.close()


def test_riff_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wavfile, "RIFF_LIMIT", 36 + 400)
    path = tmp_path / "a.wav"
    writer = WavWriter(path)
    writer.write(bytes(400))  # exactly at the limit
    with pytest.raises(RecordingError, match="4 GiB"):
        writer.write(bytes(4))
    writer.close()
    assert parse_header(path.read_bytes())["data_size"] == 400


def test_never_overwrites_a_non_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"precious")
    with pytest.raises(RecordingError):
        WavWriter(path)
    assert path.read_bytes() == b"precious"


def test_disk_failure_is_a_recording_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    with pytest.raises(RecordingError, match="not-a-dir") as info:
        WavWriter(blocker / "a.wav")
    assert isinstance(info.value.__cause__, OSError)


def test_write_after_close(tmp_path: Path) -> None:
    writer = WavWriter(tmp_path / "a.wav")
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError):
        writer.write(bytes(4))


@pytest.mark.parametrize("channels", [1, 3, 4, 8])
@pytest.mark.parametrize("encoding", list(WavEncoding))
def test_multichannel_file_reads_back_and_repairs(tmp_path: Path, encoding: WavEncoding, channels: int) -> None:
    """A file of other than 2 channels (the RingCX participants layout): header and frames for
    its count; killed mid-frame after a flush, repair keeps the whole frames on disk."""
    path = tmp_path / "a.wav"
    writer = WavWriter(path, encoding=encoding, channels=channels)
    rng = np.random.default_rng(channels)
    dtype = np.int16 if encoding is WavEncoding.PCM_16 else np.uint8
    frames = rng.integers(0, 0x7F, (101, channels)).astype(dtype)
    writer.write(frames[:50])
    writer.flush()
    stale = path.read_bytes()[: writer.header_size]  # the header of a flush, before a kill
    writer.write(frames[50:])
    writer.close()
    header = parse_header(path.read_bytes())
    assert (header["channels"], header["align"]) == (channels, channels * frames.itemsize)
    path.write_bytes(stale + path.read_bytes()[len(stale) : -1])  # and the end of the last frame lost
    assert repair_wav(path, encoding, channels) == 100
    with soundfile.SoundFile(str(path)) as f:
        assert (f.frames, f.channels) == (100, channels)
    if encoding is WavEncoding.PCM_16:
        data, _ = soundfile.read(str(path), dtype="int16", always_2d=True)
        np.testing.assert_array_equal(data, frames[:100])
    else:
        assert path.read_bytes()[58:] == frames[:100].tobytes()
    other = WavWriter(tmp_path / "b.wav", encoding=encoding, channels=channels)
    if other.block_align > 1:
        with pytest.raises(ValueError, match="whole number"):
            other.write(bytes(other.block_align + 1))
    other.close()


def test_repair_completes_a_multichannel_header_cut_short(tmp_path: Path) -> None:
    """Cut before the channel count the sidecar's count is taken; after it, the header's."""
    path = tmp_path / "a.wav"
    WavWriter(path, channels=4).close()
    header = path.read_bytes()
    for cut in range(1, len(header)):
        path.write_bytes(header[:cut])
        assert repair_wav(path, WavEncoding.PCM_16, 4 if cut < 24 else 3) == 0, cut
        assert soundfile.info(str(path)).channels == 4, cut
    with pytest.raises(ValueError, match="channels"):
        WavWriter(tmp_path / "c.wav", channels=65)
