"""The command line: --help explains every flag in groups with units, each flag has a
CALLSTREAM_* variable, and both go through the one `Settings` (see test_startup_errors.py for
the real command's error cases)."""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream import __version__
from callstream.cli import build_parser, settings_from
from callstream.settings import GROUPS, Settings, SettingsError, env_name, flag_name, options, parse_duration


def serve_args(argv: list[str], environ: dict[str, str] | None = None):
    return build_parser(environ or {}).parse_args(["serve", *argv])


def settings(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    return settings_from(serve_args(argv), environ or {})


def test_defaults_match_settings() -> None:
    assert settings([]) == Settings()


def test_flags_beat_environment() -> None:
    environ = {"CALLSTREAM_REORDER_WINDOW": "300ms", "CALLSTREAM_FSYNC": "true", "CALLSTREAM_PORT": "5555"}
    got = settings(["--port", "4444", "--format", "flac"], environ)
    assert (got.port, got.format, got.reorder_window_ms, got.fsync) == (4444, "flac", 300.0, True)
    assert settings([], {"CALLSTREAM_OUTPUT_DIR": "/tmp/x"}).output_dir == Path("/tmp/x")


def test_durations_are_seconds_with_optional_units() -> None:
    assert settings(["--reorder-window", "0.25"]).reorder_window_ms == 250.0
    assert settings(["--idle-timeout", "2m", "--drain-timeout", "1500ms"]).idle_timeout == 120.0
    assert settings(["--max-call-duration", "1h"]).max_call_seconds == 3600.0
    assert settings(["--max-message-size", "128KiB"]).max_message_bytes == 128 * 1024


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_a_duration_reads_back(seconds: float) -> None:
    assert parse_duration(repr(seconds)) == seconds
    assert parse_duration(f"{seconds!r}ms") == pytest.approx(seconds / 1000)


def test_metrics_port_is_optional() -> None:
    assert settings([]).metrics_port is None
    assert settings(["--metrics-port", "9333"]).metrics_port == 9333
    got = settings([], {"CALLSTREAM_METRICS_PORT": "0", "CALLSTREAM_METRICS_HOST": "0.0.0.0"})
    assert (got.metrics_host, got.metrics_port) == ("0.0.0.0", 0)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("port", "70000", "must be at most 65535, got 70000"),
        ("port", "-1", "must be at least 0, got -1"),
        ("port", "abc", "'abc' is not a whole number"),
        ("format", "mp3", "'mp3' is not one of wav, flac, mulaw-wav"),
        ("workers", "0", "must be at least 1, got 0"),
        ("log_level", "bogus", "'bogus' is not one of debug, info, warning, error"),
        ("reorder_window_ms", "-5", "must be above 0 s, got -5 s"),
        ("host", "999.1.1.1", "999.1.1.1 is not an IPv4 address"),
        ("flush_interval", "soon", "'soon' is not a duration"),
        ("fsync", "maybe", "'maybe' is not a boolean"),
    ],
)
def test_a_bad_value_gets_the_same_error_from_a_flag_and_from_the_environment(
    name: str, text: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as from_env:
        Settings.from_strings({}, {env_name(name): text})
    with pytest.raises(SettingsError, match=message) as from_flag:
        Settings.from_strings({name: text}, {})
    assert str(from_env.value) == str(from_flag.value)
    assert from_env.value.option == name


def test_combinations_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["--path-template", "{nosuchfield"], "--path-template"),
        (["--tls-key", "k.pem"], "--tls-key: needs --tls-cert"),
        (["--reorder-window", "5", "--discontinuity", "2"], "--discontinuity: must be longer"),
        (["--port", "9000", "--metrics-port", "9000"], "--metrics-port: 9000 is also --port"),
        (["--secret", " "], "--secret: the secret is empty"),
        (["--participant-channels", "6"], "--participant-channels: only applies with --channel-layout"),
    ):
        with pytest.raises(SystemExit):
            settings(argv)
        assert message in capsys.readouterr().err


def test_every_serve_flag_is_in_help_with_its_variable_group_and_unit() -> None:
    parser = build_parser({})
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    text = serve.format_help()
    for group in GROUPS:
        assert f"\n{group}:\n" in text
    for name, option in options():
        assert flag_name(name) in text
        assert env_name(name) in text
        assert option.group in GROUPS
        assert option.switch or option.unit, f"{name} has no unit"
        if option.unit == "SECONDS":
            assert "second" in option.help, f"{name}'s help does not say seconds"


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
