"""The recorder and adapter tests once more with every C kernel's twin (issue 13, point 1:
``CALLSTREAM_NATIVE=0`` selects the pure-Python/numpy twins everywhere, and the recorder works
fully that way).

`native.py` decides at import, so the twins need a process of their own: a child pytest with
``CALLSTREAM_NATIVE=0`` runs TWIN_MODULES -- the recorder end to end on every transport, with its
limits and drain, the timeline's placement through a real server, the front end's translation and
the call core (the Media scan's and the placement's twins), the transport adapter contract
(the websockets frame split's twin), and the segment mixer with the call core (the mixer's
writes' twin). The twins themselves are tested against the kernels where each lives (see
test_native.py); this checks that the recorder built from them records correctly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from callstream import native

TESTS = Path(__file__).resolve().parent
TWIN_MODULES = (
    "test_server.py",
    "test_server_timeline.py",
    "test_lifecycle.py",
    "test_session.py",
    "test_core.py",
    "test_transport.py",
    "test_segments.py",
    "test_core_segments.py",
)
TIMEOUT = 300  # seconds: the child run as a whole
# the child checks that it has no kernel before it runs the tests (in the same process)
CHILD = ("import sys, pytest; from callstream import native; "
         "assert not native.AVAILABLE and native.DISABLED, 'CALLSTREAM_NATIVE=0 did not select the twins'; "
         "sys.exit(pytest.main(sys.argv[1:]))")


@pytest.mark.skipif(not native.AVAILABLE, reason="this run has every twin already (no kernel loaded)")
def test_the_recorder_and_adapter_tests_pass_with_every_twin() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, "-p", "no:cacheprovider", "--no-header", "-q",
         *(str(TESTS / name) for name in TWIN_MODULES)],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=TESTS.parent,
        env={**os.environ, "CALLSTREAM_NATIVE": "0"},
    )
    summary = result.stdout.strip().splitlines()[-1:] or [""]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in summary[0], summary[0]
