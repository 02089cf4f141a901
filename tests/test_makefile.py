"""`make install` twice at once (as `make run` and `make test` on a fresh clone do) sets the
virtual environment up once: the second waits for the first's lock, then finds it done.

Runs the real Makefile in a copy of its inputs, with a stand-in for Python's venv and pip that
logs when each step starts and ends (a real set-up installs every dependency: minutes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEP_SECONDS = 0.3  # how long each stand-in step takes: long enough for two makes to overlap


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_two_concurrent_installs_set_up_once(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml", "setup.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    log = tmp_path / "steps.log"
    # `python -m venv DIR` makes DIR/bin/python a stand-in that logs each pip step; anything
    # else (the Makefile's lock) runs in the real Python
    fake_python = textwrap.dedent(f"""\
        #!/bin/sh
        echo "start $*" >> {log}
        sleep {STEP_SECONDS}
        echo "end" >> {log}
    """)
    wrapper = tmp_path / "python"
    wrapper.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, pathlib, sys
        if sys.argv[1:3] == ["-m", "venv"]:
            with open({str(log)!r}, "a") as log:
                log.write("start venv\\n")
            import time
            time.sleep({STEP_SECONDS})
            bin = pathlib.Path(sys.argv[3]) / "bin"
            bin.mkdir(parents=True, exist_ok=True)
            (bin / "python").write_text({fake_python!r})
            (bin / "python").chmod(0o755)
            with open({str(log)!r}, "a") as log:
                log.write("end\\n")
        else:
            os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])
    """))
    wrapper.chmod(0o755)
    command = ["make", "--no-print-directory", "install", f"PYTHON={wrapper}"]
    makes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [make.communicate(timeout=60)[0] for make in makes]
    assert [make.returncode for make in makes] == [0, 0], outputs
    steps = log.read_text().splitlines()
    # one set-up (venv, pip upgrade, pip install), its steps one after the other, never two at once
    assert [line.split()[0] for line in steps] == ["start", "end"] * 3, steps
    assert sum("install" in line and "-e" in line for line in steps) == 1, steps
    assert any("Nothing to be done" in output for output in outputs), outputs
    assert (tmp_path / ".venv" / ".installed").exists()
