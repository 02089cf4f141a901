"""/metrics, /healthz and /readyz of a real server on 127.0.0.1, read over real HTTP requests."""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace

import h11
import numpy as np
import prometheus_client
import pytest
import soundfile
import trio
from prometheus_client.parser import text_string_to_metric_families

import callstream
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from callstream.errors import RecordingError
from callstream.server.metrics import WRITE_LAG_BUCKETS, Metrics
from callstream.settings import Settings
from callstream.storage.recording import Recording
from conftest import (
    RunningServer,
    call_messages,
    expect_rejection,
    metadata,
    random_frames,
    send_all,
    start_server,
    wait_for_calls,
)
from wsclient import Closed, connect

P, C = Perspective.PARTICIPANT, Perspective.CONFERENCE
TIMEOUT = 30  # seconds: a hang fails the test instead of blocking the suite


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Running:
    ws: RunningServer
    metrics_port: int

    async def get(self, target: str, method: str = "GET") -> Response:
        [response] = await http(self.metrics_port, [(method, target)])
        return response

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample: (name, sorted labels) -> value."""
        response = await self.get("/metrics")
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.body.decode())
            for sample in family.samples
        }


async def http(port: int, requests: list[tuple[str, str]]) -> list[Response]:
    """Send the requests on one keep-alive connection (h11 client); the responses in order."""
    client = h11.Connection(h11.CLIENT)
    responses = []
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        for method, target in requests:
            await stream.send_all(
                client.send(h11.Request(method=method, target=target, headers=[("Host", "x")]))
            )
            await stream.send_all(client.send(h11.EndOfMessage()))
            head, body = None, b""
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(65536))
                elif type(event) is h11.Response:
                    head = event
                elif type(event) is h11.Data:
                    body += event.data
                elif type(event) is h11.EndOfMessage:
                    break
                else:
                    raise AssertionError(f"unexpected {event!r}")
            assert head is not None
            headers = {name.decode().lower(): value.decode() for name, value in head.headers}
            responses.append(Response(head.status_code, headers, body))
            client.start_next_cycle()
    return responses


async def start(nursery: trio.Nursery, settings: Settings) -> Running:
    ws = await start_server(nursery, replace(settings, metrics_port=0))
    endpoint = await nursery.start(ws.server.serve_metrics)
    assert endpoint.host == "127.0.0.1"
    assert endpoint.port != 0
    return Running(ws, endpoint.port)


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def in_order(agent: list[bytes], caller: list[bytes]) -> list[tuple[Perspective, int, bytes]]:
    return [
        item
        for seq, (a, c) in enumerate(zip(agent, caller, strict=True), 1)
        for item in ((P, seq, a), (C, seq, c))
    ]


def messy_media(agent: list[bytes], caller: list[bytes]) -> list[tuple[Perspective, int, bytes]]:
    """40 frames a side; the agent's 10 never comes (a gap), its 5 and 20 come twice (duplicates)
    and, after its 35, a different frame 3 arrives far too late (a late drop)."""
    media = []
    for seq in range(1, 41):
        if seq != 10:
            media.append((P, seq, agent[seq - 1]))
        media.append((C, seq, caller[seq - 1]))
        if seq == 5:
            media.append((P, 5, agent[4]))
        if seq == 30:
            media.append((P, 20, agent[19]))
        if seq == 35:
            media.append((P, 3, bytes(160)))
    return media


async def test_known_workload_scrapes_exact_values(
    nursery: trio.Nursery, settings: Settings
) -> None:
    running = await start(nursery, replace(settings, max_calls=2))
    url = running.ws.url
    rng = np.random.default_rng(21)
    plain_agent, plain_caller = random_frames(rng, 50), random_frames(rng, 50)
    messy_agent, messy_caller = random_frames(rng, 40), random_frames(rng, 40)
    messy = call_messages(metadata("messy"), messy_media(messy_agent, messy_caller), stops=1)
    messy[5:5] = ["not json", '{"event": "Media", "perspective": "Participant", "sequenceId": "x"}']
    with trio.fail_after(TIMEOUT):
        before = await running.scrape()
        await send_all(url, call_messages(metadata("plain"), in_order(plain_agent, plain_caller)))
        await send_all(url, messy)
        await wait_for_calls(running.ws, 2)
        holders = [await connect(url, "/" + build_query(metadata(name))) for name in ("a", "b")]
        assert (await running.get("/readyz")).status == 503  # at --max-calls
        assert (await expect_rejection(url)).status == 503
        for holder in holders:
            await holder.close()
        await wait_for_calls(running.ws, 4)
        assert (await running.get("/readyz")).status == 200
        after = await running.scrape()

    assert all(v == 0 for (name, _), v in before.items()
               if name.startswith("callstream_") and name != "callstream_build_info"), before
    expected = {
        "callstream_live_calls": 0,
        "callstream_calls_started_total": 4,
        "callstream_media_messages_total": 100 + 39 + 40 + 3,
        "callstream_media_bytes_total": (100 + 79)
        * 160,  # placed frames: no duplicates, no late drop
        "callstream_gaps_total": 1,
        "callstream_gap_seconds_total": 0.02,
        "callstream_duplicates_total": 2,
        "callstream_late_drops_total": 1,
        "callstream_bad_messages_total": 2,
        "callstream_recordings_written_total": 2,  # the holders sent no Start and no audio
        "callstream_recordings_recovered_total": 0,
        "callstream_disk_errors_total": 0,
    }
    assert {name: value(after, name) for name in expected} == pytest.approx(expected)
    finished = {
        status: value(after, "callstream_calls_finished_total", status=status)
        for status in ("complete", "incomplete", "failed")
    }
    assert finished == {"complete": 1, "incomplete": 3, "failed": 0}
    rejected = {
        reason: value(after, "callstream_calls_rejected_total", reason=reason)
        for reason in ("draining", "capacity", "unauthorized")
    }
    assert rejected == {"draining": 0, "capacity": 1, "unauthorized": 0}
    buckets = sorted(
        float(dict(labels)["le"])
        for name, labels in after
        if name == "callstream_write_lag_seconds_bucket"
    )
    assert buckets == [*WRITE_LAG_BUCKETS, float("inf")]
    blocks = value(after, "callstream_write_lag_seconds_count")
    assert blocks >= 2  # at least one block per recording
    assert value(after, "callstream_write_lag_seconds_bucket", le="+Inf") == blocks
    assert 0 <= value(after, "callstream_write_lag_seconds_sum") < blocks * 10


async def test_counters_move_once_per_flush_interval_while_a_call_is_live(
    nursery: trio.Nursery, settings: Settings
) -> None:
    running = await start(nursery, settings)
    frames = random_frames(np.random.default_rng(24), 30)
    with trio.fail_after(TIMEOUT):
        client = await connect(running.ws.url, "/" + build_query(metadata("live")))
        for message in call_messages(metadata("live"), in_order(frames, frames), stops=0):
            await client.send(message)
        while value(samples := await running.scrape(), "callstream_media_messages_total") < 60:
            await trio.sleep(0.05)  # the recorder reports once per flush interval (0.2 s here)
        assert value(samples, "callstream_live_calls") == 1
        assert value(samples, "callstream_calls_finished_total", status="incomplete") == 0
        await client.close()
        await wait_for_calls(running.ws, 1)
        samples = await running.scrape()
    assert value(samples, "callstream_live_calls") == 0
    assert value(samples, "callstream_media_messages_total") == 60


async def test_readyz_is_503_while_draining_healthz_stays_200(
    nursery: trio.Nursery, settings: Settings
) -> None:
    running = await start(nursery, settings)
    with trio.fail_after(TIMEOUT):
        ready = await running.get("/readyz")
        assert (ready.status, ready.body) == (200, b"ready\n")
        await running.ws.server.drain(0.1)
        draining = await running.get("/readyz")
        assert (draining.status, draining.body) == (503, b"draining\n")
        assert (await expect_rejection(running.ws.url)).status == 503
        health = await running.get("/healthz")
        assert (health.status, health.body) == (200, b"ok\n")
        samples = await running.scrape()
    assert value(samples, "callstream_calls_rejected_total", reason="draining") == 1
    assert value(samples, "callstream_draining") == 1


async def test_paths_methods_keep_alive_and_garbage(
    nursery: trio.Nursery, settings: Settings
) -> None:
    running = await start(nursery, settings)
    with trio.fail_after(TIMEOUT):
        responses = await http(
            running.metrics_port,
            [("GET", "/nope"), ("GET", "/healthz?x=1"), ("POST", "/metrics"), ("HEAD", "/metrics")],
        )
        assert [r.status for r in responses] == [404, 200, 405, 200]
        assert responses[2].headers["allow"] == "GET, HEAD"
        assert responses[3].body == b""
        assert int(responses[3].headers["content-length"]) > 0
        async with await trio.open_tcp_stream("127.0.0.1", running.metrics_port) as stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert (await running.get("/healthz")).status == 200  # the endpoint still serves


async def test_wrong_secret_counts_as_unauthorized(
    nursery: trio.Nursery, settings: Settings
) -> None:
    running = await start(nursery, replace(settings, secret="s3cret"))
    with trio.fail_after(TIMEOUT):
        rejection = await expect_rejection(running.ws.url, "/", [("Authorization", "Bearer wrong")])
        assert rejection.status == 401
        samples = await running.scrape()
    assert value(samples, "callstream_calls_rejected_total", reason="unauthorized") == 1
    assert value(samples, "callstream_calls_started_total") == 0


async def test_disk_error_counts_and_fails_the_call(
    nursery: trio.Nursery, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(self: Recording, left: bytes, right: bytes) -> None:
        raise RecordingError(f"cannot write {self.partial_path}: {errno.errorcode[errno.ENOSPC]}")

    monkeypatch.setattr(Recording, "write", full_disk)
    monkeypatch.setattr(Recording, "plan", lambda self, left, right: None)  # no batched appends
    running = await start(nursery, settings)
    frames = random_frames(np.random.default_rng(22), 100)
    with trio.fail_after(TIMEOUT):
        client = await connect(running.ws.url, "/" + build_query(metadata("doomed")))
        try:
            for message in call_messages(metadata("doomed"), in_order(frames, frames), stops=0):
                await client.send(message)
            while True:
                await client.receive()
        except Closed as closed:
            assert closed.code == 1011
        await client.close()
        await wait_for_calls(running.ws, 1)
        samples = await running.scrape()
    assert value(samples, "callstream_disk_errors_total") == 1
    assert value(samples, "callstream_calls_finished_total", status="failed") == 1
    assert value(samples, "callstream_write_lag_seconds_count") == 0


async def test_recovery_at_start_counts_recovered_recordings(
    nursery: trio.Nursery, settings: Settings
) -> None:
    day = settings.output_dir / "2026-01-01"
    day.mkdir(parents=True)
    for name in ("a", "b"):
        soundfile.write(
            str(day / f"{name}.partial.wav"), np.zeros((800, 2), np.int16), 8000, subtype="PCM_16"
        )
    running = await start(nursery, settings)
    with trio.fail_after(TIMEOUT):
        recovered = await running.ws.server.recover()
        samples = await running.scrape()
    assert len(recovered) == 2
    assert value(samples, "callstream_recordings_recovered_total") == 2


async def test_servers_in_one_process_have_their_own_counters(
    nursery: trio.Nursery, settings: Settings
) -> None:
    first = await start(nursery, replace(settings, output_dir=settings.output_dir / "1"))
    second = await start(nursery, replace(settings, output_dir=settings.output_dir / "2"))
    frames = random_frames(np.random.default_rng(23), 10)
    with trio.fail_after(TIMEOUT):
        await send_all(first.ws.url, call_messages(metadata("one"), in_order(frames, frames)))
        await wait_for_calls(first.ws, 1)
        one, two = await first.scrape(), await second.scrape()
    assert value(one, "callstream_media_messages_total") == 20
    assert value(two, "callstream_media_messages_total") == 0
    assert not [
        name
        for name in prometheus_client.REGISTRY._names_to_collectors
        if name.startswith("callstream")
    ]


def test_metrics_render_without_a_server() -> None:
    metrics = Metrics()
    metrics.call_started()
    text = metrics.render().decode()
    assert "callstream_calls_started_total 1.0" in text
    assert "callstream_live_calls 1.0" in text


async def test_process_build_and_state_metrics_and_no_created_series(
    nursery: trio.Nursery, settings: Settings
) -> None:
    running = await start(nursery, settings)
    with trio.fail_after(TIMEOUT):
        text = (await running.get("/metrics")).body.decode()
        samples = await running.scrape()
    assert "_created" not in text
    assert value(samples, "process_resident_memory_bytes") > 1e6
    assert value(samples, "process_cpu_seconds_total") > 0
    assert 0 < value(samples, "process_open_fds") < value(samples, "process_max_fds")
    [build] = [labels for name, labels in samples if name == "callstream_build_info"]
    assert dict(build)["version"] == callstream.__version__ and dict(build)["codec"]
    assert value(samples, "callstream_draining") == 0
    assert value(samples, "callstream_disk_stalled") == 0
