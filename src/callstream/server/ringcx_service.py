"""`serve_ringcx`: the RingCX gRPC listener beside the WebSocket one, feeding the same server.

Theory of operation: grpcio's asyncio server (its C core does HTTP/2, TLS, flow control and
keepalive) runs on an asyncio loop of its own in one thread; the recorder stays on trio. Each
RPC is one dialog:
1. the servicer reads the ``authorization`` metadata and asks the trio side to admit the dialog
   (``TrioToken.run_sync_soon``: never blocks the loop); the trio side checks the secret
   (constant time), draining, the disk and ``--max-calls`` exactly as for a WebSocket upgrade,
   and answers with a `DialogChannel` or a refusal, before anything is stored;
2. the servicer reads the stream, turns each message into a call event stamped with the
   dialog's clock and puts it on the channel, which is bounded: a recorder that cannot keep up
   stops the reading of its own RPC only;
3. a `CallRecorder` (`CallRecorder.dialog`: the shell of the WebSocket calls too) in trio records
   it; when it has finished the recording it answers the RPC (OK, or the status of why it ended
   it: UNAVAILABLE for drain and timeouts; `ringcx.session.answer`). A cancelled RPC
   ends the dialog as ``incomplete``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import grpc
import trio
from google.protobuf import empty_pb2

from callstream.ringcx import streaming_pb2
from callstream.ringcx.bridge import DialogChannel, TakeGrid
from callstream.ringcx.convert import decode
from callstream.server.auth import secret_matches, upgrade_credential
from callstream.server.recorder import CallRecorder
from callstream.settings import READ_INTERVAL_SHARE, Settings

LOGGER = logging.getLogger("callstream.server.ringcx_service")

GRACE: Final = 5.0  # seconds grpc gets to finish answering RPCs when the listener stops
CANCEL_GRACE: Final = 0.1  # seconds after the last request for grpc to report a cancellation
KEEPALIVE_MIN_PING_MS: Final = 10_000  # the platform may ping this often without being refused
SERVICE: Final = streaming_pb2.DESCRIPTOR.services_by_name["Streaming"].full_name


class TlsRequiredError(ValueError):
    """--ringcx-port without --tls-cert/--tls-key and without --ringcx-plaintext."""


@dataclass(frozen=True, slots=True)
class RingcxListener:
    host: str
    port: int
    tls: bool


def _status(name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)


class _Servicer:
    """The Stream RPC, its requests as bytes: `decode` parses each (bytes that are no StreamEvent
    are a bad message for the core, where grpc's deserializer would fail the read)."""

    def __init__(self, admit: Callable[[str | None, str, asyncio.AbstractEventLoop], Awaitable[Any]]) -> None:
        self._admit = admit

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        credential = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                credential = value if isinstance(value, str) else value.decode("latin-1")
        admitted = await self._admit(credential, context.peer(), asyncio.get_running_loop())
        if not isinstance(admitted, DialogChannel):
            status, details = admitted
            await context.abort(_status(status), details)
        channel = admitted
        reader = asyncio.ensure_future(_read(context, channel))
        try:
            await asyncio.wait({reader, channel.done}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():  # the recorder ended the dialog (drain, timeout, bad input)
                reader.cancel()
                channel.end("stopped by the recorder")
            status, details = await channel.done
        except asyncio.CancelledError:  # the platform cancelled the RPC (or the server stops)
            reader.cancel()
            channel.end("cancelled")
            raise
        if status != "OK":
            await context.abort(_status(status), details)
        return empty_pb2.Empty()


async def _read(context: grpc.aio.ServicerContext, channel: DialogChannel) -> None:
    # context.read() rather than the request iterator: the iterator is an async generator
    # around the same read, one more frame per message (RESULTS.md, 2026-12-07)
    put, stamp, read, eof = channel.put_nowait, channel.stamp, context.read, grpc.aio.EOF
    try:
        while (data := await read()) is not eof:
            room = put(decode(data, stamp()))
            if room is not None:  # the recorder is behind: stop reading this stream until it has caught up
                await channel.wait_room(room)
    except asyncio.CancelledError:
        channel.end("cancelled")
        raise
    except Exception as error:  # the transport failed under us: keep what was received
        channel.end(f"failed: {error}")
        return
    # A cancelled RPC looks like the end of the requests to the reader; grpc reports the
    # cancellation a moment later, in a task of its own. Wait that moment (the RPC ends then)
    # before calling the dialog complete.
    ended = asyncio.Event()
    context.add_done_callback(lambda _: ended.set())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ended.wait(), CANCEL_GRACE)
    channel.end("cancelled" if context.cancelled() else "closed")


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None:
        if not settings.ringcx_plaintext:
            raise TlsRequiredError(
                "--ringcx-port needs --tls-cert and --tls-key (the platform speaks TLS only); "
                "--ringcx-plaintext serves plaintext gRPC for a TLS-terminating proxy on loopback")
        return None
    key = settings.tls_key or settings.tls_cert  # the key may sit in the certificate's file
    return grpc.ssl_server_credentials([(key.read_bytes(), settings.tls_cert.read_bytes())])


async def serve_ringcx(
    server: Any, settings: Settings, *, reuse_port: bool = False,
    task_status: trio.TaskStatus[RingcxListener] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve RingCX gRPC on ``settings.host``:``settings.ringcx_port`` until cancelled; the
    dialogs go to ``server`` (a `callstream.server.Server` inside ``running()``). Reports the
    real port through ``task_status``. Raises TlsRequiredError before listening when TLS is
    missing and plaintext was not asked for, OSError when the port cannot be bound."""
    credentials = _credentials(settings)
    assert settings.ringcx_port is not None
    token = trio.lowlevel.current_trio_token()
    started: dict[str, Any] = {}
    ready = threading.Event()
    holder: dict[str, trio.Nursery] = {}  # the dialogs' nursery while it takes new ones
    # a dialog's events are taken this often (as the WebSocket reads): at most half the flush
    # interval, so what a crash can lose grows by at most that much
    interval = min(settings.read_interval, settings.flush_interval * READ_INTERVAL_SHARE)
    grid = TakeGrid(interval)  # one timer for every dialog's takes

    def admit_in_trio(credential: str | None, remote: str, loop: asyncio.AbstractEventLoop,
                      future: asyncio.Future[Any]) -> None:
        answer: Any
        presented = upgrade_credential({} if credential is None else {"authorization": credential}, None)
        dialogs = holder.get("dialogs")
        secret = server.secret  # the one in force: SIGHUP may have read a new one
        if secret is not None and not secret_matches(secret, presented):
            server.refuse_other("unauthorized", "missing or wrong authorization metadata", remote)
            answer = ("UNAUTHENTICATED", "missing or wrong authorization")
        elif dialogs is None:
            answer = ("UNAVAILABLE", "shutting down")
        else:
            refusal = server.admit_other(remote)
            if refusal is not None:
                answer = ("RESOURCE_EXHAUSTED" if refusal == "capacity" else "UNAVAILABLE", refusal)
            else:
                channel = DialogChannel(loop, capacity=settings.ringcx_queue_events, interval=interval, grid=grid)
                recorder = CallRecorder.dialog(channel, settings, server.disk, remote=remote, metrics=server.metrics)
                dialogs.start_soon(server.record_other, recorder, remote)
                answer = channel
        loop.call_soon_threadsafe(_answer, future, answer)

    async def admit(credential: str | None, remote: str, loop: asyncio.AbstractEventLoop) -> Any:
        future = loop.create_future()
        token.run_sync_soon(admit_in_trio, credential, remote, loop, future)
        return await future

    def thread_main() -> None:
        try:
            asyncio.run(_grpc_main(admit, settings, credentials, reuse_port, started, ready))
        except BaseException as error:  # reported to trio, which waits for `ready`
            started.setdefault("error", error)
            ready.set()

    thread = threading.Thread(target=thread_main, name="callstream-ringcx", daemon=True)
    thread.start()
    await trio.to_thread.run_sync(ready.wait)
    if "error" in started:
        raise started["error"]
    try:
        async with trio.open_nursery() as dialogs:
            dialogs.start_soon(grid.run)
            holder["dialogs"] = dialogs
            task_status.started(RingcxListener(settings.host, started["port"], credentials is not None))
            try:
                await trio.sleep_forever()
            finally:  # cancelled: the dialogs end (each finalised, its RPC answered) before grpc stops
                del holder["dialogs"]
    finally:
        loop, stop = started["loop"], started["stop"]
        loop.call_soon_threadsafe(stop.set)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.join)


def _answer(future: asyncio.Future[Any], answer: Any) -> None:
    if not future.done():
        future.set_result(answer)
    elif isinstance(answer, DialogChannel):  # the RPC went away while it was being admitted
        answer.end("cancelled")


async def _grpc_main(admit: Any, settings: Settings, credentials: grpc.ServerCredentials | None,
                     reuse_port: bool, started: dict[str, Any], ready: threading.Event) -> None:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MIN_PING_MS),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    server = grpc.aio.server(options=options)
    # the generated add_StreamingServicer_to_server, but with the requests left as bytes
    handlers = {"Stream": grpc.stream_unary_rpc_method_handler(
        _Servicer(admit).Stream, request_deserializer=None, response_serializer=empty_pb2.Empty.SerializeToString)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    address = f"{settings.host}:{settings.ringcx_port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    started.update(port=port, loop=asyncio.get_running_loop(), stop=stop)
    ready.set()
    await stop.wait()
    await server.stop(GRACE)

