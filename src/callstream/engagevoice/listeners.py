"""TCP listeners for the transports, with SO_REUSEPORT for multi-process workers.

With `reuse_port`, every worker process binds its own listening socket to the same port and the
kernel spreads new connections across them; without it, this is `trio.open_tcp_listeners`.
"""

from __future__ import annotations

import socket

import trio

BACKLOG = 4096  # pending connections per listener: a burst of calls after a platform reconnect


def bound_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A stdlib TCP socket bound to (host, port), not listening yet. Raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_listeners(host: str, port: int, *, reuse_port: bool = False) -> list[trio.SocketListener]:
    """Listening sockets for the server; port 0 picks a free port (single process only)."""
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host, backlog=BACKLOG)
    sock = bound_socket(host, port, reuse_port=True)
    sock.listen(BACKLOG)
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
