"""Hostile peers against a real server process, while a well-behaved call records alongside.

One `callstream serve` subprocess (127.0.0.1, port 0) serves the whole module, so its resident
memory can be read from /proc. Each test runs one kind of abuse -- binary and invalid UTF-8
frames, a 10 MB frame, a flood of tiny frames, slow-loris handshakes, a thousand silent
connections, path-climbing and oversized ids -- while `GoodCall` streams a real call; that call
must come out sample for sample. The module runs on the default --transport (the adapters'
contract is tested on each in test_transport.py). A final test checks
that the server still records and that its memory came back to where it was after warm-up.
The memory bound of a call fed 1-byte frames and then the longest frames the protocol accepts has
its own server and test at the end of the file.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio
import wsproto.events as ev
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError

from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start, encode_stop
from callstream.engagevoice.messages import Perspective
from callstream.engagevoice.protocol import MAX_MEDIA_PAYLOAD
from callstream.engagevoice.query import build_query
from callstream.settings import DEFAULT_TRANSPORT
from conftest import expected_stereo, metadata, random_frames, read_audio
from serverprocess import ServerProcess
from wsclient import Closed, Rejected, WsClient, connect

HANDSHAKE_TIMEOUT = 2.0  # seconds: --handshake-timeout of the server under test
IDLE_TIMEOUT = 3.0  # seconds: --idle-timeout
MAX_BAD_MESSAGES = 1000  # --max-bad-messages (the default)
MAX_MESSAGE_BYTES = 65536  # --max-message-size (the default)
FLUSH_INTERVAL = 0.2  # seconds
SILENT = 1000  # connections that never send, of each kind
RSS_MARGIN_MB = 50  # growth allowed between warm-up and the end of the module
FRAME_PERIOD = 0.005  # seconds between the good call's frame pairs (4x real time)
TIMEOUT = 60  # seconds: any single network wait
FINISHED = ("complete", "incomplete", "failed")
TRANSPORTS = (DEFAULT_TRANSPORT,)  # the server suite runs on the default transport (see conftest)


def hostile_server(output_dir: Path, *extra: str) -> ServerProcess:
    """The server with small timeouts, so the tests need not wait long for them."""
    return ServerProcess(
        output_dir, "--flush-interval", str(FLUSH_INTERVAL), "--handshake-timeout", str(HANDSHAKE_TIMEOUT),
        "--idle-timeout", str(IDLE_TIMEOUT), "--max-bad-messages", str(MAX_BAD_MESSAGES),
        "--max-message-size", str(MAX_MESSAGE_BYTES), *extra,
    )


class Hostile:
    """The module's server and what the tests learn about it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.start_rss_mb = server.rss_mb()
        self.start_fds = server.open_fds()
        self.warm_rss_mb = 0.0
        self.warm_fds = 0
        self.calls = 0


def ensure_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.fixture(scope="module", params=TRANSPORTS)
def hostile(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hostile]:
    ensure_file_limit(4 * SILENT + 1024)  # before the server starts: it inherits the limit
    server = hostile_server(tmp_path_factory.mktemp("hostile") / "recordings",
                           "--transport", request.param)
    try:
        yield Hostile(server)
    finally:
        assert server.stop() == 0, "".join(server.log[-30:])
        assert not [line for line in server.log if "Traceback" in line or " ERROR " in line], (
            "".join(server.log[-50:]))


# --------------------------------------------------------------------------- the good call

class GoodCall:
    """A well-behaved call: Connected, Start, both perspectives in order at a steady pace until
    told to stop (and at least ``min_frames``), then two Stops and a normal close."""

    def __init__(self, url: str, call_id: str, *, min_frames: int = 100, seed: int = 0) -> None:
        self.url = url
        self.call_id = call_id
        self.min_frames = min_frames
        self.rng = np.random.default_rng(seed)
        self.sent: list[bytes] = []
        self.enough = trio.Event()

    async def run(self) -> None:
        client = await connect(self.url, "/" + build_query(metadata(self.call_id)))
        try:
            await client.send(encode_connected())
            await client.send(encode_start(metadata(self.call_id)))
            start = trio.current_time()
            seq = 0
            while not self.enough.is_set() or seq < self.min_frames:
                seq += 1
                frame = random_frames(self.rng, 1)[0]
                for perspective in Perspective:
                    await client.send(encode_media(perspective, seq, frame))
                self.sent.append(frame)
                await trio.sleep_until(start + seq * FRAME_PERIOD)
            for _ in range(2):
                await client.send(encode_stop(1.0, "2026-11-25T00:00:00Z"))
            with pytest.raises(Closed) as closed:
                await client.receive()
            assert closed.value.code == 1000
        finally:
            await client.drop()

    async def check(self, output_dir: Path) -> dict:
        """Wait for the finished recording; it must equal what was sent, sample for sample."""
        sidecar, path = await finished_recording(output_dir, self.call_id)
        assert sidecar["status"] == "complete", sidecar
        np.testing.assert_array_equal(read_audio(path), expected_stereo(self.sent, self.sent))
        return sidecar


async def finished_recording(output_dir: Path, call_id: str) -> tuple[dict, Path]:
    while True:
        for sidecar_path in output_dir.rglob("*.json"):
            try:
                data = json.loads(sidecar_path.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now
            if data.get("callId") == call_id and data.get("status") in FINISHED:
                return data, sidecar_path.parent / data["file"]
        await trio.sleep(0.05)


async def alongside(hostile: Hostile, name: str, attack, *, min_frames: int = 100) -> dict:
    """Run ``attack()`` while a good call records; check the good call; return its sidecar."""
    hostile.calls += 1
    good = GoodCall(hostile.server.url, f"good-{name}", min_frames=min_frames, seed=hostile.calls)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good.run)
            await trio.sleep(0.1)  # the good call is live before the attack starts
            await attack()
            good.enough.set()
        sidecar = await good.check(hostile.server.output_dir)
    assert hostile.server.alive()
    return sidecar


# ------------------------------------------------------------------------------ raw clients

async def close_code_of(client: WsClient) -> int | None:
    """Read until the server closes; its close code (None: TCP closed without a close frame)."""
    try:
        while True:
            await client.receive()
    except Closed as closed:
        return closed.code
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return client.close_code  # the server hung up while we answered its close frame


async def wait_eof(stream: trio.SocketStream) -> bytes:
    """Read until the server closes the TCP connection; returns whatever it sent first."""
    received = b""
    while True:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset by the peer: also closed
            return received
        if not data:
            return received
        received += data


# ---------------------------------------------------------------------------------- warm-up

async def test_warm_up_and_measure(hostile: Hostile) -> None:
    """The baseline: RSS and open files once the server has recorded three good calls and held
    a thousand connections at once. The allocator keeps most of what such a peak took (a
    plateau, not a leak: a second peak adds next to nothing), so the end of the module is
    compared with this, not with the freshly started process."""
    server = hostile.server
    limiter = trio.CapacityLimiter(100)
    opened: list[WsClient] = []

    async def open_one(index: int) -> None:
        async with limiter:
            opened.append(await connect(server.url, f"/?callId=warm-idle-{index}"))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            calls = [GoodCall(server.url, f"warm-{i}", seed=100 + i) for i in range(3)]
            for call in calls:
                call.enough.set()
                nursery.start_soon(call.run)
            for index in range(SILENT):
                nursery.start_soon(open_one, index)
        for call in calls:
            await call.check(server.output_dir)
        peak = server.rss_mb()
        for client in opened:
            await client.drop()
        while server.open_fds() > hostile.start_fds:  # every dropped connection closed
            await trio.sleep(0.05)
    hostile.warm_rss_mb = server.rss_mb()
    hostile.warm_fds = server.open_fds()
    print(f"\nserver RSS: {hostile.start_rss_mb:.1f} MB at start, {peak:.1f} MB with "
          f"{SILENT} connections, {hostile.warm_rss_mb:.1f} MB after warm-up; "
          f"{hostile.warm_fds} fds")


# ------------------------------------------------------------------------------ the attacks

async def test_binary_frames_and_invalid_utf8_are_bad_messages_not_fatal(hostile: Hostile) -> None:
    async def attack() -> None:
        client = await connect(hostile.server.url, "/?callId=hostile-binary")
        try:
            frames = [
                b"\xff\xfe\xfd" * 10,  # not UTF-8
                b'{"event": "Media", "perspective": "Participant", "media": "\xff"}',
                b"\x00" * 500,
                os.urandom(4000),
                b"\xed\xa0\x80",  # an encoded surrogate: not valid UTF-8
                b"\xc0\xaf",  # an overlong '/'
            ]
            for i in range(300):
                data = client.connection.send(ev.BytesMessage(data=frames[i % len(frames)]))
                await client._send_raw(data)
            await client.send(encode_connected())  # still talking
            await client.close(1000)
            assert client.close_code is None or client.close_code == 1000
        finally:
            await client.drop()

    await alongside(hostile, "binary", attack)
    assert not list(hostile.server.output_dir.rglob("hostile-binary*"))  # no Start, no audio


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragments"])
async def test_a_10_mb_message_is_closed_1009_without_being_buffered(
    hostile: Hostile, fragmented: bool
) -> None:
    total = 10 * 2**20
    chunk = 64 * 1024
    sent = [0]

    async def attack() -> None:
        rss_before = hostile.server.rss_mb()
        client = await connect(hostile.server.url, "/?callId=hostile-big")
        codes: list[int | None] = []
        try:
            async with trio.open_nursery() as nursery:

                async def send() -> None:
                    try:
                        if fragmented:
                            for offset in range(0, total, chunk):
                                final = offset + chunk >= total
                                await client._send_raw(client.connection.send(
                                    ev.TextMessage(data="a" * chunk, message_finished=final)))
                                sent[0] += chunk
                        else:
                            data = client.connection.send(ev.TextMessage(data="a" * total))
                            for offset in range(0, len(data), chunk):
                                await client._send_raw(data[offset:offset + chunk])
                                sent[0] += chunk
                    except (trio.BrokenResourceError, trio.ClosedResourceError,
                            LocalProtocolError):
                        pass  # the server closed or hung up on us mid-message
                    await trio.sleep_forever()

                async def watch() -> None:
                    codes.append(await close_code_of(client))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                nursery.start_soon(send)
        finally:
            await client.drop()
        rss_after = hostile.server.rss_mb()
        print(f"\n10 MB message ({'fragments' if fragmented else 'one frame'}): closed "
              f"{codes[0]} after {sent[0] / 2**20:.2f} MB sent; server RSS {rss_before:.1f} -> "
              f"{rss_after:.1f} MB")
        assert codes == [1009]
        assert sent[0] < total  # the server closed before it had the whole message
        assert rss_after - rss_before < 8  # MB: 10 MB was never held

    await alongside(hostile, f"big-{fragmented}", attack)


async def test_ten_thousand_tiny_frames_per_second(hostile: Hostile) -> None:
    """Malformed ones, and well-formed unknown events alike (issue 12: two connections of them
    kept a core busy), end the call with 1007 once past --max-bad-messages, long before three
    seconds at 10,000 a second."""
    rate, seconds, batch = 10_000, 3.0, 100
    results: dict[str, tuple[int | None, int]] = {}

    async def flood(name: str, text: str, with_media: bool) -> None:
        client = await connect(hostile.server.url, f"/?callId=hostile-flood-{name}")
        codes: list[int | None] = []
        sent = 0
        if with_media:  # a call proper, so that its recording is finished when it is closed
            # (issue 12 bug 2: a call without Start closed right after its first media left
            # its partial file, which the last test of this module finds)
            await client.send(encode_connected())
            await client.send(encode_start(metadata(f"hostile-flood-{name}")))
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    codes.append(await close_code_of(client))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                start = trio.current_time()
                try:
                    for i in range(int(rate * seconds / batch)):
                        data = b"".join(client.connection.send(ev.TextMessage(data=text))
                                        for _ in range(batch))
                        if with_media:  # a live call: media keeps the idle timeout away
                            data += client.connection.send(ev.TextMessage(
                                data=encode_media(Perspective.PARTICIPANT, i + 1, b"\x10" * 160)))
                        await client._send_raw(data)
                        sent += batch
                        await trio.sleep_until(start + (i + 1) * batch / rate)
                except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
                    pass  # the server closed the connection
                if client.connection.state == ConnectionState.OPEN:  # survived: close it
                    # ourselves; watch() sees the answer
                    await client._send_raw(client.connection.send(ev.CloseConnection(code=1000)))
        finally:
            await client.drop()
        results[name] = (codes[0] if codes else None, sent)

    async def attack() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood, "bad", "x", False)
            nursery.start_soon(flood, "unknown", '{"event":"Tick"}', True)

    await alongside(hostile, "flood", attack)
    print(f"\ntiny frames: {results}")
    bad_code, bad_sent = results["bad"]
    assert bad_code == 1007
    assert bad_sent < rate * seconds  # closed early
    unknown_code, unknown_sent = results["unknown"]
    assert unknown_code == 1007
    assert unknown_sent < rate * seconds  # closed early, although its media kept it live


async def test_slow_loris_handshakes_are_dropped_after_the_handshake_timeout(
    hostile: Hostile,
) -> None:
    request = (f"GET /?callId=loris HTTP/1.1\r\nHost: 127.0.0.1:{hostile.server.port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    dropped_after: list[float] = []

    async def loris() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", hostile.server.port)
        start = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:

                async def dribble() -> None:
                    for byte in request.encode():
                        try:
                            await stream.send_all(bytes([byte]))
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return
                        await trio.sleep(1.0)
                    raise AssertionError("the whole upgrade went through")

                nursery.start_soon(dribble)
                assert await wait_eof(stream) == b""  # no answer at all, just a close
                dropped_after.append(trio.current_time() - start)
                nursery.cancel_scope.cancel()
        finally:
            await stream.aclose()

    async def attack() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(loris)

    await alongside(hostile, "loris", attack)
    print(f"\nslow loris: 50 dropped after {min(dropped_after):.2f}..{max(dropped_after):.2f} s")
    assert len(dropped_after) == 50
    assert min(dropped_after) >= HANDSHAKE_TIMEOUT - 0.5
    assert max(dropped_after) <= HANDSHAKE_TIMEOUT + 3


async def test_a_thousand_silent_connections_of_each_kind_are_closed(hostile: Hostile) -> None:
    """TCP connections that never send an upgrade are dropped after the handshake timeout;
    accepted WebSockets that never send a message are closed 1001 after the idle timeout."""
    limiter = trio.CapacityLimiter(100)  # connects in flight: stay inside the listen backlog
    tcp_closed: list[float] = []
    ws_codes: list[int | None] = []
    ws_closed: list[float] = []
    ws_open: list[float] = []
    start = trio.current_time()

    async def silent_tcp() -> None:
        async with limiter:
            stream = await trio.open_tcp_stream("127.0.0.1", hostile.server.port)
        try:
            assert await wait_eof(stream) == b""
            tcp_closed.append(trio.current_time() - start)
        finally:
            await stream.aclose()

    async def silent_websocket(index: int) -> None:
        async with limiter:
            client = await connect(hostile.server.url, f"/?callId=silent-{index}")
        ws_open.append(trio.current_time() - start)
        try:
            ws_codes.append(await close_code_of(client))
            ws_closed.append(trio.current_time() - start)
        finally:
            await client.drop()

    peak: list[float] = []

    async def attack() -> None:
        async with trio.open_nursery() as nursery:
            for index in range(SILENT):
                nursery.start_soon(silent_tcp)
                nursery.start_soon(silent_websocket, index)
            await trio.sleep(HANDSHAKE_TIMEOUT / 2)
            peak.append(hostile.server.rss_mb())
            peak.append(hostile.server.open_fds())

    await alongside(hostile, "silent", attack)
    elapsed = trio.current_time() - start
    print(f"\n{SILENT} silent TCP + {SILENT} silent WebSockets: all closed in {elapsed:.1f} s; "
          f"server RSS {peak[0]:.1f} MB, {peak[1]} fds at the peak; TCP closed after "
          f"{min(tcp_closed):.1f}..{max(tcp_closed):.1f} s, WebSockets open after "
          f"{min(ws_open):.1f}..{max(ws_open):.1f} s, closed after "
          f"{min(ws_closed):.1f}..{max(ws_closed):.1f} s")
    assert len(tcp_closed) == SILENT
    assert ws_codes == [1001] * SILENT
    assert not list(hostile.server.output_dir.rglob("silent-*"))  # no audio, no recording


HUGE = "x" * 10_000
HOSTILE_IDS = [
    ("../../../etc/passwd", "../.."),
    ("..", "."),
    ("a\x00b/../c", "\x00"),
    ("/abs/olute", "C:\\windows\\..\\x"),
    (HUGE, "9" * 1000),
    ("\u202e\ufeffé\ud7ff漢字", "-1"),
]


@pytest.mark.parametrize("where", ["query", "start", "both"])
async def test_hostile_ids_stay_inside_the_output_dir_with_bounded_names(
    hostile: Hostile, where: str
) -> None:
    output = hostile.server.output_dir
    root = output.resolve()
    rng = np.random.default_rng(77)
    frames = random_frames(rng, 30)
    refused: list[int] = []

    async def one(call_id: str, session_id: str) -> None:
        fields = metadata(call_id, session_id)
        query = build_query(fields) if where in ("query", "both") else "?source=start-only"
        more = {"ani": HUGE, "agentId": "../" * 100, "dnis": "\x00" * 100}
        start = encode_start({**fields, **more} if where in ("start", "both") else more)
        try:
            client = await connect(hostile.server.url, "/" + query)
        except Rejected as rejected:  # a request line over the HTTP parser's limit: fine too
            assert 400 <= rejected.status < 500 and len(query) > 8000, (rejected.status, len(query))
            refused.append(rejected.status)
            return
        try:
            await client.send(encode_connected())
            await client.send(start)
            for seq, frame in enumerate(frames, 1):
                for perspective in Perspective:
                    await client.send(encode_media(perspective, seq, frame))
            for _ in range(2):
                await client.send(encode_stop(1.0, "2026-11-25T00:00:00Z"))
            assert await close_code_of(client) == 1000
        finally:
            await client.drop()

    async def attack() -> None:
        async with trio.open_nursery() as nursery:
            for call_id, session_id in HOSTILE_IDS:
                nursery.start_soon(one, call_id, session_id)

    before = {p for p in output.rglob("*") if p.is_file()}
    await alongside(hostile, f"ids-{where}", attack)
    with trio.fail_after(TIMEOUT):
        while True:  # every hostile call finished: six more sidecars, none still recording
            new = [p for p in output.rglob("*.json") if p not in before]
            statuses = [json.loads(p.read_text()).get("status") for p in new]
            recorded = len(HOSTILE_IDS) - len(refused) + 1  # the good call too
            if len(new) >= recorded and all(s in FINISHED for s in statuses):
                break
            await trio.sleep(0.05)
    for path in root.parent.rglob("*"):  # nothing escaped the output directory
        if path.is_file():
            assert path.resolve().is_relative_to(root), path
    audio = [p for p in output.rglob("*.wav") if p not in before]
    print(f"\nhostile ids in the {where}: {len(audio) - 1} recorded, refused {refused}")
    assert len(audio) == recorded
    assert len(refused) <= 1  # only the 10 KB query may be over a parser's limit
    expected = expected_stereo(frames, frames)
    for sidecar in (p for p in output.rglob("*.json") if p not in before):
        assert json.loads(sidecar.read_text())["status"] == "complete", sidecar
    for path in audio:
        relative = path.relative_to(output)
        assert all(len(part.encode()) <= 255 for part in relative.parts), relative
        # "{callId}-{sessionId}": each value is cut to 64 characters, plus maybe "-N"
        assert len(path.stem) <= 2 * 64 + 1 + len("-1000"), path.name
        assert "\x00" not in str(relative) and ".." not in str(relative)
        if not path.name.startswith("good-"):
            np.testing.assert_array_equal(read_audio(path), expected)


# ------------------------------------------------------------------------------- afterwards

async def test_afterwards_the_server_still_records_and_its_memory_came_back(
    hostile: Hostile,
) -> None:
    if not hostile.warm_rss_mb:
        pytest.skip("needs test_warm_up_and_measure")
    with trio.fail_after(TIMEOUT):
        fresh = GoodCall(hostile.server.url, "fresh-after", min_frames=200, seed=999)
        fresh.enough.set()
        await fresh.run()
        await fresh.check(hostile.server.output_dir)
    with trio.move_on_after(5):  # a closed connection may linger for its closing handshake
        while hostile.server.open_fds() > hostile.start_fds:
            await trio.sleep(0.05)
    rss, fds = hostile.server.rss_mb(), hostile.server.open_fds()
    print(f"\nserver RSS: {hostile.warm_rss_mb:.1f} MB after warm-up, {rss:.1f} MB at the end "
          f"({rss - hostile.warm_rss_mb:+.1f} MB); fds {hostile.warm_fds} -> {fds}")
    assert rss <= hostile.warm_rss_mb + RSS_MARGIN_MB
    assert fds <= hostile.start_fds  # every hostile connection's socket was closed
    assert not list(hostile.server.output_dir.rglob("*.partial.*"))


# ---------------------------------- per-call memory with frames longer than the first (fixed)

async def test_frames_longer_than_the_first_cannot_balloon_the_server(tmp_path: Path) -> None:
    server = hostile_server(tmp_path / "recordings")
    try:
        with trio.fail_after(TIMEOUT):
            client = await connect(server.url, "/?callId=balloon")
            try:
                await client.send(encode_connected())
                await client.send(encode_start(metadata("balloon")))
                for seq in range(10_000, 13_300):  # 1-byte frames: the window becomes 1600 frames
                    for perspective in Perspective:
                        await client.send(encode_media(perspective, seq, b"\x10"))
                await trio.sleep(0.5)
                before = server.rss_mb()
                big = os.urandom(MAX_MEDIA_PAYLOAD)  # the longest frame the protocol takes
                for seq in range(1000, 2599):  # late frames, kept as a run of up to 1599
                    for perspective in Perspective:
                        await client.send(encode_media(perspective, seq, big))
                during = before
                for _ in range(20):  # until the server has read everything
                    await trio.sleep(0.1)
                    during = max(during, server.rss_mb())
                await client.close()
            finally:
                await client.drop()
    finally:
        assert server.stop() == 0
    print(f"\n1-byte then 48 KB frames: server RSS {before:.1f} -> {during:.1f} MB")
    assert during - before < RSS_MARGIN_MB
