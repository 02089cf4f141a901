"""Shipping against real servers: `rclone serve s3`, `nats-server -js` and an HTTP receiver.

Recordings are read back from the store and compared sample by sample with what the call sent."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile
import trio

from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from callstream.settings import Settings
from callstream.shipping_settings import ShippingSettings
from callstream.storage.shipping.shipper import Shipper
from conftest import (
    call_messages,
    expected_stereo,
    metadata,
    random_frames,
    recordings,
    send_all,
    start_server,
    wait_for_calls,
)
from serverprocess import ServerProcess
from services import BUCKET, NatsServer, S3Server, WebhookReceiver
from wsclient import connect

SECRET = b"webhook-test-secret"
FRAMES = 50  # 20 ms each: one-second calls
STREAM = "RECORDINGS"
SUBJECT = "callstream.recordings"


def ship_settings(tmp_path: Path, **shipping: object) -> Settings:
    """A server's settings with the given shipping options; retries from 0.075 s to 0.3 s."""
    options: dict[str, object] = {"ship_retry_max": 0.3, **shipping}
    return Settings(host="127.0.0.1", port=0, output_dir=tmp_path / "recordings", flush_interval=0.2,
                    **options)  # type: ignore[arg-type]


def store_options(s3: S3Server) -> dict[str, object]:
    return {"store": f"s3://{BUCKET}/calls", "store_endpoint": s3.endpoint}


def a_call(call_id: str, seed: int) -> tuple[list[str], np.ndarray]:
    """The messages of a one-second call and the stereo audio a correct recording holds."""
    rng = np.random.default_rng(seed)
    agent, caller = random_frames(rng, FRAMES), random_frames(rng, FRAMES)
    media = [(p, seq, frames[seq - 1]) for seq in range(1, FRAMES + 1)
             for p, frames in ((Perspective.PARTICIPANT, agent), (Perspective.CONFERENCE, caller))]
    return call_messages(metadata(call_id), media), expected_stereo(agent, caller)


def key_of(call_id: str, suffix: str, number: int = 1) -> str:
    """The key of session 1 of ``call_id`` under the default template; NAME-number after the first."""
    name = f"{call_id}-1" if number == 1 else f"{call_id}-1-{number}"
    return f"calls/{datetime.now(UTC).date().isoformat()}/{name}{suffix}"


def decode(data: bytes) -> np.ndarray:
    audio, rate = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=True)
    assert rate == 8000
    return audio


async def until(predicate: Callable[[], object]) -> None:
    while not predicate():
        await trio.sleep(0.02)


@pytest.mark.parametrize("keep_local", [True, False], ids=["keep-local", "remove-local"])
async def test_call_is_uploaded_verified_and_announced(
    tmp_path: Path, nursery: trio.Nursery, s3_server: S3Server, nats_server: NatsServer, keep_local: bool
) -> None:
    receiver = WebhookReceiver(SECRET, fail_first=1)  # the first POST gets a 500: retried
    receiver.start()
    await trio.to_thread.run_sync(nats_server.add_stream, STREAM, SUBJECT)
    settings = ship_settings(tmp_path, **store_options(s3_server), keep_local=keep_local,
                             webhook_url=receiver.url, webhook_secret=SECRET, nats_url=nats_server.url)
    running = await start_server(nursery, settings)
    shipper = running.server.shipper
    assert shipper is not None
    messages, expected = a_call("ship", 1)
    with trio.fail_after(30):
        await send_all(running.url, messages)
        await wait_for_calls(running, 1)
        await until(lambda: shipper.statistics().pending_jobs == 0 and shipper.statistics().delivered == 2)
    receiver.stop()

    assert [d.status for d in receiver.deliveries] == [500, 204]
    assert all(d.signed for d in receiver.deliveries)
    assert len({d.event_id for d in receiver.deliveries}) == 1  # the same event, retried
    [event] = receiver.accepted()
    assert event["event_id"] == receiver.deliveries[0].event_id
    assert (event["callId"], event["sessionId"], event["status"], event["format"]) == ("ship", "1", "complete", "wav")
    assert event["duration_seconds"] == 1.0
    assert event["object"]["key"] == key_of("ship", ".wav")
    assert event["sidecar_object"]["key"] == key_of("ship", ".json")

    audio = await trio.to_thread.run_sync(s3_server.read, key_of("ship", ".wav"))
    np.testing.assert_array_equal(decode(audio), expected)
    assert hashlib.sha256(audio).hexdigest() == event["sha256"] == event["sidecar"]["sha256"]
    stored_sidecar = json.loads(await trio.to_thread.run_sync(s3_server.read, key_of("ship", ".json")))
    assert stored_sidecar["store"]["key"] == key_of("ship", ".wav")
    assert stored_sidecar["store"]["bucket"] == BUCKET
    assert event["sidecar"] == stored_sidecar

    local = recordings(settings.output_dir)
    if keep_local:
        [(path, sidecar)] = local
        assert path.read_bytes() == audio
        assert sidecar == stored_sidecar
        assert event["path"] == path.relative_to(settings.output_dir).as_posix()
    else:
        assert local == []
        assert event["path"] is None

    stream = await trio.to_thread.run_sync(nats_server.messages, STREAM, SUBJECT)
    [(headers, payload, _)] = stream
    assert headers["Nats-Msg-Id"] == event["event_id"]
    assert json.loads(payload) == event


async def test_store_outage_keeps_recording_then_uploads(
    tmp_path: Path, nursery: trio.Nursery, s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callstream.storage.shipping")
    await trio.to_thread.run_sync(s3_server.stop)
    settings = ship_settings(tmp_path, **store_options(s3_server), store_max_local_bytes=1000)
    running = await start_server(nursery, settings)
    shipper = running.server.shipper
    assert shipper is not None
    assert running.server.readiness() is None
    messages, expected = a_call("outage", 2)
    with trio.fail_after(30):
        await send_all(running.url, messages)
        await wait_for_calls(running, 1)
        await until(lambda: shipper.statistics().failures >= 3)  # tried, and retried
    [(path, sidecar)] = recordings(settings.output_dir)
    assert sidecar["status"] == "complete"  # recording went on; the disk holds it
    assert shipper.statistics().pending_jobs == 1
    assert shipper.statistics().pending_bytes > 1000
    assert "waiting for the store" in (running.server.readiness() or "")
    rendered = running.server.metrics.render().decode()
    assert "callstream_store_pending_bytes " in rendered and "callstream_store_pending_bytes 0.0" not in rendered
    assert 'callstream_ship_failures_total{destination="store"}' in rendered

    await trio.to_thread.run_sync(s3_server.start)  # the store is back, on the same port
    with trio.fail_after(30):
        await until(lambda: shipper.statistics().pending_jobs == 0)
    assert running.server.readiness() is None
    audio = await trio.to_thread.run_sync(s3_server.read, key_of("outage", ".wav"))
    np.testing.assert_array_equal(decode(audio), expected)
    assert not path.exists()
    logged = [r.getMessage() for r in caplog.records if r.name == "callstream.storage.shipping"]
    assert sum("the store unavailable" in line for line in logged) == 1  # once per outage, not per retry
    assert sum("the store available again" in line for line in logged) == 1


async def test_sigkill_with_pending_uploads_then_restart_ships_them(tmp_path: Path, s3_server: S3Server) -> None:
    """A finished call waiting for the store and a live call (recovered at restart) both reach
    the store after the recorder is killed and started again."""
    await trio.to_thread.run_sync(s3_server.stop)
    output = tmp_path / "recordings"
    args = ("--flush-interval", "0.2", "--store", f"s3://{BUCKET}/calls", "--store-endpoint", s3_server.endpoint,
            "--ship-retry-max", "0.3")
    first = await trio.to_thread.run_sync(lambda: ServerProcess(output, *args))
    messages, expected = a_call("done", 3)
    with trio.fail_after(60):
        await send_all(first.url, messages)
        await trio.to_thread.run_sync(first.wait_for, "the store unavailable")
        live = await connect(first.url, "/" + build_query(metadata("live")))
        await live.send(encode_connected())
        await live.send(encode_start(metadata("live")))
        for seq in range(1, FRAMES + 1):
            for perspective in Perspective:
                await live.send(encode_media(perspective, seq, b"\x55" * 160))
        await until(lambda: any(p.stat().st_size > 44 for p in output.rglob("live-1.partial.wav")))
        first.stop(signal.SIGKILL)
        await live.drop()

        await trio.to_thread.run_sync(s3_server.start)
        second = await trio.to_thread.run_sync(lambda: ServerProcess(output, *args))
        try:
            wanted = {key_of(name, suffix) for name in ("done", "live") for suffix in (".wav", ".json")}
            while not wanted <= set(await trio.to_thread.run_sync(s3_server.keys)):
                await trio.sleep(0.1)
        finally:
            second.stop()
    np.testing.assert_array_equal(decode(s3_server.read(key_of("done", ".wav"))), expected)
    recovered = json.loads(s3_server.read(key_of("live", ".json")))
    assert recovered["status"] == "recovered"
    assert recovered["store"]["key"] == key_of("live", ".wav")
    assert recordings(output) == []


async def test_recover_by_hand_queues_for_the_next_serve(tmp_path: Path, s3_server: S3Server) -> None:
    """A recorder killed mid-call; `callstream recover DIR` with the serve's shipping flags finishes
    the partial recording and journals it, so the next `serve` (which has nothing left to recover)
    ships it: the object is the recovered file byte for byte."""
    output = tmp_path / "recordings"
    store = ("--store", f"s3://{BUCKET}/calls", "--store-endpoint", s3_server.endpoint, "--keep-local")
    first = await trio.to_thread.run_sync(lambda: ServerProcess(output, "--flush-interval", "0.2"))
    with trio.fail_after(60):
        live = await connect(first.url, "/" + build_query(metadata("killed")))
        await live.send(encode_connected())
        await live.send(encode_start(metadata("killed")))
        rng = np.random.default_rng(14)
        agent, caller = random_frames(rng, FRAMES), random_frames(rng, FRAMES)
        for seq in range(1, FRAMES + 1):
            await live.send(encode_media(Perspective.PARTICIPANT, seq, agent[seq - 1]))
            await live.send(encode_media(Perspective.CONFERENCE, seq, caller[seq - 1]))
        await until(lambda: any(p.stat().st_size > 44 for p in output.rglob("killed-1.partial.wav")))
        first.stop(signal.SIGKILL)
        await live.drop()

        done = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "callstream", "recover", str(output), *store], capture_output=True, text=True,
            timeout=60))
        assert done.returncode == 0, done.stderr
        assert done.stdout == "1 recordings recovered, 1 queued for shipping\n"
        [(path, sidecar)] = recordings(output)
        assert sidecar["status"] == "recovered"
        recovered = path.read_bytes()
        frames = decode(recovered)
        assert len(frames) > 0
        np.testing.assert_array_equal(frames, expected_stereo(agent, caller)[: len(frames)])

        second = await trio.to_thread.run_sync(lambda: ServerProcess(output, *store, "--ship-retry-max", "0.3"))
        try:
            while key_of("killed", ".json") not in await trio.to_thread.run_sync(s3_server.keys):
                await trio.sleep(0.1)
        finally:
            second.stop()
    assert "left by an interrupted run" not in "".join(second.log)  # nothing left for its own recovery
    assert s3_server.read(key_of("killed", ".wav")) == recovered
    assert json.loads(s3_server.read(key_of("killed", ".json")))["status"] == "recovered"


async def test_without_a_store_the_event_names_the_local_file(tmp_path: Path, nursery: trio.Nursery) -> None:
    receiver = WebhookReceiver(SECRET)
    receiver.start()
    settings = ship_settings(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET)
    running = await start_server(nursery, settings)
    messages, _ = a_call("local", 4)
    with trio.fail_after(30):
        await send_all(running.url, messages)
        await until(receiver.accepted)
    receiver.stop()
    [event] = receiver.accepted()
    [(path, sidecar)] = recordings(settings.output_dir)
    assert event["object"] is None and event["sidecar_object"] is None
    assert event["path"] == path.relative_to(settings.output_dir).as_posix()
    assert event["sidecar"] == sidecar and "store" not in sidecar
    assert event["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_key_holding_another_object_is_never_overwritten(
    tmp_path: Path, nursery: trio.Nursery, s3_server: S3Server
) -> None:
    """A recording whose local copy was removed after its upload no longer holds its name, so a
    later stream of the same call and session may be given the same name: it goes to NAME-2."""
    client = s3_server.client()
    await trio.to_thread.run_sync(lambda: client.put_object(Bucket=BUCKET, Key=key_of("again", ".wav"), Body=b"old"))
    settings = ship_settings(tmp_path, **store_options(s3_server))
    running = await start_server(nursery, settings)
    shipper = running.server.shipper
    assert shipper is not None
    messages, expected = a_call("again", 5)
    with trio.fail_after(30):
        await send_all(running.url, messages)
        await wait_for_calls(running, 1)
        await until(lambda: shipper.statistics().uploaded == 1)
    assert s3_server.read(key_of("again", ".wav")) == b"old"
    np.testing.assert_array_equal(decode(s3_server.read(key_of("again", ".wav", 2))), expected)
    stored_sidecar = json.loads(s3_server.read(key_of("again", ".json", 2)))
    assert stored_sidecar["store"]["key"] == key_of("again", ".wav", 2)


async def test_drain_ships_the_last_recordings_within_its_timeout(tmp_path: Path, nursery: trio.Nursery) -> None:
    receiver = WebhookReceiver(SECRET, fail_first=2)
    receiver.start()
    settings = ship_settings(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET)
    running = await start_server(nursery, settings)
    shipper = running.server.shipper
    assert shipper is not None
    messages, _ = a_call("last", 6)
    with trio.fail_after(30):
        await send_all(running.url, messages)
        await wait_for_calls(running, 1)
        await running.server.drain(20)
    receiver.stop()
    assert shipper.statistics().pending_jobs == 0
    assert [d.status for d in receiver.deliveries] == [500, 500, 204]


async def test_a_recording_removed_by_hand_is_dropped_from_the_queue(
    tmp_path: Path, nursery: trio.Nursery, s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    await trio.to_thread.run_sync(s3_server.stop)
    settings = ship_settings(tmp_path, **store_options(s3_server))
    running = await start_server(nursery, settings)
    shipper = running.server.shipper
    assert shipper is not None
    messages, _ = a_call("removed", 7)
    with trio.fail_after(30):
        await send_all(running.url, messages)
        await wait_for_calls(running, 1)
        await until(lambda: shipper.statistics().failures >= 1)
        [(path, _)] = recordings(settings.output_dir)
        path.unlink()
        await trio.to_thread.run_sync(s3_server.start)
        await until(lambda: shipper.statistics().pending_jobs == 0)
    assert shipper.statistics().uploaded == 0
    assert await trio.to_thread.run_sync(s3_server.keys) == []
    assert any("removed-1.wav is gone" in r.getMessage() for r in caplog.records)


async def test_a_hung_delivery_does_not_hold_up_the_next_calls_journal(tmp_path: Path, nursery: trio.Nursery) -> None:
    release = threading.Event()
    receiver = WebhookReceiver(SECRET, hold_first=release)
    receiver.start()
    settings = ship_settings(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET, ship_threads=1)
    running = await start_server(nursery, settings)
    shipper = running.server.shipper
    assert shipper is not None
    try:
        with trio.fail_after(30):
            await send_all(running.url, a_call("first", 8)[0])
            await until(lambda: receiver._held)  # its delivery hangs in the only network thread
            await send_all(running.url, a_call("second", 9)[0])
            await until(lambda: shipper.statistics().pending_jobs == 2)  # journalled and queued all the same
    finally:
        release.set()
    with trio.fail_after(30):
        await until(lambda: shipper.statistics().pending_jobs == 0)
    receiver.stop()
    assert sorted(event["callId"] for event in receiver.accepted()) == ["first", "second"]


async def test_a_backlog_waits_on_disk_beyond_the_jobs_held(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A process holds at most max_claims jobs (an open descriptor each); the rest of a backlog
    waits in the spool, is counted, and is shipped as slots come free."""
    release = threading.Event()
    receiver = WebhookReceiver(SECRET, hold_first=release)
    receiver.start()
    output = tmp_path / "recordings"
    output.mkdir()
    shipping = ShippingSettings(webhook_url=receiver.url, webhook_secret=SECRET, retry_min=0.05, retry_max=0.3,
                                threads=1)
    shipper = Shipper(shipping, output, max_claims=2)
    await nursery.start(shipper.run)
    for index in range(5):
        (output / f"c{index}.wav").write_bytes(b"RIFF")
        (output / f"c{index}.json").write_text(json.dumps({"callId": f"c{index}", "status": "complete"}))
        await shipper.enqueue(output / f"c{index}.wav", output / f"c{index}.json")
    try:
        with trio.fail_after(30):
            await until(lambda: receiver._held)
        statistics = shipper.statistics()
        assert (statistics.pending_jobs, statistics.held) == (5, 2)
    finally:
        release.set()
    with trio.fail_after(30):
        await until(lambda: shipper.statistics().pending_jobs == 0)
    receiver.stop()
    assert sorted(event["callId"] for event in receiver.accepted()) == [f"c{index}" for index in range(5)]


async def test_sighup_reload_signs_later_events_with_the_new_key(tmp_path: Path, nursery: trio.Nursery) -> None:
    key = tmp_path / "webhook.key"
    key.write_bytes(SECRET + b"\n")
    receiver = WebhookReceiver(SECRET)
    receiver.start()
    settings = ship_settings(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET, webhook_secret_file=key)
    running = await start_server(nursery, settings)
    with trio.fail_after(30):
        await send_all(running.url, a_call("before", 10)[0])
        await until(lambda: len(receiver.deliveries) == 1)
        key.write_bytes(b"rotated-key")
        receiver.secret = b"rotated-key"
        await running.server.reload()
        await send_all(running.url, a_call("after", 11)[0])
        await until(lambda: len(receiver.deliveries) == 2)
    receiver.stop()
    assert [json.loads(d.body)["callId"] for d in receiver.deliveries] == ["before", "after"]
    assert all(d.signed for d in receiver.deliveries)


async def test_nats_outage_then_the_event_is_acknowledged(
    tmp_path: Path, nursery: trio.Nursery, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    await trio.to_thread.run_sync(nats_server.add_stream, STREAM, SUBJECT)
    settings = ship_settings(tmp_path, nats_url=nats_server.url)
    running = await start_server(nursery, settings)
    shipper = running.server.shipper
    assert shipper is not None
    with trio.fail_after(60):
        await send_all(running.url, a_call("first", 12)[0])
        await until(lambda: shipper.statistics().delivered == 1)  # connected once
        await trio.to_thread.run_sync(nats_server.stop)
        await send_all(running.url, a_call("second", 13)[0])
        await until(lambda: shipper.statistics().failures >= 1)
        assert shipper.statistics().pending_jobs == 1
        await trio.to_thread.run_sync(nats_server.start)  # same port, same stream
        await until(lambda: shipper.statistics().pending_jobs == 0)
    stream = await trio.to_thread.run_sync(nats_server.messages, STREAM, SUBJECT)
    assert sorted(json.loads(message.data)["callId"] for message in stream) == ["first", "second"]
    logged = [r.getMessage() for r in caplog.records if r.name == "callstream.storage.shipping"]
    assert sum("NATS unavailable" in line for line in logged) == 1
    assert sum("NATS available again" in line for line in logged) == 1


async def test_a_ringcx_dialog_is_announced_too(tmp_path: Path) -> None:
    """The RingCX front end's recordings finish through another path of the server: shipped alike."""
    from callstream.sim import ringcx_client
    from test_ringcx_server import play as play_dialog
    from test_ringcx_server import ringcx_server

    receiver = WebhookReceiver(SECRET)
    receiver.start()
    settings = replace(ship_settings(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET),
                       ringcx_port=0, ringcx_plaintext=True)
    script = ringcx_client.platform_dialog("dialog-7", seconds=1.0, agent_join=0.2, hold=None, transfer=None)
    with trio.fail_after(40):
        async with ringcx_server(settings) as running:
            await play_dialog(running.target, script.steps, realtime=False)
            await until(receiver.accepted)
            assert running.server.shipper is not None
    receiver.stop()
    [event] = receiver.accepted()
    [(path, sidecar)] = recordings(settings.output_dir)
    assert event["sidecar"] == sidecar and event["status"] == sidecar["status"]
    assert event["path"] == path.relative_to(settings.output_dir).as_posix()
    assert event["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
