"""Command line: `callstream serve | simulate | recover | status`.

`serve`'s flags and their ``CALLSTREAM_*`` variables are derived from `Settings` (see
`callstream.settings`): a flag is taken as a string and goes through the same parsing and
validation as its variable. Every mistake an operator can make at start ends the process with
one line on stderr naming the option or the file (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from callstream import __version__
from callstream.server.logs import configure_logging
from callstream.settings import (
    GROUPS,
    LOG_FORMATS,
    LOG_LEVELS,
    Settings,
    SettingsError,
    describe,
    env_name,
    flag_name,
    options,
    parse_bool,
)

USAGE_ERROR = 2  # exit status for a mistake in the command line, the environment or the set-up

__all__ = ["USAGE_ERROR", "build_parser", "configure_logging", "main", "settings_from"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


class _EnvDefaults:
    """Adds flags to a command other than serve (simulate, recover) whose value, when the flag is
    not given, comes from CALLSTREAM_<FLAG>. The variable is read only when that command runs
    (`resolve_env`), so a variable meant for one command never breaks another."""

    def __init__(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup, environ: Mapping[str, str]):
        self._parser = parser
        self._environ = environ

    def add(self, flag: str, *, help: str, default: Any = None, type: Callable[[str], Any] = str, **kw: Any) -> None:
        env = "CALLSTREAM_" + flag.lstrip("-").replace("-", "_").upper()
        dest = kw.pop("dest", flag.lstrip("-").replace("-", "_"))
        if kw.get("action") == "store_true":
            kw["action"] = "store_const"
            kw["const"] = True
            type = parse_bool
            shown = "off" if not default else "on"
        else:
            kw["type"] = type
            shown = "none" if default is None else default
        text = f"{help} [default: {shown}; env {env}]".replace("%", "%%")
        self._parser.add_argument(flag, dest=dest, default=None, help=text, **kw)
        specs = self._parser.get_default("_env_specs") or []
        specs.append((dest, flag, env, type, default, kw.get("choices")))
        self._parser.set_defaults(_env_specs=specs)


def resolve_env(args: argparse.Namespace, environ: Mapping[str, str], command: str) -> None:
    """Fill the flags not given from their variables, then from their defaults (see `_EnvDefaults`)."""
    for dest, flag, env, convert, default, choices in getattr(args, "_env_specs", None) or []:
        if getattr(args, dest) is not None:
            continue
        if env in environ:
            text = environ[env]
            try:
                value = convert(text)
            except (ValueError, argparse.ArgumentTypeError) as error:
                _fail(f"callstream {command}: {env} (for {flag}): {text!r}: {error}")
            if choices is not None and value not in choices:
                _fail(f"callstream {command}: {env} (for {flag}): {text!r} is not one of {', '.join(choices)}")
            setattr(args, dest, value)
        else:
            setattr(args, dest, default)


def _fail(line: str) -> NoReturn:
    print(line, file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def _add_serve(sub: argparse._SubParsersAction, environ: Mapping[str, str]) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the recorder",
        description="Accept Engage Voice Call Streaming WebSockets and record each call as a stereo file "
        "(left = agent, right = caller). Every flag can also be set by the variable named beside it; a "
        "flag beats its variable. Durations are in seconds (200ms, 2m, 1h are accepted too).",
    )
    _add_settings(parser, GROUPS)
    parser.set_defaults(command=_run_serve)


def _add_settings(parser: argparse.ArgumentParser, groups: Sequence[str]) -> None:
    """The flags of the `Settings` options in ``groups``, each taken as a string (see `settings_from`)."""
    added = {name: parser.add_argument_group(name) for name in groups}
    shown = Settings()
    for name, option in options():
        if option.group not in added:
            continue
        help_text = option.help
        metavar = "{" + ",".join(option.choices) + "}" if option.choices else option.unit  # argparse's style
        help_text = f"{help_text} [default: {shown.default_text(name)}; env {env_name(name)}]".replace("%", "%%")
        if option.switch:
            added[option.group].add_argument(flag_name(name), dest=name, action="store_const", const="true",
                                             default=None, help=help_text)
        else:
            added[option.group].add_argument(flag_name(name), dest=name, metavar=metavar, default=None,
                                             help=help_text)


def _add_simulate(sub: argparse._SubParsersAction, environ: Mapping[str, str]) -> None:
    from callstream.sim import simulate

    simulate.add_arguments(sub, _EnvDefaults, environ)


def _add_recover(sub: argparse._SubParsersAction, environ: Mapping[str, str]) -> None:
    parser = sub.add_parser(
        "recover",
        help="finish recordings an interrupted recorder left behind",
        description="Repair every NAME.partial.EXT below DIR that no live recorder is writing (a recorder "
        "killed mid-call, or a call failed on a hung disk, leaves them), rename it to NAME.EXT and mark its "
        "sidecar 'recovered'. Safe beside a live recorder: a recording still being written is locked by it "
        "and skipped. `serve` does this itself at start. Given the serve's shipping flags (or its CALLSTREAM_* "
        "variables), each recording recovered is also queued in DIR/.spool, as `serve` queues what it recovers: "
        "the next `serve` there (or one running there now) ships it.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="the recorder's --output-dir")
    _add_settings(parser, ("shipping",))
    add = _EnvDefaults(parser, environ).add
    add("--log-level", default="info", choices=LOG_LEVELS, help="logging verbosity")
    add("--log-format", default="text", choices=LOG_FORMATS, help="text lines or one JSON object per line")
    parser.set_defaults(command=_run_recover)


def _add_status(sub: argparse._SubParsersAction, environ: Mapping[str, str]) -> None:
    from callstream.server import status

    status.add_arguments(sub, _EnvDefaults, environ)


def _run_recover(args: argparse.Namespace) -> int:
    from callstream.storage.recovery import recover_directory
    from callstream.storage.shipping.spool import SPOOL_DIR, journal_recovered

    configure_logging(args.log_level, log_format=args.log_format)
    shipping = _recover_settings(args).shipping
    if not args.directory.is_dir():
        _fail(f"callstream recover: {args.directory} is not a directory")
    recovered = recover_directory(args.directory)  # logs each file once, with its duration
    if shipping is None:
        print(f"{len(recovered)} recordings recovered")
        if recovered and (args.directory / SPOOL_DIR).is_dir():  # a directory some serve ships from
            print(f"callstream recover: the {len(recovered)} recordings recovered were not queued for shipping (no "
                  "--store, --webhook-url or --nats-url given): they stay on local disk only; give recover the "
                  "serve's shipping flags or CALLSTREAM_* variables to queue what it recovers", file=sys.stderr)
        return 0
    queued = journal_recovered(args.directory, ((item.path, item.sidecar) for item in recovered))
    print(f"{len(recovered)} recordings recovered, {queued} queued for shipping")
    return 0 if queued == len(recovered) else 1


def _recover_settings(args: argparse.Namespace) -> Settings:
    """`recover`'s Settings: DIR as the output directory and the shipping options, from its flags
    and their variables (the serve's, checked the same way; other CALLSTREAM_* variables, meant
    for serve, are not read). Exits with one line naming a bad one."""
    environ = args._environ
    names = [name for name, option in options() if option.group == "shipping"]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    read = {env_name(name): environ[env_name(name)] for name in names if env_name(name) in environ}
    try:
        settings = Settings.from_strings({**given, "output_dir": str(args.directory)}, read)
        return _with_webhook_secret(settings)
    except SettingsError as error:
        _fail(f"callstream recover: {describe(error, given, read)}")


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    environ = dict(os.environ if environ is None else environ)
    parser = _Parser(
        prog="callstream",
        description="A production call recorder for RingCentral Engage Voice Call Streaming.",
    )
    parser.add_argument("--version", action="version", version=f"callstream {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_serve(sub, environ)
    _add_simulate(sub, environ)
    _add_recover(sub, environ)
    _add_status(sub, environ)
    return parser


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The one Settings object from parsed serve arguments and the environment (``os.environ``
    when not given). A bad value, from either, exits with one line naming it."""
    environ = os.environ if environ is None else environ
    given = {name: getattr(args, name) for name, _ in options() if getattr(args, name, None) is not None}
    from callstream.server.auth import read_secret_file
    from callstream.storage.naming import validate_template

    try:
        settings = Settings.from_strings(given, environ)
        for name in ("path_template", "ringcx_path_template"):  # checks the shared settings may not import
            try:
                validate_template(getattr(settings, name))
            except ValueError as error:
                raise SettingsError(name, str(error)) from None
        if settings.secret_file is not None:  # kept in the settings: SIGHUP reads it again
            try:
                settings = replace(settings, secret=read_secret_file(settings.secret_file))
            except OSError as error:
                raise SettingsError("secret_file", f"cannot read {settings.secret_file}: "
                                    f"{error.strerror or error}") from None
            except (ValueError, UnicodeDecodeError) as error:
                raise SettingsError("secret_file", str(error)) from None
        settings = _with_webhook_secret(settings)  # kept too: SIGHUP reads it again
    except SettingsError as error:
        _fail(f"callstream serve: {describe(error, given, environ)}")
    return settings


def _with_webhook_secret(settings: Settings) -> Settings:
    """``settings`` with the key of its --webhook-secret-file read; SettingsError naming the file."""
    from callstream.server.auth import read_secret_file

    if settings.webhook_secret_file is None:
        return settings
    try:
        return replace(settings, webhook_secret=read_secret_file(settings.webhook_secret_file).encode())
    except OSError as error:
        raise SettingsError("webhook_secret_file", f"cannot read {settings.webhook_secret_file}: "
                            f"{error.strerror or error}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise SettingsError("webhook_secret_file", str(error)) from None


def _run_serve(args: argparse.Namespace) -> int:
    import trio

    from callstream.server.filelimit import raise_file_limit
    from callstream.server.gcpolicy import tune_garbage_collector
    from callstream.server.preflight import StartupError, check_all
    from callstream.server.server import run_until_signalled

    settings = settings_from(args, args._environ)
    try:
        check_all(settings)
    except StartupError as error:
        _fail(f"callstream serve: {error}")
    configure_logging(settings.log_level, log_format=settings.log_format,
                      name="supervisor" if settings.workers > 1 else None, file=settings.log_file)
    # before the workers start: they inherit it
    raise_file_limit(settings.max_calls, settings.max_unauthenticated * settings.workers if settings.secret else 0)
    try:
        if settings.workers > 1:
            from callstream.server.workers import run_workers

            return run_workers(settings, settings.workers)
        tune_garbage_collector()
        trio.run(run_until_signalled, settings)
    except BaseException as error:  # a check passed, then the real thing failed: still one line
        line = _startup_line(error, settings)
        if line is None:
            raise
        _fail(f"callstream serve: {line}")
    return 0


def _single_leaf(group: BaseExceptionGroup) -> BaseException | None:
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None


def _startup_line(error: BaseException, settings: Settings) -> str | None:
    """One line for a failure to listen (raced past `preflight`), or None for anything else."""
    import errno

    from callstream.server.preflight import StartupError, explain_os_error

    if isinstance(error, BaseExceptionGroup):
        leaf = _single_leaf(error)
        return None if leaf is None else _startup_line(leaf, settings)
    if isinstance(error, StartupError):
        return str(error)
    if isinstance(error, OSError) and error.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        return explain_os_error(error, "--port", settings.host, settings.port)
    return None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    command = getattr(args, "command", None)
    if command is None:
        parser.print_help()
        return USAGE_ERROR
    name = next((word for word in (argv if argv is not None else sys.argv[1:]) if not word.startswith("-")), "")
    resolve_env(args, environ, name)
    args._environ = environ
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
