"""Settings of shipping (`--store`, `--webhook-url`, `--nats-url` ...) and their flags.

A frozen object that validates itself; `callstream.settings.Settings` holds one (or None when
nothing is shipped), and `callstream.storage.shipping` acts on it. The flags are added to
`serve` by `add_arguments` and read back by `from_args`, so cli.py names none of them. Shared
(top level) like settings.py, which imports it: it imports no layer.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

DEFAULT_NATS_SUBJECT: Final = "callstream.recordings"
DEFAULT_STORE_MAX_LOCAL_BYTES: Final = 10 * 1024**3  # 10 GiB waiting for the store before /readyz says no
DEFAULT_PART_BYTES: Final = 16 * 1024**2  # 16 MiB: multipart above this, in parts of this size
MIN_PART_BYTES: Final = 5 * 1024**2  # S3's smallest part (but the last)
DEFAULT_SHIP_THREADS: Final = 4  # recordings shipped at once (each an upload or delivery thread)
DEFAULT_RETRY_MAX: Final = 60.0  # seconds: the longest wait between two attempts of one recording
DEFAULT_RETRY_MIN: Final = 0.5  # seconds: the first retry's wait (doubling up to DEFAULT_RETRY_MAX)
SSE_CHOICES: Final = ("AES256", "aws:kms")


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """``s3://BUCKET/PREFIX``: the bucket and the key prefix ('' or ending in '/')."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> StoreLocation:
        """ValueError naming the problem unless ``url`` is ``s3://BUCKET[/PREFIX]``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"expected s3://BUCKET/PREFIX, got {url!r}")
        prefix = parts.path.strip("/")
        return cls(bucket=parts.netloc, prefix=prefix + "/" if prefix else "")

    def key(self, relative: str) -> str:
        return self.prefix + relative

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True, slots=True)
class ShippingSettings:
    """Where finished recordings go. Times in seconds, sizes in bytes."""

    store: StoreLocation | None = None
    store_endpoint: str | None = None  # any S3-compatible store; None: AWS
    store_sse: str | None = None  # server-side encryption: AES256 | aws:kms
    store_kms_key_id: str | None = None
    store_max_local_bytes: int = DEFAULT_STORE_MAX_LOCAL_BYTES
    store_part_bytes: int = DEFAULT_PART_BYTES
    keep_local: bool = False
    webhook_url: str | None = None
    webhook_secret: bytes | None = field(default=None, repr=False)
    webhook_secret_file: Path | None = None  # where the secret was read from; SIGHUP reads it again
    nats_url: str | None = None
    nats_subject: str = DEFAULT_NATS_SUBJECT
    threads: int = DEFAULT_SHIP_THREADS
    retry_min: float = DEFAULT_RETRY_MIN
    retry_max: float = DEFAULT_RETRY_MAX

    def __post_init__(self) -> None:
        if self.store is None and self.webhook_url is None and self.nats_url is None:
            raise ValueError("nothing to ship to: give --store, --webhook-url or --nats-url")
        if self.store is None and (self.store_endpoint or self.store_sse or self.keep_local):
            raise ValueError("--store-endpoint, --store-sse and --keep-local need --store")
        if self.store_kms_key_id and self.store_sse != "aws:kms":
            raise ValueError("--store-kms-key-id needs --store-sse aws:kms")
        if self.store_sse is not None and self.store_sse not in SSE_CHOICES:
            raise ValueError(f"--store-sse must be one of {', '.join(SSE_CHOICES)}")
        if self.store_part_bytes < MIN_PART_BYTES:
            raise ValueError(f"--store-part-size must be at least {MIN_PART_BYTES} bytes (S3's smallest part)")
        for name, url in (("--webhook-url", self.webhook_url), ("--store-endpoint", self.store_endpoint)):
            if url is not None and urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"{name} must be an http:// or https:// URL, got {url!r}")
        if self.nats_url is not None and urlsplit(self.nats_url).scheme not in ("nats", "tls", "ws", "wss"):
            raise ValueError(f"--nats-url must be a nats:// or tls:// URL, got {self.nats_url!r}")
        if self.webhook_url is not None and not self.webhook_secret:
            raise ValueError("--webhook-url needs --webhook-secret-file (events are signed)")
        if not 0 < self.retry_min <= self.retry_max:
            raise ValueError("retry waits must be positive, the first no longer than --ship-retry-max")
        if self.threads < 1 or self.store_max_local_bytes < 0:
            raise ValueError("--ship-threads must be positive and --store-max-local-bytes not negative")


def add_arguments(add: Any) -> None:
    """Add the shipping flags through cli's ``add`` (which also reads CALLSTREAM_* variables)."""
    add("--store", metavar="s3://BUCKET/PREFIX",
        help="upload every finished recording (audio and sidecar) to this bucket and key prefix, under the "
        "--path-template layout; credentials from the standard AWS chain (AWS_* variables, shared config "
        "and credentials files, instance or pod roles)")
    add("--store-endpoint", metavar="URL",
        help="endpoint of an S3-compatible store (MinIO, Ceph, rclone, R2 ...); unset: AWS S3")
    add("--store-sse", choices=SSE_CHOICES, help="ask the store to encrypt the objects at rest")
    add("--store-kms-key-id", metavar="KEY", help="the KMS key for --store-sse aws:kms (unset: the bucket's)")
    add("--store-max-local-bytes", type=_non_negative_int, default=DEFAULT_STORE_MAX_LOCAL_BYTES, metavar="BYTES",
        help="/readyz answers 503 while more than this many bytes of recordings wait on local disk for the store")
    add("--store-part-size", dest="store_part_bytes", type=_non_negative_int, default=DEFAULT_PART_BYTES,
        metavar="BYTES", help=f"files larger than this are uploaded in parts of this size (at least {MIN_PART_BYTES})")
    add("--keep-local", action="store_true", default=False,
        help="keep the local audio and sidecar after they are verified in the store (default: removed)")
    add("--webhook-url", metavar="URL",
        help="POST one signed JSON event per finished recording to this URL (after its upload when --store is "
        "given); retried until a 2xx answer")
    add("--webhook-secret-file", type=Path, metavar="FILE",
        help="file holding the key of the events' HMAC-SHA256 signature (surrounding whitespace ignored); "
        "read again on SIGHUP")
    add("--nats-url", metavar="URL",
        help="publish the same event to NATS JetStream at this server (nats://host:4222); a stream must take "
        "--nats-subject")
    add("--nats-subject", default=DEFAULT_NATS_SUBJECT, help="the subject of the NATS events")
    add("--ship-threads", dest="ship_threads", type=_positive_int, default=DEFAULT_SHIP_THREADS, metavar="N",
        help="recordings uploaded or announced at once, each in a thread of shipping's own")
    add("--ship-retry-max", dest="ship_retry_max", type=_positive_float, default=DEFAULT_RETRY_MAX,
        metavar="SECONDS", help="the longest wait between two attempts to upload or announce a recording "
        "(waits double from 0.5 s, with jitter)")


def from_args(args: argparse.Namespace) -> ShippingSettings | None:
    """The settings the parsed flags ask for; None when nothing is shipped. SystemExit with a
    one-line message on a bad combination."""
    if args.store is None and args.webhook_url is None and args.nats_url is None:
        if args.webhook_secret_file is not None or args.keep_local:
            raise SystemExit("callstream: --webhook-secret-file and --keep-local need --webhook-url or --store")
        return None
    secret = None
    if args.webhook_secret_file is not None:
        try:
            secret = args.webhook_secret_file.read_bytes().strip()
        except OSError as error:
            raise SystemExit(f"callstream: --webhook-secret-file: {error}") from None
        if not secret:
            raise SystemExit(f"callstream: --webhook-secret-file: {args.webhook_secret_file} is empty")
    try:
        return ShippingSettings(
            store=None if args.store is None else StoreLocation.parse(args.store),
            store_endpoint=args.store_endpoint,
            store_sse=args.store_sse,
            store_kms_key_id=args.store_kms_key_id,
            store_max_local_bytes=args.store_max_local_bytes,
            store_part_bytes=args.store_part_bytes,
            keep_local=args.keep_local,
            webhook_url=args.webhook_url,
            webhook_secret=secret,
            webhook_secret_file=args.webhook_secret_file,
            nats_url=args.nats_url,
            nats_subject=args.nats_subject,
            threads=args.ship_threads,
            retry_max=max(args.ship_retry_max, DEFAULT_RETRY_MIN),
        )
    except ValueError as error:
        raise SystemExit(f"callstream: {error}") from None


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
