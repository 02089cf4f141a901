"""--channel-layout participants: one channel per RingCX segment in order of joining, the cap,
and the files of every format read back channel by channel, sample by sample."""

from __future__ import annotations

from dataclasses import replace

import grpc
import numpy as np
import pytest
import trio

from callstream.call.events import AGENT, BOT, CONTACT, AudioFormat, SegmentMedia, SegmentStarted, SegmentStopped
from callstream.call.segments import PcmBlock, SegmentMixer
from callstream.settings import Settings
from callstream.sim import ringcx_client as client
from callstream.sim.ringcx_simulate import verify_recording
from test_ringcx_server import TIMEOUT, finished, play, read, ringcx_server, rsettings  # noqa: F401
from test_segments import pcm, tone_chunk

N = 800
PCMU = AudioFormat("PCMU", 8000, 100)


def participants(script: client.Script) -> list[client.Run]:
    """The script's runs on the participants layout's channels: a dialog without a hold has one
    run per segment, in the order of the segments' starts, which is the order of joining."""
    return [client.Run(index, run.start, run.pcm) for index, run in enumerate(script.runs)]


def _assemble(events: list, **options: object) -> tuple[np.ndarray, SegmentMixer]:
    mixer = SegmentMixer(layout="participants", **options)  # type: ignore[arg-type]
    blocks: list[PcmBlock] = []
    for event in events:
        mixer.tick(event.at)
        mixer.handle(event)
        while (block := mixer.pop_block()) is not None:
            blocks.append(block)
    if (tail := mixer.finish()) is not None:
        blocks.append(tail)
    return np.concatenate([block.frames for block in blocks]), mixer


def test_a_segment_past_the_cap_is_mixed_into_the_last_channel() -> None:
    """Three recorded segments on two channels: the first two get a channel each in order of
    joining (not by type), the third is mixed into the last with a saturating add and is
    marked; a segment whose codec is not recorded takes no channel."""
    events: list = [SegmentStarted("bot", "p-bot", BOT, name="Bot", at=0.0),
                    SegmentStarted("opus", "p-x", CONTACT, audio_format=AudioFormat("OPUS", 48000, 20), at=0.0),
                    SegmentStarted("caller", "p-c", CONTACT, name="Caller", audio_format=PCMU, at=0.0),
                    SegmentStarted("agent", "p-a", AGENT, name="Agent", at=0.0)]
    for k in range(10):
        at = (k + 1) * 0.1
        for seed, segment in enumerate(("bot", "caller", "agent")):
            events.append(SegmentMedia(segment, tone_chunk(seed, k), k, 100, at=at))
    events += [SegmentStopped(segment, at=1.0) for segment in ("bot", "caller", "agent")]
    audio, mixer = _assemble(events, max_channels=2)
    assert audio.shape == (10 * N, 2)
    expected = [np.concatenate([pcm(tone_chunk(seed, k)) for k in range(10)]) for seed in range(3)]
    assert np.array_equal(audio[:, 0], expected[0])
    mixed = np.clip(expected[1].astype(np.int32) + expected[2], -32768, 32767)
    assert np.array_equal(audio[:, 1], mixed)
    segments = {s["segment_id"]: s for s in mixer.segments()}
    assert [segments[s]["channel"] for s in ("bot", "opus", "caller", "agent")] == [0, None, 1, 1]
    assert [segments[s]["channel_shared"] for s in ("bot", "caller", "agent")] == [False, False, True]
    assert mixer.statistics()["segments_sharing_last_channel"] == 1
    mapping = mixer.channel_map()
    assert [[p["segment_id"] for p in mapping[c]] for c in ("0", "1")] == [["bot"], ["caller", "agent"]]
    assert mapping["1"][1] == {"segment_id": "agent", "participant_id": "p-a", "type": AGENT, "name": "Agent"}


def test_reserved_channels_stay_silent_and_bad_options_are_refused() -> None:
    events = [SegmentStarted("caller", "p-c", CONTACT, at=0.0),
              SegmentMedia("caller", tone_chunk(1, 0), 1, 100, at=0.1)]
    audio, mixer = _assemble(events, max_channels=5)
    assert audio.shape == (N, 5) and not audio[:, 1:].any()
    assert np.array_equal(audio[:, 0], pcm(tone_chunk(1, 0)))
    assert mixer.channel_map() == {"0": [{"segment_id": "caller", "participant_id": "p-c", "type": CONTACT,
                                              "name": None}], "1": [], "2": [], "3": [], "4": []}
    with pytest.raises(ValueError, match="max_channels"):
        SegmentMixer(layout="participants", max_channels=9)
    with pytest.raises(ValueError, match="layout"):
        SegmentMixer(layout="mono")


@pytest.mark.parametrize("fmt", ["wav", "flac", "mulaw-wav"])
async def test_transfer_in_participants_layout(rsettings: Settings, fmt: str) -> None:  # noqa: F811
    """A real gRPC dialog of three participants (caller, an agent, a transfer to a second
    agent): each on its own channel in order of joining, the fourth reserved channel silent;
    the sidecar names each channel's participant."""
    settings = replace(rsettings, format=fmt, channel_layout="participants")
    script = client.platform_dialog("transferred", seconds=2.4, agent_join=0.4, hold=None, transfer=1.4)
    with trio.fail_after(TIMEOUT):
        async with ringcx_server(settings) as running:
            assert await play(running.target, script.steps) == grpc.StatusCode.OK
    [(path, sidecar)] = finished(settings.output_dir)
    audio = read(path)
    assert audio.shape[1] == 4 == sidecar["channels"]
    assert client.verify(audio, participants(script)) == []
    assert verify_recording(settings.output_dir, script) == []  # simulate --verify knows the layout
    assert sidecar["status"] == "complete"
    mapping = sidecar["channel_map"]
    assert [[(p["segment_id"], p["type"], p["name"]) for p in mapping[c]] for c in "0123"] == [
        [("caller", "CONTACT", "Caller")], [("agent-1", "AGENT", "First Agent")],
        [("agent-2", "AGENT", "Second Agent")], []]
    assert mapping["2"][0]["participant_id"] == "participant-agent-2"
    assert [s["channel"] for s in sidecar["metadata"]["segments"]] == [0, 1, 2]
