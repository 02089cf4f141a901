"""What every benchmark here records beside its numbers: the machine, and where results go.

``describe_machine()`` says what ran the benchmark; ``write_result(name, data)`` stores one run as
``benchmarks/results/<name>-<UTC timestamp>.json`` and overwrites ``<name>-latest.json``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "avx512f", "avx512bw", "asimd", "sve")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _compiler() -> str | None:
    """First line of ``$CC --version`` for the compiler that builds extensions, if any."""
    cc = (sysconfig.get_config_var("CC") or "").split()
    if not cc or shutil.which(cc[0]) is None:
        return None
    try:
        result = subprocess.run(
            [*cc, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.splitlines()
    return lines[0] if result.returncode == 0 and lines else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_machine() -> dict:
    """CPU model, cores, OS, Python, numpy and compiler of this machine, as JSON-ready values."""
    cpu = _cpuinfo()
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "simd": [flag for flag in SIMD_FLAGS if flag in flags],
        "virtualized": "hypervisor" in flags,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "numpy": _version("numpy"),
        "compiler": _compiler(),
    }


def current_commit() -> str | None:
    """The checkout's commit (short), with ``-dirty`` when tracked files differ; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def write_result(name: str, data: dict) -> Path:
    """Store one run of benchmark ``name``; returns the timestamped file.

    The machine description and the UTC time are added unless ``data`` already has them.
    """
    now = datetime.now(UTC)
    payload = {"benchmark": name, "utc": now.isoformat(timespec="seconds"), **data}
    payload.setdefault("machine", describe_machine())
    payload.setdefault("commit", current_commit())
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(text, encoding="utf-8")
    (RESULTS / f"{name}-latest.json").write_text(text, encoding="utf-8")
    return path
