"""`callstream serve --workers N`: N processes sharing the port with SO_REUSEPORT, supervised.

The supervisor (this process) recovers what an interrupted run left behind, then starts N
workers, each with its own trio loop and its own listening socket on the same port; the kernel
spreads connections across them. --max-calls is counted in shared memory across all workers.
Metrics use prometheus_client's multiprocess mode: workers write to a directory the supervisor
made, and only the supervisor serves /metrics (totals over all workers; the process metrics of
each process, labelled ``process``), /healthz, /readyz and the live calls (/calls.json, /), which
each worker leaves in that directory once per flush interval. A
worker that dies is restarted. SIGTERM or SIGINT is forwarded to every worker (as SIGTERM), which
drains as a single process would, and so is a second one (the workers end their drains now); the
supervisor exits 0 when they all have. SIGHUP is forwarded too (see `Supervisor.reload`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from callstream.engagevoice.listeners import bound_socket
from callstream.server.auth import read_secret_file
from callstream.server.logs import reopen_log_files
from callstream.settings import Settings
from callstream.storage.recovery import Recovered, recover_directory

LOGGER = logging.getLogger("callstream.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when a worker imports it
SUPERVISE_INTERVAL = 0.5  # seconds between checks that every worker is alive
RESTART_PAUSE = 1.0  # seconds before restarting a worker that died
BACKLOG_INTERVAL = 2.0  # seconds between reads of the shipping spool for /readyz
STOP_MARGIN = 30.0  # seconds beyond --drain-timeout a worker gets to finalise before it is killed


def calls_file(metrics_dir: Path, index: int) -> Path:
    """Where worker ``index`` leaves its live calls (see `livecalls.write_snapshot`)."""
    return metrics_dir / f"calls-{index}.json"


def _worker_main(settings: Settings, index: int, shared_calls: Any, disk_flag: Any, metrics_dir: Path) -> None:
    from callstream.server.gcpolicy import tune_garbage_collector
    from callstream.server.logs import configure_logging
    from callstream.server.server import run_until_signalled

    # The supervisor speaks for the workers: a terminal's Ctrl-C reaches the whole process group,
    # and the SIGTERM the supervisor forwards would then be each worker's second stop signal (no
    # drain). SIGHUP is handled once the worker serves; until then it must not kill it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(settings.log_level, log_format=settings.log_format, name=f"worker-{index}",
                      file=settings.log_file)
    tune_garbage_collector()
    worker_settings = replace(settings, metrics_port=None)  # the supervisor serves the totals
    trio.run(lambda: run_until_signalled(
        worker_settings, shared_calls=shared_calls, disk_flag=disk_flag, recover=False, reuse_port=True,
        stop_signals=(signal.SIGTERM,), calls_file=calls_file(metrics_dir, index),
    ))


class _AggregateMetrics:
    """What the supervisor's /metrics renders: the sum of every worker's metrics, and the
    process metrics of each process (see `Metrics.aggregate`)."""

    def __init__(self, directory: Path, processes: Callable[[], list[tuple[str, int]]]) -> None:
        self._directory = directory
        self._processes = processes

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        from callstream.server.metrics import Metrics

        return generate_latest(Metrics.aggregate(self._directory, self._processes()))


class Supervisor:
    """Starts, watches and stops the workers. One per `serve --workers N` process."""

    def __init__(self, settings: Settings, count: int, metrics_dir: Path) -> None:
        self.settings = settings
        self.count = count
        self._context = multiprocessing.get_context("spawn")
        self.shared_calls = self._context.Value("i", 0)
        # per worker: 1 while its disk hangs (see Server); a restarted worker starts at 0
        self.disk_flags = [self._context.Value("b", 0, lock=False) for _ in range(count)]
        self._metrics_dir = metrics_dir
        self._workers: list[Any] = []
        self._stopping = False
        self._backlog = 0  # bytes waiting for the store, as last read (see _store_backlog)
        self._backlog_read = -BACKLOG_INTERVAL

    def readiness(self) -> str | None:
        if self._stopping:
            return "draining"
        if self.shared_calls.value >= self.settings.max_calls:
            return f"{self.shared_calls.value} live calls (--max-calls)"
        if any(flag.value for flag in self.disk_flags):
            return "the disk has stopped writing"
        return self._store_backlog()

    def _store_backlog(self) -> str | None:
        """The workers' shipping backlog against --store-max-local-bytes, read from the spool
        they share (at most every BACKLOG_INTERVAL seconds: it reads the journals)."""
        shipping = self.settings.shipping
        if shipping is None or shipping.store is None:
            return None
        now = time.monotonic()
        if now - self._backlog_read >= BACKLOG_INTERVAL:
            from callstream.storage.shipping.spool import Spool

            self._backlog_read = now
            with contextlib.suppress(OSError):
                self._backlog = Spool(self.settings.output_dir).waiting_bytes()
        if self._backlog > shipping.store_max_local_bytes:
            return f"{self._backlog} bytes waiting for the store (--store-max-local-bytes)"
        return None

    def live_calls(self) -> dict[str, Any]:
        """/calls.json across the workers: the calls each live worker left at its last tick
        (at most one flush interval old, their ages brought up to now), the shared count."""
        from callstream.server.livecalls import MAX_ROWS, merge_snapshots

        files = [calls_file(self._metrics_dir, index) for index, process in enumerate(self._workers)
                 if process.is_alive()]
        return merge_snapshots(files, live=self.shared_calls.value, draining=self._stopping,
                               disk_stalled=any(flag.value for flag in self.disk_flags), max_rows=MAX_ROWS)

    def processes(self) -> list[tuple[str, int]]:
        """(name, pid) of the supervisor and of every running worker, for the process metrics."""
        found = [("supervisor", os.getpid())]
        found += [(f"worker-{index}", process.pid) for index, process in enumerate(self._workers)
                  if process.pid is not None and process.exitcode is None]
        return found

    def _start(self, index: int) -> Any:
        self.disk_flags[index].value = 0
        with contextlib.suppress(FileNotFoundError):  # the calls of the worker it replaces
            calls_file(self._metrics_dir, index).unlink()
        process = self._context.Process(
            target=_worker_main,
            args=(self.settings, index, self.shared_calls, self.disk_flags[index], self._metrics_dir),
            name=f"callstream-worker-{index}",
        )
        process.start()
        return process

    async def supervise(self) -> None:
        from prometheus_client import multiprocess

        self._workers = [self._start(index) for index in range(self.count)]
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(SUPERVISE_INTERVAL)
                for index, process in enumerate(self._workers):
                    if not process.is_alive():
                        LOGGER.error(
                            "worker %d (pid %s) exited with %s: restarting it", index, process.pid, process.exitcode
                        )
                        multiprocess.mark_process_dead(process.pid, str(self._metrics_dir))
                        nursery.start_soon(self._recover_orphans)
                        await trio.sleep(RESTART_PAUSE)
                        self._workers[index] = self._start(index)

    async def _recover_orphans(self) -> None:
        """Finish the recordings a dead worker left: its partial files are no longer locked,
        the live workers' still are (see recovery.py), so this runs beside them."""
        recovered = await trio.to_thread.run_sync(_recover, self.settings)
        if recovered:
            LOGGER.warning("recovered %d recordings left by the dead worker", len(recovered))

    async def reload(self) -> None:
        """SIGHUP: reopen the supervisor's log file, read --secret-file again (for workers it
        starts from now on) and forward SIGHUP to every worker, which does the same (see
        `Server.reload`)."""
        reopen_log_files()
        path = self.settings.secret_file
        if path is not None:
            try:
                secret = await trio.to_thread.run_sync(read_secret_file, path)
            except (OSError, ValueError) as error:
                LOGGER.error("--secret-file: %s: workers keep the secret in force", error)
            else:
                self.settings = replace(self.settings, secret=secret)
        self.signal_workers(signal.SIGHUP)

    def signal_workers(self, signum: int) -> None:
        """Send ``signum`` to every worker still running."""
        for process in self._workers:
            if process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def stop(self) -> int:
        """Forward SIGTERM, wait for the drains, kill what does not stop; the exit status."""
        self._stopping = True
        for process in self._workers:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + self.settings.drain_timeout + STOP_MARGIN
        for process in self._workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                LOGGER.error("%s did not stop in time: killing it", process.name)
                process.kill()
                process.join()
        failed = [p.name for p in self._workers if p.exitcode not in (0, -signal.SIGTERM)]
        if failed:
            LOGGER.error("workers that failed: %s", ", ".join(failed))
        return 1 if failed else 0


async def _run(settings: Settings, count: int, metrics_dir: Path) -> int:
    from callstream.server.http_metrics import serve_metrics

    supervisor = Supervisor(settings, count, metrics_dir)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.supervise)
            LOGGER.info(
                "starting %d workers on %s:%d, recording %s into %s",
                count,
                settings.host,
                settings.port,
                settings.format,
                settings.output_dir,
            )
            if settings.metrics_port is not None:
                endpoint = await nursery.start(
                    lambda task_status: serve_metrics(
                        _AggregateMetrics(metrics_dir, supervisor.processes),
                        supervisor.readiness,  # type: ignore[arg-type]
                        host=settings.metrics_host,
                        port=settings.metrics_port,
                        calls=supervisor.live_calls,
                        task_status=task_status,
                    )
                )
                LOGGER.info("metrics on http://%s:%d/metrics (all workers)", endpoint.host, endpoint.port)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    LOGGER.info("received SIGHUP: reloading, and forwarding it to the workers")
                    await supervisor.reload()
                    continue
                LOGGER.info("received %s: draining %d workers", signal.Signals(signum).name, count)
                break
            nursery.cancel_scope.cancel()
        # The joins block, so they run in a thread; meanwhile a second stop signal is forwarded
        # (each worker then ends its drain now) and SIGHUP too, instead of being left for trio to
        # deliver again, fatally, once the receiver closes.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_forward_while_stopping, signals, supervisor)
            status = await trio.to_thread.run_sync(supervisor.stop)
            nursery.cancel_scope.cancel()
    return status


async def _forward_while_stopping(signals: AsyncIterator[int], supervisor: Supervisor) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            await supervisor.reload()
        else:
            LOGGER.warning("received %s again: workers close their live calls now (1001)",
                           signal.Signals(signum).name)
            supervisor.signal_workers(signal.SIGTERM)


def _recover(settings: Settings) -> list[Recovered]:
    """`recover_directory`; with shipping, the recovered recordings are journalled for the
    workers to ship (they list the spool every few seconds)."""
    recovered = recover_directory(settings.output_dir)
    if settings.shipping is not None and recovered:
        from callstream.storage.shipping.spool import journal_recovered

        journal_recovered(settings.output_dir, ((item.path, item.sidecar) for item in recovered))
    return recovered


def run_workers(settings: Settings, count: int) -> int:
    """Supervise ``count`` workers until SIGTERM/SIGINT; returns the exit status."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until `_run` takes it: never fatal
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    recovered = _recover(settings)
    if recovered:
        LOGGER.warning("recovered %d recordings left by an interrupted run", len(recovered))
    # Hold the port from here on: with port 0 this picks it, and the workers bind beside it.
    holder = bound_socket(settings.host, settings.port, reuse_port=True)
    # the RingCX gRPC port too: each worker's grpc server binds beside it (SO_REUSEPORT)
    ringcx_holder = None
    if settings.ringcx_port is not None:
        ringcx_holder = bound_socket(settings.host, settings.ringcx_port, reuse_port=True)
        settings = replace(settings, ringcx_port=ringcx_holder.getsockname()[1])
    try:
        settings = replace(settings, port=holder.getsockname()[1])
        with tempfile.TemporaryDirectory(prefix="callstream-metrics-") as metrics_dir:
            os.environ[MULTIPROC_ENV] = metrics_dir  # spawned workers inherit it before importing
            try:
                return trio.run(_run, settings, count, Path(metrics_dir))
            finally:
                os.environ.pop(MULTIPROC_ENV, None)
    finally:
        holder.close()
        if ringcx_holder is not None:
            ringcx_holder.close()
