"""A fleet end to end: three real nodes (``callstream serve`` processes) behind a real Caddy with
the configuration `callstream.fleet.caddyfile` writes: least-connections, active health checks on
/readyz, a drained node, a killed one. Calls are played through the balancer with the tests'
WebSocket client and every recording is read back and compared sample by sample."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import trio

from callstream.codec import decode_ulaw_stereo
from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start, encode_stop
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.query import build_query
from callstream.fleet.processes import Balancer, FleetError, Node, start_nodes
from callstream.fleet.services import PREFIX, Shipping
from callstream.sim.simulate import noisy_tone_audio
from callstream.storage.recording import read_sidecar
from conftest import expected_stereo, metadata, random_frames, read_audio
from wsclient import Closed, Rejected, WsClient, connect

FRAME = 0.02  # seconds per frame
FLUSH_INTERVAL = 0.5  # seconds: a killed node's partial file is at most about this far behind
HEALTH_INTERVAL = 0.25  # seconds between Caddy's checks of each /readyz
RETRIES = 3  # the platform retries a failed upgrade up to three times
NODE_ARGS = ("--flush-interval", str(FLUSH_INTERVAL), "--log-level", "info")


@dataclass
class Fleet:
    nodes: list[Node]
    balancer: Balancer

    def node_of(self, call_id: str) -> int | None:
        """The index of the node holding any file of ``call_id`` (live or finished), else None."""
        for index, node in enumerate(self.nodes):
            if any(node.output_dir.rglob(f"{call_id}-1.*")):
                return index
        return None


@contextmanager
def running_fleet(root: Path, shipping: Shipping | None = None) -> Iterator[Fleet]:
    """Three nodes (shipping to ``shipping`` when given, local copies kept) behind Caddy."""
    args, env = NODE_ARGS, None
    if shipping is not None:
        args, env = (*NODE_ARGS, *shipping.node_flags()), shipping.node_env()
    nodes = start_nodes(3, root, args, env)
    balancer = None
    try:
        balancer = Balancer(root / "caddy", [node.address for node in nodes], nodes[0].metrics_port,
                            health_interval=HEALTH_INTERVAL, health_timeout=1.0, fail_duration=2.0,
                            try_duration=3.0, try_interval=0.1)
        yield Fleet(nodes, balancer)
    finally:
        if balancer is not None:
            balancer.stop(timeout=10)  # Caddy waits for open tunnels: a failed test may leave some
        for node in nodes:
            node.stop(signal.SIGKILL)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path) as running:
        yield running


@pytest.fixture
def shipping(tmp_path: Path) -> Iterator[Shipping]:
    """rclone serve s3, nats-server -js and a webhook receiver (callstream.fleet.services)."""
    services = Shipping(tmp_path / "shipping")
    try:
        yield services
    finally:
        services.stop()


@dataclass
class Call:
    """One call played through the balancer: ``frames`` for both sides, 20 ms apart."""

    call_id: str
    frames: list[bytes]
    attempts: int = 0
    close_code: int | None = None
    sent: int = 0  # frames sent so far
    accepted: trio.Event = field(default_factory=trio.Event)
    halfway: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)

    async def play(self, url: str) -> None:
        try:
            client = await self._connect(url)
            self.accepted.set()
            try:
                await client.send(encode_connected())
                await client.send(encode_start(metadata(self.call_id)))
                start = trio.current_time()
                for seq, frame in enumerate(self.frames, 1):
                    await trio.sleep_until(start + seq * FRAME)
                    for perspective in Perspective:
                        await client.send(encode_media(perspective, seq, frame))
                    self.sent = seq
                    if seq == len(self.frames) // 2:
                        self.halfway.set()
                for _ in range(2):
                    await client.send(encode_stop(len(self.frames) * FRAME, "2026-12-06T00:00:00Z"))
                await client.receive()
            except Closed as closed:
                self.close_code = closed.code
            finally:
                await client.drop()
        finally:
            self.done.set()

    async def _connect(self, url: str) -> WsClient:
        """The platform's retry: a refused or failed upgrade is tried again, three times at most."""
        while True:
            self.attempts += 1
            try:
                return await connect(url, "/" + build_query(metadata(self.call_id)))
            except (Rejected, Closed, OSError) as error:
                if (isinstance(error, Rejected) and error.status < 500) or self.attempts > RETRIES:
                    raise
            await trio.sleep(0.2)


def make_calls(seed: int, lengths: dict[str, int]) -> dict[str, Call]:
    rng = np.random.default_rng(seed)
    return {call_id: Call(call_id, random_frames(rng, count)) for call_id, count in lengths.items()}


async def finished_sidecar(node: Node, call_id: str) -> tuple[Path, dict]:
    """The call's sidecar once its recording is finished (the node finishes it after the close)."""
    while True:
        path = next(node.output_dir.rglob(f"{call_id}-1.json"), None)
        if path is not None and (sidecar := read_sidecar(path))["status"] != "recording":
            return path, sidecar
        await trio.sleep(0.05)


async def assert_complete(node: Node, call: Call) -> None:
    """The call's recording on ``node`` is complete and holds exactly what was sent."""
    assert call.close_code == 1000, (call.call_id, call.close_code)
    with trio.fail_after(10):
        path, sidecar = await finished_sidecar(node, call.call_id)
    assert sidecar["status"] == "complete"
    audio = read_audio(path.parent / sidecar["file"])
    np.testing.assert_array_equal(audio, expected_stereo(call.frames, call.frames))


async def start_one(nursery: trio.Nursery, fleet: Fleet, call: Call) -> int:
    """Start ``call`` and wait until it is accepted and its node has its file; returns the node."""
    nursery.start_soon(call.play, fleet.balancer.url)
    await call.accepted.wait()
    while (index := fleet.node_of(call.call_id)) is None:
        await trio.sleep(0.02)
    return index


def readiness(node: Node) -> int:
    try:
        with urllib.request.urlopen(f"http://{node.host}:{node.metrics_port}/readyz", timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


async def test_calls_go_to_the_node_with_the_fewest_live_calls(fleet: Fleet) -> None:
    calls = make_calls(1, {"long-1": 250, "short": 100, "long-2": 250, "next": 60})
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            placed = [await start_one(nursery, fleet, calls[name]) for name in ("long-1", "short", "long-2")]
            assert sorted(placed) == [0, 1, 2], "three calls, one on each node"
            live = await trio.to_thread.run_sync(fleet.balancer.live_requests)
            assert live == {node.address: 1 for node in fleet.nodes}, "a call's tunnel counts while it lasts"
            await calls["short"].done.wait()
            short_node = fleet.nodes[placed[1]].address
            while (await trio.to_thread.run_sync(fleet.balancer.live_requests))[short_node]:
                await trio.sleep(0.02)  # until the balancer has seen the tunnel end
            # the short call's node now has no live call, the two others one each
            assert await start_one(nursery, fleet, calls["next"]) == placed[1]
    for call in calls.values():
        assert call.attempts == 1
        await assert_complete(fleet.nodes[fleet.node_of(call.call_id)], call)


async def test_a_drained_node_leaves_rotation_and_finishes_its_calls(fleet: Fleet) -> None:
    calls = make_calls(2, {"a": 300, "b": 150, "c": 150, "d": 60, "e": 60})
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            placed = {name: await start_one(nursery, fleet, calls[name]) for name in "abc"}
            drained = fleet.nodes[placed["a"]]
            drained.send(signal.SIGTERM)
            assert await trio.to_thread.run_sync(readiness, drained) == 503
            await trio.to_thread.run_sync(fleet.balancer.wait_for_health, drained.host, "unhealthy")
            for name in "de":
                assert await start_one(nursery, fleet, calls[name]) != placed["a"]
            assert not calls["a"].done.is_set(), "the drained node had a live call all along"
        assert await trio.to_thread.run_sync(drained.wait, 30) == 0  # once its call had ended
    for call in calls.values():
        assert call.attempts == 1
        await assert_complete(fleet.nodes[fleet.node_of(call.call_id)], call)
    assert not list(drained.output_dir.rglob("*.partial.*"))


async def test_a_killed_node_is_routed_around_and_recovers_on_restart(tmp_path: Path, shipping: Shipping) -> None:
    """With shipping on: the restarted node's recovered recording is uploaded and announced."""
    with running_fleet(tmp_path, shipping) as fleet:
        await _kill_and_restart(fleet, shipping)


async def _kill_and_restart(fleet: Fleet, shipping: Shipping) -> None:
    calls = make_calls(3, {"a": 250, "b": 150, "c": 150, "d": 60, "e": 60, "f": 60})
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            placed = {name: await start_one(nursery, fleet, calls[name]) for name in "abc"}
            killed = fleet.nodes[placed["a"]]
            await calls["a"].halfway.wait()
            sent_before_kill = calls["a"].sent
            killed.stop(signal.SIGKILL)
            for name in "def":  # at once: before any active check has seen the node gone
                nursery.start_soon(calls[name].play, fleet.balancer.url)
        assert calls["a"].close_code != 1000
        restarted = await trio.to_thread.run_sync(killed.restarted)
        fleet.nodes[placed["a"]] = restarted
        await trio.to_thread.run_sync(restarted.wait_for, r"recovered 1 recordings")
        await trio.to_thread.run_sync(fleet.balancer.wait_for_health, restarted.host, "healthy")
    # least_conn sends the first new call to the killed node (no live call): the balancer redials
    # another node within the same upgrade, so not even the platform's retry is needed
    assert [calls[name].attempts for name in "def"] == [1, 1, 1]
    for name in "bcdef":
        assert fleet.node_of(name) != placed["a"]
        await assert_complete(fleet.nodes[fleet.node_of(name)], calls[name])
    sidecar_path = next(restarted.output_dir.rglob("a-1.json"))
    sidecar = read_sidecar(sidecar_path)
    assert sidecar["status"] == "recovered"
    audio = read_audio(sidecar_path.parent / sidecar["file"])
    held = len(audio) // 160
    # everything sent a flush interval, the reorder window and the read interval before the kill
    assert held >= sent_before_kill - (FLUSH_INTERVAL + 0.2 + FLUSH_INTERVAL / 2 + 0.5) / FRAME, held
    np.testing.assert_array_equal(audio, expected_stereo(calls["a"].frames, calls["a"].frames)[: len(audio)])

    # the recovered recording is uploaded and announced like any other
    with trio.fail_after(30):
        while not set("abcdef") <= shipping.receiver.received().keys():
            await trio.sleep(0.05)
    event = shipping.receiver.received()["a"].event
    assert (event["status"], event["sha256"]) == ("recovered", sidecar["sha256"])
    key = event["object"]["key"]
    assert key == f"{PREFIX}/{sidecar_path.parent.name}/{sidecar['file']}"
    assert shipping.stored_path(key).read_bytes() == (sidecar_path.parent / sidecar["file"]).read_bytes()
    assert set("abcdef") <= (await trio.to_thread.run_sync(shipping.nats_events)).keys()


def test_fleet_demo_plays_calls_through_the_balancer_and_says_where_they_went(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "callstream.fleet", "--calls", "3", "--seconds", "1",
                             "--dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("balancer  caddy on ws://127.0.0.1:") for line in lines), result.stdout
    assert sum(line.startswith("node-") for line in lines) == 3
    played = [line.split() for line in lines if line.startswith("fleet-demo-")]
    shipped = [line.split() for line in lines if line.startswith(" " * 14 + " store ")]
    assert len(played) == len(shipped) == 3, result.stdout
    for index, ((call_id, node, status, duration, _unit, audio, *_), (_, url, where, *rest)) in enumerate(
            zip(played, shipped, strict=True)):
        assert (call_id, status, duration) == (f"fleet-demo-{index + 1}", "complete", "1.00")
        assert audio.startswith(f"{node}/")
        plan = noisy_tone_audio(1.0, seed=index)
        np.testing.assert_array_equal(read_audio(tmp_path / audio), decode_ulaw_stereo(plan.agent, plan.caller))
        # the object is the same file, under the same name, in the store rclone serves from a folder
        assert url == f"s3://recordings/fleet/{audio.split('/', 1)[1]}" and where == "(in"
        stored = tmp_path / "shipping" / "s3" / "recordings" / "fleet" / audio.split("/", 1)[1]
        assert stored.read_bytes() == (tmp_path / audio).read_bytes()
        assert "(signature ok)" in " ".join(rest) and rest[-2] == "RECORDINGS"
    assert "calls per node: node-0 1, node-1 1, node-2 1" in lines  # least connections, calls overlapping
    assert any(line.startswith("call closed -> object stored and event at the webhook: median") for line in lines)
    assert lines[-1].startswith("stopped: caddy exit 0, node-0 exit 0, node-1 exit 0, node-2 exit 0, "
                                "nats-server exit 0")


def test_a_node_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match=r"(?s)^node-0: .*\(it exited\).*--format: 'ogg'"):
        start_nodes(1, tmp_path, ("--format", "ogg"))
