"""cffi build of the C kernels into ``callstream._mulaw`` (out-of-line API mode): G.711
(``mulaw.c``), the disk writer's batched WAV appends (``append.c``), the websockets adapter's
frame splitter (``wsframe.c``), the Media fast path (``mediascan.c``), the timeline's steady
state (``inorder.c``) and the segment mixer's writes (``mix.c``).

``setup.py`` names ``ffibuilder`` in ``cffi_modules``, so ``pip install -e .`` (or
``python setup.py build_ext --inplace``) compiles it into ``src/callstream/``.  The header
headers are both the C prototypes and the cdef, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

# setuptools wants source paths relative to the project root (the directory pip builds in).
HEADERS = ("mulaw.h", "append.h", "wsframe.h", "mediascan.h", "inorder.h", "mix.h")
SOURCES = [os.path.relpath(HERE / name)
           for name in ("mulaw.c", "append.c", "wsframe.c", "mediascan.c", "inorder.c", "mix.c")]
DEPENDS = [os.path.relpath(HERE / name) for name in HEADERS]  # rebuild when a header changes
INCLUDE_DIRS = [os.path.relpath(HERE)]

# No -march: the wheel must run on any x86-64 or arm64 CPU; mulaw.c picks its vector path at
# run time.
EXTRA_COMPILE_ARGS = ["/O2"] if sys.platform == "win32" else ["-O3"]

ffibuilder = FFI()
ffibuilder.cdef("\n".join((HERE / name).read_text(encoding="utf-8") for name in HEADERS))
ffibuilder.set_source(
    "callstream._mulaw",
    '#include <stddef.h>\n#include <stdint.h>\n#include "mulaw.h"\n#include "append.h"\n#include "wsframe.h"\n'
    '#include "mediascan.h"\n#include "inorder.h"\n#include "mix.h"\n',
    sources=SOURCES,
    depends=DEPENDS,
    include_dirs=INCLUDE_DIRS,
    extra_compile_args=EXTRA_COMPILE_ARGS,
)
