"""The one settings object, and the one table of options it is made from.

Every field of `Settings` carries its `Option` (flag, help group, unit, help, how a string
becomes a value, its range). `callstream serve` derives its flags and its ``CALLSTREAM_*``
variables from that table (`options`), and `Settings.from_strings` turns what the operator
gave, from a flag or from the environment alike, into a `Settings`, whose ``__post_init__``
checks every range and every combination. So a new option is added in one place, and a bad
value gets the same one-line `SettingsError` wherever it came from.

Checks that need the world (a port free, a directory writable, a file a certificate) are not
here: see `callstream.preflight`. Defaults are named constants with their unit, so that
``--help``, the README and the code agree.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from callstream import shipping_settings
from callstream.shipping_settings import (
    DEFAULT_NATS_SUBJECT,
    DEFAULT_PART_BYTES,
    DEFAULT_RETRY_MAX,
    DEFAULT_SHIP_THREADS,
    DEFAULT_STORE_MAX_LOCAL_BYTES,
    MIN_PART_BYTES,
    ShippingSettings,
    parse_sse,
)

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
DEFAULT_LOG_FORMAT: Final = "text"
DEFAULT_MAX_CALLS: Final = 2000  # live calls per process; beyond, upgrades get 503
DEFAULT_AUTH_TIMEOUT: Final = 5.0  # seconds for a first message carrying the secret
DEFAULT_MAX_UNAUTHENTICATED: Final = 500  # connections yet to present the secret, per process
DEFAULT_DRAIN_TIMEOUT: Final = 30.0  # seconds live calls get to finish on SIGTERM/SIGINT
DEFAULT_METRICS_HOST: Final = "127.0.0.1"  # unauthenticated: local scrapers only unless widened
DEFAULT_RINGCX_PATH_TEMPLATE: Final = "{date}/{dialogId}"  # RingCX (gRPC): one recording per dialog
DEFAULT_RINGCX_L16_BYTE_ORDER: Final = "big"  # undocumented; network order, as in RTP
DEFAULT_RINGCX_QUEUE_EVENTS: Final = 64  # events queued per dialog before its stream is not read
BYTE_ORDERS: Final = ("big", "little")
CHANNEL_LAYOUTS: Final = ("stereo", "participants")  # RingCX dialogs (call.segments.LAYOUTS)
DEFAULT_CHANNEL_LAYOUT: Final = "stereo"
# participants layout: channels reserved in every file (a transfer joins after the header is
# written). 4: caller, agent, a transfer's second agent and one more (a supervisor, a bot); a
# WAV file costs 16 KB/s per channel, silent or not (FLAC: almost nothing for a silent one)
DEFAULT_PARTICIPANT_CHANNELS: Final = 4
MAX_PARTICIPANT_CHANNELS: Final = 8  # FLAC's limit

ENV_PREFIX: Final = "CALLSTREAM_"
GROUPS: Final = ("network", "security", "recording", "shipping", "limits", "performance", "observability")
FORMATS: Final = ("wav", "flac", "mulaw-wav")
TRANSPORTS: Final = ("websockets", "trio-websocket")
SEQUENCE_MODES: Final = ("auto", "perspective", "connection")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
MAX_PORT: Final = 65535


class SettingsError(ValueError):
    """A value an option cannot take. ``option`` is the `Settings` field's name (or None for a
    combination of several); ``str()`` is the one line the operator sees."""

    def __init__(self, option: str | None, message: str) -> None:
        super().__init__(message)
        self.option = option


# ---- how a string from a flag or a variable becomes a value (raise ValueError with why) ----

_DURATION = re.compile(r"\s*([-+]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(ms|s|m|h)?\s*", re.IGNORECASE)
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from ``"1.5"``, ``"200ms"``, ``"2m"``, ``"1h"`` (a plain number is seconds)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (seconds, or e.g. 200ms, 1.5s, 2m, 1h)")
    unit = match.group(2)
    return float(match.group(1)) * _DURATION_UNITS[unit.lower() if unit else None]


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def parse_size(text: str) -> int:
    """Bytes from ``"65536"``, ``"64k"``/``"64KiB"``, ``"1m"``/``"1MiB"`` (powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]+)\s*(k|kib|m|mib)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"{text!r} is not a size in bytes (e.g. 65536, 64KiB)")
    scale = {"k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}.get((match.group(2) or "").lower(), 1)
    return int(match.group(1)) * scale


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, 1/0, yes/no, on/off)")


def parse_optional_port(text: str) -> int | None:
    return None if text.strip().lower() in ("", "none", "off") else parse_int(text)


@dataclass(frozen=True, slots=True)
class Option:
    """What the operator sees of one `Settings` field. ``scale`` multiplies the parsed value
    (a duration in seconds kept in milliseconds); ``low``/``high`` bound the field's value
    (``low_open``: strictly above ``low``); ``choices`` are the only values allowed."""

    group: str
    help: str
    parse: Callable[[str], Any] = str
    unit: str | None = None  # shown as the metavar
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    scale: float = 1.0
    flag: str | None = None  # default: --field-name
    secret: bool = False  # never shown (default or value)
    switch: bool = False  # a flag without a value (store_true); its variable takes true/false


def _opt(default: Any, **option: Any) -> Any:
    return field(default=default, metadata={"option": Option(**option)}, repr=not option.get("secret", False))


def _range(value: float, option: Option) -> str | None:
    """Why ``value`` is out of ``option``'s range, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if option.low is not None and (value <= option.low if option.low_open else value < option.low):
        above = "above" if option.low_open else "at least"
        return f"must be {above} {_show(option.low / option.scale, option)}, got {_show(value / option.scale, option)}"
    if option.high is not None and value > option.high:
        return f"must be at most {_show(option.high / option.scale, option)}, got {_show(value / option.scale, option)}"
    return None


def _show(value: float, option: Option) -> str:
    text = f"{value:g}"
    unit = {"SECONDS": "s", "BYTES": "bytes"}.get(option.unit or "")
    return f"{text} {unit}" if unit else text


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


def check_host(host: str) -> str | None:
    """Why ``host`` cannot be an address to listen on, or None (a name is resolved later)."""
    if not host:
        return "must not be empty (0.0.0.0: every IPv4 interface)"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        return f"{host} is not an IPv4 address"
    if ":" in host:
        return f"{host} is not an IPv6 address"
    if not _HOST_NAME.fullmatch(host):
        return f"{host!r} is not an IP address or host name"
    return None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything an operator can set for `callstream serve`. Times are in seconds unless the
    name says ms. Raises `SettingsError` when a value is out of range or two do not go together."""

    # network
    host: str = _opt(DEFAULT_HOST, group="network", unit="ADDRESS",
                     help="address to listen on (0.0.0.0: every IPv4 interface, :: every IPv6 one)")
    port: int = _opt(DEFAULT_PORT, group="network", parse=parse_int, unit="PORT", low=0, high=MAX_PORT,
                     help="TCP port to listen on (0: any free port, logged; below 1024 needs root or "
                     "CAP_NET_BIND_SERVICE)")
    transport: str = _opt(DEFAULT_TRANSPORT, group="network", choices=TRANSPORTS, unit="LIBRARY",
                          help="WebSocket library: websockets (sans-IO core with C speedups, several times "
                          "the throughput per core) or trio-websocket (the original adapter)")
    handshake_timeout: float = _opt(DEFAULT_HANDSHAKE_TIMEOUT, group="network", parse=parse_duration,
                                    unit="SECONDS", low=0, low_open=True,
                                    help="time allowed for the WebSocket upgrade, in seconds")
    ringcx_port: int | None = _opt(None, group="network", parse=parse_optional_port, unit="PORT", low=0,
                                   high=MAX_PORT,
                                   help="also serve RingCX audio streaming (gRPC) on this TCP port, beside --port "
                                   "(the platform connects to 443 or 10443 only); TLS from --tls-cert/--tls-key; "
                                   "unset: no gRPC listener; 0: any free port (logged)")
    ringcx_plaintext: bool = _opt(False, group="network", parse=parse_bool, switch=True,
                                  help="serve --ringcx-port without TLS, for a TLS-terminating proxy on loopback "
                                  "(nginx grpc_pass, HAProxy); without it and without --tls-cert the gRPC listener "
                                  "refuses to start")
    # security
    secret: str | None = _opt(None, group="security", secret=True, unit="SECRET",
                              help="the streaming profile's secret; streams that do not present it are "
                              "refused (prefer --secret-file or the variable: a flag shows in the process list)")
    secret_file: Path | None = _opt(None, group="security", parse=Path, unit="FILE",
                                    help="file holding the secret (surrounding whitespace ignored); read again "
                                    "on SIGHUP, so the secret can be rotated without a restart")
    auth_timeout: float = _opt(DEFAULT_AUTH_TIMEOUT, group="security", parse=parse_duration, unit="SECONDS",
                               low=0, low_open=True,
                               help="with a secret: an upgrade that does not present it must send it in its first "
                               "message within this many seconds (else close 1008); until then it holds no call "
                               "slot")
    max_unauthenticated: int = _opt(DEFAULT_MAX_UNAUTHENTICATED, group="security", parse=parse_int,
                                    unit="CONNECTIONS", low=1,
                                    help="with a secret: connections per process that may wait at once to present "
                                    "it in their first message (they never count against --max-calls); beyond, "
                                    "upgrades without the secret get HTTP 503")
    tls_cert: Path | None = _opt(None, group="security", parse=Path, unit="FILE",
                                 help="PEM certificate chain: serve wss:// directly")
    tls_key: Path | None = _opt(None, group="security", parse=Path, unit="FILE",
                                help="PEM private key for --tls-cert (if not inside the certificate file)")
    # recording
    output_dir: Path = _opt(DEFAULT_OUTPUT_DIR, group="recording", parse=Path, unit="DIR",
                            help="directory the recordings go into (created if missing)")
    format: str = _opt(DEFAULT_FORMAT, group="recording", choices=FORMATS, unit="FORMAT",
                       help="wav: 16-bit PCM stereo; flac: lossless, about a third of the size; "
                       "mulaw-wav: the G.711 bytes as received, half the size of PCM")
    path_template: str = _opt(DEFAULT_PATH_TEMPLATE, group="recording", unit="TEMPLATE",
                              help="file path under --output-dir, without extension; placeholders: {date} "
                              "{time} {datetime} {year} {month} {day} and any metadata field such as {callId} "
                              "{sessionId} {agentId} {ani} {dnis}")
    reorder_window_ms: float = _opt(DEFAULT_REORDER_WINDOW_MS, group="recording", flag="--reorder-window",
                                    parse=parse_duration, scale=1000.0, unit="SECONDS", low=0, low_open=True,
                                    help="seconds of audio held back to put late frames in place (e.g. 0.2 or "
                                    "200ms); a frame later than this is dropped")
    discontinuity_ms: float = _opt(DEFAULT_DISCONTINUITY_MS, group="recording", flag="--discontinuity",
                                   parse=parse_duration, scale=1000.0, unit="SECONDS", low=0, low_open=True,
                                   help="a sequence jump longer than this many seconds is a restarted counter, "
                                   "not a gap to fill with silence")
    sequence_mode: str = _opt("auto", group="recording", choices=SEQUENCE_MODES, unit="MODE",
                              help="whether sequenceId counts per perspective or across the connection "
                              "(auto: detect per call)")
    flush_interval: float = _opt(DEFAULT_FLUSH_INTERVAL, group="recording", parse=parse_duration,
                                 unit="SECONDS", low=0, low_open=True,
                                 help="live recordings are flushed to the OS at least this often, in seconds "
                                 "(what a crash of the process can lose)")
    fsync: bool = _opt(False, group="recording", parse=parse_bool, switch=True,
                       help="make every flush durable with fsync (costs disk I/O; what a power cut can lose)")
    ringcx_path_template: str = _opt(DEFAULT_RINGCX_PATH_TEMPLATE, group="recording", unit="TEMPLATE",
                                     help="file path of a RingCX dialog's recording, as --path-template; also "
                                     "{dialogId}")
    ringcx_l16_byte_order: str = _opt(DEFAULT_RINGCX_L16_BYTE_ORDER, group="recording", choices=BYTE_ORDERS,
                                      unit="ORDER", help="byte order of RingCX L16 audio (undocumented by the "
                                      "platform; big = network order, as in RTP)")
    channel_layout: str = _opt(DEFAULT_CHANNEL_LAYOUT, group="recording", choices=CHANNEL_LAYOUTS, unit="LAYOUT",
                               help="channels of a RingCX dialog's recording: stereo (AGENT segments left, "
                               "CONTACT and BOT right, overlaps mixed) or participants (one channel per "
                               "segment in order of joining; --participant-channels channels in every file); "
                               "WebSocket calls are always stereo")
    participant_channels: int = _opt(DEFAULT_PARTICIPANT_CHANNELS, group="recording", parse=parse_int,
                                     unit="CHANNELS", low=1, high=MAX_PARTICIPANT_CHANNELS,
                                     help="with --channel-layout participants: channels in every file, reserved "
                                     "from the start (a WAV channel costs 16 KB/s even when silent); segments "
                                     "past the last are mixed into it, logged and marked in the sidecar")
    block_ms: float = field(default=DEFAULT_BLOCK_MS)  # not an option: the decoder's block, in ms
    # shipping: object storage and completion events (see shipping_settings.py and the README)
    store: str | None = _opt(None, group="shipping", unit="s3://BUCKET/PREFIX",
                             help="upload every finished recording (audio and sidecar) to this bucket and key "
                             "prefix, under the --path-template layout; credentials from the standard AWS chain "
                             "(AWS_* variables, shared config and credentials files, instance or pod roles)")
    store_endpoint: str | None = _opt(None, group="shipping", unit="URL",
                                      help="endpoint of an S3-compatible store (MinIO, Ceph, rclone, R2 ...); "
                                      "unset: AWS S3")
    store_sse: str | None = _opt(None, group="shipping", parse=parse_sse, unit="AES256|aws:kms",
                                 help="ask the store to encrypt the objects at rest")
    store_kms_key_id: str | None = _opt(None, group="shipping", unit="KEY",
                                        help="the KMS key for --store-sse aws:kms (unset: the bucket's)")
    store_max_local_bytes: int = _opt(DEFAULT_STORE_MAX_LOCAL_BYTES, group="shipping", parse=parse_size,
                                      unit="BYTES", low=0,
                                      help="/readyz answers 503 while more than this many bytes of recordings "
                                      "wait on local disk for the store (10GiB style accepted)")
    store_part_bytes: int = _opt(DEFAULT_PART_BYTES, group="shipping", flag="--store-part-size",
                                 parse=parse_size, unit="BYTES", low=MIN_PART_BYTES,
                                 help="files from this many bytes on are uploaded in parts of this size "
                                 "(S3's smallest part is 5MiB)")
    keep_local: bool = _opt(False, group="shipping", parse=parse_bool, switch=True,
                            help="keep the local audio and sidecar after they are verified in the store "
                            "(default: removed)")
    webhook_url: str | None = _opt(None, group="shipping", unit="URL",
                                   help="POST one signed JSON event per finished recording to this URL (after "
                                   "its upload when --store is given); retried until a 2xx answer")
    webhook_secret_file: Path | None = _opt(None, group="shipping", parse=Path, unit="FILE",
                                            help="file holding the key of the events' HMAC-SHA256 signature "
                                            "(surrounding whitespace ignored); read again on SIGHUP")
    nats_url: str | None = _opt(None, group="shipping", unit="URL",
                                help="publish the same event to NATS JetStream at this server "
                                "(nats://host:4222); a stream must take --nats-subject")
    nats_subject: str = _opt(DEFAULT_NATS_SUBJECT, group="shipping", unit="SUBJECT",
                             help="the subject of the NATS events")
    ship_threads: int = _opt(DEFAULT_SHIP_THREADS, group="shipping", parse=parse_int, unit="THREADS", low=1,
                             high=64, help="recordings uploaded or announced at once, each in a thread of "
                             "shipping's own")
    ship_retry_max: float = _opt(DEFAULT_RETRY_MAX, group="shipping", parse=parse_duration, unit="SECONDS",
                                 low=0, low_open=True,
                                 help="the longest wait between two attempts to upload or announce a recording, "
                                 "in seconds (waits double from 0.5 s, with jitter)")
    webhook_secret: bytes | None = field(default=None, repr=False)  # not an option: read from the file
    # limits
    max_calls: int = _opt(DEFAULT_MAX_CALLS, group="limits", parse=parse_int, unit="CALLS", low=1,
                          help="live calls accepted at once (across all workers); beyond, upgrades get HTTP "
                          "503 with Retry-After (the platform retries)")
    max_message_bytes: int = _opt(DEFAULT_MAX_MESSAGE_BYTES, group="limits", flag="--max-message-size",
                                  parse=parse_size, unit="BYTES", low=1024, high=16 * 1024 * 1024,
                                  help="a larger message closes the call with 1009, in bytes (64KiB style "
                                  "accepted)")
    idle_timeout: float = _opt(DEFAULT_IDLE_TIMEOUT, group="limits", parse=parse_duration, unit="SECONDS",
                               low=0, low_open=True,
                               help="a call with no media for this many seconds is finalised as incomplete and "
                               "closed with 1001")
    max_call_seconds: float = _opt(DEFAULT_MAX_CALL_SECONDS, group="limits", flag="--max-call-duration",
                                   parse=parse_duration, unit="SECONDS", low=0, low_open=True,
                                   help="a call is closed (1001) and finalised after this many seconds (4h style "
                                   "accepted)")
    max_bad_messages: int = _opt(DEFAULT_MAX_BAD_MESSAGES, group="limits", parse=parse_int, unit="MESSAGES",
                                 low=1, help="malformed messages and unknown events (together) tolerated per call "
                                 "before it is closed with 1007")
    drain_timeout: float = _opt(DEFAULT_DRAIN_TIMEOUT, group="limits", parse=parse_duration, unit="SECONDS",
                                low=0, help="on SIGTERM/SIGINT, seconds given to live calls before they are "
                                "closed (1001) and finalised")
    disk_stall_timeout: float = _opt(DEFAULT_DISK_STALL_TIMEOUT, group="limits", parse=parse_duration,
                                     unit="SECONDS", low=0, low_open=True,
                                     help="a hung disk (dead NFS server, failing device): a call whose audio the "
                                     "disk has not taken for this many seconds is closed with 1011; its "
                                     "NAME.partial.EXT stays until the disk is back, then is closed and marked "
                                     "failed (if the process stops first: finished by `recover` or the next "
                                     "start); while a write hangs this long new calls are refused (503) and "
                                     "/readyz is not ready")
    # performance
    workers: int = _opt(1, group="performance", parse=parse_int, unit="PROCESSES", low=1, high=256,
                        help="worker processes sharing the port (SO_REUSEPORT), each with its own event loop; "
                        "recommended: one per core. --max-calls counts across all of them; /metrics sums them")
    disk_threads: int = _opt(DEFAULT_DISK_THREADS, group="performance", parse=parse_int, unit="THREADS", low=1,
                             high=1024, help="threads the disk writer spreads calls over; each batch is one C call "
                             "per thread (more help a disk with high latency, such as a network file system)")
    write_queue_blocks: int = _opt(DEFAULT_WRITE_QUEUE_BLOCKS, group="performance", parse=parse_int,
                                   unit="BLOCKS", low=1,
                                   help="blocks (about a second of stereo audio each) a call may have waiting for "
                                   "the disk; beyond, its stream is not read until the disk catches up (TCP "
                                   "pushes back on the platform)")
    read_interval: float = _opt(DEFAULT_READ_INTERVAL, group="performance", parse=parse_duration,
                                unit="SECONDS", low=0,
                                help="websockets transport: a stream that keeps up is read at most this often, in "
                                "seconds (capped at half of --flush-interval; 0: read on every arrival); fewer "
                                "wake-ups per call, more calls per core")
    ringcx_queue_events: int = _opt(DEFAULT_RINGCX_QUEUE_EVENTS, group="performance", parse=parse_int,
                                    unit="EVENTS", low=2, high=65536,
                                    help="RingCX: events (about 100 ms of one participant each) a dialog may have "
                                    "waiting for its recorder; beyond, its gRPC stream is not read (HTTP/2 flow "
                                    "control pushes back on the platform)")
    # observability
    metrics_host: str = _opt(DEFAULT_METRICS_HOST, group="observability", unit="ADDRESS",
                             help="address of the --metrics-port endpoint; it has no authentication, so the "
                             "default keeps it local: use 0.0.0.0 (or the pod's address) for a remote "
                             "Prometheus or a load balancer's /readyz")
    metrics_port: int | None = _opt(None, group="observability", parse=parse_optional_port, unit="PORT",
                                    low=0, high=MAX_PORT,
                                    help="serve GET /metrics (Prometheus text), /healthz, /readyz (503 while "
                                    "draining or at --max-calls) and a live-calls page at / on this TCP port; "
                                    "unset: no such endpoint; 0: any free port (logged)")
    log_level: str = _opt(DEFAULT_LOG_LEVEL, group="observability", choices=LOG_LEVELS, unit="LEVEL",
                          help="logging verbosity")
    log_file: Path | None = _opt(None, group="observability", parse=Path, unit="FILE",
                                 help="append the log to this file instead of stderr; a rotated (moved) file is "
                                 "followed by a new one at the next line, and SIGHUP reopens it")
    log_format: str = _opt(DEFAULT_LOG_FORMAT, group="observability", choices=LOG_FORMATS, unit="FORMAT",
                           help="text: one readable line per event; json: one JSON object per line (time, level, "
                           "logger, event, call_id, session_id, status, duration in seconds, statistics)")

    def __post_init__(self) -> None:
        for name, option in options():
            value = getattr(self, name)
            if value is None:
                continue
            if option.choices and value not in option.choices:
                raise SettingsError(name, f"{value!r} is not one of {', '.join(option.choices)}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                why = _range(value, option)
                if why is not None:
                    raise SettingsError(name, why)
        for name in ("host", "metrics_host"):
            why = check_host(getattr(self, name))
            if why is not None:
                raise SettingsError(name, why)
        self._check_combinations()

    def _check_combinations(self) -> None:
        # (--path-template's placeholders are checked by storage's naming, which this shared
        # module may not import: the command line does it, see cli.settings_from)
        # An empty secret would authenticate any stream that sends `"secret": ""`; a blank one
        # can never be presented in a header (the value is stripped): both are operator errors.
        if self.secret is not None and not self.secret.strip():
            raise SettingsError("secret", "the secret is empty: give the streaming profile's secret, or none at "
                                "all to accept streams without authentication")
        if self.tls_key is not None and self.tls_cert is None:
            raise SettingsError("tls_key", "needs --tls-cert")
        if self.ringcx_port is not None and self.tls_cert is None and not self.ringcx_plaintext:
            raise SettingsError("ringcx_port", "needs --tls-cert/--tls-key (the platform speaks TLS only), or "
                                "--ringcx-plaintext behind a TLS-terminating proxy")
        if self.channel_layout != "participants" and self.participant_channels != DEFAULT_PARTICIPANT_CHANNELS:
            raise SettingsError("participant_channels", "only applies with --channel-layout participants")
        try:
            shipping_settings.from_settings(self)
        except ValueError as error:
            raise SettingsError(None, str(error)) from None
        if self.discontinuity_ms <= self.reorder_window_ms:
            raise SettingsError("discontinuity_ms", "must be longer than --reorder-window")
        if (self.metrics_port is not None and self.metrics_port == self.port and self.port != 0
                and (self.metrics_host == self.host or "0.0.0.0" in (self.host, self.metrics_host))):
            raise SettingsError("metrics_port", f"{self.port} is also --port: give the metrics endpoint a "
                                "port of its own")

    @property
    def shipping(self) -> ShippingSettings | None:
        """What the shipping options ask for (None: nothing is shipped); see shipping_settings.py."""
        return shipping_settings.from_settings(self)

    @classmethod
    def from_strings(cls, given: Mapping[str, str], environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from strings: ``given`` (field name -> text, e.g. the flags on the command line)
        first, then ``environ``'s ``CALLSTREAM_*`` variables, then the defaults. Raises
        `SettingsError` naming the option. A ``secret_file`` is not read here (see
        `callstream.server.auth.read_secret_file`): the caller reads it into ``secret``."""
        environ = {} if environ is None else environ
        values: dict[str, Any] = {}
        for name, option in options():
            text = given.get(name)
            if text is None:
                text = environ.get(env_name(name))
            if text is None:
                continue
            if option.choices:
                text = text.strip().lower()
            try:
                value = option.parse(text)
            except ValueError as error:
                raise SettingsError(name, str(error)) from None
            if option.scale != 1.0 and value is not None:
                value *= option.scale
            values[name] = value
        if values.get("secret_file") is not None and values.get("secret") is not None:
            raise SettingsError(None, "give --secret or --secret-file, not both")
        return cls(**values)

    def default_text(self, name: str) -> str:
        """A field's value as an operator would write it (seconds, not ms)."""
        option = option_of(name)
        value = getattr(self, name)
        if option.secret or value is None:
            return "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float):
            return f"{value / option.scale:g}"
        return str(value)


def options() -> Iterator[tuple[str, Option]]:
    """Every operator-facing field of `Settings` with its `Option`, in declaration order."""
    for item in fields(Settings):
        option = item.metadata.get("option")
        if option is not None:
            yield item.name, option


def option_of(name: str) -> Option:
    for item in fields(Settings):
        if item.name == name:
            return item.metadata["option"]
    raise KeyError(name)


def flag_name(name: str) -> str:
    """``--reorder-window`` for ``reorder_window_ms``."""
    return option_of(name).flag or "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    """``CALLSTREAM_REORDER_WINDOW`` for ``reorder_window_ms``: the variable follows the flag."""
    return ENV_PREFIX + flag_name(name)[2:].replace("-", "_").upper()


def describe(error: SettingsError, given: Mapping[str, str] | None = None,
             environ: Mapping[str, str] | None = None) -> str:
    """The one line for ``error``: the flag, where its value came from, and what is wrong."""
    if error.option is None:
        return str(error)
    name = error.option
    flag = flag_name(name)
    if given is not None and given.get(name) is not None:
        where = flag
    elif environ is not None and env_name(name) in environ:
        where = f"{env_name(name)} (for {flag})"
    else:
        where = flag
    return f"{where}: {error}"

