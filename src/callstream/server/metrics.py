"""The server's Prometheus metrics: a `Metrics` object owns its own `CollectorRegistry`.

No module-level state and never the global default registry: each `Server` makes one `Metrics`
and passes it down (tests run several servers in one process). Nothing here is called per Media
message. The recorder reports its timeline's counters (`MediaTotals`) once per flush interval and
at the end of the call; their progress is summed over all calls and added to the counters once
per flush interval (the server's clock) and when a call ends. The writer reports one write-lag
sample per block, the server the call counters.

Multi-process workers (``serve --workers N``): prometheus_client's multiprocess mode. The parent sets
PROMETHEUS_MULTIPROC_DIR to a fresh, emptied directory before it starts the workers (the variable
must be set before a worker imports prometheus_client); each worker keeps using `Metrics` as it is
(its values then live in memory-mapped files in that directory; ``live_calls`` is summed over live
workers, hence ``multiprocess_mode="livesum"``). Only the parent serves HTTP, rendering
`Metrics.aggregate(directory)`, and calls ``multiprocess.mark_process_dead(pid)`` when a worker
exits.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
CALL_STATUSES: Final = ("complete", "incomplete", "failed")
REJECT_REASONS: Final = ("draining", "capacity", "unauthorized", "unauthenticated", "disk")
FRONT_ENDS: Final = ("websocket", "ringcx")  # Engage Voice WebSocket, RingCX gRPC
WRITE_LAG_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 5.0, 10.0)  # seconds
# (finer around 1.5 s, a sensible alert threshold and the benchmark's limit on p99: bench_e2e reads its
# quantiles as bucket upper bounds, which between 1.0 and 2.5 could not tell 1.1 s from 2.4 s)


# A call's media counters so far, both perspectives together, as the recorder reads them once per
# flush interval (`Timeline.media_counters`, then the call's bad messages): Media messages received
# (duplicates and late ones included); mu-law bytes of the frames placed on the timeline
# (duplicates and late drops excluded; a frame held in the reorder window counts once it is
# released: ``samples_committed - gap_samples - fill_samples``, so the hot loop counts nothing
# extra); gaps; gap samples; duplicates; late drops; bad messages.
MediaTotals = tuple[int, int, int, int, int, int, int]
NO_MEDIA: Final[MediaTotals] = (0, 0, 0, 0, 0, 0, 0)


class BuildInfo:
    """``callstream_build_info{version, python, codec} 1``: what is running (a custom collector,
    so that it works the same in a worker's registry and in the supervisor's sum)."""

    def collect(self) -> Iterator[Metric]:
        from callstream import __version__
        from callstream.codec import BACKEND

        family = InfoMetricFamily(
            "callstream_build", "The running callstream: version, Python, the audio codec's backend.",
        )
        family.add_metric((), {"version": __version__, "python": platform.python_version(), "codec": BACKEND})
        yield family


def process_collectors(registry: CollectorRegistry) -> None:
    """Add the metrics of the process itself to ``registry``: build info, and prometheus_client's
    process metrics (process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds
    against process_max_fds, process_start_time_seconds)."""
    registry.register(BuildInfo())
    ProcessCollector(registry=registry)


class LabelledProcesses:
    """prometheus_client's process metrics of several processes, one series each, labelled
    ``process`` (e.g. ``process_resident_memory_bytes{process="worker-0"}``); sum them for the
    whole server. Reads /proc of each pid when collected; a process gone meanwhile is left out."""

    def __init__(self, processes: list[tuple[str, int]]) -> None:
        self._processes = processes

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for name, pid in self._processes:
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "process": name}, sample.value)
        yield from families.values()


class Metrics:
    """The counters of one server. Thread safe (the writer threads observe write lag)."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        # No `_created` series: a scraper gets nothing from them but twice the series of every
        # counter and histogram. prometheus_client's switch is process-wide; every registry of
        # callstream wants it off.
        disable_created_metrics()
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        process_collectors(r)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=r)

        self._live = Gauge(
            "callstream_live_calls",
            "Calls being recorded now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._draining = Gauge(
            "callstream_draining", "1 while the server drains (SIGTERM/SIGINT): new calls are refused.",
            registry=r, multiprocess_mode="livemax",
        )
        self._disk_stalled = Gauge(
            "callstream_disk_stalled",
            "1 while a write has hung longer than --disk-stall-timeout: new calls are refused.",
            registry=r, multiprocess_mode="livemax",
        )
        self._started = counter("callstream_calls_started", "Calls accepted and started.")
        self._finished = counter(
            "callstream_calls_finished", "Calls ended, by status of the recording.", ("status",)
        )
        self._rejected = counter(
            "callstream_calls_rejected",
            "Streams refused: upgrade answered 503/401, or closed 1008 on a wrong secret.",
            ("reason",),
        )
        # the same calls again, by front end (the series above stay as they were for dashboards)
        self._front_live = Gauge(
            "callstream_front_end_live_calls", "Calls being recorded now, by front end.", ("front_end",),
            registry=r, multiprocess_mode="livesum",
        )
        self._front_calls = counter(
            "callstream_front_end_calls",
            "Calls by front end and event: started, a finished status (complete, incomplete, failed) "
            "or rejected.", ("front_end", "event"),
        )
        self._messages = counter("callstream_media_messages", "Media messages received.")
        self._bytes = counter(
            "callstream_media_bytes",
            "Mu-law payload bytes placed on call timelines (duplicates, late drops excluded).",
        )
        self._gaps = counter("callstream_gaps", "Missing frames replaced by silence.")
        self._gap_seconds = counter(
            "callstream_gap_seconds", "Seconds of silence put in place of missing frames."
        )
        self._duplicates = counter(
            "callstream_duplicates", "Media frames received twice and dropped."
        )
        self._late = counter(
            "callstream_late_drops", "Media frames too late for the reorder window, dropped."
        )
        self._bad = counter("callstream_bad_messages", "Malformed messages ignored.")
        self._write_lag = Histogram(
            "callstream_write_lag_seconds",
            "From a block being ready (popped from the timeline) to written and flushed.",
            buckets=WRITE_LAG_BUCKETS,
            registry=r,
        )
        self._written = counter(
            "callstream_recordings_written", "Recordings finalised (any status)."
        )
        self._recovered = counter(
            "callstream_recordings_recovered",
            "Partial recordings left by an interrupted run and recovered.",
        )
        self._disk_errors = counter(
            "callstream_disk_errors", "Recording errors (each fails one call)."
        )
        for status in CALL_STATUSES:  # every series present from the start, at 0
            self._finished.labels(status)
        for reason in REJECT_REASONS:
            self._rejected.labels(reason)
        for front_end in FRONT_ENDS:
            self._front_live.labels(front_end)
            for event in ("started", *CALL_STATUSES, "rejected"):
                self._front_calls.labels(front_end, event)
        self._pending = [0] * 7  # media progress of all calls since the last publish (MediaTotals)
        self._pending_gap_seconds = 0.0

    @staticmethod
    def aggregate(directory: Path, processes: list[tuple[str, int]]) -> CollectorRegistry:
        """For a parent of multiprocess workers: a registry summing what they wrote to
        ``directory`` (their PROMETHEUS_MULTIPROC_DIR), with the process metrics of each of
        ``processes`` ((name, pid): the parent's own and its workers') labelled ``process``."""
        disable_created_metrics()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        registry.register(BuildInfo())
        registry.register(LabelledProcesses(processes))
        return registry

    def render(self) -> bytes:
        """The exposition, in ``CONTENT_TYPE``."""
        return generate_latest(self.registry)

    def call_started(self, front_end: str = "websocket") -> None:
        """``front_end``: one of FRONT_ENDS (here and below)."""
        self._started.inc()
        self._live.inc()
        self._front_live.labels(front_end).inc()
        self._front_calls.labels(front_end, "started").inc()

    def call_finished(self, status: str, front_end: str = "websocket") -> None:
        """``status``: one of CALL_STATUSES."""
        self._live.dec()
        self._finished.labels(status).inc()
        self._front_live.labels(front_end).dec()
        self._front_calls.labels(front_end, status).inc()

    def set_draining(self, draining: bool) -> None:
        self._draining.set(int(draining))

    def set_disk_stalled(self, stalled: bool) -> None:
        self._disk_stalled.set(int(stalled))

    def call_rejected(self, reason: str, front_end: str = "websocket") -> None:
        self._rejected.labels(reason).inc()
        self._front_calls.labels(front_end, "rejected").inc()

    def add_media(self, now: MediaTotals, before: MediaTotals, *, sample_rate: int) -> None:
        """Add a call's progress from its totals ``before`` to ``now`` (see `MediaTotals`). It is
        summed here with every other call's and reaches the counters at the next `publish`. From
        the event loop only (unlike the counters, the sum takes no lock)."""
        pending = self._pending
        for i in range(7):
            pending[i] += now[i] - before[i]
        self._pending_gap_seconds += (now[3] - before[3]) / sample_rate

    def publish(self) -> None:
        """Add the media progress summed since the last call to the Prometheus counters: once
        per flush interval for all calls (the server's clock), not once per call (each `inc` of
        a multiprocess counter takes a lock and a getpid: ~10 µs per call per second in all)."""
        pending = self._pending
        if not any(pending):
            return
        messages, payload_bytes, gaps, _, duplicates, late_drops, bad_messages = pending
        for counter, amount in ((self._messages, messages), (self._bytes, payload_bytes), (self._gaps, gaps),
                                (self._duplicates, duplicates), (self._late, late_drops), (self._bad, bad_messages)):
            if amount:
                counter.inc(amount)
        if self._pending_gap_seconds:
            self._gap_seconds.inc(self._pending_gap_seconds)
        self._pending = [0] * 7
        self._pending_gap_seconds = 0.0

    def observe_write_lag(self, seconds: float) -> None:
        self._write_lag.observe(seconds)

    def recording_written(self) -> None:
        self._written.inc()

    def recordings_recovered(self, count: int) -> None:
        self._recovered.inc(count)

    def disk_error(self) -> None:
        self._disk_errors.inc()
