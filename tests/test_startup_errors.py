"""Every mistake an operator makes at start, through the real command: exit status non-zero,
one line on stderr naming the problem (and the option or file), no traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serverprocess import ServerProcess

TIMEOUT = 60  # seconds for the command to give up (it should in well under one)

# as root, drop the capabilities that let root bind ports below 1024 and write anywhere, so the
# command meets what an unprivileged operator meets
UNPRIVILEGED = (
    ["setpriv", "--bounding-set=-net_bind_service,-dac_override,-dac_read_search"]
    if os.geteuid() == 0 and shutil.which("setpriv")
    else []
)


def run(*argv: str, env: dict[str, str] | None = None, prefix: list[str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CALLSTREAM_")} | (env or {})
    return subprocess.run([*(prefix or []), sys.executable, "-m", "callstream", *argv], capture_output=True,
                          text=True, env=environ, timeout=TIMEOUT, cwd=cwd)


def refused(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The one line ``result`` printed; asserts the exit status, one line, no traceback, ``expected``."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "listening" not in result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def listening() -> socket.socket:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def serve(tmp_path: Path, *argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return run("serve", "--host", "127.0.0.1", "--output-dir", str(tmp_path / "rec"), *argv, **kw)


def test_port_in_use(tmp_path: Path, listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    refused(serve(tmp_path, "--port", str(port)), f"--port: 127.0.0.1:{port} is already in use")


def test_metrics_port_in_use_before_listening(tmp_path: Path, listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    refused(serve(tmp_path, "--port", "0", "--metrics-port", str(port)),
            f"--metrics-port: 127.0.0.1:{port} is already in use")


@pytest.mark.skipif(os.geteuid() == 0 and not UNPRIVILEGED, reason="root, and no setpriv to drop the capability")
def test_privileged_port_as_non_root(tmp_path: Path) -> None:
    refused(serve(tmp_path, "--port", "80", prefix=UNPRIVILEGED), "--port: port 80 is privileged", "above 1023")


@pytest.mark.parametrize(("port", "message"), [("70000", "must be at most 65535, got 70000"),
                                                ("-1", "must be at least 0, got -1")])
def test_port_out_of_range(tmp_path: Path, port: str, message: str) -> None:
    refused(serve(tmp_path, "--port", port), f"--port: {message}")


def test_host_not_an_address(tmp_path: Path) -> None:
    refused(run("serve", "--host", "999.1.1.1", "--output-dir", str(tmp_path)),
            "--host: 999.1.1.1 is not an IPv4 address")


def test_output_dir_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    refused(run("serve", "--port", "0", "--output-dir", str(file)), f"--output-dir: {file} is a file")


@pytest.mark.skipif(os.geteuid() == 0 and not UNPRIVILEGED, reason="root, and no setpriv to drop the capability")
def test_output_dir_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    refused(run("serve", "--port", "0", "--output-dir", str(locked), prefix=UNPRIVILEGED),
            f"--output-dir: cannot write into {locked}: Permission denied")


def test_log_file_in_a_missing_directory(tmp_path: Path) -> None:
    log = tmp_path / "nowhere" / "callstream.log"
    refused(serve(tmp_path, "--port", "0", "--log-file", str(log)),
            f"--log-file: cannot write to {log}: No such file or directory")


def test_tls_cert_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    refused(serve(tmp_path, "--port", "0", "--tls-cert", str(missing)), f"--tls-cert: {missing}: no such file")


def test_tls_cert_not_a_certificate(tmp_path: Path) -> None:
    bogus = tmp_path / "cert.pem"
    bogus.write_text("not a certificate\n")
    refused(serve(tmp_path, "--port", "0", "--tls-cert", str(bogus)), f"--tls-cert: {bogus}", "not a PEM certificate")


def test_simulate_stereo_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "call.wav"
    refused(run("simulate", "--url", "ws://127.0.0.1:9", "--stereo", str(missing)),
            f"--stereo: {missing}: no such file")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CALLSTREAM_FORMAT", "mp3", "CALLSTREAM_FORMAT (for --format): 'mp3' is not one of wav, flac, mulaw-wav"),
        ("CALLSTREAM_WORKERS", "0", "CALLSTREAM_WORKERS (for --workers): must be at least 1, got 0"),
        ("CALLSTREAM_PORT", "abc", "CALLSTREAM_PORT (for --port): 'abc' is not a whole number"),
        ("CALLSTREAM_LOG_LEVEL", "bogus", "CALLSTREAM_LOG_LEVEL (for --log-level): 'bogus' is not one of"),
    ],
)
def test_bad_variable(tmp_path: Path, variable: str, value: str, message: str) -> None:
    flag = "--" + variable.removeprefix("CALLSTREAM_").lower().replace("_", "-")
    port = [] if flag == "--port" else ["--port", "0"]  # a flag beats its variable
    line = refused(serve(tmp_path, *port, env={variable: value}), message)
    from_flag = refused(serve(tmp_path, *port, flag, value))
    assert line.split(": ", 2)[2] == from_flag.split(": ", 2)[2]  # the same words after the option's name


def test_bad_variable_of_simulate(tmp_path: Path) -> None:
    refused(run("simulate", env={"CALLSTREAM_CALLS": "many"}), "CALLSTREAM_CALLS (for --calls): 'many'")


def test_a_simulate_variable_does_not_break_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLSTREAM_CALLS", "many")  # simulate's; serve must not read it
    monkeypatch.setenv("CALLSTREAM_STEREO", str(tmp_path / "missing.wav"))
    server = ServerProcess(tmp_path / "rec")
    assert server.port > 0
    assert server.stop() == 0
    assert "Traceback" not in "".join(server.log)
