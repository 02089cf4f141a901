"""Test-only glue over `callstream.fleet.services` (the real servers the shipping tests and
`make fleet` share): the store's fixed test keys, and a webhook receiver that can fail or hang
its first requests and checks signatures with its own implementation of the documented scheme
(not the recorder's `verify`, so a bug shared by signer and verifier would still show)."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from callstream.fleet import services
from callstream.fleet.services import BUCKET, NatsServer, S3Store

__all__ = ["ACCESS_KEY", "BUCKET", "SECRET_KEY", "NatsServer", "S3Server", "WebhookReceiver"]

ACCESS_KEY = "callstreamtestkey"
SECRET_KEY = "callstreamtestsecret0123456789"


class S3Server(S3Store):
    """The store with the test keys (which the `s3_server` fixture puts in the AWS_* variables)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, ACCESS_KEY, SECRET_KEY)


@dataclass
class WebhookReceiver(services.WebhookReceiver):
    """Answers the first ``fail_first`` requests 500 and the rest 204, signed or not (tests assert
    `Delivery.signed` themselves); the first request waits for ``hold_first`` (a receiver that hangs)."""

    fail_first: int = 0
    hold_first: threading.Event | None = None
    _held: bool = False

    def signed(self, timestamp: str, body: bytes, signature: str) -> bool:
        expected = "v1=" + hmac.new(self.secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        return hmac.compare_digest(expected, signature) and fresh

    def answer(self, signed: bool) -> int:
        if self.hold_first is not None and not self._held:
            self._held = True
            self.hold_first.wait(30)
        return 500 if len(self.deliveries) < self.fail_first else 204
