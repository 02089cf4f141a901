"""A tiny HTTP/1.1 endpoint for operations, on trio and h11: /metrics, /healthz, /readyz, and the
read-only live-calls page: / (HTML), /live.js and /calls.json (see `callstream.server.statuspage`).

One trio task per connection (no threads), at most MAX_CONNECTIONS; keep-alive is honoured;
each request must arrive within REQUEST_TIMEOUT; only GET and HEAD. Protocol errors get h11's
status hint (400, 431, ...) and the connection is closed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from typing import Final

import h11
import trio

from callstream.server.metrics import CONTENT_TYPE, Metrics
from callstream.server.statuspage import CONTENT_SECURITY_POLICY, PAGE, SCRIPT

LOGGER = logging.getLogger("callstream.http_metrics")

REQUEST_TIMEOUT: Final = 10.0  # seconds for one request to arrive whole (and idle keep-alive)
MAX_CONNECTIONS: Final = 32  # open connections at once; more are closed at once
MAX_RECEIVE: Final = 16 * 1024  # bytes read at a time
MAX_REQUEST_HEAD: Final = 8 * 1024  # bytes of request line and headers
TEXT: Final = "text/plain; charset=utf-8"
HTML: Final = "text/html; charset=utf-8"
JAVASCRIPT: Final = "text/javascript; charset=utf-8"
JSON: Final = "application/json"
Calls = Callable[[], dict]  # what /calls.json returns (see callstream.server.livecalls.snapshot)


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    """Where the endpoint listens (port 0 resolved to the real port)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


def route(
    method: bytes, target: bytes, metrics: Metrics, readiness: Callable[[], str | None],
    calls: Calls | None = None,
) -> _Reply:
    """The answer to one request. ``readiness()`` returns None when the server accepts calls,
    else why not (the 503's body); ``calls()``: the live calls (no page without it)."""
    if method not in (b"GET", b"HEAD"):
        return _Reply(405, b"method not allowed\n", headers=(("Allow", "GET, HEAD"),))
    path = target.split(b"?", 1)[0]
    if path == b"/metrics":
        return _Reply(200, metrics.render(), CONTENT_TYPE)
    if path == b"/healthz":
        return _Reply(200, b"ok\n")
    if path == b"/readyz":
        why = readiness()
        return _Reply(200, b"ready\n") if why is None else _Reply(503, why.encode() + b"\n")
    if calls is not None:
        if path == b"/calls.json":
            return _Reply(200, json.dumps(calls()).encode(), JSON)
        if path == b"/":
            return _Reply(200, PAGE, HTML, (("Content-Security-Policy", CONTENT_SECURITY_POLICY),))
        if path == b"/live.js":
            return _Reply(200, SCRIPT, JAVASCRIPT)
    return _Reply(404, b"not found\n")


async def serve_metrics(
    metrics: Metrics,
    readiness: Callable[[], str | None],
    *,
    host: str,
    port: int,  # 0: any free port, reported through task_status
    calls: Calls | None = None,
    task_status: trio.TaskStatus[MetricsEndpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the real address through ``task_status``."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
    handler = partial(_connection, metrics=metrics, readiness=readiness, calls=calls, limiter=limiter)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        bound = listeners[0].socket.getsockname()
        task_status.started(MetricsEndpoint(host=bound[0], port=bound[1]))


async def _connection(
    stream: trio.SocketStream,
    *,
    metrics: Metrics,
    readiness: Callable[[], str | None],
    calls: Calls | None,
    limiter: trio.CapacityLimiter,
) -> None:
    async with stream:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            return
        try:
            await _serve_requests(stream, metrics, readiness, calls)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            limiter.release()


async def _serve_requests(
    stream: trio.SocketStream, metrics: Metrics, readiness: Callable[[], str | None], calls: Calls | None
) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    while True:
        reply: _Reply | None = None
        request: h11.Request | None = None
        event: object = None
        with trio.move_on_after(REQUEST_TIMEOUT):
            try:
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        connection.receive_data(await stream.receive_some(MAX_RECEIVE))
                    elif type(event) is h11.Request:
                        request = event
                    elif type(event) is h11.EndOfMessage or type(event) is h11.ConnectionClosed:
                        break
                    # Data: a body we ignore
            except h11.RemoteProtocolError as error:
                LOGGER.debug("bad request on the metrics endpoint: %s", error)
                reply = _Reply(error.error_status_hint, f"{error}\n".encode())
        if reply is None:
            if request is None or type(event) is not h11.EndOfMessage:
                return  # closed, or timed out, between or within requests
            reply = route(request.method, request.target, metrics, readiness, calls)
        if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        head_only = request is not None and request.method == b"HEAD"
        await _send(stream, connection, reply, head_only=head_only)
        if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
            return
        connection.start_next_cycle()


async def _send(
    stream: trio.SocketStream, connection: h11.Connection, reply: _Reply, *, head_only: bool
) -> None:
    headers = [
        ("Date", formatdate(usegmt=True)),
        ("Content-Type", reply.content_type),
        ("Content-Length", str(len(reply.body))),
        ("Cache-Control", "no-store"),
        *reply.headers,
    ]
    response = h11.Response(
        status_code=reply.status, headers=headers, reason=HTTPStatus(reply.status).phrase
    )
    data = connection.send(response)
    if not head_only:
        data += connection.send(h11.Data(data=reply.body))
    data += connection.send(h11.EndOfMessage())
    await stream.send_all(data)
