"""The `Upgrade`/`MessageStream` adapter on websockets' sans-IO `ServerProtocol` over trio streams.

Theory of operation: no task of our own reads the socket. `receive()` hands out messages parsed
from the last chunk read; only when none is left does it read one more chunk (at most
`RECEIVE_BYTES`) and feed it to the protocol, which parses every whole frame in it (masks are
removed by websockets' C speedups), queues pongs and close replies, and asks for the end of the
stream when the conversation is over. So when the recorder stops calling `receive()` (a slow
disk), nothing reads the socket: at most one chunk's messages and one partial frame are held,
and TCP pushes back on the peer.

Closing: `close()` only sends the close frame. The TCP connection is torn down once the handler
returns: half-close, discard what the peer still sends until it closes (at most
`LINGER_SECONDS`; closing with unread data would make the kernel send RST, and the peer could
lose our close frame), then close.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

import trio
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol

from callstream.listeners import open_listeners
from callstream.transport import Handler, ListenerInfo, MessageStream, StreamClosed

LOGGER = logging.getLogger("callstream.transport_websockets")

RECEIVE_BYTES: Final = 64 * 1024  # bytes read from the socket at most per read (64 KiB)
LINGER_SECONDS: Final = 2.0  # seconds the peer gets to end the closing handshake before we close
CLOSE_ABNORMAL: Final = 1006  # the code reported when the peer vanished without a close frame
CLOSE_INVALID_DATA: Final = 1007

_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)
_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled


class _ProtocolLog(logging.LoggerAdapter):
    """websockets logs every connection's open and close at INFO: for us that is debug detail."""

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


_PROTOCOL_LOG = _ProtocolLog(logging.getLogger("callstream.transport_websockets.protocol"))


class _Connection:
    """One TCP (or TLS) stream and its protocol; the `MessageStream` once accepted."""

    def __init__(self, stream: trio.abc.Stream, protocol: ServerProtocol, remote: str) -> None:
        self._stream = stream
        self._protocol = protocol
        self.remote = remote
        self._messages: deque[str | bytes] = deque()
        self._parts: list[bytes] = []  # frames of a fragmented message
        self._parts_text = False
        self._closed: StreamClosed | None = None  # raised once the messages are handed out
        self._eof = False  # the peer's end of stream was read
        self._receiving = False
        self._send_lock = trio.Lock()
        self.dropped = False  # the handshake timed out or TLS failed: close TCP without lingering

    async def receive(self) -> str | bytes:
        messages = self._messages
        if messages:
            await _checkpoint_if_cancelled()
            return messages.popleft()
        while not messages:
            if self._closed is not None:
                raise self._closed
            await self._read()
        return messages.popleft()

    async def close(self, code: int, reason: str = "") -> None:
        self._messages.clear()
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code, reason)
            await self._flush()
        if self._closed is None:
            self._closed = StreamClosed(code, reason)
        if self._receiving:  # another task waits in receive_some(): end it
            await trio.aclose_forcefully(self._stream)

    async def _read(self) -> None:
        await self._feed()
        self._absorb(self._protocol.events_received())
        await self._flush()

    async def _feed(self) -> None:
        """Read one chunk (or the end of the stream) into the protocol."""
        self._receiving = True
        try:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        except _BROKEN:
            data = b""
        finally:
            self._receiving = False
        if data:
            self._protocol.receive_data(data)
        else:
            self._eof = True
            self._protocol.receive_eof()

    def _absorb(self, events: list[Any]) -> None:
        """Whole messages from the protocol's frames into the queue (pings are answered by it)."""
        out = self._messages
        for frame in events:
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if not frame.fin:
                    self._parts, self._parts_text = [frame.data], opcode is _TEXT
                    continue
                data, text = frame.data, opcode is _TEXT
            elif opcode is _CONT:
                self._parts.append(frame.data)
                if not frame.fin:
                    continue
                data, text, self._parts = b"".join(self._parts), self._parts_text, []
            else:
                continue
            if not text:
                out.append(bytes(data))
                continue
            try:
                out.append(data.decode())
            except UnicodeDecodeError:
                self._protocol.fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                return

    async def _flush(self) -> None:
        """Send what the protocol queued; after its end-of-stream request the stream is over."""
        writes = self._protocol.data_to_send()
        if not writes and not self._eof:
            return
        done = self._eof or SEND_EOF in writes
        payload = b"".join(writes)
        if payload:
            async with self._send_lock:
                try:
                    await self._stream.send_all(payload)
                except _BROKEN:
                    done = True
        if done and self._closed is None:
            self._closed = _closed_by(self._protocol)
        if done and isinstance(self._stream, trio.abc.HalfCloseableStream):
            try:
                await self._stream.send_eof()
            except (*_BROKEN, trio.BusyResourceError):
                pass

    async def respond(self, status: int, body: str, headers: Mapping[str, str] | None) -> None:
        response = self._protocol.reject(status, body)
        for name, value in (headers or {}).items():
            response.headers[name] = value
        self._protocol.send_response(response)
        await self._flush()

    async def teardown(self) -> None:
        """Close (1000) if the handler left the stream open, let the peer finish, close TCP."""
        try:
            if not self.dropped:
                with trio.move_on_after(LINGER_SECONDS):
                    if self._protocol.state is State.OPEN:
                        self._protocol.send_close(1000)
                        await self._flush()
                    while not self._eof:
                        await self._read()
                        self._messages.clear()
                    await self._stream.aclose()
        except (*_BROKEN, trio.BusyResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self._stream)


def _closed_by(protocol: ServerProtocol) -> StreamClosed:
    close = protocol.close_rcvd or protocol.close_sent  # the peer's code, else the one we sent
    if close is None:
        return StreamClosed(CLOSE_ABNORMAL, "connection lost")
    return StreamClosed(int(close.code), close.reason)


class _Upgrade:
    """A valid upgrade request waiting for the handler's answer."""

    def __init__(
        self, connection: _Connection, request: Request, response: Response, deadline: float
    ) -> None:
        self._connection = connection
        self._response = response
        self._deadline = deadline
        self.path = request.path
        self.headers = {name.lower(): value for name, value in request.headers.raw_items()}
        self.remote = connection.remote
        self.answered = False

    async def accept(self) -> MessageStream:
        """The stream; already closed (`receive` raises `StreamClosed`) if the 101 was not sent."""
        self.answered = True
        connection = self._connection
        connection._protocol.send_response(self._response)
        with trio.move_on_at(self._deadline):
            await connection._flush()
        if connection._protocol.state is not State.OPEN and connection._closed is None:
            connection._closed = StreamClosed(CLOSE_ABNORMAL, "handshake not completed")
        return connection

    async def reject(
        self, status: int, *, body: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.answered = True
        with trio.move_on_at(self._deadline):
            await self._connection.respond(status, body, headers)


async def _open(stream: trio.abc.Stream, ssl_context: ssl.SSLContext | None, max_message_bytes: int,
                remote: str, deadline: float) -> _Upgrade | _Connection:
    """TLS and the upgrade request, by ``deadline``. An `_Upgrade` for the handler, or the
    `_Connection` to tear down (the peer vanished or was too slow, or the request was invalid
    and answered here)."""
    protocol = ServerProtocol(max_size=max_message_bytes, logger=_PROTOCOL_LOG)
    connection = _Connection(stream, protocol, remote)
    with trio.move_on_at(deadline):
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True)
            connection = _Connection(stream, protocol, remote)
            try:
                await stream.do_handshake()
            except _BROKEN:
                connection.dropped = True
                return connection
        while connection._closed is None:
            await connection._feed()
            events = protocol.events_received()
            await connection._flush()  # an answer the protocol gave itself (431), or the end
            if events and isinstance(events[0], Request):
                request, response = events[0], protocol.accept(events[0])
                if response.status_code != 101:  # not a valid WebSocket upgrade: no handler
                    protocol.send_response(response)
                    await connection._flush()
                    return connection
                connection._absorb(events[1:])  # frames sent before the 101 (clients should not)
                return _Upgrade(connection, request, response, deadline)
        return connection
    LOGGER.debug("upgrade from %s not completed within the handshake timeout", remote)
    connection.dropped = True
    return connection


def _remote(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except OSError:
        return "?"
    return f"{host}:{port}"


async def serve_websockets(
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
    ``reuse_port``: bind with SO_REUSEPORT beside other worker processes.

    Any path is accepted; the handler accepts or rejects. TLS (``ssl_context``) and the upgrade
    must complete within ``handshake_timeout`` seconds or the connection is dropped; a message
    over ``max_message_bytes`` closes the stream with 1009. An exception from the handler is
    logged and ends only its own connection."""

    async def on_connection(tcp: trio.SocketStream) -> None:
        remote = _remote(tcp)
        deadline = trio.current_time() + handshake_timeout
        try:
            opened = await _open(tcp, ssl_context, max_message_bytes, remote, deadline)
            connection = opened._connection if isinstance(opened, _Upgrade) else opened
            try:
                if isinstance(opened, _Upgrade):
                    try:
                        await handler(opened)
                    except Exception:
                        LOGGER.exception("handler failed for the upgrade from %s", remote)
                        await connection.close(1011, "internal error")
                    if not opened.answered:
                        await opened.reject(500, body="internal error")
            finally:
                await connection.teardown()
        finally:
            await trio.aclose_forcefully(tcp)

    listeners = await open_listeners(host, port, reuse_port=reuse_port)
    real_port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_connection, listeners)
        task_status.started(ListenerInfo(host=host, port=real_port))
