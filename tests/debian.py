"""Programs from Debian's packages that tests run for real (Chromium, HAProxy, nginx): found on
PATH, else installed with apt-get when the tests run as root (as on CI, whose clean machine has
only what `make test` installs), else the test is skipped saying why."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

__all__ = ["program"]

# apt-get holds dpkg's lock: two pytest workers installing at once would fail one of them
LOCK = Path(tempfile.gettempdir()) / "callstream-tests-apt.lock"
INSTALL_SECONDS = 900


def program(name: str, package: str, *, aliases: tuple[str, ...] = ()) -> str:
    """The path of ``name`` (or one of ``aliases``); installs Debian's ``package`` when none is
    on PATH (apt-get update first), or skips the calling test saying why it cannot."""
    found = _which(name, aliases)
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"no {name}, and no apt-get as root to install Debian's {package} package")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": INSTALL_SECONDS}
    # noninteractive: no questions; a package's service is not ours to start (Debian's
    # policy-rc.d decides, as for any install on the machine)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _which(name, aliases)  # another worker may have installed it meanwhile
        if found:
            return found
        if subprocess.run(["apt-get", "update"], env=env, **quiet).returncode != 0 or subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", package], env=env, **quiet
        ).returncode != 0:
            pytest.skip(f"{name} is not installed and apt-get could not install {package}")
    found = _which(name, aliases)
    if found is None:
        pytest.skip(f"apt-get installed {package} but no {name} binary is on PATH")
    return found


def _which(name: str, aliases: tuple[str, ...]) -> str | None:
    for candidate in (name, *aliases):
        found = shutil.which(candidate)
        if found:
            return found
    return None
