"""The RingCX gRPC front end behind a balancer, end to end: three real nodes (``callstream serve
--ringcx-port 0 --ringcx-plaintext``) behind a real Caddy proxying HTTP/2 in cleartext (h2c) with
the configuration `callstream.fleet.caddyfile` writes for gRPC (least_conn, passive health only:
see its docstring for why there are no active checks). Dialogs are played through the balancer
with the grpcio client of `callstream.sim.ringcx_client`, retrying UNAVAILABLE as the platform
does, and every recording is compared sample by sample (`ringcx_client.verify`)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile
import trio

from callstream.fleet.processes import Balancer, Node, start_nodes
from callstream.sim import ringcx_client as client

RINGCX = r"RingCX gRPC on [\d.]+:(\d+)"
RETRIES = 3  # the platform retries a dialog refused UNAVAILABLE up to three times
NODE_ARGS = ("--ringcx-port", "0", "--ringcx-plaintext", "--flush-interval", "0.5", "--reorder-window", "0.5",
             "--log-level", "info")
TIMEOUT = 60  # seconds for the whole test


@dataclass
class GrpcFleet:
    nodes: list[Node]
    balancer: Balancer

    @property
    def target(self) -> str:
        return f"{self.balancer.host}:{self.balancer.port}"

    def node_of(self, dialog_id: str) -> int | None:
        """The index of the node holding any file of ``dialog_id`` (live or finished), else None."""
        for index, node in enumerate(self.nodes):
            if any(node.output_dir.rglob(f"{dialog_id}.*")):
                return index
        return None


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[GrpcFleet]:
    nodes = start_nodes(3, tmp_path, NODE_ARGS)
    balancer = None
    try:
        upstreams = [f"{node.host}:{node.wait_for(RINGCX).group(1)}" for node in nodes]
        balancer = Balancer(tmp_path / "caddy", upstreams, 0, grpc=True, fail_duration=2.0, try_duration=3.0,
                            try_interval=0.1)
        yield GrpcFleet(nodes, balancer)
    finally:
        if balancer is not None:
            balancer.stop(timeout=10)
        for node in nodes:
            node.stop(signal.SIGKILL)


@dataclass
class Dialog:
    script: client.Script
    attempts: int = 0
    code: grpc.StatusCode | None = None
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def dialog_id(self) -> str:
        return self.script.dialog_id

    def _play(self, target: str) -> None:
        while True:
            self.attempts += 1
            with client.open_channel(target) as channel:
                try:
                    client.stream(channel, client.paced(self.script.steps), timeout=TIMEOUT)
                    self.code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    self.code = error.code()
            if self.code != grpc.StatusCode.UNAVAILABLE or self.attempts > RETRIES:
                return

    async def play(self, target: str) -> None:
        try:
            await trio.to_thread.run_sync(self._play, target)
        finally:
            self.done.set()


def dialog(dialog_id: str, seconds: float) -> Dialog:
    return Dialog(client.platform_dialog(dialog_id, session_id=f"session-{dialog_id}", seconds=seconds,
                                         agent_join=0.3, hold=None, transfer=None))


async def start_one(nursery: trio.Nursery, fleet: GrpcFleet, played: Dialog) -> int:
    """Start ``played`` and wait until a node has its file; returns that node's index."""
    nursery.start_soon(played.play, fleet.target)
    while (index := fleet.node_of(played.dialog_id)) is None:
        assert not played.done.is_set(), (played.dialog_id, played.code, played.attempts)
        await trio.sleep(0.02)
    return index


async def assert_recorded(node: Node, played: Dialog) -> None:
    """The dialog's recording on ``node`` is complete and holds exactly what was sent."""
    assert played.code == grpc.StatusCode.OK, (played.dialog_id, played.code)
    with trio.fail_after(10):
        while True:
            sidecar_path = next(node.output_dir.rglob(f"{played.dialog_id}.json"), None)
            if sidecar_path is not None and (sidecar := json.loads(sidecar_path.read_text()))["status"] != "recording":
                break
            await trio.sleep(0.05)
    assert sidecar["status"] == "complete"
    audio, rate = soundfile.read(sidecar_path.with_name(sidecar["file"]), dtype="int16", always_2d=True)
    assert rate == client.RATE
    assert client.verify(np.asarray(audio), played.script.runs) == [], played.dialog_id


async def test_dialogs_spread_and_a_drained_node_finishes_its_dialog(fleet: GrpcFleet) -> None:
    """Caddy cannot see a drain (no active checks for gRPC, see caddyfile.py): what keeps new
    dialogs off the draining node is least_conn, while the node has more live dialogs than the
    others (with a tie Caddy picks at random and the node answers UNAVAILABLE: the platform's
    retry). Here the others' dialogs have ended, so no retry is needed."""
    dialogs = {name: dialog(name, seconds) for name, seconds in
               (("a", 6.0), ("b", 1.5), ("c", 1.5), ("d", 1.0), ("e", 1.0))}
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            placed = {name: await start_one(nursery, fleet, dialogs[name]) for name in "abc"}
            assert sorted(placed.values()) == [0, 1, 2], f"least_conn: one live dialog per node, got {placed}"
            drained = fleet.nodes[placed["a"]]
            drained.send(signal.SIGTERM)
            await trio.to_thread.run_sync(drained.wait_for, r"drain")
            for name in "bc":
                await dialogs[name].done.wait()
            while sum((await trio.to_thread.run_sync(fleet.balancer.live_requests)).values()) > 1:
                await trio.sleep(0.02)  # until the balancer has seen b's and c's streams end
            for name in "de":  # overlapping: e goes to the node d did not take
                assert await start_one(nursery, fleet, dialogs[name]) != placed["a"]
            assert fleet.node_of("d") != fleet.node_of("e")
            assert not dialogs["a"].done.is_set(), "the drained node had a live dialog all along"
        assert await trio.to_thread.run_sync(drained.wait, 30) == 0  # once its dialog had ended
    for played in dialogs.values():
        assert played.attempts == 1, (played.dialog_id, played.attempts, played.code)
        await assert_recorded(fleet.nodes[fleet.node_of(played.dialog_id)], played)
    assert not list(drained.output_dir.rglob("*.partial.*"))


async def test_a_killed_node_is_redialled_within_the_same_dialog(fleet: GrpcFleet) -> None:
    """least_conn picks the idle node, which was killed: Caddy's dial is refused, the node is
    marked down (passive health) and the dialog is dialled to another node within the same
    request (lb_try_duration), so the client's first attempt succeeds."""
    dialogs = {name: dialog(name, seconds) for name, seconds in (("a", 3.0), ("b", 3.0), ("c", 1.0))}
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            placed = {name: await start_one(nursery, fleet, dialogs[name]) for name in "ab"}
            [idle] = set(range(3)) - set(placed.values())
            fleet.nodes[idle].stop(signal.SIGKILL)
            assert await start_one(nursery, fleet, dialogs["c"]) != idle
    for played in dialogs.values():
        assert played.attempts == 1, (played.dialog_id, played.attempts, played.code)
        await assert_recorded(fleet.nodes[fleet.node_of(played.dialog_id)], played)
