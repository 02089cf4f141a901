"""The server's Prometheus metrics: a `Metrics` object owns its own `CollectorRegistry`.

No module-level state and never the global default registry: each `Server` makes one `Metrics`
and passes it down (tests run several servers in one process). Nothing here is called per Media
message. The recorder reports its timeline's counters as deltas (`MediaTotals`) once per flush
interval and at the end of the call, the writer one write-lag sample per block, the server the
call counters.

Multi-process workers (``serve --workers N``): prometheus_client's multiprocess mode. The parent sets
PROMETHEUS_MULTIPROC_DIR to a fresh, emptied directory before it starts the workers (the variable
must be set before a worker imports prometheus_client); each worker keeps using `Metrics` as it is
(its values then live in memory-mapped files in that directory; ``live_calls`` is summed over live
workers, hence ``multiprocess_mode="livesum"``). Only the parent serves HTTP, rendering
`Metrics.aggregate(directory)`, and calls ``multiprocess.mark_process_dead(pid)`` when a worker
exits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from callstream.timeline import Timeline

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
CALL_STATUSES: Final = ("complete", "incomplete", "failed")
REJECT_REASONS: Final = ("draining", "capacity", "unauthorized", "disk")
WRITE_LAG_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 5.0, 10.0)  # seconds
# (finer around 1.5 s, a sensible alert threshold and the benchmark's limit on p99: bench_e2e reads its
# quantiles as bucket upper bounds, which between 1.0 and 2.5 could not tell 1.1 s from 2.4 s)


@dataclass(frozen=True, slots=True)
class MediaTotals:
    """A call's media counters so far, both perspectives together; subtract two for a delta.

    ``payload_bytes``: mu-law bytes of the frames placed on the timeline (duplicates and late drops
    excluded; a frame held in the reorder window counts once it is released). Derived from
    ``samples_committed - gap_samples - fill_samples``, so the hot loop counts nothing extra.
    """

    messages: int = 0  # Media messages received (duplicates and late ones included)
    payload_bytes: int = 0
    gaps: int = 0
    gap_samples: int = 0
    duplicates: int = 0
    late_drops: int = 0
    bad_messages: int = 0

    @classmethod
    def of(cls, timeline: Timeline, *, bad_messages: int) -> MediaTotals:
        """The timeline's totals now (`Timeline.media_counters`, in this class's field order)."""
        return cls(*timeline.media_counters(), bad_messages=bad_messages)

    def __sub__(self, other: MediaTotals) -> MediaTotals:
        return MediaTotals(
            messages=self.messages - other.messages,
            payload_bytes=self.payload_bytes - other.payload_bytes,
            gaps=self.gaps - other.gaps,
            gap_samples=self.gap_samples - other.gap_samples,
            duplicates=self.duplicates - other.duplicates,
            late_drops=self.late_drops - other.late_drops,
            bad_messages=self.bad_messages - other.bad_messages,
        )


class Metrics:
    """The counters of one server. Thread safe (the writer threads observe write lag)."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=r)

        self._live = Gauge(
            "callstream_live_calls",
            "Calls being recorded now.",
            registry=r,
            multiprocess_mode="livesum",
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

    @staticmethod
    def aggregate(directory: Path) -> CollectorRegistry:
        """For a parent of multiprocess workers: a registry summing what they wrote to
        ``directory`` (their PROMETHEUS_MULTIPROC_DIR)."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        return registry

    def render(self) -> bytes:
        """The exposition, in ``CONTENT_TYPE``."""
        return generate_latest(self.registry)

    def call_started(self) -> None:
        self._started.inc()
        self._live.inc()

    def call_finished(self, status: str) -> None:
        """``status``: one of CALL_STATUSES."""
        self._live.dec()
        self._finished.labels(status).inc()

    def call_rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def add_media(self, delta: MediaTotals, *, sample_rate: int) -> None:
        """Add a call's progress since its last report (see `MediaTotals`)."""
        if delta.messages:
            self._messages.inc(delta.messages)
        if delta.payload_bytes:
            self._bytes.inc(delta.payload_bytes)
        if delta.gaps:
            self._gaps.inc(delta.gaps)
        if delta.gap_samples:
            self._gap_seconds.inc(delta.gap_samples / sample_rate)
        if delta.duplicates:
            self._duplicates.inc(delta.duplicates)
        if delta.late_drops:
            self._late.inc(delta.late_drops)
        if delta.bad_messages:
            self._bad.inc(delta.bad_messages)

    def observe_write_lag(self, seconds: float) -> None:
        self._write_lag.observe(seconds)

    def recording_written(self) -> None:
        self._written.inc()

    def recordings_recovered(self, count: int) -> None:
        self._recovered.inc(count)

    def disk_error(self) -> None:
        self._disk_errors.inc()
