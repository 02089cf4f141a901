"""The process's limit on open files, raised to what ``--max-calls`` needs.

A live call holds three descriptors (its socket, its audio file and the lock on it; see
`naming.PartialLock`), and many service managers start processes with a soft limit of 1024, so
an unraised limit would refuse calls with EMFILE from about 340 calls on: accept() fails and the
platform sees connection errors. The soft limit may be raised up to the hard one without
privileges; the workers of ``serve --workers`` inherit it.
"""

from __future__ import annotations

import logging
import resource
from typing import Final

LOGGER = logging.getLogger("callstream.filelimit")

PER_CALL: Final = 3  # socket, audio file, partial-file lock
RESERVE: Final = 256  # listeners, metrics connections, sidecar writes, threads, libraries


def needed(max_calls: int, unauthenticated: int = 0) -> int:
    """Descriptors ``max_calls`` live calls and ``unauthenticated`` connections yet to present
    the secret (a socket each) need at most."""
    return PER_CALL * max_calls + unauthenticated + RESERVE


def raise_file_limit(max_calls: int, unauthenticated: int = 0) -> int:
    """Raise the soft RLIMIT_NOFILE towards what ``max_calls`` (and ``unauthenticated``, see
    `needed`) need (never lowers it); returns the soft limit in force. Warns, once, when even
    the hard limit is too low."""
    want = needed(max_calls, unauthenticated)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as error:
            LOGGER.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, error)
    if soft < want:
        LOGGER.warning(
            "open-file limit %d is below the %d that --max-calls %d needs: calls beyond about %d "
            "will be refused by the kernel; raise the hard limit (LimitNOFILE= in systemd, ulimit -Hn)",
            soft, want, max_calls, (soft - RESERVE - unauthenticated) // PER_CALL,
        )
    return soft
