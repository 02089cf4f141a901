"""The WebSocket library behind a small adapter.

The recorder sees only this: an `Upgrade` (path and headers) it may accept or reject, then a
`MessageStream` of text messages, closed with a code. Any library that can provide those two can
feed the recorder; this module adapts trio-websocket.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from callstream.engagevoice.listeners import open_listeners


class StreamClosed(Exception):
    """The peer's side of the stream is over; ``code`` is the close code it sent (or None)."""

    def __init__(self, code: int | None, reason: str | None = None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class MessageStream(Protocol):
    """A stream of whole messages. An adapter that reads many at once may also offer
    ``async receive_batch() -> str | bytes | TextBatch`` (a run of text messages read together
    as one `textbatch.TextBatch`) and ``receive_batch_nowait()`` (the same, or None when nothing
    is parsed yet; never reads, never yields); the recorder uses them when they are there. And
    ``receive_buffered()``: like ``receive_batch_nowait()`` but it may also read what the kernel
    already holds for the connection, without waiting (None when nothing is left); a call the
    server stops takes it, so that the audio in flight is recorded."""

    async def receive(self) -> str | bytes:
        """Next whole message. Raises `StreamClosed` when the peer has closed or vanished."""
        ...

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code``; idempotent; never raises for an already closed stream."""
        ...


class Upgrade(Protocol):
    path: str  # the request target: path and query, as sent
    headers: Mapping[str, str]  # names lower-cased
    remote: str  # "host:port" of the peer, for logs

    async def accept(self) -> MessageStream: ...

    async def reject(self, status: int, *, body: str, headers: Mapping[str, str] | None = None) -> None: ...


Handler = Callable[[Upgrade], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    """What `serve` reports once it listens: the real port (useful with port 0)."""

    host: str
    port: int


class _TrioWebsocketStream:
    __slots__ = ("_connection",)

    def __init__(self, connection: WebSocketConnection) -> None:
        self._connection = connection

    async def receive(self) -> str | bytes:
        try:
            return await self._connection.get_message()
        except ConnectionClosed as closed:
            reason = closed.reason
            raise StreamClosed(
                None if reason is None else reason.code, None if reason is None else reason.reason
            ) from None

    async def close(self, code: int, reason: str = "") -> None:
        await self._connection.aclose(code, reason or None)


class _TrioWebsocketUpgrade:
    def __init__(self, request: WebSocketRequest) -> None:
        self._request = request
        self.path = request.path
        self.headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers
        }
        self.remote = str(request.remote)

    async def accept(self) -> MessageStream:
        return _TrioWebsocketStream(await self._request.accept())

    async def reject(self, status: int, *, body: str, headers: Mapping[str, str] | None = None) -> None:
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        await self._request.reject(status, extra_headers=extra, body=body.encode())


async def serve_trio_websocket(
    handler: Handler,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    max_message_bytes: int,
    handshake_timeout: float,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[ListenerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen and call ``handler`` with each upgrade, in its own task, until cancelled.

    ``reuse_port``: bind with SO_REUSEPORT beside other worker processes."""

    async def on_request(request: WebSocketRequest) -> None:
        await handler(_TrioWebsocketUpgrade(request))

    listeners: list[Any] = await open_listeners(host, port, reuse_port=reuse_port)
    if ssl_context is not None:
        listeners = [trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in listeners]
    server = WebSocketServer(
        on_request,
        listeners,
        max_message_size=max_message_bytes,
        connect_timeout=handshake_timeout,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        task_status.started(ListenerInfo(host=host, port=server.port))
