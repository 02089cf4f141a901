"""The balancer's configuration: a Caddyfile for several callstream nodes.

Contract of the topology (deploy/Caddyfile is the documented production example of the same):
- ``lb_policy least_conn``: a call is one long-lived request (the WebSocket tunnel), counted as
  in flight for the whole call, so the node with the fewest live calls gets the next one.
- Active health checks on each node's ``/readyz`` on its metrics port (``health_port``; one port
  for every node, so every node serves /readyz on the same port number, on its own address): a
  draining, disk-hung or full node answers 503 and leaves rotation within one interval.
- Passive health: a node that refused a connection (killed, restarting) or answered an upgrade
  with 503 (draining, full, disk hung) is skipped for ``fail_duration``, and ``lb_try_duration``
  lets the balancer dial another node within the same upgrade, before any active check has
  noticed. (Caddy does not retry a 503 itself: the platform retries a failed upgrade.)
- A live call is never cut by the balancer: ``stream_timeout`` is longer than the longest call,
  and a configuration reload keeps running tunnels open for as long (``stream_close_delay``).

The gRPC (RingCX) site (``grpc=True``) proxies HTTP/2 in cleartext (h2c) to each node's
``--ringcx-port --ringcx-plaintext``, per gRPC call (one dialog is one request for as long as it
lasts, which ``least_conn`` counts). It has NO active health checks: Caddy sends them through the
proxy's own transport, so with ``versions h2c`` they speak HTTP/2 to /readyz, which answers
HTTP/1.1 only, and every node would be marked down (Caddy has no separate health-check
transport). Passive health and ``lb_try_duration`` remain: a node that refuses connections
(killed, exited after its drain) is skipped and the dialog redialled to another node within the
same request. A draining node still accepts connections and answers a new dialog UNAVAILABLE
(HTTP 200 with grpc-status 14, which passive checks cannot see): least_conn keeps new dialogs
off it only while it has more live dialogs than the others (a tie is broken at random), and the
platform retries a refused dialog.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from callstream.settings import DEFAULT_MAX_CALL_SECONDS

STREAM_TIMEOUT: Final = DEFAULT_MAX_CALL_SECONDS + 3600.0  # seconds: a tunnel outlives the longest call
HEALTH_INTERVAL: Final = 2.0  # seconds between active checks of each node's /readyz
HEALTH_TIMEOUT: Final = 1.0  # seconds an answer to /readyz may take before the node counts as down
FAIL_DURATION: Final = 10.0  # seconds a node that refused a connection or answered 503 is kept out
TRY_DURATION: Final = 5.0  # seconds the balancer keeps trying other nodes for one upgrade
TRY_INTERVAL: Final = 0.25  # seconds between those tries
DIAL_TIMEOUT: Final = 2.0  # seconds to open a TCP connection to a node


@dataclass(frozen=True, slots=True)
class BalancerConfig:
    """What the balancer needs to know. ``listen`` is a Caddy network address: ``:443``,
    ``127.0.0.1:3333``, or ``fd/3`` for a socket the parent bound and passed (systemd, tests).
    ``upstreams`` are the nodes' WebSocket addresses (``host:port``); ``health_port`` is the port of
    every node's /readyz (``callstream serve --metrics-port``). Times in seconds."""

    listen: str
    upstreams: Sequence[str]
    health_port: int
    health_interval: float = HEALTH_INTERVAL
    health_timeout: float = HEALTH_TIMEOUT
    fail_duration: float = FAIL_DURATION
    try_duration: float = TRY_DURATION
    try_interval: float = TRY_INTERVAL
    stream_timeout: float = STREAM_TIMEOUT
    admin_socket: str | None = None  # a Unix socket for Caddy's admin API (live calls per node); None: off
    grpc: bool = False  # upstreams are RingCX gRPC ports (h2c), no active checks: health_port unused

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ValueError("a balancer needs at least one node")
        if not self.grpc and not 0 < self.health_port < 65536:
            raise ValueError(f"health_port {self.health_port} is not a TCP port")


def _duration(seconds: float) -> str:
    """Caddy's duration syntax, in milliseconds so that fractions survive."""
    return f"{round(seconds * 1000)}ms"


def render(config: BalancerConfig) -> str:
    """The Caddyfile text: plain HTTP on ``listen`` (put TLS in front, or add a site address with
    a certificate: see deploy/Caddyfile), no admin endpoint, no automatic HTTPS. The gRPC site
    (``config.grpc``): h2c in from the client (or TLS with a certificate, see docs/fleet.md), h2c
    out to the nodes, least_conn per gRPC call, passive health only (see the module docstring)."""
    admin, site, bind = _listen_parts(config)
    if config.grpc:
        upstreams = " ".join(f"h2c://{upstream}" for upstream in config.upstreams)
        global_extra = """\t# gRPC clients speak HTTP/2 with prior knowledge in cleartext (h2c) when TLS ends elsewhere
\tservers {
\t\tprotocols h1 h2 h2c
\t}
"""
        active_health, unhealthy, versions = "", "502 503", "\t\t\tversions h2c\n"
    else:
        upstreams = " ".join(config.upstreams)
        global_extra = """\t# a node leaving or rejoining rotation ("unhealthy" / "healthy" events) is logged
\tlog health {
\t\tlevel DEBUG
\t\tinclude events
\t}
"""
        active_health = f"""\t\thealth_uri /readyz
\t\thealth_port {config.health_port}
\t\thealth_interval {_duration(config.health_interval)}
\t\thealth_timeout {_duration(config.health_timeout)}
\t\thealth_passes 1
\t\thealth_fails 1

"""
        unhealthy, versions = "503", ""
    return f"""{{
\tadmin {admin}
\tauto_https off
\tpersist_config off
{global_extra}}}

{site} {{{bind}
\treverse_proxy {upstreams} {{
\t\tlb_policy least_conn
\t\tlb_try_duration {_duration(config.try_duration)}
\t\tlb_try_interval {_duration(config.try_interval)}

{active_health}\t\tfail_duration {_duration(config.fail_duration)}
\t\tmax_fails 1
\t\tunhealthy_status {unhealthy}

\t\tstream_timeout {_duration(config.stream_timeout)}
\t\tstream_close_delay {_duration(config.stream_timeout)}

\t\ttransport http {{
{versions}\t\t\tdial_timeout {_duration(DIAL_TIMEOUT)}
\t\t}}
\t}}
}}
"""


def _listen_parts(config: BalancerConfig) -> tuple[str, str, str]:
    """The global ``admin`` value, the site address and its ``bind`` line (empty unless the
    balancer listens on a socket handed over by file descriptor)."""
    admin = "off" if config.admin_socket is None else f"unix/{config.admin_socket}"
    if config.listen.startswith("fd/"):
        return admin, "http://", f"\n\tbind {config.listen}"
    return admin, f"http://{config.listen}", ""
