"""`TextBatch`: several whole text messages from one read, in one buffer (no trio, no sockets).

A transport that splits many small messages out of one read (the websockets adapter does, in
C) hands them over as one `TextBatch` instead of one ``str`` each, so that the recorder can
parse the whole batch in one call too (`mediascan.MediaScanner`). It is only a packaging of the
same messages, in the same order.
"""

from __future__ import annotations

from array import array


class TextBatch:
    """Message i is ``buffer[spans[2 * i] : spans[2 * i] + spans[2 * i + 1]]``.

    ``buffer``: the messages' bytes back to back, all ASCII (so each message is its own valid
    UTF-8 text); owned by the batch, never mutated. ``spans``: offset and length of each message
    in ``buffer``, as unsigned 32-bit pairs (an ``array("I")``, which C reads as uint32_t).
    Treat both as read-only. (A plain class rather than a frozen dataclass: one is made per
    read, and a frozen dataclass's ``__init__`` cost 1.1 µs against 0.4.)"""

    __slots__ = ("buffer", "spans")

    def __init__(self, buffer: bytes | bytearray, spans: array) -> None:
        self.buffer = buffer
        self.spans = spans

    def __len__(self) -> int:
        return len(self.spans) >> 1

    def messages(self) -> list[str]:
        """The messages as text, in order."""
        text = self.buffer.decode("ascii")
        spans = self.spans
        return [text[start : start + length] for start, length in zip(spans[0::2], spans[1::2], strict=True)]
