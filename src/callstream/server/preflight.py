"""Checks of the world before `callstream serve` starts: each finds what an operator most often
gets wrong and says it in one line (`StartupError`), before anything is logged as listening.

A check here can pass and the real thing still fail a moment later (another process takes the
port in between): the CLI turns such an `OSError` at start into one line too (`explain_os_error`).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import tempfile
from pathlib import Path

from callstream.settings import Settings

PRIVILEGED_PORTS = 1024  # below this, binding needs root or CAP_NET_BIND_SERVICE (Linux)


class StartupError(Exception):
    """Why the server cannot start; ``str()`` is the one line the operator sees."""


def check_all(settings: Settings) -> None:
    """Raise `StartupError` for the first problem found: output directory, TLS files, ports."""
    check_output_dir(settings.output_dir)
    if settings.log_file is not None:
        check_log_file(settings.log_file)
    check_tls(settings)
    check_port("--port", settings.host, settings.port)
    if settings.metrics_port is not None:
        check_port("--metrics-port", settings.metrics_host, settings.metrics_port)


def check_output_dir(directory: Path) -> None:
    """The directory exists (created if missing) and a file can be created in it."""
    if directory.exists() and not directory.is_dir():
        raise StartupError(f"--output-dir: {directory} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StartupError(f"--output-dir: cannot create {directory}: {error.strerror}") from None
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".callstream-check-"):
            pass
    except OSError as error:
        raise StartupError(f"--output-dir: cannot write into {directory}: {error.strerror}") from None


def check_log_file(path: Path) -> None:
    """--log-file can be appended to (it is created when missing, as logging would)."""
    if path.is_dir():
        raise StartupError(f"--log-file: {path} is a directory")
    try:
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as error:
        raise StartupError(f"--log-file: cannot write to {path}: {error.strerror}") from None


def check_tls(settings: Settings) -> None:
    """--tls-cert (and --tls-key) are readable and hold a certificate and its key."""
    if settings.tls_cert is None:
        return
    for flag, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
        if path is None:
            continue
        if not path.is_file():
            raise StartupError(f"{flag}: {path}: {'is a directory' if path.is_dir() else 'no such file'}")
        if not os.access(path, os.R_OK):
            raise StartupError(f"{flag}: {path}: not readable by this user")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as error:
        key = settings.tls_key or settings.tls_cert
        raise StartupError(
            f"--tls-cert: {settings.tls_cert} (key {key}) is not a PEM certificate chain with its private "
            f"key ({error.reason or error})"
        ) from None
    except OSError as error:
        raise StartupError(f"--tls-cert: {settings.tls_cert}: {error.strerror or error}") from None


def check_port(flag: str, host: str, port: int) -> None:
    """(host, port) can be bound now: the address exists here and the port is free and allowed."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupError(f"{flag}: cannot resolve host {host!r}: {error.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the real listener does
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as error:
                raise StartupError(explain_os_error(error, flag, host, port)) from None


def explain_os_error(error: OSError, flag: str, host: str, port: int) -> str:
    """One line for an `OSError` binding (host, port)."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if error.errno == errno.EADDRINUSE:
        return f"{flag}: {where} is already in use (another callstream or service?): stop it or give another {flag}"
    if error.errno == errno.EACCES and 0 < port < PRIVILEGED_PORTS:
        return (f"{flag}: port {port} is privileged (below {PRIVILEGED_PORTS}) and this user may not bind it: "
                f"use a port above 1023 (default 3333) behind a proxy or load balancer, or grant "
                f"CAP_NET_BIND_SERVICE")
    if error.errno == errno.EACCES:
        return f"{flag}: not allowed to bind {where}: {error.strerror}"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{flag}: {host} is not an address of this machine: listen on one of its own, or 0.0.0.0"
    return f"{flag}: cannot listen on {where}: {error.strerror or error}"
