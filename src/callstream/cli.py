"""Command line: `callstream serve | simulate`. Every flag also reads a CALLSTREAM_* variable."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from callstream import __version__
from callstream import settings as defaults
from callstream.audio import SAMPLE_RATE
from callstream.server.logs import configure_logging
from callstream.settings import Settings

LOG_LEVELS = ("debug", "info", "warning", "error")
SEQUENCE_MODES = ("auto", "perspective", "connection")
FORMATS = ("wav", "flac", "mulaw-wav")
TRANSPORTS = ("websockets", "trio-websocket")


class _EnvDefaults:
    """Adds flags whose default comes from CALLSTREAM_<NAME> when that variable is set."""

    def __init__(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup, environ: dict[str, str]):
        self._parser = parser
        self._environ = environ

    def add(self, flag: str, *, help: str, default: Any = None, type: Callable[[str], Any] = str, **kw: Any) -> None:
        env = "CALLSTREAM_" + flag.lstrip("-").replace("-", "_").upper()
        if kw.get("action") == "store_true":
            raw = self._environ.get(env)
            value = default if raw is None else raw.strip().lower() in ("1", "true", "yes", "on")
            self._parser.add_argument(flag, default=value, help=f"{help} [env {env}]", **kw)
            return
        if env in self._environ:
            default = type(self._environ[env])
        shown = "none" if default is None else default
        self._parser.add_argument(
            flag, default=default, type=type, help=f"{help} [env {env}; default: {shown}]", **kw
        )


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), got {text}")
    return value


def _add_serve(sub: argparse._SubParsersAction, environ: dict[str, str]) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the recorder",
        description="Accept Engage Voice Call Streaming WebSockets and record each call as a stereo file "
        "(left = agent, right = caller).",
    )
    add = _EnvDefaults(parser, environ).add
    add("--host", default=defaults.DEFAULT_HOST, help="address to listen on")
    add("--port", default=defaults.DEFAULT_PORT, type=int, help="TCP port to listen on (0: any free port)")
    add("--output-dir", default=defaults.DEFAULT_OUTPUT_DIR, type=Path, help="directory the recordings go into")
    add("--format", default=defaults.DEFAULT_FORMAT, choices=FORMATS,
        help="wav: 16-bit PCM stereo; flac: lossless, about a third of the size; "
        "mulaw-wav: the G.711 bytes as received, half the size of PCM")
    add("--path-template", default=defaults.DEFAULT_PATH_TEMPLATE,
        help="file path under --output-dir, without extension; placeholders: {date} {time} {datetime} "
        "{year} {month} {day} and any metadata field such as {callId} {sessionId} {agentId} {ani} {dnis}")
    add("--reorder-window", dest="reorder_window_ms", default=defaults.DEFAULT_REORDER_WINDOW_MS,
        type=_positive(float), metavar="MS",
        help="milliseconds of audio held back to put late frames in place; a frame later than this is dropped")
    add("--discontinuity", dest="discontinuity_ms", default=defaults.DEFAULT_DISCONTINUITY_MS,
        type=_positive(float), metavar="MS",
        help="a sequence jump longer than this many ms is a restarted counter, not a gap to fill with silence")
    add("--sequence-mode", default="auto", choices=SEQUENCE_MODES,
        help="whether sequenceId counts per perspective or across the connection (auto: detect per call)")
    add("--flush-interval", default=defaults.DEFAULT_FLUSH_INTERVAL, type=_positive(float), metavar="SECONDS",
        help="live recordings are flushed to the OS at least this often")
    add("--fsync", action="store_true", default=False, help="make every flush durable with fsync (costs disk I/O)")
    add("--disk-threads", default=defaults.DEFAULT_DISK_THREADS, type=_positive(int), metavar="N",
        help="threads the disk writer spreads calls over; each batch is one C call per thread (more "
        "help a disk with high latency, such as a network file system)")
    add("--disk-stall-timeout", default=defaults.DEFAULT_DISK_STALL_TIMEOUT, type=_positive(float),
        metavar="SECONDS",
        help="a hung disk (dead NFS server, failing device): a call whose audio the disk has not taken for "
        "this long is closed with 1011 (its recording stays .partial), and while a write has hung this long "
        "new calls are refused (503) and /readyz is not ready")
    add("--write-queue-blocks", default=defaults.DEFAULT_WRITE_QUEUE_BLOCKS, type=_positive(int), metavar="N",
        help="blocks (about a second of stereo audio each) a call may have waiting for the disk; beyond, its "
        "stream is not read until the disk catches up (TCP pushes back on the platform)")
    add("--read-interval", default=defaults.DEFAULT_READ_INTERVAL, type=float, metavar="SECONDS",
        help="websockets transport: a stream that keeps up is read at most this often (capped at half "
        "of --flush-interval; 0: read on every arrival); fewer wake-ups per call, more calls per core")
    add("--max-message-size", dest="max_message_bytes", default=defaults.DEFAULT_MAX_MESSAGE_BYTES,
        type=_positive(int), metavar="BYTES", help="a larger message closes the call with 1009")
    add("--handshake-timeout", default=defaults.DEFAULT_HANDSHAKE_TIMEOUT, type=_positive(float),
        metavar="SECONDS", help="time allowed for the WebSocket upgrade")
    add("--transport", default=defaults.DEFAULT_TRANSPORT, choices=TRANSPORTS,
        help="WebSocket library: websockets (sans-IO core with C speedups, several times the "
        "throughput per core) or trio-websocket (the original adapter)")
    add("--idle-timeout", default=defaults.DEFAULT_IDLE_TIMEOUT, type=_positive(float), metavar="SECONDS",
        help="a call with no media for this long is finalised as incomplete and closed with 1001")
    add("--max-call-duration", dest="max_call_seconds", default=defaults.DEFAULT_MAX_CALL_SECONDS,
        type=_positive(float), metavar="SECONDS", help="a call is closed (1001) and finalised after this long")
    add("--max-bad-messages", default=defaults.DEFAULT_MAX_BAD_MESSAGES, type=_positive(int), metavar="N",
        help="malformed messages and unknown events (together) tolerated per call before it is closed with 1007")
    add("--drain-timeout", default=defaults.DEFAULT_DRAIN_TIMEOUT, type=_positive(float), metavar="SECONDS",
        help="on SIGTERM/SIGINT, time given to live calls before they are closed (1001) and finalised")
    add("--workers", default=1, type=_positive(int), metavar="N",
        help="worker processes sharing the port (SO_REUSEPORT), each with its own event loop; "
        "recommended: one per core. --max-calls counts across all of them; /metrics sums them")
    add("--max-calls", default=defaults.DEFAULT_MAX_CALLS, type=_positive(int), metavar="N",
        help="live calls accepted at once; beyond, upgrades get HTTP 503 with Retry-After (the platform retries)")
    add("--metrics-port", type=_port, metavar="PORT",
        help="serve GET /metrics (Prometheus text), /healthz (200 while running) and /readyz "
        "(503 while draining or at --max-calls) on this TCP port; unset: no such endpoint; "
        "0: any free port (logged)")
    add("--metrics-host", default=defaults.DEFAULT_METRICS_HOST,
        help="address of the --metrics-port endpoint; it has no authentication, so the default "
        "keeps it local: use 0.0.0.0 (or the pod's address) for a remote Prometheus or a load "
        "balancer's /readyz")
    add("--secret", help="the streaming profile's secret; streams that do not present it are refused "
        "(prefer --secret-file or the variable: a flag shows in the process list)")
    add("--secret-file", type=Path, help="file holding the secret (surrounding whitespace ignored); "
        "read again on SIGHUP, so the secret can be rotated without a restart")
    add("--auth-timeout", default=defaults.DEFAULT_AUTH_TIMEOUT, type=_positive(float), metavar="SECONDS",
        help="with a secret: an upgrade that does not present it must send it in its first message "
        "within this many seconds (else close 1008); until then it holds no call slot")
    add("--max-unauthenticated", default=defaults.DEFAULT_MAX_UNAUTHENTICATED, type=_positive(int),
        metavar="N", help="with a secret: connections per process that may wait at once to present it "
        "in their first message (they never count against --max-calls); beyond, upgrades without "
        "the secret get HTTP 503")
    add("--tls-cert", type=Path, help="PEM certificate chain: serve wss:// directly")
    add("--tls-key", type=Path, help="PEM private key for --tls-cert (if not inside the certificate file)")
    add("--log-level", default=defaults.DEFAULT_LOG_LEVEL, choices=LOG_LEVELS, help="logging verbosity")
    add("--log-file", type=Path, help="append the log to this file instead of stderr; a rotated (moved) "
        "file is followed by a new one at the next line, and SIGHUP reopens it")
    parser.set_defaults(command=_run_serve)


def _add_simulate(sub: argparse._SubParsersAction, environ: dict[str, str]) -> None:
    from callstream.sim import simulate

    simulate.add_arguments(sub, _EnvDefaults, environ)


def _add_recover(sub: argparse._SubParsersAction, environ: dict[str, str]) -> None:
    parser = sub.add_parser(
        "recover",
        help="finish recordings an interrupted recorder left behind",
        description="Repair every NAME.partial.EXT below DIR (a recorder killed mid-call leaves them), rename "
        "it to NAME.EXT and mark its sidecar 'recovered'. `serve` does this itself at start. Never run it on a "
        "directory a live recorder is writing into.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="the recorder's --output-dir")
    add = _EnvDefaults(parser, environ).add
    add("--log-level", default=defaults.DEFAULT_LOG_LEVEL, choices=LOG_LEVELS, help="logging verbosity")
    parser.set_defaults(command=_run_recover)


def _run_recover(args: argparse.Namespace) -> int:
    from callstream.storage.recovery import recover_directory

    configure_logging(args.log_level)
    if not args.directory.is_dir():
        print(f"callstream: {args.directory} is not a directory", file=sys.stderr)
        return 2
    recovered = recover_directory(args.directory)
    for item in recovered:
        print(f"recovered {item.sidecar if item.path is None else item.path} ({item.frames / SAMPLE_RATE:.1f} s)")
    print(f"{len(recovered)} recordings recovered")
    return 0


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    environ = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(
        prog="callstream",
        description="A production call recorder for RingCentral Engage Voice Call Streaming.",
    )
    parser.add_argument("--version", action="version", version=f"callstream {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_serve(sub, environ)
    _add_simulate(sub, environ)
    _add_recover(sub, environ)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """Build the one Settings object from parsed serve arguments."""
    from callstream.server.auth import read_secret_file
    from callstream.storage.naming import validate_template

    try:
        validate_template(args.path_template)
    except ValueError as error:
        raise SystemExit(f"callstream: --path-template: {error}") from None
    if args.secret_file is not None:
        if args.secret is not None:
            raise SystemExit("callstream: give --secret or --secret-file, not both")
        try:
            args.secret = read_secret_file(args.secret_file)
        except (OSError, ValueError) as error:
            raise SystemExit(f"callstream: --secret-file: {error}") from None
    if args.tls_key is not None and args.tls_cert is None:
        raise SystemExit("callstream: --tls-key needs --tls-cert")
    fields = {name: getattr(args, name) for name in Settings.__dataclass_fields__ if hasattr(args, name)}
    try:
        return Settings(**fields)
    except ValueError as error:
        raise SystemExit(f"callstream: {error}") from None


def _run_serve(args: argparse.Namespace) -> int:
    import trio

    from callstream.server.filelimit import raise_file_limit
    from callstream.server.gcpolicy import tune_garbage_collector
    from callstream.server.server import run_until_signalled

    settings = settings_from(args)
    configure_logging(settings.log_level, name="supervisor" if args.workers > 1 else None, file=settings.log_file)
    # before the workers start: they inherit it
    raise_file_limit(settings.max_calls, settings.max_unauthenticated * args.workers if settings.secret else 0)
    if args.workers > 1:
        from callstream.server.workers import run_workers

        return run_workers(settings, args.workers)
    tune_garbage_collector()
    trio.run(run_until_signalled, settings)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "command", None)
    if command is None:
        parser.print_help()
        return 2
    return command(args)
