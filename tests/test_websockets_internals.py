"""The websockets internals the fast frame split reads, pinned.

`engagevoice/transport_websockets.py` splits ordinary frames itself and hands websockets only the
unusual ones. To do that it reads five attributes of websockets' `ServerProtocol` that the library
does not document: `reader.buffer`, `current_size`, `max_message_size`, `events` and `writes`.
pyproject.toml pins websockets to the major version these were tested with; these tests fail the
day a release changes what the adapter relies on, before a recording does.
"""

from __future__ import annotations

import os

import websockets
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

TESTED_MAJOR = 17  # pyproject.toml: websockets>=17,<18


def _masked(frame: Frame) -> bytes:
    """``frame`` serialised as a client sends it (masked)."""
    return frame.serialize(mask=True, extensions=[])


def _open_protocol(max_size: int = 65536) -> ServerProtocol:
    protocol = ServerProtocol(max_size=max_size)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    raw = (
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    protocol.receive_data(raw)
    (request,) = protocol.events_received()
    assert isinstance(request, Request)
    protocol.send_response(protocol.accept(request))
    protocol.data_to_send()
    assert protocol.state is State.OPEN
    return protocol


def test_the_installed_version_is_the_tested_major() -> None:
    assert int(websockets.__version__.split(".")[0]) == TESTED_MAJOR


def test_reader_buffer_holds_a_cut_frame_and_empties_at_a_boundary() -> None:
    protocol = _open_protocol()
    assert not protocol.reader.buffer
    data = _masked(Frame(Opcode.TEXT, b'{"event":"Media"}'))
    protocol.receive_data(data[:5])
    assert bytes(protocol.reader.buffer)  # the cut frame waits in the reader
    protocol.receive_data(data[5:])
    assert not protocol.reader.buffer
    assert [e.data for e in protocol.events_received()] == [b'{"event":"Media"}']


def test_current_size_is_none_only_between_messages() -> None:
    protocol = _open_protocol()
    assert protocol.current_size is None
    protocol.receive_data(_masked(Frame(Opcode.TEXT, b"abc", fin=False)))
    assert protocol.current_size == 3
    protocol.receive_data(_masked(Frame(Opcode.CONT, b"de", fin=True)))
    assert protocol.current_size is None


def test_max_message_size_events_and_writes_are_plain_attributes() -> None:
    protocol = _open_protocol(max_size=1234)
    assert protocol.max_message_size == 1234
    assert protocol.events == [] and protocol.writes == []
    protocol.receive_data(_masked(Frame(Opcode.PING, os.urandom(4))))
    assert len(protocol.events) == 1  # the ping, until events_received() takes it
    assert protocol.writes  # the pong, until data_to_send() takes it
    protocol.events_received()
    protocol.data_to_send()
    assert protocol.events == [] and protocol.writes == []
