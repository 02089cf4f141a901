"""The call core's output: a block of the recording's audio, ready for storage (sans-IO).

Both placement engines cut the recording into consecutive blocks on one timeline (``start``:
the block's first sample, ``samples``: its length per channel, at the recording's sample rate):
- `StereoBlock`, from the `Timeline` (Engage Voice): the two sides as they came, mu-law bytes,
  left = agent, right = caller. Storage appends them as they are (mu-law WAV) or decodes them
  in its own batched kernel.
- `PcmBlock`, from the `SegmentMixer` (RingCX): the segments decoded and mixed, int16 frames of
  shape (samples, channels): two channels, or one per participant.
A storage writer tells them apart by type (`Block` is their union): one check per block, about
one a second per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Block", "PcmBlock", "StereoBlock"]


@dataclass(frozen=True, slots=True)
class StereoBlock:
    """Aligned stereo audio: ``left`` and ``right`` are mu-law bytes of equal length; ``start``
    is the sample index (at the sample rate) of their first sample on the call's timeline."""

    left: bytes
    right: bytes
    start: int

    @property
    def samples(self) -> int:
        return len(self.left)

    @property
    def end(self) -> int:
        """Sample index just past the block."""
        return self.start + len(self.left)


@dataclass(frozen=True, slots=True)
class PcmBlock:
    """Mixed audio: ``frames`` int16 of shape (n, channels), C-contiguous, owned by the block;
    ``start`` its first sample on the call's timeline."""

    frames: Any  # numpy.ndarray (int16, (n, channels))
    start: int

    @property
    def samples(self) -> int:
        return int(self.frames.shape[0])

    @property
    def end(self) -> int:
        """Sample index just past the block."""
        return self.start + self.samples


Block = StereoBlock | PcmBlock
