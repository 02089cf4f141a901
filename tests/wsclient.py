"""A minimal WebSocket test client on wsproto that always closes its socket.

trio-websocket's client leaks its TCP socket when the server closes the connection or rejects
the upgrade (a ResourceWarning, an error under our filterwarnings), so tests in which the
server ends the conversation use this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
import wsproto
import wsproto.events as ev


class Rejected(Exception):
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers


class Closed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class WsClient:
    stream: trio.SocketStream
    connection: wsproto.WSConnection
    close_code: int | None = None
    _lock: trio.Lock = field(default_factory=trio.Lock)

    async def _send_raw(self, data: bytes) -> None:
        async with self._lock:  # a receiving task may answer a ping or a close meanwhile
            await self.stream.send_all(data)

    async def send(self, text: str) -> None:
        if self.close_code is not None:
            raise Closed(self.close_code)
        try:
            await self._send_raw(self.connection.send(ev.TextMessage(data=text)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Closed(self.close_code) from None

    async def receive(self) -> str:
        """Next text message; raises Closed with the server's close code when it closes."""
        parts: list[str] = []
        while True:
            for event in self.connection.events():
                if isinstance(event, ev.TextMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        return "".join(parts)
                elif isinstance(event, ev.CloseConnection):
                    self.close_code = event.code
                    if self.connection.state == wsproto.connection.ConnectionState.REMOTE_CLOSING:
                        await self._send_raw(self.connection.send(event.response()))
                    raise Closed(event.code)
                elif isinstance(event, ev.Ping):
                    await self._send_raw(self.connection.send(event.response()))
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                raise Closed(self.close_code)
            self.connection.receive_data(data)

    async def close(self, code: int = 1000) -> None:
        if self.close_code is None and self.connection.state == wsproto.connection.ConnectionState.OPEN:
            try:
                await self._send_raw(self.connection.send(ev.CloseConnection(code=code)))
                with trio.move_on_after(5):
                    while True:
                        await self.receive()
            except Closed:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await self.stream.aclose()

    async def drop(self) -> None:
        """Close the TCP connection without a WebSocket close frame."""
        await self.stream.aclose()


async def connect(url: str, target: str = "/", headers: list[tuple[str, str]] | None = None) -> WsClient:
    """Upgrade to a WebSocket at ws://127.0.0.1:PORT ``url``; raises Rejected on an HTTP refusal."""
    port = int(url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        request = ev.Request(host="127.0.0.1", target=target, extra_headers=headers or [])
        await stream.send_all(connection.send(request))
        while True:
            data = await stream.receive_some(65536)
            if not data:
                raise Closed(None)
            connection.receive_data(data)
            for event in connection.events():
                if isinstance(event, ev.RejectConnection):
                    names = {k.decode().lower(): v.decode() for k, v in event.headers}
                    raise Rejected(event.status_code, names)
                if isinstance(event, ev.AcceptConnection):
                    return WsClient(stream, connection)
    except BaseException:
        await stream.aclose()
        raise
