"""The one seam to the compiled C kernels (``callstream._mulaw``, built from csrc/ by cffi).

No other module imports the extension: each takes its kernel with ``kernel(name)``, which gives
``(ffi, lib)`` or ``(None, None)``, and each kernel has a pure-Python or numpy twin that runs when
``lib`` is None. The choice is made once, at import, from ``CALLSTREAM_NATIVE``:

- unset or ``1``: every kernel from the extension when it is built;
- ``0``: every twin (as if the extension were not built);
- a comma-separated list of ``-kernel`` (e.g. ``-wsframe,-append``): every kernel but those, each
  dropped one running its twin -- for measuring what one kernel is worth end to end.

Any other value, or an unknown kernel name, raises ValueError.

=========  =====================  ====================================  =======================================
name       kernel (csrc/)         used by                               twin when ``lib`` is None
=========  =====================  ====================================  =======================================
mulaw      cs_*_decode/encode     codec.CBackend (G.711)                codec.NumpyBackend (256-entry tables)
mediascan  cs_media_scan          engagevoice.mediascan.MediaScanner    engagevoice.protocol.parse_message
wsframe    cs_ws_split            engagevoice.transport_websockets      websockets' own frame parser
inorder    cs_inorder_place       call.inorder.SteadyLanes              call.timeline.Timeline.push (Python)
append     cs_append_batch        storage.wavbatch.AppendBatch          storage.sinks writes each file itself
mix        cs_mix_g711, _cut      call.mixing.MixWrites                 call.mixing.apply_numpy, cut_numpy
=========  =====================  ====================================  =======================================
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["AVAILABLE", "DISABLED", "DROPPED", "IMPORT_ERROR", "KERNELS", "ffi", "kernel", "lib"]

KERNELS = ("mulaw", "mediascan", "wsframe", "inorder", "append", "mix")


def _wanted() -> tuple[bool, frozenset[str]]:
    """(every twin, the kernels dropped one by one) from ``CALLSTREAM_NATIVE``."""
    wanted = os.environ.get("CALLSTREAM_NATIVE", "").strip()
    if wanted in ("", "1"):
        return False, frozenset()
    if wanted == "0":
        return True, frozenset(KERNELS)
    names = [part.strip() for part in wanted.split(",")]
    if not all(name.startswith("-") and name[1:] in KERNELS for name in names):
        raise ValueError(
            f"CALLSTREAM_NATIVE is {wanted!r}, expected '0', '1', unset or a list like "
            f"'-wsframe,-append' (kernels: {', '.join(KERNELS)})"
        )
    return False, frozenset(name[1:] for name in names)


def _load(disabled: bool) -> tuple[Any, Any, ImportError | None]:
    if disabled:
        return None, None, ImportError("CALLSTREAM_NATIVE=0 selects the pure-Python/numpy twins")
    try:
        from callstream._mulaw import ffi, lib
    except ImportError as exc:  # not built: every user falls back to its twin
        return None, None, exc
    return ffi, lib, None


DISABLED, DROPPED = _wanted()  # the operator asked for every twin; the kernels asked away
ffi, lib, IMPORT_ERROR = _load(DISABLED)
AVAILABLE: bool = lib is not None  # False when not built or CALLSTREAM_NATIVE=0


def kernel(name: str) -> tuple[Any, Any]:
    """``(ffi, lib)`` for the kernel ``name`` (one of KERNELS), or ``(None, None)`` when the extension
    is not built or ``CALLSTREAM_NATIVE`` drops it: the caller then runs the kernel's twin."""
    if name not in KERNELS:
        raise KeyError(f"no C kernel named {name!r}")
    if lib is None or name in DROPPED:
        return None, None
    return ffi, lib
