"""Settings of shipping (`--store`, `--webhook-url`, `--nats-url` ...), as `storage.shipping` takes them.

The options themselves are rows of the one table in `callstream.settings` (group "shipping"),
which derives the flags and variables; `from_settings` turns those rows into one frozen
`ShippingSettings` that validates the combinations (None when nothing is shipped), and
`Settings` calls it when it checks itself, so a bad combination is one line at start. Shared (top
level) like settings.py, which imports it: it imports no layer.
"""

from __future__ import annotations

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
DEFAULT_RETRY_MIN: Final = 0.5  # seconds: the first retry's wait (doubling up to --ship-retry-max), or a
# quarter of --ship-retry-max when that is shorter
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
        if self.webhook_url is not None and not self.webhook_secret and self.webhook_secret_file is None:
            raise ValueError("--webhook-url needs --webhook-secret-file (events are signed)")
        if not 0 < self.retry_min <= self.retry_max:
            raise ValueError("retry waits must be positive, the first no longer than --ship-retry-max")
        if self.threads < 1 or self.store_max_local_bytes < 0:
            raise ValueError("--ship-threads must be positive and --store-max-local-bytes not negative")


def parse_sse(text: str) -> str:
    """``AES256`` or ``aws:kms``, in any case (boto3 wants these spellings)."""
    for choice in SSE_CHOICES:
        if text.strip().lower() == choice.lower():
            return choice
    raise ValueError(f"{text!r} is not one of {', '.join(SSE_CHOICES)}")


def from_settings(settings: Any) -> ShippingSettings | None:
    """What the shipping rows of a `callstream.settings.Settings` ask for; None when nothing is
    shipped. ValueError naming the flags when they do not go together. ``webhook_secret`` is the
    key the caller read from ``webhook_secret_file`` (None until it has)."""
    if settings.store is None and settings.webhook_url is None and settings.nats_url is None:
        if settings.webhook_secret_file is not None or settings.keep_local:
            raise ValueError("--webhook-secret-file and --keep-local need --webhook-url or --store")
        return None
    return ShippingSettings(
        store=None if settings.store is None else StoreLocation.parse(settings.store),
        store_endpoint=settings.store_endpoint,
        store_sse=settings.store_sse,
        store_kms_key_id=settings.store_kms_key_id,
        store_max_local_bytes=settings.store_max_local_bytes,
        store_part_bytes=settings.store_part_bytes,
        keep_local=settings.keep_local,
        webhook_url=settings.webhook_url,
        webhook_secret=settings.webhook_secret,
        webhook_secret_file=settings.webhook_secret_file,
        nats_url=settings.nats_url,
        nats_subject=settings.nats_subject,
        threads=settings.ship_threads,
        retry_min=min(DEFAULT_RETRY_MIN, settings.ship_retry_max / 4),
        retry_max=settings.ship_retry_max,
    )
