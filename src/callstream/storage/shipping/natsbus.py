"""Events to NATS JetStream with nats-py, which is asyncio: its own event loop in a thread.

One daemon thread runs an asyncio loop for the process's lifetime and holds one connection
(connected at the first publish, reconnected by nats-py after that). `publish` hands a coroutine
to that loop and returns a ``concurrent.futures.Future``; the trio side waits for it without
holding a thread (see `Shipper`). Chosen over ``asyncio.run`` per event in a worker thread, which
pays a TCP connect and the NATS handshake per event and a thread for the whole wait.

Every event carries its id as ``Nats-Msg-Id``: JetStream drops a repeat within the stream's
duplicate window, and a publish counts only once the stream's PubAck came back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Final

LOGGER = logging.getLogger("callstream.storage.shipping.nats")

PUBLISH_TIMEOUT: Final = 10.0  # seconds for the stream's PubAck
CONNECT_TIMEOUT: Final = 5.0  # seconds


class PublishError(Exception):
    """No PubAck (no server, no stream on the subject, timeout). Retry later."""


class NatsPublisher:
    """Publishes to one subject of one NATS server. `start` once, `close` at the end."""

    def __init__(self, url: str, subject: str) -> None:
        self.url = url
        self.subject = subject
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="callstream-nats", daemon=True)
        self._client: Any = None
        self._jetstream: Any = None

    def start(self) -> None:
        self._thread.start()

    def publish(self, event_id: str, body: bytes) -> concurrent.futures.Future[Any]:
        """Publish; the future's result is the PubAck, or it raises PublishError."""
        return asyncio.run_coroutine_threadsafe(self._publish(event_id, body), self._loop)

    async def _publish(self, event_id: str, body: bytes) -> Any:
        import nats
        from nats.errors import Error as NatsError
        from nats.errors import NoRespondersError
        from nats.js.errors import NoStreamResponseError

        try:
            if self._client is None or self._client.is_closed:
                self._client = await nats.connect(
                    self.url, connect_timeout=CONNECT_TIMEOUT, max_reconnect_attempts=-1,
                    allow_reconnect=True, name="callstream",
                    error_cb=self._quiet, disconnected_cb=self._nothing, reconnected_cb=self._nothing,
                )
                self._jetstream = self._client.jetstream()
            if not self._client.is_connected:  # reconnecting: fail now rather than wait for the timeout
                raise PublishError(f"not connected to {self.url} (reconnecting)")
            return await self._jetstream.publish(
                self.subject, body, timeout=PUBLISH_TIMEOUT, headers={"Nats-Msg-Id": event_id}
            )
        except (NoRespondersError, NoStreamResponseError) as error:
            raise PublishError(f"no JetStream stream takes the subject {self.subject!r} at {self.url} "
                               "(create one: see the README)") from error
        except (NatsError, OSError, TimeoutError) as error:
            if self._client is not None and not self._client.is_connected and not self._client.is_reconnecting:
                self._client = None  # the first connect never succeeded: try anew next time
            raise PublishError(f"publish to {self.subject} at {self.url}: {type(error).__name__} {error}") from error

    async def _quiet(self, error: Exception) -> None:
        # nats-py reports each failed reconnect here; the shipper logs outages once instead
        LOGGER.debug("nats: %s", error)

    async def _nothing(self) -> None:
        return None

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection and stop the loop's thread (blocking, at most ``timeout`` s)."""
        async def shut() -> None:
            if self._client is not None and not self._client.is_closed:
                await self._client.close()

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout)
            except Exception:  # closing is best effort
                LOGGER.debug("nats: close failed", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._loop.is_running():
            self._loop.close()
