"""`python -m callstream serve` as a real child process on 127.0.0.1, port 0, for the tests that
need a process of its own (SIGKILL, RSS, open files, workers). Its log is collected from stderr;
the port is read from the log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

LISTENING = r"listening on [\d.]+:(\d+)"


class ServerProcess:
    """Starts the server with ``args`` after the host, port and output directory; waits until
    ``ready`` (a regex whose group 1 is the port) appears in the log. ``env``: variables added to
    the test's own environment for the child (e.g. CALLSTREAM_NATIVE=0)."""

    def __init__(self, output_dir: Path, *args: str, ready: str = LISTENING, timeout: float = 30,
                 env: dict[str, str] | None = None) -> None:
        self.output_dir = output_dir
        self.process = subprocess.Popen(
            [sys.executable, "-m", "callstream", "serve", "--host", "127.0.0.1", "--port", "0",
             "--output-dir", str(output_dir), *args],
            stderr=subprocess.PIPE, text=True, errors="replace", env=None if env is None else {**os.environ, **env},
        )
        self.log: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.wait_for(ready, timeout=timeout).group(1))

    def _read(self) -> None:
        for line in self.process.stderr:  # type: ignore[union-attr]
            with self._lock:
                self.log.append(line)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30) -> re.Match[str]:
        """The ``count``-th log line matching ``pattern``; kills the server and fails if none comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [match for line in self.log if (match := re.search(pattern, line))]
            if len(found) >= count:
                return found[count - 1]
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.process.kill()
        self.process.wait()
        raise AssertionError(f"no {pattern!r} in the server's log:\n" + "".join(self.log))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``signum`` and wait; returns the exit status (negative: killed by a signal)."""
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process.stderr.close()  # type: ignore[union-attr]
        return code
