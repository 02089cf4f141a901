"""A call's recording: partial file and sidecar while live, final file and sidecar after finish."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import example, given, settings
from hypothesis import strategies as st

from callstream.call.blocks import PcmBlock, StereoBlock
from callstream.codec import decode_ulaw_stereo
from callstream.errors import RecordingError
from callstream.storage import recording as recording_module
from callstream.storage.recording import Recording, encode_sidecar, read_sidecar, rfc3339, write_sidecar
from callstream.storage.sinks import FORMATS

STARTED = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)
ENDED = STARTED + timedelta(seconds=3)
FIELDS = {"callId": "call-1", "sessionId": "7", "agentId": "42"}
TEMPLATE = "{date}/{callId}-{sessionId}"


def audio(seed: int, seconds: int = 3) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, 8000, dtype=np.uint8).tobytes(),
             rng.integers(0, 256, 8000, dtype=np.uint8).tobytes()) for _ in range(seconds)]


def create(output_dir: Path, fmt: str = "wav", fields: dict | None = None) -> Recording:
    return Recording.create(output_dir, TEMPLATE, fmt, fields=FIELDS if fields is None else fields,
                            started=STARTED, metadata={"query": {"raw": "callId=call-1"}})


def record(output_dir: Path, blocks: list[tuple[bytes, bytes]], fmt: str = "wav",
           fields: dict | None = None) -> tuple[Recording, Path]:
    rec = create(output_dir, fmt, fields)
    for left, right in blocks:
        rec.write(left, right)
        rec.flush()
    final = rec.finish("complete", ended=ENDED, metadata={"start": {"callId": "call-1"}},
                       statistics={"gaps": 0})
    return rec, final


def test_live_recording_has_partial_and_sidecar(tmp_path: Path) -> None:
    rec = create(tmp_path)
    day = tmp_path / "2024-05-01"
    assert rec.partial_path == day / "call-1-7.partial.wav"
    assert rec.path == day / "call-1-7.wav"
    assert rec.sidecar_path == day / "call-1-7.json"
    assert not rec.path.exists()
    sidecar = read_sidecar(rec.sidecar_path)
    assert sidecar["status"] == "recording"
    assert sidecar["partial_file"] == "call-1-7.partial.wav"
    assert sidecar["file"] == "call-1-7.wav"
    assert sidecar["metadata"] == {"query": {"raw": "callId=call-1"}}
    assert sidecar["started"] == "2024-05-01T12:00:00.250Z"
    left, right = audio(0, 1)[0]
    rec.write(left, right)
    rec.flush()
    data, _ = soundfile.read(str(rec.partial_path), dtype="int16")  # readable while live
    np.testing.assert_array_equal(data, decode_ulaw_stereo(left, right))
    rec.finish("incomplete", ended=ENDED, metadata={}, statistics={})


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_finish(tmp_path: Path, fmt: str) -> None:
    blocks = audio(1)
    rec, final = record(tmp_path, blocks, fmt)
    assert final == rec.path
    assert final.exists()
    assert not rec.partial_path.exists()
    assert not list(tmp_path.rglob("*.partial.*"))
    assert not list(tmp_path.rglob("*.tmp"))
    data, rate = soundfile.read(str(final), dtype="int16")
    assert rate == 8000
    left = b"".join(b[0] for b in blocks)
    right = b"".join(b[1] for b in blocks)
    np.testing.assert_array_equal(data, decode_ulaw_stereo(left, right))

    sidecar = json.loads(rec.sidecar_path.read_text())
    assert sidecar == {
        "callId": "call-1",
        "sessionId": "7",
        "status": "complete",
        "format": fmt,
        "file": final.name,
        "sample_rate": 8000,
        "channels": 2,
        "channel_map": {"left": "agent (Participant)", "right": "caller (Conference)"},
        "frames": 24000,
        "duration_seconds": 3.0,
        "started": "2024-05-01T12:00:00.250Z",
        "ended": "2024-05-01T12:00:03.250Z",
        "sha256": hashlib.sha256(final.read_bytes()).hexdigest(),
        "metadata": {"start": {"callId": "call-1"}},
        "statistics": {"gaps": 0},
        "root": "call-1-7",
        "stream": 1,
        "sidecar_version": 2,
    }
    assert rec.frames_written == 24000


def test_streams_of_one_call_are_numbered_and_touch_only_their_own_files(tmp_path: Path) -> None:
    """Issue 12, bug 6: every create and finish rewrote every sibling's sidecar (quadratic in
    the streams of one call). Now a stream's sidecar says which stream it is, and the others'
    files are never written. Seen failing before the fix (the first sidecar was rewritten with
    the second in its siblings)."""
    first, _ = record(tmp_path, audio(4, 1))
    before = first.sidecar_path.read_bytes(), first.sidecar_path.stat()
    second = create(tmp_path)  # the same call and session, streamed again
    for left, right in audio(5, 1):
        second.write(left, right)
    second.finish("complete", ended=ENDED, metadata={}, statistics={})
    after = first.sidecar_path.read_bytes(), first.sidecar_path.stat()
    assert after[0] == before[0]
    assert (after[1].st_ino, after[1].st_mtime_ns) == (before[1].st_ino, before[1].st_mtime_ns)
    assert (first.path.name, second.path.name) == ("call-1-7.wav", "call-1-7-2.wav")
    one, two = read_sidecar(first.sidecar_path), read_sidecar(second.sidecar_path)
    assert (one["root"], one["stream"], two["root"], two["stream"]) == ("call-1-7", 1, "call-1-7", 2)
    assert one["status"] == two["status"] == "complete"
    assert one["sha256"] != two["sha256"]
    assert [p.name for p in (tmp_path / "2024-05-01").iterdir() if not p.name.startswith("call-1-7")] == []


def test_a_name_taken_by_another_call_is_a_stream_of_its_own(tmp_path: Path) -> None:
    # call "x-2" takes the name that looks like the second recording of call "x"
    def make(call_id: str) -> Recording:
        return Recording.create(tmp_path, "{callId}", "wav",
                                fields={"callId": call_id, "sessionId": "1"}, started=STARTED,
                                metadata={})

    x, other, again = make("x"), make("x-2"), make("x")
    for rec in (x, other, again):
        rec.finish("complete", ended=ENDED, metadata={}, statistics={})
    assert [r.path.name for r in (x, other, again)] == ["x.wav", "x-2.wav", "x-3.wav"]
    assert [(read_sidecar(r.sidecar_path)["root"], r.stream) for r in (x, other, again)] == [
        ("x", 1), ("x-2", 1), ("x", 3)]


def test_never_overwrites_a_final_file(tmp_path: Path) -> None:
    rec = create(tmp_path)
    rec.write(*audio(6, 1)[0])
    rec.path.write_bytes(b"somebody else's file")
    with pytest.raises(RecordingError, match="exists"):
        rec.finish("complete", ended=ENDED, metadata={}, statistics={})
    assert rec.path.read_bytes() == b"somebody else's file"
    assert rec.partial_path.exists()
    assert read_sidecar(rec.sidecar_path)["status"] == "recording"


def test_finish_can_be_retried_after_a_disk_failure(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rec = create(tmp_path)
    rec.write(*audio(7, 1)[0])
    real = recording_module.write_sidecar

    def full_disk(path: Path, data: dict, **options: object) -> None:
        raise RecordingError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(recording_module, "write_sidecar", full_disk)
    with pytest.raises(RecordingError):
        rec.finish("complete", ended=ENDED, metadata={}, statistics={})
    monkeypatch.setattr(recording_module, "write_sidecar", real)
    final = rec.finish("failed", ended=ENDED, metadata={}, statistics={})
    sidecar = read_sidecar(rec.sidecar_path)
    assert sidecar["status"] == "failed"
    assert sidecar["frames"] == 8000
    assert sidecar["sha256"] == hashlib.sha256(final.read_bytes()).hexdigest()
    with pytest.raises(ValueError):
        rec.finish("complete", ended=ENDED, metadata={}, statistics={})


def test_finish_checks_its_arguments(tmp_path: Path) -> None:
    rec = create(tmp_path)
    with pytest.raises(ValueError):
        rec.finish("done", ended=ENDED, metadata={}, statistics={})
    with pytest.raises(ValueError):
        rec.finish("complete", ended=datetime(2024, 5, 1), metadata={}, statistics={})
    rec.write(b"\xff", b"\xff")  # still open
    rec.finish("complete", ended=ENDED, metadata={}, statistics={})


def test_statistics_dataclass(tmp_path: Path) -> None:
    @dataclasses.dataclass(frozen=True)
    class Stats:
        gaps: int = 2

    rec = create(tmp_path)
    rec.finish("complete", ended=ENDED, metadata={}, statistics=Stats())
    assert read_sidecar(rec.sidecar_path)["statistics"] == {"gaps": 2}


def test_create_refuses_bad_arguments_without_leaving_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Recording.create(tmp_path, TEMPLATE, "mp3", fields=FIELDS, started=STARTED, metadata={})
    with pytest.raises(ValueError):
        Recording.create(tmp_path, "{bogus}", "wav", fields=FIELDS, started=STARTED, metadata={})
    with pytest.raises(ValueError):
        Recording.create(tmp_path, TEMPLATE, "wav", fields=FIELDS, started=datetime(2024, 5, 1),
                         metadata={})
    assert list(tmp_path.iterdir()) == []


def test_create_disk_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_bytes(b"")
    with pytest.raises(RecordingError, match="out") as info:
        create(blocker)
    assert isinstance(info.value.__cause__, OSError)


def test_create_cleans_up_when_the_sidecar_fails(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(path: Path, data: dict, **options: object) -> None:
        raise RecordingError("No space left on device")

    monkeypatch.setattr(recording_module, "write_sidecar", full_disk)
    with pytest.raises(RecordingError):
        create(tmp_path)
    assert list((tmp_path / "2024-05-01").iterdir()) == []


def test_concurrent_finishes_keep_every_sidecar(tmp_path: Path) -> None:
    recs = [create(tmp_path) for _ in range(8)]
    barrier = threading.Barrier(len(recs))
    errors: list[BaseException] = []

    def run(rec: Recording) -> None:
        try:
            rec.write(*audio(8, 1)[0])
            barrier.wait()
            rec.finish("complete", ended=ENDED, metadata={}, statistics={})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(rec,)) for rec in recs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(read_sidecar(rec.sidecar_path)["stream"] for rec in recs) == list(range(1, 9))
    for rec in recs:
        assert read_sidecar(rec.sidecar_path)["status"] == "complete"


def test_sidecar_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_sidecar(path, {"a": 1, "odd": "\ud800", "when": STARTED, "path": tmp_path})
    write_sidecar(path, {"a": 2, "odd": "\ud800", "when": STARTED})
    data = read_sidecar(path)
    assert data == {"a": 2, "odd": "\ud800", "when": str(STARTED)}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("content", ["", "{", "[1, 2]"])
def test_read_sidecar_rejects_garbage(tmp_path: Path, content: str) -> None:
    path = tmp_path / "a.json"
    path.write_text(content)
    with pytest.raises(RecordingError):
        read_sidecar(path)


def test_write_sidecar_failure(tmp_path: Path) -> None:
    with pytest.raises(RecordingError) as info:
        write_sidecar(tmp_path / "missing" / "a.json", {})
    assert isinstance(info.value.__cause__, OSError)


def test_rfc3339() -> None:
    assert rfc3339(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05.000Z"
    with pytest.raises(ValueError):
        rfc3339(datetime(2024, 1, 2))


@pytest.mark.parametrize("fmt", FORMATS)
def test_recovery_leaves_a_live_recording_alone_and_takes_it_once_its_recorder_is_gone(
    tmp_path: Path, fmt: str
) -> None:
    """The recorder's flock on the partial file tells recovery (in any process) the recording is
    live; when the recorder dies the kernel drops it (here: the lock is released by hand)."""
    from callstream.storage.recovery import recover_directory

    live = create(tmp_path, fmt)
    for left, right in audio(3, seconds=2):
        live.write(left, right)
    live.flush()
    assert recover_directory(tmp_path) == []
    assert live.partial_path.exists()
    assert read_sidecar(live.sidecar_path)["status"] == "recording"
    live._sink.close()  # what the recorder's death does
    live._reservation.release()
    [recovered] = recover_directory(tmp_path)
    assert recovered.path == live.path and not live.partial_path.exists()
    assert read_sidecar(live.sidecar_path)["status"] == "recovered"


def test_recovery_skips_a_name_claimed_a_moment_ago(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Between the claim (an empty partial file) and its lock there is an instant; an empty partial
    file younger than FRESH_CLAIM_SECONDS is left alone; an older one, a claim whose recorder died
    before writing the header, is removed."""
    import os
    import time

    from callstream.storage import recovery

    claim = tmp_path / "call.partial.wav"
    claim.write_bytes(b"")
    assert recovery.recover_directory(tmp_path) == []
    assert claim.exists() and "removed" not in caplog.text
    old = time.time() - recovery.FRESH_CLAIM_SECONDS - 1
    os.utime(claim, (old, old))
    assert recovery.recover_directory(tmp_path) == []
    assert not claim.exists()
    assert f"removed {claim}: an empty claim" in caplog.text
    assert "failed" not in caplog.text


@settings(max_examples=25, deadline=None)
@given(kept=st.one_of(st.integers(1, 120), st.floats(0.0, 1.0)))  # bytes (the header is 86), or a share
@example(kept=41)  # the header's two blocks end at 42 and 86 bytes
@example(kept=42)
@example(kept=43)
@example(kept=85)
@example(kept=86)
def test_flac_recovery_keeps_every_complete_frame(tmp_path_factory: pytest.TempPathFactory,
                                                  kept: int | float) -> None:
    """A FLAC partial cut anywhere (a crash mid-write) is salvaged to every sample of every FLAC
    frame completed before the cut: what ffmpeg decodes from the cut file, and a prefix of what was
    written. Cut before the first frame ends (also inside the header), it leaves a sidecar and
    no audio file."""
    import subprocess

    import imageio_ffmpeg

    from callstream.storage.recovery import recover_directory

    directory = tmp_path_factory.mktemp("flac")
    live = create(directory, "flac")
    blocks = audio(4, seconds=4)
    for left, right in blocks:
        live.write(left, right)
        live.flush()
    written = live.partial_path.read_bytes()  # what a crash right now would leave
    live._sink.close()
    live._reservation.release()
    # (never empty: an empty partial file is a claim, see test_recovery_skips_a_name_claimed_a_moment_ago)
    cut = written[:kept] if isinstance(kept, int) else written[: 1 + int(kept * (len(written) - 1))]
    live.partial_path.write_bytes(cut)
    decoded = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "quiet", "-i", str(live.partial_path),
                              "-f", "s16le", "-"], capture_output=True).stdout
    oracle = np.frombuffer(decoded, "<i2").reshape(-1, 2)

    [recovered] = recover_directory(directory)
    assert read_sidecar(recovered.sidecar)["frames"] == recovered.frames == len(oracle)
    assert not live.partial_path.exists()
    if not len(oracle):  # libsndfile writes no FLAC file without audio: the sidecar tells
        assert recovered.path is None and read_sidecar(recovered.sidecar)["file"] is None
        assert not list(directory.rglob("*.flac"))
        return
    salvaged, _ = soundfile.read(str(recovered.path), dtype="int16", always_2d=True)
    assert len(salvaged) == len(oracle)
    np.testing.assert_array_equal(salvaged, oracle)
    original = np.concatenate([decode_ulaw_stereo(left, right) for left, right in blocks])
    np.testing.assert_array_equal(salvaged, original[: len(salvaged)])


@pytest.mark.parametrize("fmt", ["wav", "mulaw-wav"])
@pytest.mark.parametrize("cut", [3, 20])
def test_wav_recovery_of_a_header_cut_short(tmp_path: Path, fmt: str, cut: int) -> None:
    """A recorder killed while writing the WAV header leaves no audio: recovery makes it a valid
    empty WAV of the recording's format (the sidecar says which while the header cannot)."""
    from callstream.storage.recovery import recover_directory

    live = create(tmp_path, fmt)
    header = live.partial_path.read_bytes()
    live._sink.close()
    live._reservation.release()
    live.partial_path.write_bytes(header[:cut])
    [recovered] = recover_directory(tmp_path)
    assert recovered.frames == 0 and recovered.path is not None
    with soundfile.SoundFile(str(recovered.path)) as f:
        assert (f.frames, f.channels) == (0, 2)
        assert f.subtype == ("ULAW" if fmt == "mulaw-wav" else "PCM_16")
    assert read_sidecar(recovered.sidecar)["status"] == "recovered"


@pytest.mark.parametrize("fmt", ["wav", "flac", "mulaw-wav"])
def test_append_takes_either_engines_block(tmp_path: Path, fmt: str) -> None:
    """A StereoBlock (Engage Voice) and a PcmBlock (RingCX) reach the file by one call, each as
    its own write would put it."""
    left, right = audio(3, seconds=1)[0]
    pcm = np.random.default_rng(4).integers(-3000, 3000, (800, 2), dtype=np.int16)
    by_append = create(tmp_path / "append", fmt)
    by_append.append(StereoBlock(left, right, 0))
    by_append.append(PcmBlock(pcm, 8000))
    by_writes = create(tmp_path / "writes", fmt)
    by_writes.write(left, right)
    by_writes.write_pcm(pcm)
    paths = [rec.finish("complete", ended=ENDED, metadata={}, statistics={}) for rec in (by_append, by_writes)]
    appended, written = (soundfile.read(str(path), dtype="int16")[0] for path in paths)
    assert appended.shape == (8800, 2) and np.array_equal(appended, written)
    four = Recording.create(tmp_path / "four", TEMPLATE, "wav", fields=FIELDS, started=STARTED, metadata={},
                            channels=4)
    with pytest.raises(ValueError):
        four.append(StereoBlock(left, right, 0))  # a mu-law pair in a file of four channels
    four.abandon()


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=200), chunk=st.integers(1, 64))
def test_sha256_file_hashes_every_byte_across_its_reads(content: bytes, chunk: int) -> None:
    """The hash reads in chunks into one buffer: a short last read must not hash stale bytes."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "audio.wav"
        path.write_bytes(content)
        assert recording_module.sha256_file(path, chunk) == hashlib.sha256(content).hexdigest()


# -- the sidecar's JSON (orjson, the standard library where orjson refuses) ---------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # any but lone surrogates
_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _TEXT


def _trees(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
                        max_leaves=20)


@given(st.dictionaries(_TEXT, _trees(_SCALARS), max_size=6))
@settings(max_examples=300, deadline=None)
def test_sidecar_json_is_the_standard_librarys_indented_layout_in_utf8(data: dict) -> None:
    """Byte for byte what ``json.dumps(indent=2, ensure_ascii=False)`` writes (escapes, nesting,
    empty containers), as UTF-8, with a newline at the end."""
    assert encode_sidecar(data) == (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


@given(st.dictionaries(_TEXT, _trees(_SCALARS | st.floats(allow_nan=False, allow_infinity=False)), max_size=6))
@settings(max_examples=200, deadline=None)
def test_sidecar_json_reads_back_as_written(data: dict) -> None:
    """Floats too (orjson spells some exponents its own way, ``1e16`` for ``1e+16``: the same value)."""
    assert json.loads(encode_sidecar(data)) == data


@dataclasses.dataclass
class _Point:
    x: int


def test_sidecar_json_writes_what_json_cannot_hold_as_its_str() -> None:
    when = datetime(2026, 12, 6, 21, 0, tzinfo=UTC)
    data = {"when": when, "path": Path("/a/b"), "point": _Point(3), 7: "int key", "set": {1}}
    expected = json.dumps(data, indent=2, default=str) + "\n"
    assert encode_sidecar(data) == expected.encode("ascii")
    assert json.loads(encode_sidecar(data))["when"] == "2026-12-06 21:00:00+00:00"  # str(), not ISO


@pytest.mark.parametrize("value", ["\ud800 alone", 2**64, -(2**70)])
def test_sidecar_json_falls_back_to_ascii_for_what_orjson_refuses(value: object) -> None:
    """A lone surrogate (no UTF-8 for it) and integers beyond 64 bits: the standard library's ASCII."""
    data = {"caller": value, "name": "José"}
    encoded = encode_sidecar(data)
    assert encoded == (json.dumps(data, indent=2) + "\n").encode("ascii")
    assert json.loads(encoded) == data
