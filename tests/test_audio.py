"""The shared audio constants agree with the C kernels and the G.711 arithmetic they stand for."""

from __future__ import annotations

import numpy as np

from callstream import audio, codec


def test_the_constants_agree_with_the_codec() -> None:
    assert audio.ULAW_SILENCE == codec.ULAW_SILENCE  # the C header's value when the kernel is built
    assert codec.decode_ulaw(bytes([audio.ULAW_SILENCE])).tolist() == [0]
    assert audio.FRAME_BYTES == audio.SAMPLE_RATE * audio.FRAME_MS // 1000 == 160
    assert codec.encode_ulaw(np.zeros(audio.FRAME_BYTES, dtype=np.int16)) == bytes([audio.ULAW_SILENCE]) * 160
