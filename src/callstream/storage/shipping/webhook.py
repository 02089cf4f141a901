"""Signed webhook delivery with urllib3 (blocking: call from a thread).

Signature: ``HMAC-SHA256(secret, TIMESTAMP + "." + BODY)`` in lower-case hex, sent as
``Callstream-Signature: v1=HEX`` with ``Callstream-Timestamp: TIMESTAMP`` (Unix seconds, the time of
this attempt) and ``Callstream-Event-Id``. A receiver recomputes it over the raw body, compares in
constant time, refuses timestamps far from its clock (replays) and drops event ids it has seen
(retries). Any 2xx answer is an acknowledgement; anything else, or no answer, is retried.

urllib3 rather than httpx or requests: botocore depends on it already (no new dependency), its
``PoolManager`` is thread safe and keeps connections alive between events, and nothing here needs
HTTP/2 or async.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

import urllib3

SIGNATURE_HEADER: Final = "Callstream-Signature"
TIMESTAMP_HEADER: Final = "Callstream-Timestamp"
EVENT_ID_HEADER: Final = "Callstream-Event-Id"
SIGNATURE_VERSION: Final = "v1"
CONNECT_TIMEOUT: Final = 5.0  # seconds
READ_TIMEOUT: Final = 15.0  # seconds for the receiver's answer


class DeliveryError(Exception):
    """The receiver did not acknowledge the event (no 2xx, or no answer). Retry later."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``Callstream-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *, tolerance: float = 300.0,
           now: float | None = None) -> bool:
    """What a receiver does (the README's example is this): the signature matches and the
    timestamp is within ``tolerance`` seconds of ``now``."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSender:
    """POSTs events to one URL. Thread safe."""

    def __init__(self, url: str, secret: bytes) -> None:
        self.url = url
        self.secret = secret  # may be replaced (a reload): each attempt signs with the current one
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
            retries=False,  # ours, with backoff, across restarts
        )

    def send(self, event_id: str, body: bytes) -> None:
        """Deliver once; DeliveryError unless the receiver answers 2xx."""
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "callstream",
            EVENT_ID_HEADER: event_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.secret, timestamp, body),
        }
        try:
            response = self._pool.request("POST", self.url, body=body, headers=headers, preload_content=True)
        except urllib3.exceptions.HTTPError as error:
            raise DeliveryError(f"POST {self.url}: {error}") from error
        if not 200 <= response.status < 300:
            raise DeliveryError(f"POST {self.url}: HTTP {response.status}")

    def close(self) -> None:
        self._pool.clear()
