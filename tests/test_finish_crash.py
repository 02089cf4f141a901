"""Finishing and recovering are safe at every instant (issue 12, bugs 4 and 5).

A child process finishes (or recovers) a recording and is SIGKILLed just before its k-th file
system call (os.open, os.replace, os.fsync, os.close, os.unlink, builtins.open ...), for every k
until one run gets through; after each kill, recovery runs, and the recording must then be
consistent: one audio file at its final name holding every sample written, no partial file, a
sidecar with a final status whose SHA-256 and frame count are the file's.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile

from callstream.codec import decode_ulaw_stereo
from callstream.errors import RecordingError
from callstream.storage import recording as recording_module
from callstream.storage.recording import FAILED_MARK, Recording, read_sidecar
from callstream.storage.recovery import recover_directory
from callstream.storage.wavfile import WavEncoding, repair_wav

SEED, BLOCKS = 31, 3  # three one-second blocks of random mu-law per side
FIELDS = {"callId": "crash", "sessionId": "1"}

# The child: for KILL_AT = 0, 1, 2 ... it forks a process that, in ROOT/kill-KILL_AT, records the
# blocks (flushed) and finishes them, or recovers a copy of TEMPLATE, SIGKILLed before its
# KILL_AT-th file call; until one gets through (it prints how many were killed). One interpreter
# for all: forking is fast, starting Python per kill point is not.
CHILD = textwrap.dedent('''
    import builtins, os, shutil, signal, sys
    from datetime import UTC, datetime
    from pathlib import Path
    import numpy as np
    from callstream.storage.recording import Recording
    from callstream.storage.recovery import recover_directory

    root, fmt, action, template = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    calls = 0

    def hooked(real, kill_at):
        def call(*args, **kwargs):
            global calls
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            calls += 1
            return real(*args, **kwargs)
        return call

    def arm(kill_at):
        for name in ("open", "replace", "rename", "fsync", "close", "unlink", "ftruncate", "truncate"):
            setattr(os, name, hooked(getattr(os, name), kill_at))
        builtins.open = hooked(builtins.open, kill_at)

    def record(out):
        started = datetime(2024, 5, 1, 12, tzinfo=UTC)
        rec = Recording.create(out, "{callId}", fmt, fields={"callId": "crash", "sessionId": "1"},
                               started=started, metadata={})
        rng = np.random.default_rng(%(seed)d)
        for _ in range(%(blocks)d):
            rec.write(rng.integers(0, 256, 8000, dtype=np.uint8).tobytes(),
                      rng.integers(0, 256, 8000, dtype=np.uint8).tobytes())
            rec.flush()
        return rec

    if action == "crash":
        record(root)
        os.kill(os.getpid(), signal.SIGKILL)
    for kill_at in range(1000):
        out = root / f"kill-{kill_at}"
        if action == "recover":
            shutil.copytree(template, out)
        pid = os.fork()
        if pid == 0:
            try:
                if action == "finish":
                    rec = record(out)
                    arm(kill_at)
                    rec.finish("complete", ended=datetime(2024, 5, 1, 12, 0, 3, tzinfo=UTC),
                               metadata={}, statistics={})
                else:
                    arm(kill_at)
                    recover_directory(out)
            finally:
                os._exit(0)  # also after an exception: the parent reads the files
        _, status = os.waitpid(pid, 0)
        if not os.WIFSIGNALED(status):
            print(kill_at)
            break
        assert os.WTERMSIG(status) == signal.SIGKILL
''') % {"seed": SEED, "blocks": BLOCKS}


def child(root: Path, fmt: str, action: str, template: Path | None = None) -> int:
    """Runs CHILD; returns how many runs were killed (``root/kill-0`` ... hold what each left,
    ``root/kill-N`` what the run that got through did)."""
    run = subprocess.run([sys.executable, "-c", CHILD, str(root), fmt, action, str(template)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


def expected() -> np.ndarray:
    rng = np.random.default_rng(SEED)
    blocks = [(rng.integers(0, 256, 8000, dtype=np.uint8).tobytes(),
               rng.integers(0, 256, 8000, dtype=np.uint8).tobytes()) for _ in range(BLOCKS)]
    return np.concatenate([decode_ulaw_stereo(left, right) for left, right in blocks])


def assert_consistent(out: Path, fmt: str, statuses: set[str]) -> None:
    extension = ".flac" if fmt == "flac" else ".wav"
    assert not list(out.rglob("*.partial.*"))
    assert not list(out.rglob("*" + FAILED_MARK))
    [audio] = list(out.rglob("*" + extension))
    sidecar = read_sidecar(audio.with_suffix(".json"))
    assert sidecar["status"] in statuses
    assert sidecar["file"] == audio.name
    assert sidecar["sha256"] == hashlib.sha256(audio.read_bytes()).hexdigest()
    samples, _ = soundfile.read(str(audio), dtype="int16", always_2d=True)
    assert sidecar["frames"] == len(samples)
    np.testing.assert_array_equal(samples, expected())


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_a_finish_killed_at_any_step_is_completed_by_recovery(tmp_path: Path, fmt: str) -> None:
    """Bug 4: the finish renamed, then hashed, then wrote the sidecar; a kill in between left a
    final file whose sidecar said `recording` forever (recovery only looked at partial files).
    Seen failing before the fix (the kill after the rename: status 'recording')."""
    killed = child(tmp_path, fmt, "finish")
    assert killed >= 8  # the finish has that many file calls at least: each was a kill point
    assert_consistent(tmp_path / f"kill-{killed}", fmt, {"complete"})
    for kill_at in range(killed):
        out = tmp_path / f"kill-{kill_at}"
        recover_directory(out)
        assert_consistent(out, fmt, {"complete", "recovered"})


def crashed(out: Path, fmt: str) -> None:
    """A recorder SIGKILLed mid-call: a partial file and a `recording` sidecar."""
    run = subprocess.run([sys.executable, "-c", CHILD, str(out), fmt, "crash", "-"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert list(out.rglob("*.partial.*"))


def renamed_before_its_sidecar(out: Path, fmt: str) -> None:
    """What a finish (or recovery) killed between its rename and its sidecar left, before
    sidecar version 2: the audio at its final name, the sidecar still `recording`."""
    crashed(out, fmt)
    [partial] = list(out.rglob("*.partial.*"))
    repair_wav(partial, WavEncoding.PCM_16)
    partial.rename(partial.with_name(partial.name.replace(".partial", "")))


@pytest.mark.parametrize("state", [crashed, renamed_before_its_sidecar], ids=lambda f: f.__name__)
def test_a_recovery_killed_at_any_step_is_completed_by_the_next(tmp_path: Path, state) -> None:
    """Recovery too may be killed anywhere (the issue: kill `recover` while it hashes a large
    file, run it again). Seen failing before the fix for both (the sidecar stayed `recording`)."""
    template = tmp_path / "template"
    state(template, "wav")
    killed = child(tmp_path / "runs", "wav", "recover", template)
    assert killed >= 4
    assert_consistent(tmp_path / "runs" / f"kill-{killed}", "wav", {"recovered"})
    for kill_at in range(killed):
        out = tmp_path / "runs" / f"kill-{kill_at}"
        recover_directory(out)
        assert_consistent(out, "wav", {"recovered"})


def test_a_full_disk_at_the_final_sidecar_ends_failed_at_the_next_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug 5: with no space for the final sidecar the finish (and the recorder's retry as
    failed) fails. It had renamed the audio first, so the sidecar said `recording` and nothing
    ever fixed it. Now the audio stays partial beside an empty NAME.failed mark (creating it
    takes no data block), and recovery at the next start, with space again, ends it `failed`.
    Seen failing before the fix (after recovery the sidecar still said 'recording')."""
    from datetime import UTC, datetime

    rec = Recording.create(tmp_path, "{callId}", "wav", fields=FIELDS,
                           started=datetime(2024, 5, 1, 12, tzinfo=UTC), metadata={})
    rng = np.random.default_rng(SEED)
    for _ in range(BLOCKS):
        rec.write(rng.integers(0, 256, 8000, dtype=np.uint8).tobytes(),
                  rng.integers(0, 256, 8000, dtype=np.uint8).tobytes())
    real = recording_module.write_sidecar

    def full_disk(path: Path, data: dict, **options: object) -> None:
        raise RecordingError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(recording_module, "write_sidecar", full_disk)
    ended = datetime(2024, 5, 1, 12, 0, 3, tzinfo=UTC)
    for status in ("complete", "failed"):  # what the recorder does
        with pytest.raises(RecordingError):
            rec.finish(status, ended=ended, metadata={}, statistics={})
    rec.abandon()
    monkeypatch.setattr(recording_module, "write_sidecar", real)
    [recovered] = recover_directory(tmp_path)  # the next start, with space again
    assert recovered.status == "failed"
    assert_consistent(tmp_path, "wav", {"failed"})


def test_a_mark_left_beside_a_finished_recording_is_removed(tmp_path: Path) -> None:
    """A kill between the sidecar that says `failed` and the mark's removal leaves the mark
    beside a finished recording: the next recovery removes it and touches nothing else."""
    from datetime import UTC, datetime

    rec = Recording.create(tmp_path, "{callId}", "wav", fields=FIELDS,
                           started=datetime(2024, 5, 1, 12, tzinfo=UTC), metadata={})
    rec.finish("failed", ended=datetime(2024, 5, 1, 12, 0, 3, tzinfo=UTC), metadata={},
               statistics={})
    before = rec.sidecar_path.read_bytes()
    mark = rec.path.with_suffix(FAILED_MARK)
    mark.touch()
    assert recover_directory(tmp_path) == []
    assert not mark.exists()
    assert rec.sidecar_path.read_bytes() == before
