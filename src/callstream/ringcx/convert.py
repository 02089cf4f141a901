"""The RingCX wire messages (generated protobuf classes) turned into the neutral dialog events.

Runs in the gRPC thread for every message; nothing here blocks or keeps state.
"""

from __future__ import annotations

from typing import Any

from callstream.ringcx import streaming_pb2 as pb
from callstream.ringcx.events import (
    AudioFormat,
    DialogEvent,
    DialogInit,
    SegmentInfo,
    SegmentMedia,
    SegmentStart,
    SegmentStop,
    Unknown,
)

_CODECS = {value.number: value.name for value in pb.Codec.DESCRIPTOR.values}
_PARTICIPANTS = {value.number: value.name for value in pb.ParticipantType.DESCRIPTOR.values}
_PRODUCTS = {value.number: value.name for value in pb.ProductType.DESCRIPTOR.values}
_DIALOGS = {value.number: value.name for value in pb.DialogType.DESCRIPTOR.values}


def _name(names: dict[int, str], number: int) -> str:
    return names.get(number, str(number))  # a value newer than our .proto: its number


def _optional(message: Any, name: str) -> str | None:
    return getattr(message, name) if message.HasField(name) else None


def convert(event: pb.StreamEvent, at: float) -> DialogEvent:
    """One StreamEvent as a neutral event arrived at ``at`` (the dialog's clock, seconds)."""
    kind = event.WhichOneof("event")
    if kind == "segment_media":
        media = event.segment_media
        content = media.audio_content
        return SegmentMedia(media.segment_id, content.payload, content.seq, content.duration, at)
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
        return SegmentStart(
            start.segment_id, participant.id, _name(_PARTICIPANTS, participant.type),
            name=_optional(participant, "name"), audio_format=fmt, product=product, at=at,
        )
    if kind == "segment_info":
        info = event.segment_info
        return SegmentInfo(info.segment_id, info.event, _optional(info, "data"), at=at)
    if kind == "segment_stop":
        return SegmentStop(event.segment_stop.segment_id, at=at)
    if kind == "dialog_init":
        init = event.dialog_init
        account, dialog = init.account, init.dialog
        return DialogInit(
            event.session_id,
            {"id": account.id, "sub_account_id": account.sub_account_id, "rc_account_id": account.rc_account_id},
            {
                "id": dialog.id, "type": _name(_DIALOGS, dialog.type), "ani": _optional(dialog, "ani"),
                "dnis": _optional(dialog, "dnis"), "language": _optional(dialog, "language"),
                "attributes": dict(dialog.attributes),
            },
            at=at,
        )
    return Unknown(kind or "", at=at)
