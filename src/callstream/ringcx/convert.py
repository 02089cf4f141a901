"""The RingCX wire messages (serialized StreamEvents) turned into the call core's events.

Runs in the gRPC thread for every message; nothing here blocks or keeps state. Every event of a
segment is stamped ``at``: the dialog's clock when it arrived (see `callstream.ringcx.bridge`).
A DialogInit becomes the call's `CallStarted`: its ids as the canonical fields (``callId`` is the
dialog id: it names the file and the log lines), the account and dialog as the raw metadata of
the sidecar. A StreamEvent with no event set (a newer platform's kind) is `InputIgnored`; bytes
that are no StreamEvent are `InputRejected` (`decode`).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from callstream.call.events import (
    AudioFormat,
    CallStarted,
    InputIgnored,
    InputRejected,
    SegmentInfo,
    SegmentMedia,
    SegmentStarted,
    SegmentStopped,
)
from callstream.ringcx import streaming_pb2 as pb

__all__ = ["DialogEvent", "convert", "decode", "started"]

DialogEvent = (CallStarted | SegmentStarted | SegmentMedia | SegmentInfo | SegmentStopped | InputIgnored
               | InputRejected)

_CODECS = {value.number: value.name for value in pb.Codec.DESCRIPTOR.values}
_PARTICIPANTS = {value.number: value.name for value in pb.ParticipantType.DESCRIPTOR.values}
_PRODUCTS = {value.number: value.name for value in pb.ProductType.DESCRIPTOR.values}
_DIALOGS = {value.number: value.name for value in pb.DialogType.DESCRIPTOR.values}


def _name(names: dict[int, str], number: int) -> str:
    return names.get(number, str(number))  # a value newer than our .proto: its number


def _optional(message: Any, name: str) -> str | None:
    return getattr(message, name) if message.HasField(name) else None


_parse = pb.StreamEvent.FromString
# A chunk is built as the tuple it is, without the NamedTuple's constructor (a Python function):
# 0.25 against 0.35 us, ten times a second per segment.
_new_tuple = tuple.__new__


def decode(data: bytes, at: float) -> DialogEvent:
    """One serialized StreamEvent as `convert` makes it (arrived at ``at``, the dialog's clock);
    bytes that are not a StreamEvent as `InputRejected` (counted against ``--max-bad-messages``,
    as a WebSocket call's malformed message: the dialog goes on)."""
    try:
        message = _parse(data)
    except DecodeError:
        return InputRejected("malformed StreamEvent")
    if message.WhichOneof("event") == "segment_media":  # nearly every message: `convert`'s first case, inline
        media = message.segment_media
        content = media.audio_content
        return _new_tuple(SegmentMedia, (media.segment_id, content.payload, content.seq, content.duration, at))
    return convert(message, at)


def convert(event: pb.StreamEvent, at: float) -> DialogEvent:
    """One StreamEvent as a call event arrived at ``at`` (the dialog's clock, seconds)."""
    kind = event.WhichOneof("event")
    if kind == "segment_media":
        media = event.segment_media
        content = media.audio_content
        return _new_tuple(SegmentMedia, (media.segment_id, content.payload, content.seq, content.duration, at))
    if kind == "segment_start":
        start = event.segment_start
        participant = start.participant
        fmt = None
        if start.HasField("audio_format"):
            given = start.audio_format
            fmt = AudioFormat(_name(_CODECS, given.codec), given.rate, given.ptime)
        product = None
        if start.HasField("product"):
            product = {"id": start.product.id, "type": _name(_PRODUCTS, start.product.type)}
        return SegmentStarted(
            start.segment_id, participant.id, _name(_PARTICIPANTS, participant.type),
            name=_optional(participant, "name"), audio_format=fmt, product=product, at=at,
        )
    if kind == "segment_info":
        info = event.segment_info
        return SegmentInfo(info.segment_id, info.event, _optional(info, "data"), at=at)
    if kind == "segment_stop":
        return SegmentStopped(event.segment_stop.segment_id, at=at)
    if kind == "dialog_init":
        init = event.dialog_init
        account, dialog = init.account, init.dialog
        return started(
            event.session_id,
            {"id": account.id, "sub_account_id": account.sub_account_id, "rc_account_id": account.rc_account_id},
            {
                "id": dialog.id, "type": _name(_DIALOGS, dialog.type), "ani": _optional(dialog, "ani"),
                "dnis": _optional(dialog, "dnis"), "language": _optional(dialog, "language"),
                "attributes": dict(dialog.attributes),
            },
        )
    return InputIgnored(kind or "")


def started(session_id: str, account: dict[str, Any], dialog: dict[str, Any]) -> CallStarted:
    """A DialogInit's content as the call's start. ``fields``: the path template's and the
    sidecar's identity (``callId`` = ``dialogId``), empty values left out; ``raw``: the
    sidecar's ``session_id``, ``account`` and ``dialog`` (JSON-ready dicts, as given)."""
    fields = {
        "dialogId": dialog.get("id") or "", "callId": dialog.get("id") or "", "sessionId": session_id,
        "accountId": account.get("id") or "", "subaccountId": account.get("sub_account_id") or "",
        "rcAccountId": account.get("rc_account_id") or "", "ani": dialog.get("ani") or "",
        "dnis": dialog.get("dnis") or "",
    }
    return CallStarted(
        fields={key: value for key, value in fields.items() if value},
        raw={"session_id": session_id, "account": account, "dialog": dialog},
    )
