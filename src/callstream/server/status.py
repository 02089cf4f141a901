"""`callstream status`: a running recorder at a glance, from its metrics endpoint.

Reads ``/calls.json`` and ``/metrics`` (twice, ``--interval`` seconds apart, for the rates) and
prints live calls (count, the oldest; and by front end), calls and frames per second, the write lag, the disk and
whether the server drains, and with shipping the recordings waiting for upload (count,
bytes, the oldest). Read-only; exits 1 when the endpoint cannot be read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_INTERVAL = 1.0  # seconds between the two scrapes the rates come from
REQUEST_TIMEOUT = 5.0  # seconds for each request
LABEL_WIDTH = 12  # characters of each line's label


class StatusError(Exception):
    """The endpoint could not be read; ``str()`` is the one line shown."""


def add_arguments(sub: argparse._SubParsersAction, env_defaults: type, environ: Mapping[str, str]) -> None:
    parser = sub.add_parser(
        "status",
        help="show a running recorder at a glance (from its --metrics-port endpoint)",
        description="Print a running recorder's live calls (count, the oldest; and by front end: websocket for "
        "Engage Voice, ringcx for RingCX gRPC), calls and frames per second, "
        "write lag, disk stalls, draining and, with shipping, the recordings waiting for upload, "
        "read from the endpoint serve --metrics-port opens. The same "
        "endpoint serves a page listing the live calls at /.",
    )
    add = env_defaults(parser, environ).add
    add("--metrics-url", metavar="URL",
        help="the recorder's metrics endpoint, e.g. http://127.0.0.1:9333 (serve --metrics-host and "
        "--metrics-port)")
    add("--interval", type=float, default=DEFAULT_INTERVAL, metavar="SECONDS",
        help="seconds between the two reads the per-second rates come from (0: no rates)")
    parser.set_defaults(command=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.metrics_url:
        print("callstream status: give --metrics-url (the endpoint of serve --metrics-port, e.g. "
              "http://127.0.0.1:9333)", file=sys.stderr)
        return 2
    if not 0 <= args.interval <= 60:
        print(f"callstream status: --interval: must be 0-60 seconds, got {args.interval:g}", file=sys.stderr)
        return 2
    try:
        print(render(collect(args.metrics_url.rstrip("/"), args.interval)))
    except StatusError as error:
        print(f"callstream status: {error}", file=sys.stderr)
        return 1
    return 0


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        raise StatusError(f"{url}: HTTP {error.code} (is this a callstream metrics endpoint?)") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise StatusError(f"cannot read {url}: {reason}") from None


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@dataclass(frozen=True, slots=True)
class Status:
    live: int
    oldest: dict[str, Any] | None  # the longest live call (None: none, or not known)
    per_call: bool
    front_ends: dict[str, dict[str, Any]]  # by front end: {"live": n, "oldest": call or None}
    calls_per_second: float | None
    frames_per_second: float | None
    lag_p99: float | None  # upper bound of the bucket holding the 99th percentile, seconds
    lag_window: str  # "the last N s" or "since start"
    disk_stalled: bool
    disk_errors: float
    draining: bool
    shipping: dict[str, Any] | None = None  # {"pending", "bytes", "oldest_seconds"}; None: no shipping


def collect(base: str, interval: float) -> Status:
    """Read the endpoint at ``base`` (``http://host:port``)."""
    first = _samples(_get(base + "/metrics").decode())
    started = time.monotonic()
    if interval > 0:
        time.sleep(interval)
    calls = json.loads(_get(base + "/calls.json"))
    second = _samples(_get(base + "/metrics").decode()) if interval > 0 else first
    elapsed = time.monotonic() - started

    def value(samples: dict, name: str) -> float:
        return samples.get((name, ()), 0.0)

    def rate(name: str) -> float | None:
        return None if interval <= 0 else (value(second, name) - value(first, name)) / elapsed

    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in second.items()
        if name == "callstream_write_lag_seconds_bucket"
    )
    before = {float(dict(labels)["le"]): count for (name, labels), count in first.items()
              if name == "callstream_write_lag_seconds_bucket"}
    recent = [(le, count - before.get(le, 0.0)) for le, count in buckets]
    window = f"the last {elapsed:.1f} s"
    if interval <= 0 or not recent or recent[-1][1] <= 0:
        recent, window = buckets, "since start"
    listed = calls.get("calls")
    shipping = calls.get("shipping")
    if shipping is None and ("callstream_ship_pending_recordings", ()) in second:
        shipping = {"pending": int(value(second, "callstream_ship_pending_recordings")),
                    "bytes": int(value(second, "callstream_store_pending_bytes")), "oldest_seconds": None}
    front_ends = calls.get("front_ends") or {
        dict(labels)["front_end"]: {"live": int(count), "oldest": None}
        for (name, labels), count in second.items() if name == "callstream_front_end_live_calls"
    }
    return Status(
        live=int(calls.get("live_calls", value(second, "callstream_live_calls"))),
        oldest=listed[0] if listed else None,
        per_call=listed is not None,
        front_ends=front_ends,
        calls_per_second=rate("callstream_calls_started_total"),
        frames_per_second=rate("callstream_media_messages_total"),
        lag_p99=_quantile(recent, 0.99),
        lag_window=window,
        disk_stalled=bool(calls.get("disk_stalled")) or value(second, "callstream_disk_stalled") > 0,
        disk_errors=value(second, "callstream_disk_errors_total"),
        draining=bool(calls.get("draining")) or value(second, "callstream_draining") > 0,
        shipping=shipping,
    )


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Upper bound of the cumulative bucket holding quantile ``q``; None with no observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    wanted = q * buckets[-1][1]
    return next(le for le, count in buckets if count >= wanted)


def _clock(seconds: float) -> str:
    whole = int(seconds)
    hours, minutes = divmod(whole // 60, 60)
    return f"{hours}:{minutes:02d}:{whole % 60:02d}" if hours else f"{minutes}:{whole % 60:02d}"


def _oldest(call: dict[str, Any] | None) -> str:
    return "" if call is None else f" (oldest {_clock(call['seconds'])}: {call['call_id']}/{call['session_id']})"


def _uploads(shipping: dict[str, Any]) -> str:
    pending = shipping["pending"]
    if not pending:
        return "none waiting"
    text = f"{pending} recording{'' if pending == 1 else 's'} waiting ({shipping['bytes'] / 1e6:,.1f} MB for the store"
    if shipping.get("oldest_seconds") is not None:
        text += f", oldest queued {_clock(shipping['oldest_seconds'])} ago"
    return text + ")"


def render(status: Status) -> str:
    """The lines `callstream status` prints: live calls, then one line per front end."""
    oldest = _oldest(status.oldest)
    if status.oldest is None and status.live and not status.per_call:
        oldest = " (per-call details not known: an older callstream)"

    def per_second(value: float | None, what: str) -> str:
        return "not measured (--interval 0)" if value is None else f"{value:,.1f} {what}/s"

    if status.lag_p99 is None:
        lag = "no blocks written yet"
    elif math.isinf(status.lag_p99):
        lag = f"p99 above the largest bucket ({status.lag_window})"
    else:
        lag = f"p99 <= {status.lag_p99:g} s ({status.lag_window})"
    disk = "STALLED: a write has hung past --disk-stall-timeout; new calls are refused" if status.disk_stalled \
        else "writing"
    if status.disk_errors:
        disk += f"; {status.disk_errors:.0f} recording errors since start"
    lines = [
        ("live calls", f"{status.live}{oldest}"),
        *((f"  {name}", f"{entry['live']}{_oldest(entry.get('oldest'))}")
          for name, entry in sorted(status.front_ends.items())),
        ("calls", per_second(status.calls_per_second, "started")),
        ("frames", per_second(status.frames_per_second, "Media messages")),
        ("write lag", lag),
        ("disk", disk),
        ("draining", "yes: new calls are refused, live ones finishing" if status.draining else "no"),
    ]
    if status.shipping is not None:
        lines.append(("uploads", _uploads(status.shipping)))
    return "\n".join(f"{name:<{LABEL_WIDTH}}{text}" for name, text in lines)
