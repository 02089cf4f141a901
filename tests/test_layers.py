"""The package's layers, read from the source: every module's imports (ast) point one way.

Front ends (``engagevoice/``, ``ringcx/``) -> call core (``call/``) <- storage (``storage/``); the server
(``server/``) wires them; ``sim/`` talks to a server the way the platform does; ``fleet/`` runs
servers as processes behind a balancer. Shared top-level modules (errors, events, audio, codec,
native, settings) import no layer. The call core is sans-IO: no trio, sockets, threads or file
formats. docs/architecture.md draws the same picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "callstream"

SHARED = {"errors", "events", "audio", "codec", "native", "settings", "_mulaw"}
ENTRY = {"cli", "__main__", "__init__"}  # the command line wires everything
# layer -> the layers it may import (besides itself and the shared modules)
ALLOWED: dict[str, set[str]] = {
    "shared": set(),
    "call": set(),
    "engagevoice": {"call"},
    "ringcx": {"call"},
    "storage": {"call"},
    "server": {"call", "engagevoice", "ringcx", "storage"},
    "sim": {"engagevoice", "ringcx"},
    "fleet": {"sim", "storage"},  # starts nodes as processes, plays calls, reads their sidecars
}
# third-party and standard modules a layer must not import
FORBIDDEN: dict[str, set[str]] = {
    "shared": {"trio", "trio_websocket", "websockets", "wsproto", "socket", "ssl", "h11", "soundfile"},
    "call": {
        "trio", "trio_websocket", "websockets", "wsproto", "h11", "socket", "ssl", "selectors",
        "threading", "concurrent", "multiprocessing", "subprocess", "soundfile", "fcntl", "os",
        "msgspec", "prometheus_client", "grpc", "google",
    },
    "storage": {"trio_websocket", "websockets", "wsproto", "h11", "socket", "ssl"},
    "engagevoice": {"soundfile", "fcntl", "prometheus_client"},
    "ringcx": {"soundfile", "fcntl", "prometheus_client", "os"},
}


def layer_of(module: str) -> str:
    """``callstream.call.timeline`` or ``callstream.call`` -> ``call``; a top-level module ->
    ``shared`` or ``entry``."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ALLOWED:
        return parts[1]
    return "entry" if len(parts) >= 2 and parts[1] in ENTRY else "shared"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """Every module ``source`` imports (absolute names, relative ones resolved), with line numbers,
    wherever the statement is (function bodies and TYPE_CHECKING blocks included)."""
    found = []
    package = module if module.endswith("__init__") else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            if name == "callstream" or (node.level and not node.module):  # from callstream import x
                found.extend((node.lineno, f"{name}.{alias.name}") for alias in node.names)
    return found


def violations(source: str, module: str) -> list[str]:
    """What is wrong with ``module``'s imports, one line each (empty when it keeps to its layer)."""
    layer = layer_of(module)
    if layer == "entry":
        return []
    problems = []
    for line, name in imports_of(source, module):
        top = name.split(".")[0]
        if top != "callstream":
            if top in FORBIDDEN.get(layer, set()):
                problems.append(f"{module}:{line} imports {name} (the {layer} layer must not)")
            continue
        if name == "callstream":
            continue
        target = layer_of(name)
        if target == "entry":
            target = name.split(".")[1]
        if target in (layer, "shared") or target in ALLOWED.get(layer, set()):
            continue
        problems.append(f"{module}:{line} imports {name} (layer {layer} -> {target})")
    return problems


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_seen() -> None:
    names = {module_name(path) for path in MODULES}
    assert {"callstream.call.timeline", "callstream.storage.diskwriter", "callstream.cli", "callstream.native"} <= names
    assert {layer_of(name) for name in names} == {"entry", *ALLOWED}


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_imports_point_one_way(path: Path) -> None:
    assert violations(path.read_text(), module_name(path)) == []


# The call core is protocol-neutral: it takes `callstream.call.events`, never a front end's message
# types (`callstream.engagevoice.messages` are the Engage Voice messages, which its front end
# translates; the RingCX front end's are its generated protobuf classes, which it translates).
WIRE_MESSAGES = {"callstream.engagevoice", "callstream.ringcx"}
FRONT_ENDS = ("engagevoice", "ringcx")


def wire_imports(source: str, module: str) -> list[str]:
    """The wire-message modules ``module`` imports, when it is in the call core."""
    if layer_of(module) != "call":
        return []
    return [f"{module}:{line} imports {name}" for line, name in imports_of(source, module)
            if name in WIRE_MESSAGES or any(name.startswith(f"{wire}.") for wire in WIRE_MESSAGES)]


def test_the_call_core_takes_no_wire_messages() -> None:
    assert "callstream.call.core" in {module_name(path) for path in MODULES}
    found = [problem for path in MODULES for problem in wire_imports(path.read_text(), module_name(path))]
    assert found == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("callstream.call.core", "from callstream.engagevoice.messages import Start\n"),
        ("callstream.call.core", "from callstream.engagevoice import messages\n"),
        ("callstream.call.events", "import callstream.engagevoice.messages\n"),
        ("callstream.call.segments", "from callstream.ringcx import streaming_pb2 as pb\n"),
        ("callstream.call.core", "from callstream.ringcx.convert import convert\n"),
    ],
)
def test_a_wire_message_in_the_core_is_caught(module: str, source: str) -> None:
    assert wire_imports(source, module)


def test_the_call_core_imports_no_front_end() -> None:
    """Both front ends feed one core: none of it may know either (segments included)."""
    core = [path for path in MODULES if layer_of(module_name(path)) == "call"]
    assert {"callstream.call.core", "callstream.call.segments", "callstream.call.timeline"} <= {
        module_name(path) for path in core}
    found = [f"{module_name(path)} imports {name}" for path in core
             for _, name in imports_of(path.read_text(), module_name(path))
             if name.split(".")[:2] in (["callstream", front] for front in FRONT_ENDS)
             or name.split(".")[0] in ("grpc", "google", "trio")]
    assert found == []


def test_only_the_native_seam_imports_the_extension() -> None:
    users = [
        module_name(path)
        for path in MODULES
        for _, name in imports_of(path.read_text(), module_name(path))
        if name.startswith("callstream._mulaw")
    ]
    assert users == ["callstream.native"]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("callstream.call.timeline", "import trio\n"),
        ("callstream.call.timeline", "def f():\n    import socket\n"),
        ("callstream.call.core", "from callstream.engagevoice.session import EngageVoiceSession\n"),
        ("callstream.call.core", "from callstream.storage import wavfile\n"),
        ("callstream.call.core", "import trio\n"),
        ("callstream.call.core", "from callstream.server.recorder import CallRecorder\n"),
        ("callstream.call.segments", "from callstream.ringcx.session import DialogSession\n"),
        ("callstream.call.segments", "import grpc\n"),
        ("callstream.call.events", "from google.protobuf import empty_pb2\n"),
        ("callstream.call.events", "import time, os\n"),
        ("callstream.call.inorder", "from ..storage.wavfile import SAMPLE_RATE\n"),
        ("callstream.storage.sinks", "from callstream.engagevoice.protocol import parse_message\n"),
        ("callstream.storage.sinks", "from callstream.server.metrics import Metrics\n"),
        ("callstream.engagevoice.mediascan", "from callstream.storage.wavbatch import AppendBatch\n"),
        ("callstream.errors", "from callstream.call.timeline import Timeline\n"),
        ("callstream.sim.loadgen", "from callstream.server.server import Server\n"),
    ],
)
def test_a_bad_import_is_caught(module: str, source: str) -> None:
    assert violations(source, module)
