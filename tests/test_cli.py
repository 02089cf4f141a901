"""The command line: --help explains every flag, each flag has a CALLSTREAM_* variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from callstream import __version__
from callstream.cli import build_parser, settings_from
from callstream.settings import Settings


def serve_args(argv: list[str], environ: dict[str, str] | None = None):
    return build_parser(environ or {}).parse_args(["serve", *argv])


def test_defaults_build_default_settings() -> None:
    assert settings_from(serve_args([])) == Settings()


def test_flags_and_environment_variables() -> None:
    args = serve_args(["--port", "4444", "--format", "flac"], {"CALLSTREAM_REORDER_WINDOW": "300",
                                                                "CALLSTREAM_FSYNC": "true",
                                                                "CALLSTREAM_PORT": "5555"})
    settings = settings_from(args)
    assert settings.port == 4444  # a flag beats the environment
    assert settings.format == "flac"
    assert settings.reorder_window_ms == 300.0
    assert settings.fsync is True
    assert settings_from(serve_args([], {"CALLSTREAM_OUTPUT_DIR": "/tmp/x"})).output_dir == Path("/tmp/x")


def test_metrics_endpoint_is_off_by_default_and_local_when_on() -> None:
    assert settings_from(serve_args([])).metrics_port is None
    settings = settings_from(serve_args(["--metrics-port", "9333"]))
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9333)
    environ = {"CALLSTREAM_METRICS_PORT": "0", "CALLSTREAM_METRICS_HOST": "0.0.0.0"}
    settings = settings_from(serve_args([], environ))
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 0)
    with pytest.raises(SystemExit):
        serve_args(["--metrics-port", "70000"])


def test_bad_values_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--port", "x"], ["--format", "mp3"], ["--reorder-window", "-5"]):
        with pytest.raises(SystemExit):
            serve_args(argv)
    with pytest.raises(SystemExit, match="path-template"):
        settings_from(serve_args(["--path-template", "{nosuchfield"]))


def test_every_serve_flag_is_in_help_with_its_variable() -> None:
    parser = build_parser({})
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    text = serve.format_help()
    for action in serve._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag not in ("--help",):
                assert flag in text
                assert "CALLSTREAM_" + flag[2:].replace("-", "_").upper() in text


def test_console_entry_points() -> None:
    out = subprocess.run([sys.executable, "-m", "callstream", "--version"], capture_output=True, text=True,
                         check=True)
    assert __version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "callstream", "serve", "--help"], capture_output=True,
                         text=True, check=True)
    assert "--output-dir" in out.stdout


@pytest.mark.parametrize("how", ["flag", "variable", "file", "blank"])
def test_an_empty_secret_refuses_to_start(how: str, tmp_path: Path) -> None:
    """An empty secret would let `"secret": ""` authenticate: the server must not start."""
    env = {"PATH": "/usr/bin:/bin"}
    args = [sys.executable, "-m", "callstream", "serve", "--host", "127.0.0.1", "--port", "0",
            "--output-dir", str(tmp_path / "out")]
    if how == "flag":
        args += ["--secret", ""]
    elif how == "variable":
        env["CALLSTREAM_SECRET"] = ""
    elif how == "blank":
        args += ["--secret", " \t "]
    else:
        (tmp_path / "secret").write_text("\n")
        args += ["--secret-file", str(tmp_path / "secret")]
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the server started with an empty secret")
    assert done.returncode != 0
    [line] = done.stderr.splitlines()
    assert "secret" in line and "empty" in line
    assert not (tmp_path / "out").exists()
