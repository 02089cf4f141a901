"""One RingCX dialog as the recorder's front end sees it (sans-IO: no grpc, no trio).

The RingCX half of the recorder, as `EngageVoiceSession` is the WebSocket's: the shell takes the
dialog's events in batches from its `DialogChannel` (already call events: `convert` ran in the
gRPC thread), hands each batch to the `CallCore` (`items`: the batch itself; its `SegmentMedia`
go to `CallCore.receive_media`, every other event to `CallCore.receive`), turns the end of the
RPC into the core's `StreamEnded` (`ended`) and, once the recording is finished, answers the
RPC with the gRPC status of the call's ending (`answer`, `GRPC_STATUS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from callstream.call.events import CallEnded, StreamEnded
from callstream.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
)

__all__ = ["CLOSED", "GRPC_STATUS", "DialogSession", "answer"]

CLOSED: Final = "stream closed by the platform"  # a dialog's normal end (the reason of its result)

# What the RPC answers, by the close code of the call's ending (errors.CLOSE_*).
GRPC_STATUS: Final = {
    CLOSE_NORMAL: "OK",
    CLOSE_GOING_AWAY: "UNAVAILABLE",  # drain, idle timeout, maximum duration: the platform may retry
    CLOSE_UNSUPPORTED_DATA: "INVALID_ARGUMENT",
    CLOSE_INVALID_PAYLOAD: "INVALID_ARGUMENT",
    CLOSE_POLICY_VIOLATION: "UNAUTHENTICATED",
    CLOSE_MESSAGE_TOO_BIG: "RESOURCE_EXHAUSTED",
    CLOSE_INTERNAL_ERROR: "INTERNAL",
}


def answer(ending: CallEnded | None) -> tuple[str, str]:
    """The RPC's answer to a call that ended so: (gRPC status name, details). No close code (the
    platform ended or cancelled the stream, nobody decided otherwise) is OK."""
    if ending is None:
        return GRPC_STATUS[CLOSE_NORMAL], CLOSED
    code = CLOSE_NORMAL if ending.close_code is None else ending.close_code
    return GRPC_STATUS.get(code, "UNKNOWN"), ending.reason


class DialogSession:
    """Translates one dialog's batches for the recorder (see the module's docstring).
    ``remote``: the peer's address, for the sidecar."""

    __slots__ = ("remote",)

    needs_first_message: Final = False  # the credential was checked when the RPC was admitted

    def __init__(self, remote: str) -> None:
        self.remote = remote

    @staticmethod
    def fields() -> dict[str, str]:
        """Nothing is known before the DialogInit."""
        return {}

    def connection(self) -> dict[str, Any]:
        """The sidecar's record of the RPC; the DialogInit's ``session_id``, ``account`` and
        ``dialog`` replace the Nones (see `convert.started`)."""
        return {"front_end": "ringcx", "remote": self.remote, "session_id": None, "account": None, "dialog": None}

    @staticmethod
    def items(batch: Sequence[Any]) -> Sequence[Any]:
        """One take of the channel's events, as they are."""
        return batch

    @staticmethod
    def event(item: Any) -> Any:
        """An event of a batch that `CallCore.receive_media` did not take: itself."""
        return item

    @staticmethod
    def first(item: Any) -> Any:
        raise NotImplementedError("a dialog has no first message to check")

    @staticmethod
    def ended(closed: Any) -> StreamEnded:
        """The RPC's end (`bridge.DialogEnded`, whose ``how`` is "closed", "cancelled" or
        "failed: ...") as the core's in-band event: closed by the platform is the whole call."""
        if closed.how == "closed":
            return StreamEnded(CLOSED, complete=True)
        return StreamEnded(f"stream {closed.how}")
