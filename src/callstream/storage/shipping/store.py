"""Uploads to an S3-compatible store with boto3, verified against the local file.

Blocking (boto3 is): call from a thread. One `ObjectStore` per process; its boto3 client is
thread safe and shared by the shipping threads.

Verification. The file is read once for its SHA-256, its MD5 and the MD5s and SHA-256s of the
parts boto3 will cut it into (s3transfer's own chunk-size rule, so the boundaries are the same).
After the upload a HEAD must show the same size and at least one of: an ETag equal to the MD5
(a single PUT on AWS without KMS; rclone and MinIO for any upload), an ETag equal to the multipart
form ``MD5(part MD5s)-N``, or a ``ChecksumSHA256`` equal to the SHA-256 (whole object) or to the
composite ``SHA256(part SHA-256s)-N``. Uploads also carry ``ChecksumAlgorithm=SHA256``, so a store
that supports it checks every part as it arrives. An upload no check can confirm is an error
(retried), never reported as stored.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from callstream.shipping_settings import ShippingSettings

LOGGER = logging.getLogger("callstream.storage.shipping.store")

READ_CHUNK: Final = 1 << 20  # bytes hashed at a time
CONNECT_TIMEOUT: Final = 5.0  # seconds
READ_TIMEOUT: Final = 60.0  # seconds without a byte from the store
CLIENT_ATTEMPTS: Final = 3  # botocore's own retries of one request; ours come on top, with backoff
UPLOAD_CONCURRENCY: Final = 2  # parts of one file in flight (rclone streams parts in order: keep it low)
CONTENT_TYPES: Final = {".wav": "audio/wav", ".flac": "audio/flac", ".json": "application/json"}
SHA256_METADATA: Final = "sha256"  # x-amz-meta-sha256: the hex SHA-256 of the object


class StoreError(Exception):
    """An upload failed or could not be verified; the local file is untouched. Retry later."""


class KeyTaken(StoreError):
    """Another object (different SHA-256) already sits at the key: choose another."""


@dataclass(frozen=True, slots=True)
class Digests:
    size: int
    sha256: str  # hex
    md5: str  # hex
    multipart_etag: str | None  # MD5(part MD5s)-N when the file is uploaded in parts
    composite_sha256: str | None  # base64 SHA256(part SHA-256s)-N, likewise


@dataclass(frozen=True, slots=True)
class StoredObject:
    bucket: str
    key: str
    etag: str
    size: int
    sha256: str
    version_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "url": f"s3://{self.bucket}/{self.key}",
                "etag": self.etag, "size": self.size, "sha256": self.sha256, "version_id": self.version_id}


def file_digests(path: Path, part_bytes: int) -> Digests:
    """Hash ``path`` in one pass (see the module's docstring). OSError if it cannot be read."""
    from s3transfer.utils import ChunksizeAdjuster

    size = Path(path).stat().st_size
    chunk = ChunksizeAdjuster().adjust_chunksize(part_bytes, size)
    whole_sha, whole_md5 = hashlib.sha256(), hashlib.md5()
    part_md5s: list[bytes] = []
    part_shas: list[bytes] = []
    with open(path, "rb") as file:
        while True:
            part_sha, part_md5 = hashlib.sha256(), hashlib.md5()
            left = chunk
            while left and (data := file.read(min(READ_CHUNK, left))):
                for digest in (whole_sha, whole_md5, part_sha, part_md5):
                    digest.update(data)
                left -= len(data)
            if left == chunk:
                break
            part_md5s.append(part_md5.digest())
            part_shas.append(part_sha.digest())
    multipart = size >= part_bytes  # s3transfer's rule: multipart at or above the threshold
    count = len(part_md5s)
    return Digests(
        size=size,
        sha256=whole_sha.hexdigest(),
        md5=whole_md5.hexdigest(),
        multipart_etag=f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{count}" if multipart else None,
        composite_sha256=(base64.b64encode(hashlib.sha256(b"".join(part_shas)).digest()).decode() + f"-{count}"
                          if multipart else None),
    )


class ObjectStore:
    """The bucket of ``settings.store``. `connect` before the first upload."""

    def __init__(self, settings: ShippingSettings) -> None:
        if settings.store is None:
            raise ValueError("no store in the settings")
        self.settings = settings
        self.location = settings.store
        self._client: Any = None
        self._transfer: Any = None

    def connect(self) -> None:
        """Build the client (credentials from the standard AWS chain, which may ask an
        instance-metadata service: blocking). Makes no request to the store."""
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        session = boto3.session.Session()
        region = session.region_name or ("us-east-1" if self.settings.store_endpoint else None)
        self._client = session.client(
            "s3",
            endpoint_url=self.settings.store_endpoint,
            region_name=region,
            config=Config(
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"max_attempts": CLIENT_ATTEMPTS, "mode": "standard"},
                # most S3-compatible stores know buckets by path, not by host name
                s3={"addressing_style": "path" if self.settings.store_endpoint else "auto"},
                max_pool_connections=max(10, self.settings.threads * UPLOAD_CONCURRENCY),
            ),
        )
        part = self.settings.store_part_bytes
        self._transfer = TransferConfig(
            multipart_threshold=part, multipart_chunksize=part, max_concurrency=UPLOAD_CONCURRENCY,
            use_threads=True,
        )

    def upload(self, path: Path, key: str, *, replace: bool = False) -> StoredObject:
        """Upload ``path`` to ``key`` and verify it. Idempotent: an object already at ``key`` with
        the same SHA-256 and size counts as this upload. A different object there raises KeyTaken
        (or is replaced, with ``replace``). Raises StoreError when the upload fails or cannot be
        verified, OSError when the local file cannot be read."""
        digests = file_digests(path, self.settings.store_part_bytes)
        existing = None if replace else self._head(key)  # replacing: no need to look first
        if existing is not None:
            # metadata names are HTTP headers: some stores change their case (rclone: "Sha256")
            metadata = {name.lower(): value for name, value in existing.get("Metadata", {}).items()}
            if (metadata.get(SHA256_METADATA) == digests.sha256
                    and existing["ContentLength"] == digests.size):
                return self._verified(key, existing, digests)
            if not replace:
                raise KeyTaken(f"s3://{self.location.bucket}/{key} holds another object")
        extra: dict[str, Any] = {
            "ContentType": CONTENT_TYPES.get(Path(path).suffix, "application/octet-stream"),
            "Metadata": {SHA256_METADATA: digests.sha256},
            "ChecksumAlgorithm": "SHA256",
        }
        if self.settings.store_sse is not None:
            extra["ServerSideEncryption"] = self.settings.store_sse
            if self.settings.store_kms_key_id:
                extra["SSEKMSKeyId"] = self.settings.store_kms_key_id
        try:
            self._client.upload_file(str(path), self.location.bucket, key, ExtraArgs=extra, Config=self._transfer)
        except Exception as error:  # boto3's S3UploadFailedError, botocore's ClientError and connection errors
            raise StoreError(f"upload of {key} failed: {_brief(error)}") from error
        head = self._head(key)
        if head is None:
            raise StoreError(f"{key} is not in the store after its upload")
        return self._verified(key, head, digests)

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self._client.head_object(Bucket=self.location.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StoreError(f"HEAD {key} failed: {_brief(error)}") from error
        except Exception as error:
            raise StoreError(f"HEAD {key} failed: {_brief(error)}") from error

    def _verified(self, key: str, head: dict[str, Any], digests: Digests) -> StoredObject:
        etag = str(head.get("ETag", "")).strip('"')
        checksum = head.get("ChecksumSHA256")
        whole = base64.b64encode(bytes.fromhex(digests.sha256)).decode()
        if head.get("ContentLength") != digests.size:
            raise StoreError(f"{key}: {head.get('ContentLength')} bytes in the store, {digests.size} on disk")
        confirmed = etag in (digests.md5, digests.multipart_etag) or (
            checksum is not None and checksum in (whole, digests.composite_sha256)
        )
        if not confirmed:
            raise StoreError(f"{key}: neither the ETag {etag!r} nor the checksum {checksum!r} matches the file")
        return StoredObject(bucket=self.location.bucket, key=key, etag=etag, size=digests.size,
                            sha256=digests.sha256, version_id=head.get("VersionId"))

    def read(self, key: str) -> bytes:
        """The object's bytes (for tests and checks; whole object in memory)."""
        return self._client.get_object(Bucket=self.location.bucket, Key=key)["Body"].read()


def _brief(error: BaseException) -> str:
    """One line for the log: botocore's messages are long but single-line."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__
