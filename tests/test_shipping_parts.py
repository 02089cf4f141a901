"""The parts of shipping on their own: flags and settings, the spool's journal and claims, the
webhook signature, and verified uploads (multipart too) against a real `rclone serve s3`."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.cli import build_parser, settings_from
from callstream.shipping_settings import MIN_PART_BYTES, ShippingSettings, StoreLocation
from callstream.storage.shipping.spool import Spool
from callstream.storage.shipping.store import KeyTaken, ObjectStore, file_digests
from callstream.storage.shipping.webhook import sign, verify
from services import BUCKET, S3Server


def serve(*argv: str) -> object:
    return settings_from(build_parser({}).parse_args(["serve", *argv]), {})


def test_flags_build_shipping_settings(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("  s3cret\n")
    settings = serve("--store", "s3://bucket/a/b/", "--store-endpoint", "http://127.0.0.1:9000",
                     "--webhook-url", "https://hooks.example.com/x", "--webhook-secret-file", str(secret),
                     "--nats-url", "nats://127.0.0.1:4222", "--keep-local")
    shipping = settings.shipping  # type: ignore[attr-defined]
    assert shipping.store == StoreLocation("bucket", "a/b/")
    assert shipping.webhook_secret == b"s3cret"
    assert shipping.keep_local and shipping.nats_subject == "callstream.recordings"
    assert serve().shipping is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(("argv", "message"), [
    (["--webhook-url", "http://x/"], "needs --webhook-secret-file"),
    (["--store", "http://bucket/"], "s3://BUCKET"),
    (["--keep-local"], "need --webhook-url or --store"),
    (["--nats-url", "http://127.0.0.1:4222"], "nats://"),
    (["--store", "s3://b", "--store-part-size", "1024"], "at least"),
])
def test_bad_combinations_are_refused_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        serve(*argv)
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


@given(bucket=st.from_regex(r"[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", fullmatch=True),
       parts=st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True), max_size=3))
def test_store_url_round_trips(bucket: str, parts: list[str]) -> None:
    prefix = "/".join(parts)
    location = StoreLocation.parse(f"s3://{bucket}/{prefix}")
    assert location.bucket == bucket
    assert location.key("d/n.wav") == (prefix + "/" if prefix else "") + "d/n.wav"
    assert StoreLocation.parse(str(location)) == location


def test_spool_journal_claims_and_completion(tmp_path: Path) -> None:
    audio, sidecar = tmp_path / "d" / "a.wav", tmp_path / "d" / "a.json"
    audio.parent.mkdir()
    audio.write_bytes(b"x" * 100)
    sidecar.write_text("{}")
    spool = Spool(tmp_path)
    job = spool.enqueue(audio, sidecar)  # before `open`, as the recovery at start does
    spool.open()
    assert [item.id for item in spool.listing()] == [job.id]
    assert (job.audio, job.sidecar, job.bytes) == ("d/a.wav", "d/a.json", 102)
    other = Spool(tmp_path)  # as another process would: its own open file descriptions
    claim = spool.claim(job.id)
    assert claim is not None and claim.job == job
    assert other.claim(job.id) is None  # held
    spool.save_event(job, {"event_id": job.event_id})
    spool.mark_delivered(job, "webhook")
    claim.release()  # as a dead process's claim: the job is free again, its steps kept
    again = other.claim(job.id)
    assert again is not None
    assert other.event(job) == {"event_id": job.event_id}
    assert other.delivered(job, "webhook") and not other.delivered(job, "nats")
    other.complete(again, ("webhook", "nats"))
    assert spool.listing() == [] and list(spool.directory.iterdir()) == []


def test_spool_open_sweeps_leftovers_but_not_live_temporaries(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    (spool.directory / "gone.event").write_text("{}")  # its job was completed: a leftover
    fresh, stale = spool.directory / "x.job.tmp", spool.directory / "y.job.tmp"
    fresh.write_text("{")
    stale.write_text("{")
    os.utime(stale, (time.time() - 3600,) * 2)
    spool.open()
    assert sorted(p.name for p in spool.directory.iterdir()) == ["x.job.tmp"]


def test_signature_verifies_and_refuses_tampering_and_replays() -> None:
    body = b'{"event_id":"e"}'
    now = 1_800_000_000
    signature = sign(b"key", str(now), body)
    assert signature.startswith("v1=") and len(signature) == 3 + 64
    assert verify(b"key", str(now), body, signature, now=now + 10)
    assert not verify(b"key", str(now), body + b" ", signature, now=now)
    assert not verify(b"other", str(now), body, signature, now=now)
    assert not verify(b"key", str(now + 1), body, signature, now=now)  # the timestamp is signed
    assert not verify(b"key", str(now), body, signature, now=now + 301)  # a replay, too late


@pytest.mark.parametrize("size", [0, 1000, 2 * MIN_PART_BYTES + 12345], ids=["empty", "single", "multipart"])
def test_upload_is_verified_and_idempotent(tmp_path: Path, s3_server: S3Server, size: int) -> None:
    path = tmp_path / "file.wav"
    path.write_bytes(os.urandom(size))
    settings = ShippingSettings(store=StoreLocation(BUCKET, "t/"), store_endpoint=s3_server.endpoint,
                                store_part_bytes=MIN_PART_BYTES)
    store = ObjectStore(settings)
    store.connect()
    stored = store.upload(path, "t/file.wav")
    digests = file_digests(path, MIN_PART_BYTES)
    assert (digests.multipart_etag is not None) == (size >= MIN_PART_BYTES)
    assert stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert s3_server.read("t/file.wav") == path.read_bytes()
    assert store.upload(path, "t/file.wav") == stored  # already there: the same object
    other = tmp_path / "other.wav"
    other.write_bytes(b"different")
    with pytest.raises(KeyTaken):
        store.upload(other, "t/file.wav")
    assert store.upload(other, "t/file.wav", replace=True).size == len(b"different")


def test_verification_accepts_each_form_a_store_reports_and_nothing_else(tmp_path: Path) -> None:
    """AWS answers a multipart upload with ``MD5(part MD5s)-N`` and a composite SHA-256, other
    stores with the plain MD5: each confirms the file, a HEAD matching none of them does not."""
    import base64

    from callstream.storage.shipping.store import StoreError

    path = tmp_path / "f"
    data = os.urandom(2 * MIN_PART_BYTES + 1)
    path.write_bytes(data)
    parts = [data[i:i + MIN_PART_BYTES] for i in range(0, len(data), MIN_PART_BYTES)]
    aws_etag = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    composite = base64.b64encode(hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest())
    store = ObjectStore(ShippingSettings(store=StoreLocation("b", ""), store_endpoint="http://127.0.0.1:1",
                                         store_part_bytes=MIN_PART_BYTES))
    digests = file_digests(path, MIN_PART_BYTES)
    size = len(data)
    for head in ({"ETag": f'"{aws_etag}"'}, {"ETag": f'"{hashlib.md5(data).hexdigest()}"'},
                 {"ETag": '"kms"', "ChecksumSHA256": composite.decode() + "-3"},
                 {"ETag": '"kms"', "ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode()}):
        assert store._verified("k", {**head, "ContentLength": size}, digests).sha256 == digests.sha256
    for head in ({"ETag": '"0123"', "ContentLength": size},
                 {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "ContentLength": size - 1},
                 {"ETag": '"kms"', "ChecksumSHA256": composite.decode() + "-2", "ContentLength": size}):
        with pytest.raises(StoreError):
            store._verified("k", head, digests)


def test_the_supervisor_is_not_ready_past_the_workers_store_backlog(tmp_path: Path) -> None:
    from callstream.server.workers import Supervisor
    from callstream.settings import Settings

    audio, sidecar = tmp_path / "a.wav", tmp_path / "a.json"
    audio.write_bytes(b"x" * 5000)
    sidecar.write_text("{}")
    settings = Settings(output_dir=tmp_path, store="s3://b", store_max_local_bytes=4000)
    supervisor = Supervisor(settings, 1, tmp_path / "metrics")
    spool = Spool(tmp_path)
    spool.open()
    assert supervisor.readiness() is None
    job = spool.enqueue(audio, sidecar)  # a worker's job, waiting for the store
    supervisor._backlog_read = -1e9  # as if the last read were old
    assert "5002 bytes waiting for the store" in (supervisor.readiness() or "")
    spool.save_event(job, {})  # uploaded: only its event is left to send
    supervisor._backlog_read = -1e9
    assert supervisor.readiness() is None


def test_nats_without_a_stream_on_the_subject_says_so(nats_server: object) -> None:
    from callstream.storage.shipping.natsbus import NatsPublisher, PublishError

    publisher = NatsPublisher(nats_server.url, "nobody.listens")  # type: ignore[attr-defined]
    publisher.start()
    try:
        with pytest.raises(PublishError, match=r"no JetStream stream takes the subject 'nobody\.listens'"):
            publisher.publish("e", b"{}").result(15)
    finally:
        publisher.close()
