"""The secret: where it may be presented, constant-time comparison, and the server's answers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio_websocket import open_websocket_url

from callstream.engagevoice.encoding import encode_connected, encode_media, encode_start
from callstream.engagevoice.messages import Connected, Perspective, Start, Stop
from callstream.engagevoice.query import build_query
from callstream.server.auth import message_credential, secret_matches, upgrade_credential
from conftest import (
    call_messages,
    expect_rejection,
    metadata,
    random_frames,
    recordings,
    send_all,
    start_server,
    wait_for_calls,
)
from wsclient import Closed, connect

TIMEOUT = 30
SECRET = "s3cret-value"


def test_upgrade_credential_sources() -> None:
    assert upgrade_credential({"authorization": "Bearer abc"}, None) == "abc"
    assert upgrade_credential({"authorization": "bearer  abc "}, None) == "abc"
    assert upgrade_credential({"authorization": "abc"}, "zzz") == "abc"  # the header wins
    assert upgrade_credential({}, "q") == "q"
    assert upgrade_credential({}, None) is None


def test_message_credential() -> None:
    assert message_credential(Connected(secret="x")) == "x"
    assert message_credential(Start(metadata={}, secret="y")) == "y"
    assert message_credential(Connected()) is None
    assert message_credential(Stop()) is None


@given(st.text(min_size=1), st.text())
def test_secret_matches_only_itself(expected: str, presented: str) -> None:
    assert secret_matches(expected, expected)
    assert secret_matches(expected, presented) == (expected == presented)
    assert not secret_matches(expected, None)


@pytest.fixture
async def secured(nursery, settings):
    return await start_server(nursery, replace(settings, secret=SECRET))


def media(count: int = 10) -> list[tuple[Perspective, int, bytes]]:
    rng = np.random.default_rng(0)
    frames = random_frames(rng, count)
    return [(p, seq, f) for seq, f in enumerate(frames, 1) for p in Perspective]


async def test_wrong_secret_on_upgrade_is_http_401(secured) -> None:
    for headers, query in (([("Authorization", "Bearer nope")], {}), ([], {"secret": "nope"})):
        target = "/" + build_query({**metadata("x"), **query})
        with trio.fail_after(TIMEOUT):
            rejection = await expect_rejection(secured.url, target, headers)
        assert rejection.status == 401
    assert secured.server.statistics().calls_rejected == 2
    assert not list(secured.settings.output_dir.rglob("*.*"))


async def test_right_secret_on_upgrade_records(secured) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_websocket_url(
            secured.url + "/", extra_headers=[(b"Authorization", f"Bearer {SECRET}".encode())]
        ) as ws:
            for message in call_messages(metadata("ok-header"), media()):
                await ws.send_message(message)
        await send_all(secured.url, call_messages(metadata("ok-query"), media()), query={"secret": SECRET})
        await wait_for_calls(secured, 2)
    assert sorted(s["callId"] for _, s in recordings(secured.settings.output_dir)) == ["ok-header", "ok-query"]
    for _, sidecar in recordings(secured.settings.output_dir):
        assert SECRET not in str(sidecar)


async def test_secret_in_first_message(secured) -> None:
    good = [encode_connected(secret=SECRET), encode_start(metadata("first-msg"))]
    good += call_messages(metadata("first-msg"), media())[2:]
    with trio.fail_after(TIMEOUT):
        await send_all(secured.url, good)
        await wait_for_calls(secured, 1)
    assert [s["callId"] for _, s in recordings(secured.settings.output_dir)] == ["first-msg"]


async def test_missing_or_wrong_secret_in_first_message_closes_1008_before_storing(secured) -> None:
    for first in (
        encode_connected(),
        encode_connected(secret="wrong"),
        encode_media(Perspective.PARTICIPANT, 1, b"\xff" * 160),
        "not json",
    ):
        with trio.fail_after(TIMEOUT):
            client = await connect(secured.url, "/" + build_query(metadata("intruder")))
            await client.send(first)
            with pytest.raises(Closed) as closed:
                await client.receive()
            await client.close()
            assert closed.value.code == 1008
    assert not list(secured.settings.output_dir.rglob("*.*"))
    assert secured.server.statistics().calls_rejected == 4
    assert secured.server.statistics().calls_started == 0  # never calls: refused while proving


async def test_silent_connections_without_the_secret_hold_no_call_slot(nursery, settings) -> None:
    """Issue 12, bug 3: upgrades without the secret wait for their first message in a pool of
    their own (full: 503), for --auth-timeout at most (then 1008); the calls' slots stay free."""
    running = await start_server(nursery, replace(
        settings, secret=SECRET, max_calls=2, max_unauthenticated=3, auth_timeout=1.0
    ))
    with trio.fail_after(TIMEOUT):
        silent = [await connect(running.url, "/" + build_query(metadata(f"silent{i}"))) for i in range(3)]
        rejection = await expect_rejection(running.url, "/" + build_query(metadata("silent3")))
        assert rejection.status == 503 and rejection.headers["retry-after"] == "5"
        bearer = [("Authorization", f"Bearer {SECRET}")]
        real = [await connect(running.url, "/" + build_query(metadata(f"real{i}")), bearer) for i in range(2)]
        for client in silent:  # nothing said: closed at the deadline, nothing stored
            with pytest.raises(Closed) as closed:
                await client.receive()
            await client.close()
            assert closed.value.code == 1008
        for i, client in enumerate(real):
            for message in call_messages(metadata(f"real{i}"), media()):
                await client.send(message)
            await client.close()
        await wait_for_calls(running, 2)
    assert sorted(s["callId"] for _, s in recordings(running.settings.output_dir)) == ["real0", "real1"]
    statistics = running.server.statistics()
    assert (statistics.calls_started, statistics.calls_rejected) == (2, 4)


async def test_secret_in_first_message_at_max_calls_is_closed_1013(nursery, settings) -> None:
    running = await start_server(nursery, replace(settings, secret=SECRET, max_calls=1))
    with trio.fail_after(TIMEOUT):
        holder = await connect(running.url, "/", [("Authorization", f"Bearer {SECRET}")])
        late = await connect(running.url, "/" + build_query(metadata("late")))
        await late.send(encode_connected(secret=SECRET))
        with pytest.raises(Closed) as closed:
            await late.receive()
        await late.close()
        await holder.close()
        await wait_for_calls(running, 1)
    assert closed.value.code == 1013
    assert running.server.statistics().calls_rejected == 1
