"""`callstream serve`: the recorder's server, both front ends (the Engage Voice WebSocket listener
and, with ``--ringcx-port``, the RingCX gRPC one). A thin shell: admission, one `CallRecorder` per call,
one log line per call start and end, and a graceful drain on SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import signal
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from callstream.audio import SAMPLE_RATE
from callstream.engagevoice.mediascan import MediaScanner
from callstream.engagevoice.protocol import parse_message
from callstream.engagevoice.query import QueryMetadata, parse_query
from callstream.engagevoice.transport import (
    ListenerInfo,
    MessageStream,
    StreamClosed,
    Upgrade,
    serve_trio_websocket,
)
from callstream.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    ProtocolError,
)
from callstream.server.admission import Admission
from callstream.server.auth import message_credential, read_secret_file, secret_matches, upgrade_credential
from callstream.server.http_metrics import MetricsEndpoint, serve_metrics
from callstream.server.logs import Throttle, reopen_log_files
from callstream.server.metrics import Metrics
from callstream.server.recorder import CallRecorder, CallResult
from callstream.settings import READ_INTERVAL_SHARE, Settings
from callstream.storage.diskwriter import DiskWriter
from callstream.storage.naming import SIDECAR
from callstream.storage.recovery import Recovered, recover_directory
from callstream.storage.shipping.shipper import Shipper

LOGGER = logging.getLogger("callstream.server")

RETRY_AFTER_SECONDS = 5  # what a 503 tells the platform (which retries a 5xx up to 3 times)
REFUSAL_LOG_INTERVAL = 10.0  # seconds: refusals of one kind are logged at most once per interval


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    live_calls: int
    calls_started: int
    calls_finished: int
    calls_rejected: int
    draining: bool


class Server:
    """The server's state: live calls and counters. One per process; no module-level state.

    ``metrics``: where the Prometheus counters go (a fresh `Metrics` when not given)."""

    def __init__(
        self, settings: Settings, *, metrics: Metrics | None = None, shared_calls: Any = None,
        disk_flag: Any = None, refusal_log_interval: float = REFUSAL_LOG_INTERVAL,
        calls_file: Path | None = None,
    ) -> None:
        """``shared_calls``: the workers' shared live-call count (see `Admission`), if any;
        ``disk_flag``: a ``multiprocessing.Value`` this worker sets to 1 while its disk hangs
        and back to 0 after (the supervisor's /readyz reads it), if any; ``refusal_log_interval``:
        seconds between two log lines about refusals of one kind (see `_refuse`); ``calls_file``:
        where a worker leaves its live calls once per flush interval for the supervisor's
        /calls.json (see `livecalls.write_snapshot`), if anywhere."""
        self.settings = settings
        self._admission = Admission(settings.max_calls, shared_calls)
        # connections yet to present the secret in their first message: never call slots
        self._unauthenticated = Admission(settings.max_unauthenticated)
        self._secret = settings.secret  # replaced by `reload` (SIGHUP)
        self._refusal_log = Throttle(refusal_log_interval)
        self._grace = trio.CancelScope()  # the drain's wait for live calls (see `hurry`)
        self._ship_grace = trio.CancelScope()  # the drain's wait for the last recordings to ship
        self.metrics = Metrics() if metrics is None else metrics
        self._live: set[CallRecorder] = set()
        self._started = 0
        self._finished = 0
        self._rejected = 0
        self._draining = False
        self._admitted = 0
        self._idle = trio.Event()
        self._idle.set()
        self._disk: DiskWriter | None = None  # while `running()`
        self._disk_stalled = False  # as last logged (see _watch_disk)
        self._disk_flag = disk_flag
        self._calls_file = calls_file
        self._writing_calls = False  # a write of `calls_file` is under way (at most one at a time)
        self._services: trio.Nursery | None = None  # while `running()`
        self._scanner = MediaScanner(max_bytes=settings.max_message_bytes)  # shared by the calls
        self.shipper: Shipper | None = None  # uploads and announces finished recordings
        if settings.shipping is not None:
            self.shipper = Shipper(settings.shipping, settings.output_dir, registry=self.metrics.registry)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The services calls need, for the body: the disk writer and the clock that ticks every
        live call once per flush interval. Calls must end within the body (the writer then
        writes what they left and stops)."""
        disk = DiskWriter(
            per_lane=self.settings.write_queue_blocks,
            max_lanes=self.settings.max_calls,
            shards=self.settings.disk_threads,
            fsync=self.settings.fsync,
            observe_lag=self.metrics.observe_write_lag,
            stall_timeout=self.settings.disk_stall_timeout,
        )
        async with disk.running(), trio.open_nursery() as nursery:
            nursery.start_soon(self._clock)
            if self.shipper is not None:
                await nursery.start(self.shipper.run)
            self._disk = disk
            self._services = nursery
            try:
                yield
            finally:
                self._disk = None
                self._services = None
                nursery.cancel_scope.cancel()

    async def _clock(self) -> None:
        interval = self.settings.flush_interval
        while True:
            await trio.sleep(interval)
            now = time.monotonic()
            for recorder in list(self._live):
                recorder.tick(now)
            self.metrics.publish()  # what the ticks reported, summed over the calls
            self._watch_disk()
            self._report_held_refusals()
            if self._calls_file is not None and not self._writing_calls and self._services is not None:
                self._writing_calls = True
                self._services.start_soon(self._write_calls, self._calls_file)

    async def _write_calls(self, path: Path) -> None:
        """Leave the live calls in ``path`` for the supervisor. The facts are taken here; the
        levels (of the calls listed only: ~10 us each), the JSON and the
        write happen in a thread, so the event loop is not held for them."""
        from callstream.server.livecalls import MAX_ROWS, freeze, snapshot, write_snapshot

        frozen = [freeze(recorder) for recorder in self._live]
        live, draining, stalled = len(self._live), self._draining, self._disk_stalled
        block_seconds = self.settings.block_ms / 1000
        shipping = self._shipping_view()

        def write() -> None:
            view = snapshot(frozen, live=live, draining=draining, disk_stalled=stalled,
                            block_seconds=block_seconds, max_rows=MAX_ROWS, shipping=shipping)
            write_snapshot(path, view)

        try:
            await trio.to_thread.run_sync(write)
        except OSError as error:
            LOGGER.debug("cannot leave the live calls in %s: %s", path, error)
        finally:
            self._writing_calls = False

    def _watch_disk(self) -> None:
        """Say once when the disk hangs and once when it is back (see `_refusal`)."""
        stalled = self._disk is not None and self._disk.stalled
        if stalled != self._disk_stalled:
            self._disk_stalled = stalled
            if self._disk_flag is not None:
                self._disk_flag.value = int(stalled)
            self.metrics.set_disk_stalled(stalled)
            if stalled:
                LOGGER.error("the disk has not finished a write for %g s: refusing new calls",
                             self.settings.disk_stall_timeout)
            else:
                LOGGER.warning("the disk is writing again: accepting calls")

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            live_calls=len(self._live),
            calls_started=self._started,
            calls_finished=self._finished,
            calls_rejected=self._rejected,
            draining=self._draining,
        )

    async def handle(self, upgrade: Upgrade) -> None:
        """Admit or reject one upgrade, then record the call to its end.

        With a secret configured, an upgrade that carries none (header or query) is not a call
        yet: it waits in the pool of unauthenticated connections (``--max-unauthenticated``;
        over it, 503) for at most ``--auth-timeout`` seconds for a first message carrying the
        secret (else close 1008), and only then takes a call slot (``--max-calls``). So silent
        or lying connections never hold a slot a real call needs."""
        refusal = self._refusal()
        query = parse_query(upgrade.path)
        secret = self._secret
        proving = False  # the secret must come in the first message
        if refusal is None and secret is not None:
            presented = upgrade_credential(upgrade.headers, query.secret)
            if presented is None:
                proving = True
            elif not secret_matches(secret, presented):
                refusal = (401, "unauthorized", "wrong secret on the upgrade", "unauthorized")
        if refusal is None:
            if proving:
                if not self._unauthenticated.try_admit():
                    refusal = (503, "over capacity", f"{self._unauthenticated.live} connections yet to "
                               "present the secret (--max-unauthenticated)", "unauthenticated")
            elif not self._admission.try_admit():
                refusal = self._capacity_refusal()
        if refusal is not None:
            status, body, why, reason = refusal
            self._refuse(reason, "refused %s from %s: %s (HTTP %d)",
                         query.mapped.get("callId", "?"), upgrade.remote, why, status)
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
            await upgrade.reject(status, body=body, headers=headers)
            return
        if proving:
            assert secret is not None
            await self._authenticate_then_record(upgrade, query, secret)
            return
        self._enter()
        try:
            stream = await upgrade.accept()
            await self._record(stream, query, upgrade, None)
        finally:
            self._leave()

    def _capacity_refusal(self) -> tuple[int, str, str, str]:
        return 503, "over capacity", f"{self._admission.live} live calls (--max-calls)", "capacity"

    def _enter(self) -> None:
        """Count an admitted call (before any await, so --max-calls cannot be overrun)."""
        self._admitted += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _leave(self) -> None:
        self._admission.release()
        self._admitted -= 1
        if not self._admitted:
            self._idle.set()

    def _refuse(self, reason: str, message: str, *args: object, front_end: str = "websocket") -> None:
        """Count a refusal (statistics, metrics: every one) and log it: anyone who can connect
        can cause refusals as fast as they like, so of one ``reason`` at most one line per
        refusal log interval, saying how many were held back before it (and `_clock` reports
        those held back after the last line once the interval is over)."""
        self._rejected += 1
        self.metrics.call_rejected(reason, front_end=front_end)
        held = self._refusal_log.allow(reason)
        if held is None:
            return
        if held:
            message += " (and %d more refused (%s) before it, not logged)"
            args = (*args, held, reason)
        LOGGER.warning(message, *args)

    def _report_held_refusals(self) -> None:
        for reason, held in self._refusal_log.due():
            LOGGER.warning("%d more refused (%s), not logged one by one", held, reason)

    async def _authenticate_then_record(self, upgrade: Upgrade, query: QueryMetadata, secret: str) -> None:
        """Holds a place in the unauthenticated pool (taken by `handle`) until the first message
        proves the connection, then becomes a call if there is room (else close 1013, or 1001
        while draining)."""
        call_id = query.mapped.get("callId", "?")
        first: str | bytes | None = None
        why = ""
        try:
            stream = await upgrade.accept()
            with trio.move_on_after(self.settings.auth_timeout):
                try:
                    first = await stream.receive()
                except StreamClosed:
                    return  # gone before proving anything: nothing to answer
            if first is None:
                why = f"no secret within {self.settings.auth_timeout:g} s (--auth-timeout)"
            else:
                try:
                    event = parse_message(first, max_bytes=self.settings.max_message_bytes)
                except ProtocolError as error:
                    why = error.reason
                else:
                    if not secret_matches(secret, message_credential(event)):
                        why = "missing or wrong secret in the first message"
            if why:
                self._refuse("unauthorized", "refused %s from %s: %s (closing %d)",
                             call_id, upgrade.remote, why, CLOSE_POLICY_VIOLATION)
                await stream.close(CLOSE_POLICY_VIOLATION, "missing or wrong secret")
                return
        finally:
            self._unauthenticated.release()
        assert first is not None
        refusal = self._refusal()
        if refusal is None and not self._admission.try_admit():
            refusal = self._capacity_refusal()
        if refusal is not None:
            _, _, why, reason = refusal
            code = CLOSE_GOING_AWAY if self._draining else CLOSE_TRY_AGAIN_LATER
            self._refuse(reason, "refused %s from %s: %s (closing %d)", call_id, upgrade.remote, why, code)
            await stream.close(code, refusal[1])
            return
        self._enter()
        try:
            await self._record(_FirstMessageRead(stream, first), query, upgrade, secret)
        finally:
            self._leave()

    def _refusal(self) -> tuple[int, str, str, str] | None:
        """(HTTP status, body, log text, metrics reason) when a new call must be refused."""
        if self._draining:
            return 503, "shutting down", "draining", "draining"
        if self._disk is not None and self._disk.stalled:
            return 503, "disk stalled", "the disk has stopped writing", "disk"
        return None

    def readiness(self) -> str | None:
        """None while a new call would be admitted; else why not (for /readyz)."""
        refusal = self._refusal()
        if refusal is not None:
            return refusal[2]
        if self._admission.live >= self._admission.limit:
            return f"{self._admission.live} live calls (--max-calls)"
        return None if self.shipper is None else self.shipper.readiness()

    async def _record(
        self, stream: MessageStream, query: QueryMetadata, upgrade: Upgrade, require: str | None
    ) -> None:
        """``require``: the secret the first message must carry (the recorder checks it again:
        it is the recorder's own contract), or None when the upgrade presented it."""
        if self._disk is None:
            raise RuntimeError("Server.handle() outside Server.running()")
        recorder = CallRecorder.websocket(
            stream, query, self.settings, self._disk, require_secret=require, metrics=self.metrics,
            scanner=self._scanner,
        )
        LOGGER.info(
            "call %s session %s started from %s", recorder.core.call_id, recorder.core.session_id, upgrade.remote
        )
        result = await self._run_live(recorder)
        if result.close_code == CLOSE_POLICY_VIOLATION:
            self._rejected += 1
            self.metrics.call_rejected("unauthorized")
        _log_result(result)

    async def _run_live(self, recorder: CallRecorder) -> CallResult:
        """Run one admitted call of either front end as a live call (the live view, the clock's
        ticks, drain, the metrics by front end); then count its recording."""
        front_end = recorder.front_end
        self._live.add(recorder)
        self._started += 1
        self.metrics.call_started(front_end=front_end)
        result: CallResult | None = None
        try:
            result = await recorder.run()
        finally:
            self._live.discard(recorder)
            self._finished += 1
            self.metrics.publish()  # the call's last media progress, with its end
            self.metrics.call_finished("failed" if result is None else result.status, front_end=front_end)
        await self._written(result)
        return result

    # -- another front end (RingCX gRPC): the same admission, live calls, clock and drain -----

    @property
    def disk(self) -> DiskWriter:
        """The running disk writer (inside `running()`, else RuntimeError)."""
        if self._disk is None:
            raise RuntimeError("outside Server.running()")
        return self._disk

    @property
    def secret(self) -> str | None:
        """The secret in force (``--secret``; `reload` replaces it)."""
        return self._secret

    def admit_other(self, remote: str) -> str | None:
        """Admit one call of another front end (None; then `record_other` it), or refuse it:
        the metrics reason (draining, disk, capacity), counted and logged as for an upgrade."""
        refusal = self._refusal()
        if refusal is None and not self._admission.try_admit():
            refusal = self._capacity_refusal()
        if refusal is not None:
            self.refuse_other(refusal[3], refusal[2], remote)
            return refusal[3]
        self._enter()
        return None

    def refuse_other(self, reason: str, why: str, remote: str) -> None:
        """Count and log (throttled, see `_refuse`) a refusal made by another front end."""
        self._refuse(reason, "refused a RingCX dialog from %s: %s", remote, why, front_end="ringcx")

    async def record_other(self, recorder: CallRecorder, remote: str) -> None:
        """Run an admitted call of another front end (`CallRecorder.dialog`) as a live call,
        then release its admission."""
        LOGGER.info("dialog from %s started", remote)
        try:
            result = await self._run_live(recorder)
        finally:
            self._leave()
        _log_result(result)

    async def _written(self, result: CallResult) -> None:
        """A call's recording is finished: count it and queue it for shipping."""
        if result.path is not None:
            self.metrics.recording_written()
            if self.shipper is not None:
                await self.shipper.enqueue(result.path, result.path.with_suffix(SIDECAR))

    async def recover(self) -> list[Recovered]:
        """Recover what an interrupted run left in the output directory (before serving)."""
        recovered = await trio.to_thread.run_sync(recover_directory, self.settings.output_dir)
        self.metrics.recordings_recovered(len(recovered))
        if self.shipper is not None:
            for item in recovered:
                await self.shipper.enqueue(item.path, item.sidecar)
        return recovered

    async def serve_metrics(
        self, *, task_status: trio.TaskStatus[MetricsEndpoint] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve /metrics, /healthz and /readyz on --metrics-host/--metrics-port until cancelled."""
        port = self.settings.metrics_port
        if port is None:
            raise ValueError("no metrics_port in the settings")
        await serve_metrics(
            self.metrics, self.readiness, host=self.settings.metrics_host, port=port, calls=self.live_calls,
            task_status=task_status,
        )

    async def reload(self) -> None:
        """SIGHUP: read --secret-file (and --webhook-secret-file) again (a new secret applies to
        the next upgrades; calls already admitted are not touched) and reopen --log-file. A file that cannot be read or
        holds no secret leaves the secret in force (logged). Never ends a call."""
        reopen_log_files()
        if self.shipper is not None:
            await self.shipper.reload()
        path = self.settings.secret_file
        if path is None:
            LOGGER.info("reopened the log; no --secret-file to read again")
            return
        try:
            secret = await trio.to_thread.run_sync(read_secret_file, path)
        except (OSError, ValueError) as error:
            LOGGER.error("--secret-file: %s: keeping the secret in force", error)
            return
        if secret == self._secret:
            LOGGER.info("reopened the log; the secret in %s is unchanged", path)
        else:
            self._secret = secret
            LOGGER.warning("reopened the log; new secret read from %s: upgrades from now on must present it", path)

    def hurry(self) -> None:
        """End the drain's grace period now (a second SIGTERM/SIGINT): live calls are closed
        (1001) and finalised at once. Before the drain starts: it will have none."""
        self._grace.cancel()
        self._ship_grace.cancel()

    def live_calls(self) -> dict[str, Any]:
        """The live calls for /calls.json and the page at / (see `callstream.server.livecalls`)."""
        from callstream.server.livecalls import MAX_ROWS, snapshot

        return snapshot(
            self._live, live=len(self._live), draining=self._draining, disk_stalled=self._disk_stalled,
            block_seconds=self.settings.block_ms / 1000, max_rows=MAX_ROWS, shipping=self._shipping_view(),
        )

    def _shipping_view(self) -> dict[str, Any] | None:
        from callstream.server.livecalls import shipping_view

        if self.shipper is None:
            return None
        statistics = self.shipper.statistics()
        return shipping_view(statistics.pending_jobs, statistics.pending_bytes, self.shipper.oldest_pending())

    async def drain(self, timeout: float) -> None:
        """Refuse new calls, give live ones ``timeout`` seconds (or until `hurry`), then stop
        them (1001) and wait until each is finalised; with shipping, what is left of ``timeout``
        (unless hurried) goes to shipping the recordings still queued. Once per server."""
        self._draining = True
        self.metrics.set_draining(True)
        deadline = trio.current_time() + timeout
        LOGGER.info("draining: %d live calls, %g s to finish", len(self._live), timeout)
        with self._grace, trio.move_on_after(timeout):
            await self._idle.wait()
        while self._admitted:
            for recorder in list(self._live):
                recorder.stop("server shutting down")
            with trio.move_on_after(1.0):  # a call still in its handshake becomes live meanwhile
                await self._idle.wait()
        if self.shipper is not None:  # what is left of the time ships the last calls' recordings
            with self._ship_grace, trio.move_on_at(deadline):
                await self.shipper.wait_idle()
            pending = self.shipper.statistics().pending_jobs
            if pending:
                LOGGER.warning("%d recordings not yet shipped: they stay queued in %s for the next start",
                               pending, self.shipper.spool.directory)


class _FirstMessageRead:
    """A stream whose first message the server has read already (to authenticate it): hands
    that message out again, then is the stream itself (every other attribute is the stream's,
    so a recorder binding ``receive_batch`` gets the stream's own, with no cost per message)."""

    __slots__ = ("_first", "_stream")

    def __init__(self, stream: MessageStream, first: str | bytes) -> None:
        self._stream = stream
        self._first: str | bytes | None = first

    async def receive(self) -> str | bytes:
        first = self._first
        if first is None:
            return await self._stream.receive()
        self._first = None
        return first

    async def close(self, code: int, reason: str = "") -> None:
        await self._stream.close(code, reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _log_result(result: CallResult) -> None:
    """One line per call: short ``key=value`` pairs in text; in JSON (``--log-format json``) the
    same fields and the full statistics as a nested object. The sidecar has them all too."""
    stats = result.statistics
    sides = [stats.get(side) or {} for side in ("participant", "conference")]
    summary = {
        "frames": "/".join(str(side.get("frames_received", 0)) for side in sides),
        "gaps": sum(side.get("gaps", 0) for side in sides),
        "late": sum(side.get("late_drops", 0) for side in sides),
        "dup": sum(side.get("duplicates", 0) for side in sides),
        "bad": stats.get("bad_messages", 0),
    }
    duration = result.frames / SAMPLE_RATE
    LOGGER.info(
        "call %s session %s ended: status=%s reason=%s duration=%.1fs %s path=%s",
        result.call_id,
        result.session_id,
        result.status,
        _quoted(result.reason),
        duration,
        " ".join(f"{key}={value}" for key, value in summary.items()),
        result.path,
        extra={
            "call_id": result.call_id, "session_id": result.session_id, "status": result.status,
            "reason": result.reason, "close_code": result.close_code, "duration": round(duration, 3),
            "path": None if result.path is None else str(result.path), "statistics": stats,
        },
    )


def _quoted(text: str) -> str:
    """A value for a ``key=value`` line: as it is when it has no space, else in double quotes."""
    return text if text and " " not in text and '"' not in text else '"' + text.replace('"', "'") + '"'


def ssl_context_from(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def serve(
    settings: Settings,
    server: Server | None = None,
    *,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[ListenerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled. Reports the real listening address through ``task_status``."""
    server = server or Server(settings)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if settings.transport == "websockets":
        from callstream.engagevoice.transport_websockets import serve_websockets as serve_transport

        # reads coalesce up to read_interval, never more than half the flush interval:
        # what a crash can lose grows by at most that much
        extra["read_interval"] = min(
            settings.read_interval, settings.flush_interval * READ_INTERVAL_SHARE
        )
    elif settings.transport == "trio-websocket":
        serve_transport = serve_trio_websocket
    else:
        raise ValueError(f"unknown transport {settings.transport!r}")
    async with server.running(), trio.open_nursery() as nursery:
        if settings.ringcx_port is not None:
            from callstream.server.ringcx_service import serve_ringcx

            ringcx = await nursery.start(partial(serve_ringcx, server, settings, reuse_port=reuse_port))
            LOGGER.info("RingCX gRPC on %s:%d (%s)", ringcx.host, ringcx.port, "TLS" if ringcx.tls else "plaintext")
        await serve_transport(
            server.handle,
            host=settings.host,
            port=settings.port,
            ssl_context=ssl_context_from(settings),
            max_message_bytes=settings.max_message_bytes,
            handshake_timeout=settings.handshake_timeout,
            reuse_port=reuse_port,
            task_status=task_status,
            **extra,
        )


async def run_until_signalled(
    settings: Settings, *, shared_calls: Any = None, disk_flag: Any = None, recover: bool = True,
    reuse_port: bool = False, stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
    calls_file: Path | None = None,
) -> None:
    """The process's main: serve; on a stop signal (SIGTERM, SIGINT) drain and return.

    A second stop signal during the drain ends its grace period: live calls are closed (1001)
    and finalised at once, and this returns normally. SIGHUP, at any time: `Server.reload`.
    A worker of `--workers N` passes the shared call count, ``recover=False`` (the supervisor
    recovered before starting it), ``reuse_port=True`` and only SIGTERM as a stop signal (the
    supervisor forwards SIGINT as SIGTERM; see workers.py)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the receiver below takes it: never fatal
    server = Server(settings, shared_calls=shared_calls, disk_flag=disk_flag, calls_file=calls_file)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    if recover:
        recovered = await server.recover()
        if recovered:
            LOGGER.warning("recovered %d recordings left by an interrupted run", len(recovered))
    if settings.secret is None:
        LOGGER.warning("no --secret: streams are accepted without authentication")
    with trio.open_signal_receiver(signal.SIGHUP, *stop_signals) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(partial(serve, settings, server, reuse_port=reuse_port))
            LOGGER.info(
                "listening on %s:%d, recording %s into %s", info.host, info.port, settings.format, settings.output_dir
            )
            if settings.metrics_port is not None:  # after the listener: /readyz is never early
                endpoint = await nursery.start(server.serve_metrics)
                LOGGER.info("metrics on http://%s:%d/metrics (also /healthz, /readyz; live calls at /)",
                            endpoint.host, endpoint.port)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    LOGGER.info("received SIGHUP: reloading")
                    await server.reload()
                    continue
                LOGGER.info("received %s", signal.Signals(signum).name)
                break
            # Signals that come during the drain are taken here: left in the receiver, trio would
            # deliver them again once it closes, killing the process after a clean drain.
            nursery.start_soon(_signals_while_draining, signals, server)
            await server.drain(settings.drain_timeout)
            nursery.cancel_scope.cancel()
    stats = server.statistics()
    LOGGER.info("stopped: %d calls recorded, %d refused", stats.calls_finished, stats.calls_rejected)


async def _signals_while_draining(signals: AsyncIterator[int], server: Server) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            LOGGER.info("received SIGHUP while draining: reloading")
            await server.reload()
        else:
            LOGGER.warning("received %s again: closing the %d live calls now (1001)",
                           name, server.statistics().live_calls)
            server.hurry()
