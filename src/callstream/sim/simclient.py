"""The simulator's WebSocket client: wsproto for the protocol, the socket's fd for bulk sends.

It closes its socket on every path (trio-websocket's client leaks one when the server closes
first). The handshake, control messages and the closing handshake go through wsproto; Media
goes out as frames built by `text_frame` with the connection's one masking key and written to
the socket's file descriptor directly when the socket is plain TCP, so that one core can feed
the many calls of a load test. A fixed key per connection is legal for the server (RFC 6455
asks clients for unpredictable keys to protect proxies' caches, which a load test has none of).
"""

from __future__ import annotations

import os
import ssl
import struct
from collections.abc import Sequence
from urllib.parse import urlsplit

import trio
import wsproto
import wsproto.events as ev
from wsproto.connection import ConnectionState

RECEIVE_BYTES = 65536  # bytes per read
CLOSE_TIMEOUT = 10.0  # seconds to wait for the server's close after ours


class Rejected(Exception):
    """The server answered the upgrade with an HTTP status instead of a WebSocket."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upgrade refused with HTTP {status}")
        self.status = status


class Closed(Exception):
    """The connection is gone; ``code`` is the server's close code if it sent one."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


def masked_text_header(n: int) -> bytes:
    """The first bytes of a final, masked text frame of ``n`` payload bytes (before the key)."""
    if n < 126:
        return bytes((0x81, 0x80 | n))
    if n < 65536:
        return struct.pack("!BBH", 0x81, 0xFE, n)
    return struct.pack("!BBQ", 0x81, 0xFF, n)


def text_frame(payload: bytes, key: bytes, masks: dict[int, int]) -> bytes:
    """One final, masked text frame holding ``payload`` (UTF-8). ``masks`` caches, per payload
    length, ``key`` repeated to that length as an int; pass the same dict for the same key."""
    n = len(payload)
    header = masked_text_header(n)
    mask = masks.get(n)
    if mask is None:
        mask = masks[n] = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return header + key + (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


class Client:
    """One client WebSocket. Use `connect`; always `aclose` (it is idempotent)."""

    def __init__(
        self, stream: trio.abc.Stream, connection: wsproto.WSConnection, fd: int | None
    ) -> None:
        self._stream = stream
        self._connection = connection
        self.fd = fd  # the plain TCP socket's fd, for the fast path; None under TLS
        self.key = os.urandom(4)  # masking key of the frames from `text_frame`
        self.masks: dict[int, int] = {}
        self.close_code: int | None = None
        self.close_reason = ""

    async def send_text(self, text: str) -> None:
        await self.send_raw(self._connection.send(ev.TextMessage(data=text)))

    async def send_raw(self, data: bytes) -> None:
        """Write whole frames. On plain TCP this does not yield while the socket takes the data
        at once: callers that send in a loop must checkpoint themselves. Raises Closed."""
        fd = self.fd
        if fd is None:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise Closed(self.close_code) from None
            return
        view = memoryview(data)
        while True:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                pass
            except OSError as error:  # EPIPE, ECONNRESET: the server is gone
                raise Closed(self.close_code, error.strerror or "") from None
            if not view:
                return
            await trio.lowlevel.wait_writable(fd)

    async def wait_closed(self) -> int | None:
        """Read until the server closes; answer its close; returns its close code."""
        connection = self._connection
        while True:
            for event in connection.events():
                if isinstance(event, ev.CloseConnection):
                    self.close_code, self.close_reason = event.code, event.reason or ""
                    if connection.state is ConnectionState.REMOTE_CLOSING:
                        await self.send_raw(connection.send(event.response()))
                    return self.close_code
                if isinstance(event, ev.Ping):
                    await self.send_raw(connection.send(event.response()))
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                raise Closed(self.close_code, "connection lost before a close frame")
            connection.receive_data(data)

    async def close(self, code: int = 1000) -> int | None:
        """Send our close (unless closed already) and wait for the server's; its code."""
        if self._connection.state is ConnectionState.OPEN:
            await self.send_raw(self._connection.send(ev.CloseConnection(code=code)))
        with trio.move_on_after(CLOSE_TIMEOUT):
            return await self.wait_closed()
        return self.close_code

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stream.aclose()


async def connect(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Client:
    """Upgrade ``url`` (``ws://host:port/path?query`` or ``wss://``) to a WebSocket.

    Raises Rejected for an HTTP answer, Closed if the server hangs up during the upgrade, and
    OSError if it cannot connect. Nothing is left open when it raises."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    host = parts.hostname or "127.0.0.1"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    tcp = await trio.open_tcp_stream(host, port)
    stream: trio.abc.Stream = tcp
    fd: int | None = tcp.socket.fileno()
    if secure:
        stream = trio.SSLStream(
            tcp, ssl_context or ssl.create_default_context(), server_hostname=host
        )
        fd = None
    try:
        connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        netloc = host if parts.port is None else f"{host}:{port}"
        extra = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        request = ev.Request(host=netloc, target=target, extra_headers=extra)
        await stream.send_all(connection.send(request))
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise Closed(None, "connection lost during the upgrade")
            connection.receive_data(data)
            for event in connection.events():
                if isinstance(event, ev.RejectConnection):
                    raise Rejected(event.status_code)
                if isinstance(event, ev.AcceptConnection):
                    return Client(stream, connection, fd)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
