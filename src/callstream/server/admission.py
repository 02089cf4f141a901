"""Counts live calls against --max-calls, in one process or across worker processes.

Across workers the count lives in shared memory (a `multiprocessing.Value` made by the
supervisor), so --max-calls bounds the whole machine, not each worker. It is touched once per
call at admission and once at its end, never per message.
"""

from __future__ import annotations

from typing import Any


class Admission:
    """``limit``: live calls allowed; ``shared``: a ``multiprocessing.Value('i')`` shared by the
    workers, or None for a process of its own."""

    def __init__(self, limit: int, shared: Any | None = None) -> None:
        self.limit = limit
        self._shared = shared
        self._local = 0

    @property
    def live(self) -> int:
        """Calls admitted and not yet released, across all workers when shared."""
        return self._local if self._shared is None else self._shared.value

    def try_admit(self) -> bool:
        """Count one more call if the limit allows; False (nothing counted) if full."""
        if self._shared is None:
            if self._local >= self.limit:
                return False
            self._local += 1
            return True
        with self._shared.get_lock():
            if self._shared.value >= self.limit:
                return False
            self._shared.value += 1
        return True

    def release(self) -> None:
        if self._shared is None:
            self._local -= 1
            return
        with self._shared.get_lock():
            self._shared.value -= 1
