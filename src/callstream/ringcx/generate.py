"""Regenerate the committed Python code of ``streaming.proto`` with grpcio-tools (a test/dev
dependency; the server needs only grpcio and protobuf at run time).

Usage: ``python -m callstream.ringcx.generate [OUT_DIR]``; without OUT_DIR the files beside this
module are rewritten. tests/test_ringcx_proto.py generates into a temporary directory and fails
when the committed files differ.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTO = "callstream/ringcx/streaming.proto"  # relative to the source root: imports stay absolute
GENERATED = ("streaming_pb2.py", "streaming_pb2.pyi", "streaming_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules under ``out_root/callstream/ringcx/``; their paths. Raises
    RuntimeError when protoc fails, ImportError without grpcio-tools."""
    from grpc_tools import protoc

    source_root = Path(__file__).resolve().parents[2]
    include = str(resources.files("grpc_tools") / "_proto")
    out_root.mkdir(parents=True, exist_ok=True)
    code = protoc.main([
        "grpc_tools.protoc", f"-I{source_root}", f"-I{include}",
        f"--python_out={out_root}", f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", PROTO,
    ])
    if code != 0:
        raise RuntimeError(f"protoc failed on {PROTO} ({code})")
    return [out_root / "callstream" / "ringcx" / name for name in GENERATED]


def main(argv: list[str]) -> int:
    if argv:
        generate(Path(argv[0]))
        return 0
    here = Path(__file__).resolve().parent
    source_root = here.parents[1]
    generate(source_root)
    print("regenerated", ", ".join(GENERATED), "in", here)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
