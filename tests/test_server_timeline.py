"""End to end, the timeline's placement through a real server: real WebSocket clients on
127.0.0.1, recordings read back and compared sample by sample."""

from __future__ import annotations

import numpy as np
import trio

from callstream.engagevoice.messages import Perspective
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


async def test_numbers_jumping_ahead_of_the_clock_do_not_grow_the_recording(server: RunningServer) -> None:
    """Issue 12: the caller's number jumping by 499 per frame (each jump under the 10 s bound)
    made every frame 10 s of silence (585 KiB sent, 304 MiB written in 64 s). Now the recording
    stays within the frames sent plus the window; every frame sent is in it, and the sidecar
    counts the jumps."""
    rng = np.random.default_rng(499)
    frames = 60
    agent, caller = random_frames(rng, frames), random_frames(rng, frames)
    media = []
    for i, (a, c) in enumerate(zip(agent, caller, strict=True)):
        media += [(P, 1 + i, a), (C, 1 + 499 * i, c)]
    with trio.fail_after(TIMEOUT):
        await send_all(server.url, call_messages(metadata("jumping"), media))
        await wait_for_calls(server, 1)
    [(path, sidecar)] = recordings(server.settings.output_dir)
    audio = read_audio(path)
    window = round(server.settings.reorder_window_ms * 8)  # samples
    assert len(audio) <= frames * 160 + window + 160
    np.testing.assert_array_equal(audio[: frames * 160, 0], expected_stereo(agent, agent)[:, 0])
    caller_stats = sidecar["statistics"]["conference"]
    assert (caller_stats["frames_placed"], caller_stats["late_drops"], caller_stats["gaps"]) == (frames, 0, 0)
    assert caller_stats["clock_jumps"] >= frames - 2
