"""The deployment files under deploy/: each is checked by the real tool where this machine has it
(systemd-analyze, caddy) and its invariants against callstream's own command line: the flags it
passes exist, the drain fits in the stop timeout, the health checks ask the metrics port for
/readyz."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import debian
from callstream.cli import build_parser
from callstream.fleet.caddyfile import BalancerConfig, render
from callstream.fleet.processes import caddy_binary
from callstream.settings import Settings, env_name, options

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "callstream.service"
FILES_PER_CALL = 3  # socket, audio file, its lock (README: --max-calls)
PRODUCTION_METRICS_PORT = 9090  # the port every deployment file gives --metrics-port


def serve_args(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    """The settings ``callstream serve`` builds from ``argv`` (without the program) and ``environ``,
    through the real parser and the settings' own checks (a bad flag, variable or value raises)."""
    args = build_parser(environ or {}).parse_args(argv)
    assert args.command.__name__ == "_run_serve"
    given = {name: getattr(args, name) for name, _ in options() if getattr(args, name, None) is not None}
    return Settings.from_strings(given, environ or {})


def serve_variables() -> set[str]:
    """The CALLSTREAM_* variables ``callstream serve`` reads."""
    return {env_name(name) for name, _ in options()}


def unit_entries(text: str) -> dict[str, dict[str, str]]:
    """A systemd unit's sections and keys (the last value of a key wins, as systemd does)."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, line
        current[key.strip()] = value.strip()
    return sections


def test_systemd_unit_drains_on_stop_and_restarts_on_failure() -> None:
    service = unit_entries(UNIT.read_text())["Service"]
    command = shlex.split(service["ExecStart"])
    assert command[0] == "/opt/callstream/bin/callstream"
    args = serve_args(command[1:])
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # the supervisor forwards SIGTERM to --workers itself
    assert int(service["TimeoutStopSec"]) >= args.drain_timeout + 15  # + finishing the recordings
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) >= FILES_PER_CALL * args.max_calls + 256
    assert args.metrics_port == PRODUCTION_METRICS_PORT
    assert str(args.output_dir).startswith(service["ReadWritePaths"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze on this machine")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify also checks that the program exists: point it at this checkout's callstream
    callstream = Path(sys.executable).parent / "callstream"
    unit = tmp_path / "callstream.service"
    unit.write_text(UNIT.read_text().replace("/opt/callstream/bin/callstream", str(callstream)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(unit) not in result.stderr, result.stderr  # a key systemd ignores is only a warning


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            found.append((instruction.upper(), rest.strip()))
    return found


def test_containerfile_copies_what_exists_and_serves_what_it_exposes() -> None:
    instructions = containerfile_instructions()
    copied = []
    for instruction, rest in instructions:
        if instruction == "COPY" and not rest.startswith("--from"):
            *sources, _destination = rest.split()
            copied += sources
    for source in copied:
        assert (ROOT / source).exists(), source
    # everything the package build reads is in the image's build stage
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        assert line.split()[1].split("/")[0] in copied, line
    assert {"pyproject.toml", "setup.py", "src", "csrc"} <= set(copied)
    ignore = (DEPLOY / "Containerfile.dockerignore").read_text().split()
    assert all(f"!{source}" in ignore for source in copied), "the build context keeps what is copied"

    env = {}
    for instruction, rest in instructions:
        if instruction == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
    assert env.keys() <= serve_variables(), "a variable callstream would ignore"
    entrypoint = next(json.loads(rest) for instruction, rest in instructions if instruction == "ENTRYPOINT")
    cmd = next(json.loads(rest) for instruction, rest in instructions if instruction == "CMD")
    assert entrypoint == ["/opt/callstream/bin/callstream"]
    assert any("python -m venv /opt/callstream" in rest for instruction, rest in instructions if instruction == "RUN")
    args = serve_args(cmd, env)  # every variable is one the CLI reads, with a valid value
    exposed = {int(port) for instruction, rest in instructions if instruction == "EXPOSE" for port in rest.split()}
    assert exposed == {args.port, args.metrics_port}
    assert args.host == args.metrics_host == "0.0.0.0"
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    healthcheck = next(rest for instruction, rest in instructions if instruction == "HEALTHCHECK")
    assert f"127.0.0.1:{args.metrics_port}/healthz" in healthcheck


def k8s_objects() -> dict[tuple[str, str], dict]:
    objects = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


def test_kubernetes_readiness_is_readyz_and_the_grace_period_outlasts_the_drain() -> None:
    objects = k8s_objects()
    deployment = objects[("Deployment", "callstream")]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    assert {item["name"] for item in container.get("env", [])} <= serve_variables()
    args = serve_args(container["args"], env)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"stream": args.port, "metrics": args.metrics_port}
    assert args.metrics_host == "0.0.0.0"  # the kubelet probes from outside the pod

    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert ports[readiness["port"]] == args.metrics_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pause = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", " ".join(
        container["lifecycle"]["preStop"]["exec"]["command"])).group(1))
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pause + args.drain_timeout + 15
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = [obj for (kind, _), obj in objects.items() if kind == "Service"]
    assert services
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    assert objects[("Service", "callstream-nodes")]["spec"]["clusterIP"] == "None"  # the pods' addresses

    (volume,) = pod["spec"]["volumes"]
    assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in objects
    (mount,) = container["volumeMounts"]
    assert str(args.output_dir).startswith(mount["mountPath"])
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the image's user
    assert container["image"].startswith("callstream:")


def caddy_json(caddyfile: Path, home: Path) -> dict:
    """The Caddyfile as Caddy itself reads it (``caddy adapt``), its reverse_proxy handler."""
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"))
    result = subprocess.run([caddy_binary(), "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    (server,) = config["apps"]["http"]["servers"].values()
    handlers = [handler for route in server["routes"] for handler in _handlers(route)]
    (proxy,) = [handler for handler in handlers if handler.get("handler") == "reverse_proxy"]
    return proxy


def _handlers(route: dict) -> list[dict]:
    found = []
    for handler in route.get("handle", []):
        found.append(handler)
        for inner in handler.get("routes", []):
            found += _handlers(inner)
    return found


def test_deploy_caddyfile_is_valid_and_sets_what_the_tested_config_sets(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    result = subprocess.run([caddy_binary(), "validate", "--config", str(DEPLOY / "Caddyfile")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    production = caddy_json(DEPLOY / "Caddyfile", tmp_path)
    tested_file = tmp_path / "Caddyfile"
    tested_file.write_text(render(BalancerConfig(listen="127.0.0.1:3333", upstreams=["127.0.0.2:3333"],
                                                 health_port=PRODUCTION_METRICS_PORT)))
    tested = caddy_json(tested_file, tmp_path)
    # the same settings, apart from the addresses of the nodes
    assert production.keys() == tested.keys()
    for key in production.keys() - {"upstreams"}:
        assert production[key] == tested[key], key
    assert production["load_balancing"]["selection_policy"] == {"policy": "least_conn"}
    active = production["health_checks"]["active"]
    assert (active["uri"], active["port"]) == ("/readyz", PRODUCTION_METRICS_PORT)
    max_call_ns = serve_args(["serve"]).max_call_seconds * 1e9
    assert production["stream_timeout"] > max_call_ns and production["stream_close_delay"] > max_call_ns


def test_balancer_config_refuses_what_caddy_could_not_use() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        BalancerConfig(listen=":80", upstreams=[], health_port=9090)
    with pytest.raises(ValueError, match="not a TCP port"):
        BalancerConfig(listen=":80", upstreams=["10.0.0.1:3333"], health_port=0)
    assert "bind fd/3" in render(BalancerConfig(listen="fd/3", upstreams=["a:1"], health_port=2))
    assert "http://:80 {" in render(BalancerConfig(listen=":80", upstreams=["a:1"], health_port=2))


def docs_block(language: str) -> str:
    """The ``language`` code block of docs/fleet.md."""
    return re.search(rf"```{language}\n(.*?)^\s*```", (ROOT / "docs" / "fleet.md").read_text(), re.S | re.M).group(1)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate and its key for recorder.example.com (the configurations' TLS)."""
    import trustme

    cert = trustme.CA().issue_cert("recorder.example.com")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


@pytest.mark.parametrize("block", ["haproxy", "haproxy-grpc"])
def test_docs_haproxy_configuration_is_valid(tmp_path: Path, certificate: tuple[Path, Path], block: str) -> None:
    haproxy = debian.program("haproxy", "haproxy")
    text = textwrap.dedent(docs_block(block))  # the gRPC one sits in a list item
    config = tmp_path / "haproxy.cfg"
    config.write_text(text.replace("/etc/haproxy/recorder.example.com.pem", str(certificate[0])))
    result = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def test_docs_nginx_configuration_is_valid(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    nginx = debian.program("nginx", "nginx-light")
    server = (docs_block("nginx")
              .replace("/etc/letsencrypt/live/recorder.example.com/fullchain.pem", str(certificate[0]))
              .replace("/etc/letsencrypt/live/recorder.example.com/privkey.pem", str(certificate[1])))
    config = tmp_path / "nginx.conf"
    config.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                      f"http {{\n{server}\n}}\n")
    result = subprocess.run([nginx, "-t", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr


def test_docs_caddy_grpc_site_is_valid_and_sets_what_the_tested_config_sets(tmp_path: Path) -> None:
    documented_file = tmp_path / "Caddyfile.grpc"
    documented_file.write_text(textwrap.dedent(docs_block("caddyfile-grpc")))  # it sits in a list item
    documented = caddy_json(documented_file, tmp_path)
    tested_file = tmp_path / "Caddyfile"
    tested_file.write_text(render(BalancerConfig(listen="127.0.0.1:10443", upstreams=["127.0.0.2:50051"],
                                                 health_port=0, grpc=True)))
    tested = caddy_json(tested_file, tmp_path)
    assert documented.keys() == tested.keys()
    for key in documented.keys() - {"upstreams"}:
        assert documented[key] == tested[key], key
    assert "health_checks" not in tested or "active" not in tested["health_checks"]  # see caddyfile.py
    assert "h2c" in documented["transport"]["versions"]
    assert documented["load_balancing"]["selection_policy"] == {"policy": "least_conn"}
