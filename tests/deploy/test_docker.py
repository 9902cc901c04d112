"""Image recipes (no Docker engine here: the Dockerfiles are checked as text) and the two
scripts the images ship, run for real: the gRPC health check against a real server,
and fetch-model against an empty, offline Hugging Face cache."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from deploy_support import DEPLOY, GATEWAY, HTTP_SERVICES, ROOT, SERVICES, settings_fields

DOCKER = DEPLOY / "docker"
VARIANTS = [(name, v) for name, s in SERVICES.items() for v in (("cpu", "cuda") if s.model_server else ("cpu",))]
ALL_RECIPES = [*VARIANTS, *((name, "cpu") for name in HTTP_SERVICES)]
HEALTH_PATHS = {"gateway": "/healthz", "openai": "/health"}


def _dockerfile(name: str, variant: str) -> Path:
    return DOCKER / (f"{name}.Dockerfile" if variant == "cpu" else f"{name}.{variant}.Dockerfile")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_exactly_the_expected_recipes_exist() -> None:
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(_dockerfile(*v).name for v in ALL_RECIPES)


@pytest.mark.parametrize("name,variant", VARIANTS)
def test_recipe_runs_non_root_health_checked_and_serves_its_service(name: str, variant: str) -> None:
    path = _dockerfile(name, variant)
    svc = SERVICES[name]
    ins = _instructions(path)
    ops = [op for op, _ in ins]
    args = {op: rest for op, rest in ins}  # last one wins, as in Docker
    assert ops[0] == "FROM"
    assert re.fullmatch(r"\d+(:\d+)?", args["USER"]) and not args["USER"].startswith("0"), \
        "run as a numeric non-root uid"
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN"), "USER after the last RUN"
    assert f'"grpc-health", "127.0.0.1:{svc.port}", "{svc.full_name}"' in args["HEALTHCHECK"]
    assert args["EXPOSE"].split() == [str(svc.port), str(svc.metrics_port)]
    assert args["ENTRYPOINT"] == f'["python", "-m", "services.cli", "serve", "{name}"]'
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(rest for op, rest in ins if op == "ENV")))
    assert env[f"{svc.env_prefix}HOST"] == "0.0.0.0"
    assert env[f"{svc.env_prefix}PORT"] == str(svc.port)
    assert env[f"{svc.env_prefix}METRICS_PORT"] == str(svc.metrics_port)
    assert f'pip install "/app[{name}]"' in path.read_text(), "installs only its own extra"
    if svc.model_server:
        index = re.search(r'ARG TORCH_INDEX="([^"]+)"', path.read_text()).group(1)
        assert index.endswith("/whl/cu128" if variant == "cuda" else "/whl/cpu")
    else:
        assert "torch" not in path.read_text().replace("No torch", ""), "MatchGraph runs no model: no torch"
    fields = settings_fields(name)
    if fields is not None:
        for var in env:
            if var.startswith(svc.env_prefix):
                assert var[len(svc.env_prefix):].lower() in fields, f"{path.name}: unknown setting {var}"


@pytest.mark.parametrize("name,variant", ALL_RECIPES)
def test_build_context_is_trimmed_and_copied_scripts_exist(name: str, variant: str) -> None:
    path = _dockerfile(name, variant)
    ignore = Path(f"{path}.dockerignore").read_text().split()
    for heavy in (".venv", ".models", ".git", "unfragile", "tests", "docs", "benchmarks"):
        assert heavy in ignore, f"{path.name}.dockerignore should exclude {heavy}"
    for script in re.findall(r"install -m 0755 (\S+)", path.read_text()):
        assert (ROOT / script).is_file(), script


@pytest.mark.parametrize("name", list(HTTP_SERVICES))
def test_http_recipe_runs_non_root_and_serves_http(name: str) -> None:
    svc = HTTP_SERVICES[name]
    path = _dockerfile(name, "cpu")
    ins = _instructions(path)
    args = {op: rest for op, rest in ins}
    assert re.fullmatch(r"\d+(:\d+)?", args["USER"]) and not args["USER"].startswith("0")
    assert args["EXPOSE"].split() == [str(svc.port)]
    assert f"http://127.0.0.1:{svc.port}{HEALTH_PATHS[name]}" in args["HEALTHCHECK"]
    assert args["ENTRYPOINT"] == f'["python", "-m", "services.cli", "serve", "{name}"]'
    extras = {"gateway": "gateway,mcp"}.get(name, name)  # the gateway serves MCP at /mcp
    assert f'pip install "/app[{extras}]"' in path.read_text() and "TORCH" not in path.read_text()
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(rest for op, rest in ins if op == "ENV")))
    assert env[f"{svc.env_prefix}HOST"] == "0.0.0.0" and env[f"{svc.env_prefix}PORT"] == str(svc.port)
    fields = settings_fields(name)
    if fields is not None:
        for var in env:
            if var.startswith(svc.env_prefix):
                assert var[len(svc.env_prefix):].lower() in fields, var


@pytest.fixture()
def serving_server():
    """A real core server (health SERVING once 'loaded') to run the health check against."""
    from services.core.server import GrpcService, start_server
    from services.core.settings import GrpcServerSettings

    release = threading.Event()
    service = GrpcService(name="probe", full_name="test.v1.Probe", servicer=object(),
                         add_to_server=lambda s, server: None)
    srv = start_server(GrpcServerSettings(port=0, metrics_port=-1), service)
    yield srv
    release.set()
    srv.stop(0)


def _health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DOCKER / "grpc_health_check.py"), *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)


def test_grpc_health_script_passes_on_serving_and_fails_otherwise(serving_server) -> None:
    ok = _health(serving_server.address, "test.v1.Probe")
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    unknown = _health(serving_server.address, "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stdout
    serving_server.stop(0)  # drained: nothing listens any more
    gone = _health(serving_server.address, "test.v1.Probe")
    assert gone.returncode == 1 and "UNREACHABLE" in gone.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_grpc_health_script_speaks_mutual_tls(tmp_path: Path) -> None:
    """What an exec probe needs once the server serves TLS (native grpc probes cannot)."""
    from services.core.server import GrpcService, start_server
    from services.core.settings import GrpcServerSettings

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=probe-ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    (tmp_path / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem")
    settings = GrpcServerSettings(port=0, metrics_port=-1, tls_cert_file=tmp_path / "server.pem",
                               tls_key_file=tmp_path / "server.key", tls_client_ca_file=tmp_path / "ca.pem")
    service = GrpcService(name="probe", full_name="test.v1.Probe", servicer=object(),
                          add_to_server=lambda s, server: None)
    srv = start_server(settings, service)
    try:
        pem = {n: str(tmp_path / n) for n in ("ca.pem", "client.pem", "client.key")}
        ok = _health(srv.address, "test.v1.Probe", "--ca", pem["ca.pem"], "--cert", pem["client.pem"],
                     "--key", pem["client.key"])
        assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stdout + ok.stderr
        no_client_cert = _health(srv.address, "test.v1.Probe", "--ca", pem["ca.pem"])
        assert no_client_cert.returncode == 1 and "UNREACHABLE" in no_client_cert.stdout
        plaintext = _health(srv.address, "test.v1.Probe")
        assert plaintext.returncode == 1
    finally:
        srv.stop(0)


def _fetch(model: str, hf_home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(DOCKER / "fetch_model.py"), model], capture_output=True, text=True,
                          timeout=60, env=env)


def test_fetch_model_needs_nothing_for_the_tiny_default_or_a_folder(tmp_path: Path) -> None:
    assert _fetch("", tmp_path).returncode == 0
    assert _fetch(str(tmp_path), tmp_path).returncode == 0


def test_fetch_model_fails_clearly_when_a_hub_model_is_neither_cached_nor_reachable(tmp_path: Path) -> None:
    out = _fetch("microsoft/kosmos-2-patch14-224", tmp_path / "hf")
    assert out.returncode == 1
    assert "'microsoft/kosmos-2-patch14-224' is not cached" in out.stderr
    assert "models volume" in out.stderr


# ------------------------------------------------- an image's own config, run for real
def _image(path: Path) -> tuple[dict[str, str], list[str], list[str]]:
    """(ENV, ENTRYPOINT, HEALTHCHECK CMD) of a Dockerfile, as Docker would read them."""
    import json

    ins = _instructions(path)
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(rest for op, rest in ins if op == "ENV")))
    args = {op: rest for op, rest in ins}
    health = json.loads(args["HEALTHCHECK"].split(" CMD ", 1)[1])
    return env, json.loads(args["ENTRYPOINT"]), health


def _localise(cmd: list[str]) -> list[str]:
    """The image's python and installed scripts -> this interpreter and the repo's scripts."""
    if cmd[0] == "grpc-health":
        return [sys.executable, str(DOCKER / "grpc_health_check.py"), *cmd[1:]]
    assert cmd[0] == "python"
    return [sys.executable, *cmd[1:]]


def _wait(check: list[str], proc: subprocess.Popen[bytes], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
        out = subprocess.run(check, capture_output=True, text=True, timeout=30)
        if out.returncode == 0 or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def test_matchgraph_and_gateway_images_start_from_their_own_env_and_pass_their_healthchecks(tmp_path: Path) -> None:
    """ENV + ENTRYPOINT + HEALTHCHECK of the two quick-starting images, run as the container
    would (paths under tmp, ports free, loopback): configuration by environment works,
    the health checks pass once serving, and SIGTERM drains to exit 0."""
    import signal
    import socket
    import urllib.request

    socks = [socket.socket() for _ in range(3)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    graph_port, graph_metrics, gw_port = (s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()

    env, entry, health = _image(_dockerfile("matchgraph", "cpu"))
    assert env["UNFRAGILE_GRAPH_DB_URL"].startswith("sqlite:////data/")
    env |= {"UNFRAGILE_GRAPH_HOST": "127.0.0.1", "UNFRAGILE_GRAPH_PORT": str(graph_port),
            "UNFRAGILE_GRAPH_METRICS_PORT": str(graph_metrics), "HF_HOME": str(tmp_path / "hf"),
            "UNFRAGILE_GRAPH_DB_URL": f"sqlite:///{tmp_path / env['UNFRAGILE_GRAPH_DB_URL'].removeprefix('sqlite:////')}"}
    health = [h.replace(f":{SERVICES['matchgraph'].port}", f":{graph_port}") for h in health]
    graph = subprocess.Popen(_localise(entry), env={**os.environ, **env}, cwd=ROOT)
    gateway = None
    try:
        ok = _wait(_localise(health), graph)
        assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{graph_metrics}/metrics", timeout=10) as resp:
            assert b'unfragile_model_ready{service="matchgraph"} 1.0' in resp.read()

        gw_env, gw_entry, gw_health = _image(_dockerfile(GATEWAY.name, "cpu"))
        gw_env |= {"UNFRAGILE_GATEWAY_HOST": "127.0.0.1", "UNFRAGILE_GATEWAY_PORT": str(gw_port),
                   "UNFRAGILE_GATEWAY_MATCHGRAPH_TARGET": f"127.0.0.1:{graph_port}"}
        gw_health = [h.replace(f":{GATEWAY.port}/", f":{gw_port}/") for h in gw_health]
        gateway = subprocess.Popen(_localise(gw_entry), env={**os.environ, **gw_env}, cwd=ROOT)
        assert _wait(_localise(gw_health), gateway).returncode == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{gw_port}/readyz", timeout=10) as resp:
            assert resp.status == 200  # the gateway reaches MatchGraph through the env target
    finally:
        for proc in (gateway, graph):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in (gateway, graph) if p is not None]
    assert codes == [0] * len(codes), f"SIGTERM should drain and exit 0, got {codes}"
