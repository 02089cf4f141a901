"""The websockets adapter's internals: its fast path against websockets' own parser, its read ticker.

`_Connection._scan` splits the common frames itself (in C through `FrameSplitter`, or in
Python without it) and hands every other frame to websockets. Whatever the frames and wherever
TCP cuts them, the three ways must deliver the same messages and answer the peer with the same
bytes (pongs, close frames) in the same state.
"""

from __future__ import annotations

import itertools

import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from callstream import native
from callstream.engagevoice.textbatch import TextBatch
from callstream.engagevoice.transport_websockets import RECEIVE_BYTES, FrameSplitter, _Connection

SPLIT_IN_C = native.kernel("wsframe")[1] is not None  # False with CALLSTREAM_NATIVE=0 (tests/test_twins.py)
needs_c = pytest.mark.skipif(not SPLIT_IN_C, reason="the C frame split is not loaded")
MAX_SIZE = 200  # small, so that oversized frames come up often

OPCODES = st.sampled_from([0x0, 0x1, 0x1, 0x1, 0x2, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB])
PAYLOADS = st.one_of(
    st.text(max_size=60).map(lambda text: text.encode()),  # valid UTF-8
    st.text(st.characters(max_codepoint=127), max_size=60).map(lambda text: text.encode()),
    st.binary(max_size=60),  # mostly not
    st.integers(MAX_SIZE - 2, MAX_SIZE + 2).map(lambda n: b"x" * n),  # around the size limit
    st.binary(min_size=MAX_SIZE - 2, max_size=MAX_SIZE + 2),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):  # what a client sends: final, masked, text or binary
        fin, rsv, opcode, masked = True, 0, draw(st.sampled_from([0x1, 0x2])), True
    else:
        fin, masked = draw(st.booleans()), draw(st.booleans())
        rsv, opcode = draw(st.sampled_from([0, 0, 0, 0x10, 0x20, 0x40])), draw(OPCODES)
    payload = draw(PAYLOADS)
    form = draw(st.sampled_from([7, 7, 16, 64]))  # websockets accepts a longer length field
    if form == 7 and len(payload) > 125:
        form = 16
    first = bytes([(0x80 if fin else 0) | rsv | opcode])
    mask_bit = 0x80 if masked else 0
    if form == 7:
        header = first + bytes([mask_bit | len(payload)])
    elif form == 16:
        header = first + bytes([mask_bit | 126]) + len(payload).to_bytes(2, "big")
    else:
        header = first + bytes([mask_bit | 127]) + len(payload).to_bytes(8, "big")
    if not masked:
        return header + payload
    mask = draw(st.binary(min_size=4, max_size=4))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """A client's byte stream, cut into TCP chunks at random places."""
    data = b"".join(draw(st.lists(frames(), max_size=12)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


class ScriptedStream(trio.abc.Stream):
    """Hands out the client's chunks one read at a time and keeps what the server sends."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = [
            chunk[start : start + RECEIVE_BYTES]  # what one read takes at most
            for chunk in chunks
            for start in range(0, len(chunk), RECEIVE_BYTES)
        ]
        self.sent = b""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.chunks.pop(0)

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.sent += bytes(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def _deliver(chunks: list[bytes], way: str) -> tuple[list[str | bytes], State, bytes]:
    """Feed ``chunks`` one read at a time to an open connection parsing the ``way`` given;
    the messages it delivered, its state and what it answered."""
    stream = ScriptedStream(chunks)
    protocol = ServerProtocol(state=State.OPEN, max_size=MAX_SIZE)
    splitter = FrameSplitter() if way == "c" else None
    connection = _Connection(stream, protocol, "test", None, splitter)
    connection._fast = way != "websockets"
    messages: list[str | bytes] = []
    while stream.chunks:
        await connection._read()
        while (message := connection.receive_batch_nowait()) is not None:
            messages.extend(message.messages() if type(message) is TextBatch else [message])
    return messages, protocol.state, stream.sent


def _run(chunks: list[bytes], way: str) -> tuple[list[str | bytes], State, bytes]:
    return trio.run(_deliver, chunks, way)


def _masked_text(text: str) -> bytes:
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=True, extensions=[])


def _fragment(text: str) -> bytes:
    """The first frame of a fragmented text message."""
    return Frame(Opcode.TEXT, text.encode(), fin=False).serialize(mask=True, extensions=[])


@settings(max_examples=300)
@given(streams())
@example([_fragment("ab") + _masked_text("c") + _masked_text("d")])  # not a continuation: 1002
@example([_masked_text("é") + bytes([0x82, 0x81, 0, 0, 0, 0, 0xFF]) + bytes([0x81, 0x81, 0, 0, 0, 0, 0xFF])])
# the C split unmasks eight bytes at a time, then the rest one by one: a byte over 127 in either
# part (or a binary frame) keeps the run from becoming one TextBatch
@example([_masked_text("x") + _masked_text("é" + "x" * 14) + _masked_text("x")])
@example([_masked_text("x") + _masked_text("x" * 16 + "é") + _masked_text("x")])
@example([_masked_text("x") + Frame(Opcode.BINARY, b"x" * 9).serialize(mask=True, extensions=[])])
def test_the_fast_paths_deliver_what_websockets_delivers(chunks: list[bytes]) -> None:
    python = _run(chunks, "python")
    if SPLIT_IN_C:
        assert _run(chunks, "c") == python
    messages, state, answer = _run(chunks, "websockets")
    assert python[:2] == (messages, state)
    # websockets' sans-IO parser leaves UTF-8 to its caller (`_absorb`), so on its own it may
    # parse past a bad text frame and report a later error first; the fast paths check each
    # text frame as they take it and answer 1007 for the first error, as RFC 6455 wants.
    if b"invalid UTF-8" not in python[2]:
        assert python[2] == answer


@needs_c
@pytest.mark.parametrize("count", [1, FrameSplitter.FRAMES - 1, FrameSplitter.FRAMES,
                                   3 * FrameSplitter.FRAMES + 7])
def test_a_chunk_of_many_media_frames_is_split_in_order(count: int) -> None:
    texts = [f'{{"sequenceNumber": {i}, "é": "{"x" * (i % 150)}"}}' for i in range(count)]
    data = b"".join(_masked_text(text) for text in texts)
    messages, state, answer = _run([data], "c")
    assert messages == texts
    assert state is State.OPEN and answer == b""


@needs_c
async def test_a_run_of_ascii_text_frames_comes_as_one_batch_from_receive_batch() -> None:
    """The C split hands a run of ASCII text frames over as one `TextBatch` (what the recorder
    parses in one call); a non-ASCII text frame, or a binary one, comes on its own."""
    texts = [f'{{"n": {i}}}' for i in range(5)]
    data = b"".join(_masked_text(text) for text in texts)
    odd = _masked_text("é") + Frame(Opcode.BINARY, b"\x00").serialize(mask=True, extensions=[])
    stream = ScriptedStream([data, odd, data])
    connection = _Connection(stream, ServerProtocol(state=State.OPEN, max_size=MAX_SIZE), "test", None, FrameSplitter())
    first = await connection.receive_batch()
    assert type(first) is TextBatch and first.messages() == texts
    assert await connection.receive_batch() == "é"
    assert await connection.receive_batch() == b"\x00"
    assert [await connection.receive() for _ in range(5)] == texts  # a batch one message at a time
    assert connection.receive_batch_nowait() is None


@needs_c
async def test_a_batch_taken_one_message_at_a_time_keeps_its_place_before_the_next_one() -> None:
    """One read, two batches (a ping between two runs stops the C split): `receive()` unpacks
    the first batch in front of the second, so the order holds."""
    texts = [f'{{"n": {i}}}' for i in range(7)]
    ping = Frame(Opcode.PING, b"").serialize(mask=True, extensions=[])
    data = b"".join(_masked_text(text) for text in texts[:5]) + ping + b"".join(map(_masked_text, texts[5:]))
    connection = _Connection(ScriptedStream([data]), ServerProtocol(state=State.OPEN, max_size=MAX_SIZE), "test",
                             None, FrameSplitter())
    received = [await connection.receive() for _ in range(7)]
    assert received == texts


async def test_the_read_ticker_wakes_each_reader_within_its_interval_a_fifth_at_a_time(autojump_clock) -> None:
    """`_ReadTicker`: a parked reader waits at most 1.5 intervals; the readers are woken in
    groups, never all at once (one round of trio's scheduler stays short)."""
    from callstream.engagevoice.transport_websockets import _ReadTicker

    interval, readers = 0.5, 200
    ticker = _ReadTicker(interval)
    waits: list[float] = []
    woken_at: list[float] = []

    async def reader() -> None:
        for _ in range(6):
            parked = trio.current_time()
            await ticker.wait()
            waits.append(trio.current_time() - parked)
            woken_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker.run)
        async with trio.open_nursery() as readers_nursery:
            for _ in range(readers):
                readers_nursery.start_soon(reader)
        nursery.cancel_scope.cancel()
    assert len(waits) == 6 * readers
    assert max(waits) <= 1.5 * interval + 1e-6
    assert sum(waits) / len(waits) >= 0.25 * interval  # not woken at every tick either
    largest = max(woken_at.count(t) for t in set(woken_at))
    assert largest < readers / 2, largest
