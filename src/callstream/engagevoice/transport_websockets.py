"""The `Upgrade`/`MessageStream` adapter on websockets' sans-IO `ServerProtocol` over trio streams.

Theory of operation: no task of our own reads the socket. `receive()` hands out messages parsed
from the last chunk read; only when none is left does it read one more chunk (at most
`RECEIVE_BYTES`) and feed it to the protocol, which parses every whole frame in it (masks are
removed by websockets' C speedups), queues pongs and close replies, and asks for the end of the
stream when the conversation is over. So when the recorder stops calling `receive()` (a slow
disk), nothing reads the socket: at most one chunk's messages and one partial frame are held,
and TCP pushes back on the peer.

Fast path (the Media stream): while the protocol is OPEN, `_scan` splits each chunk into
frames by their headers. A whole, final, masked text or binary frame outside a fragmented
message becomes a message at once (a run of them in one C call, `FrameSplitter`; one at a
time in Python with websockets' C `apply_mask` without our extension); every other whole
frame (control frames, fragments, unmasked or RSV frames, bad UTF-8) is handed to websockets'
parser on its own, which answers it as before; a frame cut by the chunk's end waits for the
next chunk. So websockets' parser only ever sees whole frames, stands at a frame boundary, and
only the common frame skips its generator-based parser. A run of ASCII text frames split by
the C call is queued as one `TextBatch` (`receive_batch()` hands it over whole, for the
recorder to parse in one call too; `receive()` still gives one message at a time). On plain
TCP the chunk is read with one `recv` after `wait_readable` rather than through
`SocketStream.receive_some`.

Read coalescing (``read_interval``, off by default): a real-time stream brings a pair of small
frames every 20 ms, and a wake-up per pair costs far more than parsing it. After a read that
drained the socket, the next read waits for the next tick of one `_ReadTicker` per server
(every ``read_interval`` seconds, one timer for all connections: a trio sleep per connection
costs a cancel scope and a deadline each), then takes whatever arrived meanwhile in one read
(the kernel holds it; TCP flow control is unchanged). A stream that keeps the socket full (a
backlog, a blast) is read back to back.

Closing: `close()` only sends the close frame. The TCP connection is torn down once the handler
returns: half-close, discard what the peer still sends until it closes (at most
`LINGER_SECONDS`; closing with unread data would make the kernel send RST, and the peer could
lose our close frame), then close.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
from array import array
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

import trio
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from callstream.engagevoice.listeners import open_listeners
from callstream.engagevoice.textbatch import TextBatch
from callstream.engagevoice.transport import Handler, ListenerInfo, MessageStream, StreamClosed
from callstream.native import kernel as _kernel

# the C kernel, or None (not built, or CALLSTREAM_NATIVE drops it); see native.py
_ffi, _lib = _kernel("wsframe")

LOGGER = logging.getLogger("callstream.transport_websockets")

RECEIVE_BYTES: Final = 64 * 1024  # bytes read from the socket at most per read (64 KiB)
BUFFERED_READS: Final = 16  # chunks a stopped call's last look at its socket reads at most (1 MiB)
LINGER_SECONDS: Final = 2.0  # seconds the peer gets to end the closing handshake before we close
CLOSE_ABNORMAL: Final = 1006  # the code reported when the peer vanished without a close frame
CLOSE_INVALID_DATA: Final = 1007

_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)
_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_wait_readable = trio.lowlevel.wait_readable
_cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
_OPEN = State.OPEN
_FAST_TEXT, _FAST_BINARY = 0x81, 0x82  # FIN, no RSV bits, opcode text / binary
_FAST_OPCODES = (_FAST_TEXT, _FAST_BINARY)


class FrameSplitter:
    """`_scan`'s common case in one C call per chunk (``cs_ws_split``, csrc/wsframe.h): the whole,
    final, masked text and binary frames at the front of a chunk, unmasked and decoded. One per
    server, shared by its connections (it is used only between awaits). Splitting in Python cost
    ~1.3 µs per frame, more than parsing the JSON inside."""

    FRAMES = 256  # frames per C call at most

    def __init__(self) -> None:
        if _lib is None:
            raise RuntimeError("callstream._mulaw is not built")
        self._spans = _ffi.new("uint32_t[]", 2 * self.FRAMES)
        self._frames = _ffi.new("uint32_t[]", 2 * self.FRAMES)
        self._report = _ffi.new("size_t[2]")  # where the frames taken end; whether all plain

    def split(self, data: bytes, pos: int, limit: int | None, out: deque[str | bytes | TextBatch]) -> int:
        """Append the messages of the common frames from ``data[pos:]`` to ``out`` (a run of
        ASCII text messages as one `TextBatch`); returns where the first frame it did not take
        starts (a text frame that is not UTF-8 included: the caller hands that one to
        websockets, which fails the connection with 1007)."""
        size = len(data)
        maximum = 0xFFFF_FFFF_FFFF_FFFF if limit is None else limit
        source, report = _ffi.from_buffer(data), self._report
        while pos < size:
            buffer = bytearray(size - pos)
            count = _lib.cs_ws_split(source + pos, size - pos, maximum, _ffi.from_buffer(buffer),
                                     self._spans, self._frames, self.FRAMES, report)
            if not count:
                return pos
            if report[1]:  # all text, all ASCII (the Media stream): one batch
                spans = array("I")
                spans.frombytes(_ffi.buffer(self._spans, 8 * count))
                out.append(TextBatch(buffer, spans))
            else:
                frames = _ffi.unpack(self._frames, 2 * count)
                spans = _ffi.unpack(self._spans, 2 * count)
                view = memoryview(buffer)
                for i in range(count):
                    start = spans[2 * i]
                    payload = view[start : start + spans[2 * i + 1]]
                    if frames[2 * i] == 2:
                        out.append(bytes(payload))
                        continue
                    try:
                        out.append(str(payload, "utf-8"))
                    except UnicodeDecodeError:
                        return pos + frames[2 * i + 1]
            pos += report[0]
            if count < self.FRAMES:
                return pos
        return pos


class _ProtocolLog(logging.LoggerAdapter):
    """websockets logs every connection's open and close at INFO: for us that is debug detail."""

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


_PROTOCOL_LOG = _ProtocolLog(logging.getLogger("callstream.transport_websockets.protocol"))


class _Connection:
    """One TCP (or TLS) stream and its protocol; the `MessageStream` once accepted."""

    def __init__(
        self, stream: trio.abc.Stream, protocol: ServerProtocol, remote: str,
        ticker: _ReadTicker | None = None, splitter: FrameSplitter | None = None,
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        self.remote = remote
        self._messages: deque[str | bytes | TextBatch] = deque()
        self._parts: list[bytes] = []  # frames of a fragmented message
        self._parts_text = False
        self._closed: StreamClosed | None = None  # raised once the messages are handed out
        self._eof = False  # the peer's end of stream was read
        self._receiving = False
        self._send_lock = trio.Lock()
        self.dropped = False  # the handshake timed out or TLS failed: close TCP without lingering
        # plain TCP: read the socket's descriptor directly (see `_receive_chunk`)
        self._socket = stream.socket if type(stream) is trio.SocketStream else None
        self._tail = b""  # the start of a frame the next chunk completes (fast path)
        self._fast = True  # websockets' parser stands at a frame boundary: `_scan` may split frames
        self._ticker = ticker  # read coalescing (see the module's docstring); None: off
        self._splitter = splitter  # the fast path in C; None: in Python
        self._drained = False  # the last read took everything the socket had
        self._buffered_reads = 0  # chunks `receive_buffered` has read

    async def receive(self) -> str | bytes:
        message = await self.receive_batch()
        return self._one(message) if type(message) is TextBatch else message

    async def receive_batch(self) -> str | bytes | TextBatch:
        """As `receive`, but a run of text messages read together comes as one `TextBatch`."""
        messages = self._messages
        if messages:
            await _checkpoint_if_cancelled()
            return messages.popleft()
        while not messages:
            if self._closed is not None:
                raise self._closed
            await self._read()
        return messages.popleft()

    def receive_batch_nowait(self) -> str | bytes | TextBatch | None:
        """The next message or batch if one is already parsed, else None; never reads, never
        yields. For a caller that has just returned from `receive_batch()` and not yielded since:
        it can take the rest of the chunk's messages without a checkpoint each."""
        messages = self._messages
        return messages.popleft() if messages else None

    def receive_buffered(self) -> str | bytes | TextBatch | None:
        """What has reached us already, without waiting: the next message or batch parsed, else
        one more chunk the kernel holds for the socket, parsed (plain TCP only: a TLS stream
        cannot be read without waiting; at most `BUFFERED_READS` chunks per stream, so a peer
        that keeps sending cannot hold a stopped call); None when nothing is left. For a call
        the server stops (drain, a limit): the audio in flight is recorded, not dropped (read
        coalescing may leave up to a read interval of it in the socket). Never yields; does not
        send (pongs and close replies go with the close)."""
        messages = self._messages
        while not messages:
            sock = self._socket
            if (self._closed is not None or self._eof or sock is None or self._receiving
                    or self._buffered_reads >= BUFFERED_READS or self._protocol.state is not _OPEN):
                return None
            fd = sock.fileno()
            if fd < 0:
                return None
            try:
                data = os.read(fd, RECEIVE_BYTES)
            except OSError:  # BlockingIOError: nothing there; anything else: the peer is gone
                return None
            self._buffered_reads += 1
            self._ingest(data)
            if self._protocol.events:
                self._absorb(self._protocol.events_received())
        return messages.popleft()

    def _one(self, batch: TextBatch) -> str:
        """A batch's first message; the others go back to the front of the queue, in order."""
        first, *rest = batch.messages()
        self._messages.extendleft(reversed(rest))
        return first

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
        protocol = self._protocol
        if protocol.events:  # what websockets parsed (the fast path's messages are queued)
            self._absorb(protocol.events_received())
        if protocol.writes or self._eof:  # a pong, a close reply or the end: send it
            await self._flush()

    async def _feed(self) -> None:
        """Read one chunk (or the end of the stream) into the protocol."""
        self._receiving = True
        try:
            data = await self._receive_chunk()
        except _BROKEN:
            data = b""
        finally:
            self._receiving = False
        self._ingest(data)

    def _ingest(self, data: bytes) -> None:
        """A chunk read (b"": the end of the stream) into the protocol and the queue."""
        protocol, tail = self._protocol, self._tail
        if not data:
            self._eof = True
            if tail:
                self._tail = b""
                protocol.receive_data(tail)
            protocol.receive_eof()
            return
        if tail:
            data, self._tail = tail + data, b""
        if self._fast and protocol.reader.buffer:
            self._fast = False  # frames came with the upgrade, one of them cut: websockets keeps it
        if self._fast:
            self._scan(data)
        else:
            protocol.receive_data(data)

    async def _receive_chunk(self) -> bytes:
        """Up to RECEIVE_BYTES from the peer; b"" at its end (or when the connection broke)."""
        sock = self._socket
        if sock is None:
            return await self._stream.receive_some(RECEIVE_BYTES)
        ticker = self._ticker
        parked = self._drained and ticker is not None
        if parked:
            await ticker.wait()  # a schedule point: the read below needs no other
        else:
            await _checkpoint_if_cancelled()
        fd = sock.fileno()  # after any wait: close() may have closed it meanwhile
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        data: bytes | None = None
        if not self._drained or ticker is not None:  # likely data: try first, as trio does
            try:
                data = os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:
                pass
            except OSError:  # ECONNRESET and the like: the peer is gone
                return b""
            else:
                if not parked:  # a stream that keeps its socket full must still let others run
                    await _cancel_shielded_checkpoint()
        while data is None:
            await _wait_readable(fd)
            try:
                data = os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                return b""
        self._drained = len(data) < RECEIVE_BYTES
        return data

    def _scan(self, data: bytes) -> None:
        """Split ``data`` into frames (the fast path, see the module's docstring): whole, final,
        masked text or binary frames become messages here; every other whole frame goes to
        websockets on its own, its events absorbed at once so that the order holds; a frame cut
        by the chunk's end waits in ``_tail``. So websockets' parser only ever sees whole frames
        and always stands at a frame boundary. Once the protocol is no longer OPEN, or a frame
        is over the size limit (websockets fails it on its header), websockets takes the rest."""
        protocol = self._protocol
        out = self._messages
        limit = protocol.max_message_size
        splitter = self._splitter
        size = len(data)
        pos = 0
        while pos < size:
            if protocol.state is not _OPEN:
                protocol.receive_data(data[pos:])
                return
            if splitter is not None and protocol.current_size is None:
                pos = splitter.split(data, pos, limit, out)  # the common frames, in C
                if pos >= size:
                    break
            if pos + 2 > size:
                break
            first, second = data[pos], data[pos + 1]
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                start = pos + 4
                if start > size:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
            elif length == 127:
                start = pos + 10
                if start > size:
                    break
                length = int.from_bytes(data[pos + 2 : start], "big")
            if second & 0x80:
                start += 4
            if limit is not None and length > limit:
                protocol.receive_data(data[pos:])
                self._absorb(protocol.events_received())
                return
            end = start + length
            if end > size:
                break
            if first in _FAST_OPCODES and second & 0x80 and protocol.current_size is None:
                payload = apply_mask(data[start:end], data[start - 4 : start])
                if first == _FAST_BINARY:
                    out.append(payload)
                    pos = end
                    continue
                try:
                    out.append(payload.decode())
                    pos = end
                    continue
                except UnicodeDecodeError:
                    pass  # websockets parses it again and _absorb fails the connection
            protocol.receive_data(data[pos:end])
            self._absorb(protocol.events_received())
            pos = end
        if pos < size:
            self._tail = data[pos:]

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


class _ReadTicker:
    """Wakes parked readers every ``interval`` seconds on average: one timer for all.

    The readers are spread over `PHASES` groups (by their task), and each tick, every
    ``interval / PHASES`` seconds, wakes one group in turn. A reader still waits about an
    interval, but the reads come in fifths: trio runs every task woken at once before it looks
    at anything else, so waking all readers together made one round of the scheduler last as
    long as reading every call (~0.45 s at 750 calls), and the disk writer, which needs a few
    rounds per batch, waited that long each time. Each period is drawn from 0.5 to 1.5 of its
    mean, so that the reads do not lock in phase with a sender's own period (a call sends its
    two perspectives' frames one after the other every 20 ms: in phase, every read would fall
    between the two, and a stop would leave one side a frame ahead far more often than at a
    random moment)."""

    PHASES = 5

    def __init__(self, interval: float) -> None:
        self._interval = interval
        # trio tasks waiting in `wait`, by group
        self._parked: list[dict[Any, None]] = [{} for _ in range(self.PHASES)]

    async def run(self) -> None:
        reschedule = trio.lowlevel.reschedule
        period = self._interval / self.PHASES
        groups = self._parked
        turn = 0
        while True:
            await trio.sleep(period * (0.5 + random.random()))
            turn = (turn + 1) % self.PHASES
            if groups[turn]:
                parked, groups[turn] = groups[turn], {}
                for task in parked:
                    reschedule(task)

    async def wait(self) -> None:
        """Until the next tick of this task's group; a checkpoint (cancellable) like `trio.sleep`."""
        task = trio.lowlevel.current_task()
        group = self._parked[hash(task) % self.PHASES]
        group[task] = None

        def abort(_: Any) -> trio.lowlevel.Abort:
            group.pop(task, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


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
                remote: str, deadline: float, ticker: _ReadTicker | None = None,
                splitter: FrameSplitter | None = None) -> _Upgrade | _Connection:
    """TLS and the upgrade request, by ``deadline``. An `_Upgrade` for the handler, or the
    `_Connection` to tear down (the peer vanished or was too slow, or the request was invalid
    and answered here)."""
    protocol = ServerProtocol(max_size=max_message_bytes, logger=_PROTOCOL_LOG)
    connection = _Connection(stream, protocol, remote, ticker, splitter)
    with trio.move_on_at(deadline):
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True)
            connection = _Connection(stream, protocol, remote, ticker, splitter)
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
    read_interval: float = 0.0,
    task_status: trio.TaskStatus[ListenerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen and call ``handler`` with each upgrade, in its own task, until cancelled.
    ``reuse_port``: bind with SO_REUSEPORT beside other worker processes. ``read_interval``:
    seconds between reads of a stream that drains its socket (see the module's docstring).

    Any path is accepted; the handler accepts or rejects. TLS (``ssl_context``) and the upgrade
    must complete within ``handshake_timeout`` seconds or the connection is dropped; a message
    over ``max_message_bytes`` closes the stream with 1009. An exception from the handler is
    logged and ends only its own connection."""

    ticker = _ReadTicker(read_interval) if read_interval > 0 else None
    splitter = FrameSplitter() if _lib is not None else None

    async def on_connection(tcp: trio.SocketStream) -> None:
        remote = _remote(tcp)
        deadline = trio.current_time() + handshake_timeout
        try:
            opened = await _open(
                tcp, ssl_context, max_message_bytes, remote, deadline, ticker, splitter
            )
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
        if ticker is not None:
            nursery.start_soon(ticker.run)
        await nursery.start(trio.serve_listeners, on_connection, listeners)
        task_status.started(ListenerInfo(host=host, port=real_port))
