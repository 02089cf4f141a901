"""The one settings object. The CLI builds it; every component takes it (or the values it needs).

Defaults are named constants with their unit, so that `--help`, the README and the code agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

DEFAULT_HOST: Final = "0.0.0.0"
DEFAULT_PORT: Final = 3333  # the port of the platform's own guide
DEFAULT_OUTPUT_DIR: Final = Path("recordings")
DEFAULT_FORMAT: Final = "wav"
DEFAULT_PATH_TEMPLATE: Final = "{date}/{callId}-{sessionId}"
DEFAULT_REORDER_WINDOW_MS: Final = 200.0  # milliseconds of audio held back for reordering
DEFAULT_DISCONTINUITY_MS: Final = 10_000.0  # a sequence jump longer than this is a discontinuity
DEFAULT_BLOCK_MS: Final = 1000.0  # audio is decoded and written in blocks of this many ms
DEFAULT_FLUSH_INTERVAL: Final = 1.0  # seconds between flushes of a live recording to the OS
DEFAULT_WRITE_QUEUE_BLOCKS: Final = 8  # blocks waiting for the disk per call before we push back
DEFAULT_DISK_THREADS: Final = 8  # threads a batch of blocks is written in (calls spread over them)
DEFAULT_DISK_STALL_TIMEOUT: Final = 30.0  # seconds a call may wait on a hung disk before it fails
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024  # 64 KiB; a Media frame is about 300 bytes
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0  # seconds for the WebSocket upgrade to complete
DEFAULT_TRANSPORT: Final = "websockets"  # the WebSocket library: websockets | trio-websocket
DEFAULT_READ_INTERVAL: Final = 0.5  # seconds between reads of a drained stream (websockets);
READ_INTERVAL_SHARE: Final = 0.5  # ... at most this share of the flush interval
DEFAULT_IDLE_TIMEOUT: Final = 60.0  # seconds without media on either perspective
DEFAULT_MAX_CALL_SECONDS: Final = 4 * 3600.0  # four hours
DEFAULT_MAX_BAD_MESSAGES: Final = 1000  # malformed messages tolerated per call
DEFAULT_LOG_LEVEL: Final = "info"
DEFAULT_MAX_CALLS: Final = 2000  # live calls per process; beyond, upgrades get 503
DEFAULT_AUTH_TIMEOUT: Final = 5.0  # seconds for a first message carrying the secret
DEFAULT_MAX_UNAUTHENTICATED: Final = 500  # connections yet to present the secret, per process
DEFAULT_DRAIN_TIMEOUT: Final = 30.0  # seconds live calls get to finish on SIGTERM/SIGINT
DEFAULT_METRICS_HOST: Final = "127.0.0.1"  # unauthenticated: local scrapers only unless widened


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything an operator can set. Times are in seconds unless the name says ms."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    output_dir: Path = DEFAULT_OUTPUT_DIR
    format: str = DEFAULT_FORMAT
    path_template: str = DEFAULT_PATH_TEMPLATE
    reorder_window_ms: float = DEFAULT_REORDER_WINDOW_MS
    discontinuity_ms: float = DEFAULT_DISCONTINUITY_MS
    block_ms: float = DEFAULT_BLOCK_MS
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    fsync: bool = False
    write_queue_blocks: int = DEFAULT_WRITE_QUEUE_BLOCKS
    disk_threads: int = DEFAULT_DISK_THREADS
    disk_stall_timeout: float = DEFAULT_DISK_STALL_TIMEOUT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    transport: str = DEFAULT_TRANSPORT
    read_interval: float = DEFAULT_READ_INTERVAL
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_call_seconds: float = DEFAULT_MAX_CALL_SECONDS
    max_bad_messages: int = DEFAULT_MAX_BAD_MESSAGES
    sequence_mode: str = "auto"
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    max_calls: int = DEFAULT_MAX_CALLS
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    max_unauthenticated: int = DEFAULT_MAX_UNAUTHENTICATED
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_port: int | None = None  # None: no metrics/health endpoint; 0: any free port
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: str = DEFAULT_LOG_LEVEL
    log_file: Path | None = None  # None: stderr
    secret: str | None = field(default=None, repr=False)
    secret_file: Path | None = None  # where `secret` was read from; SIGHUP reads it again

    def __post_init__(self) -> None:
        # An empty secret would authenticate any stream that sends `"secret": ""`; a blank one
        # can never be presented in a header (the value is stripped): both are operator errors.
        if self.secret is not None and not self.secret.strip():
            raise ValueError(
                "the secret is empty (--secret, CALLSTREAM_SECRET or --secret-file): give the streaming "
                "profile's secret, or none at all to accept streams without authentication"
            )
