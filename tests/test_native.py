"""The native seam: CALLSTREAM_NATIVE=0 puts every kernel's pure-Python/numpy twin in its place,
a list such as ``-wsframe,-append`` drops only the kernels it names, and a recorder without native
code still records a call sample for sample.

The twins are tested against the C kernels where each lives (test_codec: every backend against
G.711 and each other; test_mediascan: the scan against protocol.parse_message; test_timeline: the
C lanes against the Python placement; test_websockets_adapter: the C split against websockets'
parser; test_wavbatch: the batched appends against the sinks' own writes; test_mixing: the segment
mixer's writes against numpy). Here: the switch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from callstream import native
from serverprocess import ServerProcess

TIMEOUT = 60  # seconds: any child process
USERS = (  # every module that takes a kernel from native.py
    "callstream.codec",
    "callstream.call.inorder",
    "callstream.engagevoice.mediascan",
    "callstream.engagevoice.transport_websockets",
    "callstream.storage.wavbatch",
    "callstream.call.mixing",
)
needs_c = pytest.mark.skipif(not native.AVAILABLE, reason="callstream._mulaw is not built")


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ, **env})


CHECK = f"""
import importlib, sys
from callstream import native, codec
from callstream.call import timeline
mods = [importlib.import_module(name) for name in {USERS!r}]
print(native.AVAILABLE, [m._lib is None for m in mods], codec.BACKEND, timeline.STEADY_IN_C,
      "callstream._mulaw" in sys.modules)
"""


def test_native_0_selects_every_twin_without_a_warning() -> None:
    result = python(CHECK, CALLSTREAM_NATIVE="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "[True,", "True,", "True,", "True,", "True,", "True]", "numpy",
                                     "False", "False"]


@needs_c
def test_native_1_and_unset_use_the_extension() -> None:
    for value in ("1", ""):
        result = python(CHECK, CALLSTREAM_NATIVE=value)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["True", "[False,", "False,", "False,", "False,", "False,", "False]", "c",
                                         "True", "True"]


@needs_c
def test_a_list_drops_only_the_kernels_it_names() -> None:
    result = python(CHECK, CALLSTREAM_NATIVE="-wsframe, -inorder, -mix")
    assert result.returncode == 0, result.stderr
    # USERS order: codec, inorder, mediascan, wsframe, append, mix
    assert result.stdout.split() == ["True", "[False,", "True,", "False,", "True,", "False,", "True]", "c",
                                     "False", "True"]


def test_dropping_the_codec_kernel_selects_numpy_without_a_warning() -> None:
    result = python(CHECK, CALLSTREAM_NATIVE="-mulaw")  # -W error: a warning would fail the child
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[1] == "[True," and words[7] == "numpy"


@pytest.mark.parametrize("value", ["yes", "-wsframe,+append", "-nosuch", "wsframe"])
def test_a_bad_value_is_refused_in_one_line(value: str) -> None:
    result = python("import callstream.codec", CALLSTREAM_NATIVE=value)
    assert result.returncode == 1
    assert (f"ValueError: CALLSTREAM_NATIVE is {value!r}, expected '0', '1', unset or a list like "
            "'-wsframe,-append' (kernels: mulaw, mediascan, wsframe, inorder, append, mix)") in result.stderr


def test_a_recorder_without_native_code_records_calls_sample_for_sample(tmp_path: Path) -> None:
    """One real server process and one simulator process, both with CALLSTREAM_NATIVE=0; the
    simulator's --verify compares every recording with what it sent, sample by sample."""
    output = tmp_path / "recordings"
    server = ServerProcess(output, "--flush-interval", "0.2", env={"CALLSTREAM_NATIVE": "0"})
    try:
        with open(f"/proc/{server.process.pid}/maps") as maps:
            assert "_mulaw" not in maps.read()  # the extension was never loaded
        result = subprocess.run(
            [sys.executable, "-m", "callstream", "simulate", "--url", server.url, "--calls", "3",
             "--seconds", "2", "--fast", "--verify", str(output), "--call-id", "twin"],
            capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "CALLSTREAM_NATIVE": "0"},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "3/3 calls ok" in result.stdout and "verify: 3 passed, 0 failed" in result.stdout
    finally:
        assert server.stop() == 0, "".join(server.log[-30:])
    assert not [line for line in server.log if "Traceback" in line or " ERROR " in line], "".join(server.log)
