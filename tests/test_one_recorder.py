"""Both front ends on one server end their calls through the same `CallRecorder` code: an Engage
Voice call (WebSocket) and a RingCX dialog (gRPC, a real grpcio client) reach the maximum call
duration together; each is stopped by the core's limit at the shell's tick, finalised through
its lane, and answered in its own protocol (close 1001, UNAVAILABLE) with the same reason."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
import trio

from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from callstream.ringcx import streaming_pb2 as pb
from callstream.ringcx import streaming_pb2_grpc
from callstream.server.recorder import CallRecorder
from callstream.server.ringcx_service import serve_ringcx
from callstream.sim import ringcx_client as client
from conftest import metadata, recordings, start_server, wait_for_calls
from test_ringcx_server import _chunks, _init, _start
from wsclient import Closed, connect

TIMEOUT = 30
REASON = "maximum call duration of 1 s reached"


async def test_a_dialog_and_a_websocket_call_end_through_the_same_recorder(nursery, settings, caplog) -> None:
    settings = replace(settings, max_call_seconds=1.0, flush_interval=0.1, ringcx_port=0, ringcx_plaintext=True)
    caplog.set_level(logging.INFO, logger="callstream.server")
    running = await start_server(nursery, settings)
    listener = await nursery.start(serve_ringcx, running.server, settings)
    release = threading.Event()

    def held() -> Iterator[pb.StreamEvent]:
        yield from [_init("dialog"), _start("caller", pb.CONTACT), *_chunks("caller", list(range(5)), 1)]
        release.wait(TIMEOUT)  # open until the recorder ends it

    with trio.fail_after(TIMEOUT), client.open_channel(f"127.0.0.1:{listener.port}") as channel:
        future = streaming_pb2_grpc.StreamingStub(channel).Stream.future(held())
        websocket = await connect(running.url, "/" + build_query(metadata("websocket")))
        await websocket.send(encode_connected())
        await websocket.send(encode_start(metadata("websocket")))
        for perspective in Perspective:
            await websocket.send(encode_media(perspective, 1, b"\x10" * 160))
        while len(running.server._live) < 2:
            await trio.sleep(0.01)
        live = sorted(running.server._live, key=lambda recorder: recorder.front_end)
        assert [type(recorder) for recorder in live] == [CallRecorder, CallRecorder]
        assert [recorder.front_end for recorder in live] == ["ringcx", "websocket"]
        with pytest.raises(Closed) as closed:
            await websocket.receive()
        await websocket.close()
        error = await trio.to_thread.run_sync(lambda: future.exception(TIMEOUT))
        release.set()
        await wait_for_calls(running, 2)
    assert closed.value.code == 1001
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, REASON)
    sidecars = {sidecar["callId"]: sidecar for _, sidecar in recordings(settings.output_dir)}
    assert sorted(sidecars) == ["dialog", "websocket"]
    assert {sidecar["status"] for sidecar in sidecars.values()} == {"incomplete"}
    assert (sidecars["websocket"]["frames"], sidecars["dialog"]["frames"]) == (160, 5 * 800)
    ended = [record.getMessage() for record in caplog.records if " ended: " in record.getMessage()]
    assert len(ended) == 2 and all(f'status=incomplete reason="{REASON}"' in line for line in ended)
