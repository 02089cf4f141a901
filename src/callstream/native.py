"""The one seam to the compiled C kernels (``callstream._mulaw``, built from csrc/ by cffi).

No other module imports the extension: they take ``ffi`` and ``lib`` from here, and each kernel
has a pure-Python or numpy twin that runs when ``lib`` is None. The choice is made once, at
import: ``CALLSTREAM_NATIVE=0`` selects the twins everywhere (as if the extension were not
built); unset or ``1`` uses the extension when it is built. Any other value raises ValueError.

=====================  ====================================  ======================================
kernel (csrc/)         used by                               twin when ``lib`` is None
=====================  ====================================  ======================================
cs_*_decode/encode     codec.CBackend (G.711)                codec.NumpyBackend (256-entry tables)
cs_media_scan          engagevoice.mediascan.MediaScanner    engagevoice.protocol.parse_message
cs_ws_split            engagevoice.transport_websockets      websockets' own frame parser
cs_inorder_place       call.inorder.SteadyLanes              call.timeline.Timeline.push (Python)
cs_append_batch        storage.wavbatch.AppendBatch          storage.sinks writes each file itself
=====================  ====================================  ======================================
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["AVAILABLE", "DISABLED", "IMPORT_ERROR", "ffi", "lib"]


def _load() -> tuple[Any, Any, ImportError | None]:
    wanted = os.environ.get("CALLSTREAM_NATIVE", "").strip()
    if wanted not in ("", "0", "1"):
        raise ValueError(f"CALLSTREAM_NATIVE is {wanted!r}, expected '0', '1' or unset")
    if wanted == "0":
        return None, None, ImportError("CALLSTREAM_NATIVE=0 selects the pure-Python/numpy twins")
    try:
        from callstream._mulaw import ffi, lib
    except ImportError as exc:  # not built: every user falls back to its twin
        return None, None, exc
    return ffi, lib, None


ffi, lib, IMPORT_ERROR = _load()
AVAILABLE: bool = lib is not None  # False when not built or CALLSTREAM_NATIVE=0
DISABLED: bool = os.environ.get("CALLSTREAM_NATIVE", "").strip() == "0"  # the operator asked for the twins
