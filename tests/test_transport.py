"""The transport contract, on every adapter: real sockets on 127.0.0.1, a handler per test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import wsproto.events as ev

from callstream.engagevoice.transport import (
    ListenerInfo,
    MessageStream,
    StreamClosed,
    Upgrade,
    serve_trio_websocket,
)
from callstream.engagevoice.transport_websockets import serve_websockets
from wsclient import Closed, Rejected, WsClient, connect

TIMEOUT = 10  # seconds: a hang fails the test instead of blocking the suite
MAX_BYTES = 4096

ADAPTERS = {"websockets": serve_websockets, "trio-websocket": serve_trio_websocket}


@pytest.fixture(params=list(ADAPTERS), ids=lambda name: name)
def adapter(request: pytest.FixtureRequest) -> Callable[..., Awaitable[None]]:
    return ADAPTERS[request.param]


async def start(nursery: trio.Nursery, adapter, handler, *, handshake_timeout: float = 5.0) -> str:
    info: ListenerInfo = await nursery.start(
        lambda task_status: adapter(
            handler,
            host="127.0.0.1",
            port=0,
            ssl_context=None,
            max_message_bytes=MAX_BYTES,
            handshake_timeout=handshake_timeout,
            task_status=task_status,
        )
    )
    return f"ws://127.0.0.1:{info.port}"


class Recorder:
    """A handler that accepts, then receives until the stream ends, keeping what it saw."""

    def __init__(self, close_after: int | None = None, close_code: int = 1000) -> None:
        self.upgrades: list[tuple[str, dict[str, str]]] = []
        self.messages: list[str | bytes] = []
        self.closed: StreamClosed | None = None
        self.done = trio.Event()
        self._close_after = close_after
        self._close_code = close_code

    async def __call__(self, upgrade: Upgrade) -> None:
        self.upgrades.append((upgrade.path, dict(upgrade.headers)))
        stream = await upgrade.accept()
        try:
            while self._close_after is None or len(self.messages) < self._close_after:
                self.messages.append(await stream.receive())
            await stream.close(self._close_code, "enough")
            await stream.close(self._close_code, "enough")  # idempotent
        except StreamClosed as closed:
            self.closed = closed
        finally:
            self.done.set()


async def test_any_path_and_query_is_accepted_and_seen_by_the_handler(nursery, adapter) -> None:
    handler = Recorder(close_after=1)
    url = await start(nursery, adapter, handler)
    with trio.fail_after(TIMEOUT):
        client = await connect(url, "/some/deep/path?callId=7&x=%20y", [("X-Custom", "Value")])
        await client.send("hello")
        with pytest.raises(Closed):
            await client.receive()
        await client.close()
        await handler.done.wait()
    [(path, headers)] = handler.upgrades
    assert path == "/some/deep/path?callId=7&x=%20y"
    assert headers["x-custom"] == "Value"
    assert handler.messages == ["hello"]


async def test_reject_sends_status_body_and_extra_headers(nursery, adapter) -> None:
    async def refuse(upgrade: Upgrade) -> None:
        await upgrade.reject(503, body="over capacity", headers={"Retry-After": "5"})

    url = await start(nursery, adapter, refuse)
    with trio.fail_after(TIMEOUT), pytest.raises(Rejected) as refused:
        await connect(url, "/")
    assert refused.value.status == 503
    assert refused.value.headers["retry-after"] == "5"


async def test_close_code_is_delivered_to_the_client(nursery, adapter) -> None:
    handler = Recorder(close_after=2, close_code=1001)
    url = await start(nursery, adapter, handler)
    with trio.fail_after(TIMEOUT):
        client = await connect(url)
        await client.send("one")
        await client.send("two")
        with pytest.raises(Closed) as closed:
            await client.receive()
        await client.close()
        await handler.done.wait()
    assert closed.value.code == 1001
    assert handler.messages == ["one", "two"]


async def test_oversized_message_closes_with_1009(nursery, adapter) -> None:
    handler = Recorder()
    url = await start(nursery, adapter, handler)
    with trio.fail_after(TIMEOUT):
        client = await connect(url)
        await client.send("small")
        await client.send("x" * (MAX_BYTES * 4))
        with pytest.raises(Closed) as closed:
            await client.receive()
        await client.close()
        await handler.done.wait()
    assert closed.value.code == 1009
    assert handler.messages == ["small"]
    assert handler.closed is not None


async def test_abrupt_tcp_close_raises_stream_closed_after_the_messages(nursery, adapter) -> None:
    handler = Recorder()
    url = await start(nursery, adapter, handler)
    with trio.fail_after(TIMEOUT):
        client = await connect(url)
        for index in range(100):
            await client.send(f"m{index}")
        await client.drop()
        await handler.done.wait()
    assert handler.messages == [f"m{index}" for index in range(100)]
    assert handler.closed is not None
    assert handler.closed.code == 1006


async def test_binary_frame_is_delivered_as_bytes_and_text_as_str(nursery, adapter) -> None:
    handler = Recorder(close_after=2)
    url = await start(nursery, adapter, handler)
    with trio.fail_after(TIMEOUT):
        client = await connect(url)
        await client._send_raw(client.connection.send(ev.BytesMessage(data=b"\x00\xff\x80")))
        await client.send("text")
        with pytest.raises(Closed):
            await client.receive()
        await client.close()
        await handler.done.wait()
    assert handler.messages == [b"\x00\xff\x80", "text"]


async def test_fragmented_message_is_delivered_whole(nursery, adapter) -> None:
    handler = Recorder(close_after=1)
    url = await start(nursery, adapter, handler)
    with trio.fail_after(TIMEOUT):
        client = await connect(url)
        for part, last in (("ab", False), ("cd", False), ("é", True)):
            frame = ev.TextMessage(data=part, message_finished=last)
            await client._send_raw(client.connection.send(frame))
        with pytest.raises(Closed):
            await client.receive()
        await client.close()
        await handler.done.wait()
    assert handler.messages == ["abcdé"]


async def test_ping_is_answered_while_the_handler_receives(nursery, adapter) -> None:
    handler = Recorder()
    url = await start(nursery, adapter, handler)
    with trio.fail_after(TIMEOUT):
        client = await connect(url)
        await client._send_raw(client.connection.send(ev.Ping(payload=b"are you there")))
        pong = await _next_event(client, ev.Pong)
        await client.close()
        await handler.done.wait()
    assert pong.payload == b"are you there"


async def _next_event(client: WsClient, kind: type) -> ev.Event:
    while True:
        for event in client.connection.events():
            if isinstance(event, kind):
                return event
        data = await client.stream.receive_some(65536)
        assert data, "connection closed"
        client.connection.receive_data(data)


async def test_silent_tcp_connection_is_dropped_after_the_handshake_timeout(nursery, adapter):
    called = []

    async def handler(upgrade: Upgrade) -> None:  # pragma: no cover - must not run
        called.append(upgrade)

    url = await start(nursery, adapter, handler, handshake_timeout=0.3)
    port = int(url.rsplit(":", 1)[1])
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
            started = trio.current_time()
            try:
                data = await stream.receive_some(1024)
            except trio.BrokenResourceError:
                data = b""
            elapsed = trio.current_time() - started
        finally:
            await stream.aclose()
    assert data == b""
    assert 0.2 < elapsed < 3
    assert not called


async def test_a_handler_that_stops_receiving_stops_the_reading(nursery, adapter) -> None:
    """Back-pressure: while the handler does not call receive(), the client's sends block
    (bounded buffering); once it resumes, every message arrives in order."""
    resume = trio.Event()
    received: list[str | bytes] = []
    total = 3000
    message = "m" * 290

    async def slow(upgrade: Upgrade) -> None:
        stream: MessageStream = await upgrade.accept()
        received.append(await stream.receive())
        await resume.wait()
        while len(received) < total:
            received.append(await stream.receive())
        await stream.close(1000)

    sent = 0

    async def send_all(client: WsClient) -> None:
        nonlocal sent
        for _ in range(total):
            await client.send(message)
            sent += 1

    url = await start(nursery, adapter, slow)
    with trio.fail_after(TIMEOUT):
        client = await connect(url)
        async with trio.open_nursery() as senders:
            senders.start_soon(send_all, client)
            await trio.sleep(0.5)  # time enough to fill every buffer on the way
            assert sent < total, "the server read everything while its handler was not receiving"
            resume.set()
        with pytest.raises(Closed):
            await client.receive()
        await client.close()
    assert len(received) == total
