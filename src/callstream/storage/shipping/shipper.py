"""The trio side of shipping: finished recordings uploaded, then announced, from the spool.

Theory of operation. `enqueue` journals a recording in the spool (durable before it returns) and
claims it. Jobs wait in a heap ordered by when they are due; a scheduler hands due jobs to
``threads`` workers. A worker takes a job through its steps (see spool.py): upload the audio and
the sidecar (which first records where the audio went) and verify both, remove the local copies
(unless --keep-local), then deliver the event to each sink. A step that fails puts the job back in
the heap, due after a wait doubling from ``retry_min`` to ``retry_max`` with jitter (so a fleet
coming back from an outage does not retry in step); the steps done stay done. Every 10 s the
spool is listed again for jobs no process holds (another worker's, the supervisor's recoveries,
a dead process's). A process holds at most MAX_CLAIMS jobs (each claim is an open descriptor,
and a long outage can queue thousands): the rest wait on disk, oldest first, and are listed
again, at most once a second, whenever a job finishes.

All blocking work runs in threads under the shipper's own CapacityLimiters, never trio's default
one the rest of the server shares, so a slow store cannot hold back the disk writer or other
calls: ``threads`` for the network (hashing, boto3, urllib3) and two for the spool's journal
files, so that a finished call's journal never waits behind a slow upload. NATS publishes run on the publisher's own
loop and are awaited without a thread.

A store, webhook or NATS outage is logged once when it starts and once when it ends (not per
retry); recording goes on, the local disk holding the backlog. `readiness` reports when the bytes
waiting for the store pass ``store_max_local_bytes``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from callstream.errors import RecordingError
from callstream.shipping_settings import ShippingSettings
from callstream.storage.recording import read_sidecar, write_sidecar
from callstream.storage.shipping.event import build_event, encode_event
from callstream.storage.shipping.spool import Claim, Job, Listed, Spool
from callstream.storage.shipping.store import KeyTaken, ObjectStore, StoreError
from callstream.storage.shipping.webhook import DeliveryError, WebhookSender

LOGGER = logging.getLogger("callstream.storage.shipping")

JOURNAL_THREADS: Final = 2  # threads for the spool's files (fsyncs), beside the ``threads`` for the network
RESCAN_INTERVAL: Final = 10.0  # seconds between listings of the spool for unclaimed jobs
RESCAN_MIN_GAP: Final = 1.0  # seconds: listings for jobs beyond MAX_CLAIMS come no more often
MAX_CLAIMS: Final = 128  # jobs one process holds at once (an open descriptor each); the rest wait on disk
MAX_KEY_NUMBER: Final = 20  # NAME, NAME-2 ... NAME-20: keys tried when another object holds the name
SHIP_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)  # seconds
STORE_FIELD: Final = "store"  # the sidecar's record of where the objects are
LOCAL_ERROR_LOG_EVERY: Final = 20  # a job failing on this node (not a destination) is logged every Nth attempt


@dataclass(frozen=True, slots=True)
class ShipperStatistics:
    pending_jobs: int  # in the spool, not done (this process's and others')
    pending_bytes: int  # of those, local bytes not yet in the store
    held: int  # jobs this process holds (at most max_claims)
    uploaded: int
    delivered: int
    failures: int  # failed attempts (each retried)


class _Health:
    """One destination's state, for logging an outage once when it starts and once when it ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.since: float | None = None

    def failed(self, error: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            LOGGER.error("%s unavailable: %s; recordings wait on local disk and are retried", self.name, error)

    def ok(self) -> None:
        if self.since is not None:
            LOGGER.warning("%s available again after %.0f s", self.name, time.monotonic() - self.since)
            self.since = None


class Shipper:
    """Ships the recordings of one output directory. `run` it in a nursery (`nursery.start`)."""

    def __init__(self, settings: ShippingSettings, output_dir: Path, *,
                 registry: CollectorRegistry | None = None, max_claims: int = MAX_CLAIMS) -> None:
        self.settings = settings
        self.spool = Spool(output_dir)
        self._output_dir = Path(output_dir)
        self._store = None if settings.store is None else ObjectStore(settings)
        self._webhook = None
        if settings.webhook_url is not None:
            secret = settings.webhook_secret
            if secret is None and settings.webhook_secret_file is not None:  # not read by the caller
                secret = settings.webhook_secret_file.read_bytes().strip()
            if not secret:
                raise ValueError("--webhook-url needs a key in --webhook-secret-file")
            self._webhook = WebhookSender(settings.webhook_url, secret)
        self._nats: Any = None
        if settings.nats_url is not None:
            from callstream.storage.shipping.natsbus import NatsPublisher

            self._nats = NatsPublisher(settings.nats_url, settings.nats_subject)
        self.sinks: tuple[str, ...] = tuple(
            name for name, sink in (("webhook", self._webhook), ("nats", self._nats)) if sink is not None
        )
        self._limiter = trio.CapacityLimiter(settings.threads)
        self._journal_limiter = trio.CapacityLimiter(JOURNAL_THREADS)
        self._max_claims = max_claims
        self._claims: dict[str, Claim] = {}  # at most max_claims: each holds a descriptor
        self._waiting_bytes: dict[str, int] = {}  # claimed job id -> local bytes not yet in the store
        # the jobs on disk this process does not hold (others', or beyond MAX_CLAIMS), as the
        # last listing saw them: jobs and bytes not yet in the store
        self._unclaimed_jobs = self._unclaimed_bytes = 0
        self._unclaimed_oldest: str | None = None  # the oldest job the last listing saw free
        self._finished_ids: set[str] = set()  # finished since the last listing began
        self._rescan_soon = trio.Event()
        self._attempts: dict[str, int] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = trio.Event()
        self._idle = trio.Event()  # set whenever this process holds no job
        self._idle.set()
        self._running = False
        self._health = {name: _Health(name) for name in ("the store", "the webhook", "NATS")}
        self._uploaded = self._delivered = self._failures = 0
        self._metrics(CollectorRegistry() if registry is None else registry)

    def _metrics(self, r: CollectorRegistry) -> None:
        # every worker sees the whole spool they share: the largest of their values is the total
        self._m_jobs = Gauge("callstream_ship_pending_recordings", "Recordings not yet uploaded and announced.",
                             registry=r, multiprocess_mode="livemax")
        self._m_bytes = Gauge("callstream_store_pending_bytes", "Local bytes of recordings waiting for the store.",
                              registry=r, multiprocess_mode="livemax")
        self._m_uploads = Counter("callstream_store_uploads", "Objects uploaded and verified.", registry=r)
        self._m_failures = Counter("callstream_ship_failures", "Failed attempts (each retried), by destination.",
                                   ("destination",), registry=r)
        self._m_delivered = Counter("callstream_events_delivered", "Events acknowledged, by sink.", ("sink",),
                                    registry=r)
        self._m_delay = Histogram("callstream_ship_delay_seconds",
                                  "From a recording's end to its upload (stage=store) or last acknowledgement "
                                  "(stage=event).", ("stage",), buckets=SHIP_BUCKETS, registry=r)

    # -- what the server calls --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ship until cancelled (what is pending stays in the spool for the next run)."""
        await self._thread(self.spool.open)
        if self._store is not None:
            await self._thread(self._store.connect, network=True)
        if self._nats is not None:
            self._nats.start()
        try:
            async with trio.open_nursery() as nursery:
                send, receive = trio.open_memory_channel[str](0)
                for _ in range(self.settings.threads):
                    nursery.start_soon(self._worker, receive.clone())
                nursery.start_soon(self._schedule, send)
                self._running = True
                await self._rescan()
                nursery.start_soon(self._rescan_forever)
                task_status.started()
        finally:
            self._running = False
            for claim in self._claims.values():
                claim.release()
            self._claims.clear()
            self._waiting_bytes.clear()
            self._count_unclaimed([])
            with trio.CancelScope(shield=True):
                if self._nats is not None:
                    await trio.to_thread.run_sync(self._nats.close)
                if self._webhook is not None:
                    self._webhook.close()

    async def enqueue(self, audio: Path | None, sidecar: Path) -> None:
        """Journal a finished recording (durable on return) and ship it when running. Never
        raises for the disk: a journal that cannot be written is logged (the recording stays on
        local disk, and is not shipped)."""
        with trio.CancelScope(shield=True):  # a finished call's journal is written even in a shutdown
            try:
                job = await self._thread(self.spool.enqueue, audio, sidecar, cancellable=False)
            except OSError as error:
                LOGGER.error("cannot journal %s for shipping: %s", sidecar, error)
                return
            if self._running:
                await self._take(job.id)

    async def wait_idle(self) -> None:
        """Return once this process holds no job (all shipped, or none claimed)."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def reload(self) -> None:
        """SIGHUP: read --webhook-secret-file again; later attempts sign with the new key. A file
        that cannot be read or holds no key leaves the key in force (logged)."""
        path = self.settings.webhook_secret_file
        if self._webhook is None or path is None:
            return
        try:
            secret = await trio.to_thread.run_sync(path.read_bytes)
        except OSError as error:
            LOGGER.error("--webhook-secret-file: %s: keeping the key in force", error)
            return
        secret = secret.strip()
        if not secret:
            LOGGER.error("--webhook-secret-file: %s is empty: keeping the key in force", path)
        elif secret != self._webhook.secret:
            self._webhook.secret = secret
            LOGGER.warning("new webhook key read from %s: events are signed with it from now on", path)

    def readiness(self) -> str | None:
        """None, or why new calls should go elsewhere (for /readyz)."""
        waiting = self._pending_bytes()
        if self._store is not None and waiting > self.settings.store_max_local_bytes:
            return f"{waiting} bytes waiting for the store (--store-max-local-bytes)"
        return None

    def statistics(self) -> ShipperStatistics:
        """``pending_*``: the whole spool's (this process's jobs exactly, the others' as last listed)."""
        return ShipperStatistics(
            pending_jobs=len(self._claims) + self._unclaimed_jobs, pending_bytes=self._pending_bytes(),
            held=len(self._claims),
            uploaded=self._uploaded, delivered=self._delivered, failures=self._failures,
        )

    def oldest_pending(self) -> float | None:
        """When the oldest recording not yet shipped was queued (seconds since the epoch, from
        its job id), this process's jobs exactly and the others' as last listed; None: none."""
        ids = list(self._claims)
        if self._unclaimed_jobs and self._unclaimed_oldest is not None:
            ids.append(self._unclaimed_oldest)
        return min(int(job_id.split("-", 1)[0]) for job_id in ids) / 1e9 if ids else None

    def _pending_bytes(self) -> int:
        return sum(self._waiting_bytes.values()) + self._unclaimed_bytes

    # -- the queue ----------------------------------------------------------------------------

    async def _rescan_forever(self) -> None:
        while True:
            with trio.move_on_after(RESCAN_INTERVAL):
                await self._rescan_soon.wait()
            self._rescan_soon = trio.Event()
            await self._rescan()
            await trio.sleep(RESCAN_MIN_GAP)  # a backlog of thousands is listed at most this often

    async def _rescan(self) -> None:
        """List the spool: count what others hold, take the oldest free jobs up to MAX_CLAIMS."""
        self._finished_ids.clear()
        listed = await self._thread(self.spool.listing)
        others = [item for item in listed if item.id not in self._claims and item.id not in self._finished_ids]
        self._count_unclaimed(others)
        for item in others:
            if len(self._claims) >= self._max_claims:
                break
            await self._take(item.id)

    def _count_unclaimed(self, items: list[Listed]) -> None:
        self._unclaimed_jobs = len(items)
        self._unclaimed_oldest = items[0].id if items else None  # listed oldest first
        self._unclaimed_bytes = 0 if self._store is None else sum(i.bytes for i in items if not i.uploaded)
        self._publish_gauges()

    async def _take(self, job_id: str) -> None:
        if len(self._claims) >= self._max_claims:  # a new job: it waits on disk for a free slot
            self._unclaimed_jobs += 1
            if self._store is not None:
                self._unclaimed_bytes += Spool.size_of(job_id)
            self._publish_gauges()
            return
        claimed = await self._thread(self._claim, job_id, cancellable=False)
        if claimed is None:
            return
        claim, has_event = claimed
        if not self._running or job_id in self._claims:
            claim.release()
            return
        self._claims[job_id] = claim
        if self._unclaimed_jobs:  # it was counted there if the last listing saw it free
            self._unclaimed_jobs -= 1
            if self._store is not None and not has_event:
                self._unclaimed_bytes = max(0, self._unclaimed_bytes - claim.job.bytes)
        if self._store is not None and not has_event:
            self._waiting_bytes[job_id] = claim.job.bytes
        self._publish_gauges()
        self._due(job_id, time.monotonic())

    def _claim(self, job_id: str) -> tuple[Claim, bool] | None:
        claim = self.spool.claim(job_id)
        return None if claim is None else (claim, self.spool.event(claim.job) is not None)

    def _due(self, job_id: str, when: float) -> None:
        heapq.heappush(self._heap, (when, job_id))
        self._wake.set()

    async def _schedule(self, send: trio.MemorySendChannel[str]) -> None:
        async with send:
            while True:
                if not self._heap:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                when, job_id = self._heap[0]
                if when > time.monotonic():
                    self._wake = trio.Event()
                    with trio.move_on_after(when - time.monotonic()):
                        await self._wake.wait()
                    continue
                heapq.heappop(self._heap)
                if job_id in self._claims:
                    await send.send(job_id)

    async def _worker(self, receive: trio.MemoryReceiveChannel[str]) -> None:
        async with receive:
            async for job_id in receive:
                claim = self._claims.get(job_id)
                if claim is None:
                    continue
                try:
                    done = await self._ship(claim.job)
                except Exception as error:  # whatever it is, the job stays queued and the server serves on
                    self._failures += 1
                    attempts = self._attempts[job_id] = self._attempts.get(job_id, 0) + 1
                    wait = min(self.settings.retry_max, self.settings.retry_min * 2 ** (attempts - 1))
                    wait *= random.uniform(0.5, 1.0)
                    if isinstance(error, (StoreError, DeliveryError, _PublishFailed)):
                        # a destination's outage: logged once by _Health, not per retry
                        LOGGER.debug("shipping %s: %s; retry in %.1f s", claim.job.sidecar, error, wait)
                    elif attempts == 1 or attempts % LOCAL_ERROR_LOG_EVERY == 0:
                        LOGGER.error("shipping %s failed (attempt %d, retried): %s", claim.job.sidecar, attempts,
                                     error, exc_info=not isinstance(error, (OSError, RecordingError)))
                    self._due(job_id, time.monotonic() + wait)
                    continue
                if done:
                    await self._thread(self.spool.complete, claim, self.sinks, cancellable=False)
                self._claims.pop(job_id, None)
                self._waiting_bytes.pop(job_id, None)
                self._attempts.pop(job_id, None)
                self._finished_ids.add(job_id)
                if self._unclaimed_jobs:
                    self._rescan_soon.set()  # a free slot for a job waiting on disk
                self._publish_gauges()

    def _publish_gauges(self) -> None:
        if self._claims and self._idle.is_set():
            self._idle = trio.Event()
        elif not self._claims:
            self._idle.set()
        self._m_jobs.set(len(self._claims) + self._unclaimed_jobs)
        self._m_bytes.set(self._pending_bytes())

    # -- one job's steps ------------------------------------------------------------------------

    async def _ship(self, job: Job) -> bool:
        """Take ``job`` as far as it goes; True when done, False when it was dropped (logged).
        Raises what a failed step raised (the job is retried)."""
        event = await self._thread(self.spool.event, job)
        if event is None:
            missing = await self._thread(self._missing, job)
            if missing is not None:
                LOGGER.error("cannot ship %s: %s is gone (removed by hand?); dropped from the queue", job.sidecar,
                             missing)
                await self._thread(self.spool.complete, self._claims[job.id], self.sinks, cancellable=False)
                return False
            if self._store is not None:
                event = await self._step("the store", self._upload, job)
                self._uploaded += 1
                self._m_uploads.inc(2 if job.audio else 1)
                self._m_delay.labels("store").observe(max(0.0, time.time() - job.enqueued))
            else:
                event = await self._thread(self._local_event, job)
            await self._thread(self.spool.save_event, job, event, cancellable=False)
            self._waiting_bytes.pop(job.id, None)
            self._publish_gauges()
        if self._store is not None and not self.settings.keep_local:
            await self._thread(self._remove_local, job)
        body = encode_event(event)
        for sink in self.sinks:
            if await self._thread(self.spool.delivered, job, sink):
                continue
            if sink == "webhook":
                assert self._webhook is not None
                await self._step("the webhook", self._webhook.send, event["event_id"], body)
            else:
                await self._publish_nats(event["event_id"], body)
            await self._thread(self.spool.mark_delivered, job, sink, cancellable=False)
            self._delivered += 1
            self._m_delivered.labels(sink).inc()
        if self.sinks:
            self._m_delay.labels("event").observe(max(0.0, time.time() - job.enqueued))
        where = (event.get("object") or event.get("sidecar_object") or {}).get("url") or event.get("path")
        LOGGER.info("recording %s shipped: %s%s", job.sidecar.removesuffix(".json"), where,
                    "; event " + event["event_id"] + " to " + ", ".join(self.sinks) if self.sinks else "")
        return True

    async def _step(self, destination: str, function: Any, *args: Any) -> Any:
        try:
            result = await self._thread(function, *args, network=True)
        except (StoreError, DeliveryError) as error:
            self._health[destination].failed(error)
            self._m_failures.labels(destination.removeprefix("the ")).inc()
            raise
        self._health[destination].ok()
        return result

    async def _publish_nats(self, event_id: str, body: bytes) -> None:
        from callstream.storage.shipping.natsbus import PublishError

        future = self._nats.publish(event_id, body)
        try:
            await _wait_future(future)
            future.result()
        except PublishError as error:
            self._health["NATS"].failed(error)
            self._m_failures.labels("nats").inc()
            raise _PublishFailed(str(error)) from error
        self._health["NATS"].ok()

    def _missing(self, job: Job) -> str | None:
        """Which local file of a job not yet shipped is gone, if any (the event is saved before
        local copies are removed, so only someone else can have removed them)."""
        for relative in (job.sidecar, *(() if self._store is None or job.audio is None else (job.audio,))):
            if not (self._output_dir / relative).exists():
                return relative
        return None

    def _local_event(self, job: Job) -> dict[str, Any]:
        sidecar = read_sidecar(self._output_dir / job.sidecar)
        return build_event(event_id=job.event_id, sidecar=sidecar, audio_path=job.audio, sidecar_path=job.sidecar,
                           audio_object=None, sidecar_object=None, sha256=None)

    def _upload(self, job: Job) -> dict[str, Any]:
        """Blocking: upload and verify the audio, record its key in the sidecar, upload that.
        Returns the event."""
        assert self._store is not None
        store = self._store
        sidecar_path = self._output_dir / job.sidecar
        base = store.location.key(job.sidecar.removesuffix(".json"))
        audio_object = sidecar_object = None
        # The first free name (or the one we took before a crash): the audio's decides, or, for a
        # recording without audio, the sidecar's. The sidecar follows the audio's name and may
        # replace an older copy of itself (it changes when siblings are added).
        for number in range(1, MAX_KEY_NUMBER + 1):
            audio_key, sidecar_key = _keys(base, job.audio, number)
            try:
                if job.audio is not None:
                    audio_object = store.upload(self._output_dir / job.audio, audio_key)
                sidecar = _record_location(sidecar_path, {
                    "bucket": store.location.bucket,
                    "key": None if audio_object is None else audio_object.key,
                    "url": None if audio_object is None else f"s3://{store.location.bucket}/{audio_object.key}",
                    "sidecar_key": sidecar_key,
                })
                sidecar_object = store.upload(sidecar_path, sidecar_key, replace=audio_object is not None)
                break
            except KeyTaken:
                continue
        else:
            raise StoreError(f"{MAX_KEY_NUMBER} keys like {base} hold other objects")
        if audio_object is not None and audio_object.sha256 != sidecar.get("sha256"):
            LOGGER.warning("%s: the audio's SHA-256 is not the one its sidecar recorded (changed on disk?)",
                           job.audio)
        kept = self.settings.keep_local
        return build_event(
            event_id=job.event_id, sidecar=sidecar,
            audio_path=job.audio if kept else None, sidecar_path=job.sidecar if kept else None,
            audio_object=None if audio_object is None else audio_object.as_dict(),
            sidecar_object=None if sidecar_object is None else sidecar_object.as_dict(),
            sha256=None if audio_object is None else audio_object.sha256,
        )

    def _remove_local(self, job: Job) -> None:
        for relative in (job.audio, job.sidecar):
            if relative is not None:
                with contextlib.suppress(FileNotFoundError):
                    (self._output_dir / relative).unlink()

    async def _thread(self, function: Any, *args: Any, cancellable: bool = True, network: bool = False) -> Any:
        """``function(*args)`` in a thread: a network one (uploads, deliveries: ``threads`` of
        them) or a journal one (spool files: quick, so a finished call's journal never waits
        behind a slow upload). Cancellable calls are abandoned on cancellation (their effects
        are journalled only once they return)."""
        limiter = self._limiter if network else self._journal_limiter
        return await trio.to_thread.run_sync(function, *args, limiter=limiter, abandon_on_cancel=cancellable)


class _PublishFailed(Exception):
    """A NATS publish got no PubAck (see natsbus.PublishError)."""


def _keys(base: str, audio: str | None, number: int) -> tuple[str, str]:
    """(audio key, sidecar key) for ``base`` (the prefix and NAME), ``NAME-number`` after the first."""
    name = base if number == 1 else f"{base}-{number}"
    suffix = "" if audio is None else Path(audio).suffix
    return name + suffix, name + ".json"


def _record_location(path: Path, where: dict[str, Any]) -> dict[str, Any]:
    """Add ``where`` to the sidecar at ``path`` as its STORE_FIELD; returns the sidecar as
    written. No lock: once a recording is finished, its shipper alone writes its sidecar (no
    other recording reads or writes it, see storage/recording.py)."""
    data = read_sidecar(path)
    if data.get(STORE_FIELD) != where:
        data[STORE_FIELD] = where
        # not fsynced: the uploaded copy is the one that counts, and a retry writes this again
        write_sidecar(path, data, durable=False)
    return data


async def _wait_future(future: concurrent.futures.Future[Any]) -> None:
    """Wait for a future of another thread's loop without holding a thread of our own."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
