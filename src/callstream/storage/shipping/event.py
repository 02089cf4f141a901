"""The completion event: one JSON object per finished recording, the same for every sink.

Built once per recording and stored in the spool before the first delivery, so every retry,
to every sink, sends the very same bytes under the same ``event_id`` (receivers drop repeats).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any, Final

EVENT_TYPE: Final = "recording.finished"
EVENT_VERSION: Final = 1


def build_event(
    *, event_id: str, sidecar: dict[str, Any], audio_path: str | None, sidecar_path: str,
    audio_object: dict[str, Any] | None, sidecar_object: dict[str, Any] | None, sha256: str | None,
) -> dict[str, Any]:
    """The event of one recording. ``audio_path`` / ``sidecar_path``: relative to the output
    directory, or None when no local copy is kept; the objects: `StoredObject.as_dict()` or None
    without a store."""
    return {
        "type": EVENT_TYPE,
        "version": EVENT_VERSION,
        "event_id": event_id,
        "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "node": os.uname().nodename,
        "callId": sidecar.get("callId"),
        "sessionId": sidecar.get("sessionId"),
        "status": sidecar.get("status"),
        "duration_seconds": sidecar.get("duration_seconds"),
        "format": sidecar.get("format"),
        "sha256": sha256 if sha256 is not None else sidecar.get("sha256"),
        "object": audio_object,
        "sidecar_object": sidecar_object,
        "path": audio_path,
        "sidecar_path": sidecar_path,
        "sidecar": sidecar,
    }


def encode_event(event: dict[str, Any]) -> bytes:
    """The bytes sent: compact UTF-8 JSON (what the webhook signature covers)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str).encode()
