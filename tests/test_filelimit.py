"""The open-file limit: raised to what --max-calls needs, never lowered, a warning when it cannot be.

Each case runs in a child process: a process's limits cannot be lowered back without privileges."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import logging, resource, sys
    logging.basicConfig(level="WARNING", stream=sys.stdout, format="%(message)s")
    from callstream.server.filelimit import needed, raise_file_limit
    soft, hard = {soft}, {hard}
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print("limit", raise_file_limit({calls}), resource.getrlimit(resource.RLIMIT_NOFILE)[0], needed({calls}))
""")


def run(soft: int, hard: int, calls: int) -> tuple[list[int], str]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(soft=soft, hard=hard, calls=calls)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    [line] = [line for line in result.stdout.splitlines() if line.startswith("limit")]
    return [int(word) for word in line.split()[1:]], result.stdout


def test_a_low_soft_limit_is_raised_to_what_the_calls_need() -> None:
    (returned, soft, need), output = run(1024, 8192, 2000)
    assert need == 3 * 2000 + 256 and returned == soft == need
    assert "below" not in output


def test_a_high_enough_limit_is_left_as_it_is() -> None:
    (returned, soft, _), _ = run(8000, 8192, 100)
    assert returned == soft == 8000


def test_a_low_hard_limit_is_reached_and_reported() -> None:
    (returned, soft, _), output = run(512, 1024, 2000)
    assert returned == soft == 1024
    assert "open-file limit 1024 is below the 6256 that --max-calls 2000 needs" in output
    assert "calls beyond about 256" in output
