"""End to end, the timeline's placement through a real server: real WebSocket clients on
127.0.0.1, recordings read back and compared sample by sample."""

from __future__ import annotations

import numpy as np
import trio

from callstream.events import Perspective
from conftest import (
    RunningServer,
    call_messages,
    expected_stereo,
    metadata,
    random_frames,
    read_audio,
    recordings,
    send_all,
    wait_for_calls,
)

P, C = Perspective.PARTICIPANT, Perspective.CONFERENCE
TIMEOUT = 60  # seconds: a hang fails the test instead of blocking the suite


async def test_a_side_whose_first_frames_are_lost_is_not_shifted(server: RunningServer) -> None:
    """Six calls: the agent's or the caller's first 1, 2 or 5 frames never sent, both sides
    numbered from 1 and interleaved as the platform sends them. Each recording is exact: the
    lost frames are silence in place, the rest of that side not shifted (issue 12 bug 1)."""
    rng = np.random.default_rng(12)
    calls = []
    for lost in (1, 2, 5):
        for side in (P, C):
            agent, caller = random_frames(rng, 60), random_frames(rng, 60)
            media = []
            for seq, (a, c) in enumerate(zip(agent, caller, strict=True), start=1):
                for perspective, payload in ((P, a), (C, c)):
                    if perspective != side or seq > lost:
                        media.append((perspective, seq, payload))
            sent = ([None] * lost + agent[lost:], caller) if side == P else (agent, [None] * lost + caller[lost:])
            calls.append((f"lost-{lost}-{side.name.lower()}", media, expected_stereo(*sent)))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for call_id, media, _ in calls:
                nursery.start_soon(send_all, server.url, call_messages(metadata(call_id), media))
        await wait_for_calls(server, len(calls))
    found = {sidecar["callId"]: path for path, sidecar in recordings(server.settings.output_dir)}
    for call_id, _, expected in calls:
        np.testing.assert_array_equal(read_audio(found[call_id]), expected, err_msg=call_id)
