"""The process's logging: one handler (stderr or a file), log lines nobody can forge, and a
throttle for warnings a peer can cause at will.

Call ids, session ids, remote addresses and close reasons come from the network. A value with a
CR or LF would start a line of its own that looks like ours (a forged "call ... ended" or an
error that never happened), a NUL makes the log file binary to grep, and ANSI escapes rewrite
a terminal. So every record that reaches our handler has the control characters of its whole
message (the format's arguments included) escaped as ``\\xNN`` / ``\\uNNNN``: done once here,
on the handler, so no call site can forget, and it covers the libraries' records too.
Tracebacks (``exc_info``) keep their lines: they are ours.

The handler of ``--log-file`` is a `logging.handlers.WatchedFileHandler`: after logrotate moves
the file, the next line (or SIGHUP, see `reopen_log_files`) opens a new one.

``--log-format``: text, ``TIME [worker[pid] ]LEVEL logger: message``; or JSON, one object per line
with ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``event`` (the message, escaped
as above), ``process`` and ``pid`` when a worker logs, and any of `FIELDS` a call site passed in
``extra=`` (the end of a call carries ``call_id``, ``session_id``, ``status``, ``reason``,
``close_code``, ``duration`` in seconds, ``path`` and ``statistics`` as a nested object), so that
a log pipeline can index them. JSON strings escape every control character themselves.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

# C0 controls (tab and newline included: a log line is one line), DEL, C1 controls, and the
# Unicode line and paragraph separators some viewers break lines at.
_CONTROLS: Final = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES: Final = {code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") for code in _CONTROLS}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x0a``, ``\\u2028``)."""
    return text.translate(_ESCAPES)


class EscapeControls(logging.Filter):
    """A handler filter: formats the record's message once, escapes its control characters,
    and leaves the record holding that text (so every formatter after it sees it escaped)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = escape_controls(message), None
        return True


FIELDS: Final = ("call_id", "session_id", "status", "reason", "close_code", "duration", "path", "statistics")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module's docstring)."""

    def __init__(self, process_name: str | None = None) -> None:
        super().__init__()
        self._process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        data: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if self._process_name:
            data["process"] = self._process_name
            data["pid"] = record.process
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, separators=(",", ":"))


def configure_logging(
    level: str, *, name: str | None = None, file: Path | None = None, log_format: str = "text"
) -> None:
    """Log at ``level`` to stderr, or appended to ``file``, as text lines or JSON objects
    (``log_format``); ``name`` (a worker's) marks every line. Replaces whatever handlers the
    root logger had."""
    handler: logging.Handler
    if file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
    if log_format == "json":
        handler.setFormatter(JsonFormatter(name))
    else:
        prefix = f"{name}[%(process)d] " if name else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(EscapeControls())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def reopen_log_files() -> int:
    """Reopen every log file the root logger writes to whose path now names another file (it
    was rotated or removed); the number of handlers looked at. For SIGHUP."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.handlers.WatchedFileHandler)]
    for handler in handlers:
        handler.reopenIfNeeded()
    return len(handlers)


class Throttle:
    """At most one log line per ``interval`` seconds per key; counts the lines it held back.

    For warnings a peer can cause as fast as it can connect (refusals): the metrics count
    every one, the log says each kind at most once per interval, plus how many it held back.
    Not thread-safe: one event loop's."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._quiet_until: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: hold this line back (counted). Else log it, with the count returned: the
        lines of this key held back since the last one allowed."""
        now = self._clock()
        if now < self._quiet_until.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._quiet_until[key] = now + self._interval
        return self._held.pop(key, 0)

    def due(self) -> list[tuple[str, int]]:
        """(key, count held back) for each key whose quiet interval is over with lines held
        back, now reported (the next line of that key is allowed and starts from zero)."""
        now = self._clock()
        out = [(key, held) for key, held in self._held.items() if now >= self._quiet_until[key]]
        for key, _ in out:
            del self._held[key]
            del self._quiet_until[key]
        return out
