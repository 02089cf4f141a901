"""The audio the platform streams, in numbers: one place for the constants every layer shares.

G.711 at 8,000 samples per second, one byte per sample and per perspective; a Media frame is
about 20 ms (160 bytes); mu-law silence is the code 0xFF (decodes to PCM 0; 0x00 decodes to
-32124). Recordings are stereo: channel 0 the agent, channel 1 the caller. Nothing here does
anything: the modules that use a number import it from here (see docs/protocol.md).
"""

from __future__ import annotations

from typing import Final

SAMPLE_RATE: Final = 8000  # Hz: samples per second and per perspective, as the platform streams
BYTES_PER_SAMPLE: Final = 1  # G.711: one byte per sample
FRAME_MS: Final = 20  # ms: the frame length the platform sends and the simulator imitates
FRAME_BYTES: Final = SAMPLE_RATE * FRAME_MS // 1000 * BYTES_PER_SAMPLE  # 160 bytes: one 20 ms frame
ULAW_SILENCE: Final = 0xFF  # mu-law code of PCM 0
CHANNELS: Final = 2  # recordings: left = agent, right = caller
