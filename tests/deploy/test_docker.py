"""Image recipes (no Docker engine here: the Dockerfiles are checked as text) and the two
scripts the images ship, run for real: the gRPC health check against a real server,
and fetch-model against an empty, offline Hugging Face cache."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deploy_support import DEPLOY, GATEWAY, ROOT, SERVICES, settings_fields

DOCKER = DEPLOY / "docker"
VARIANTS = [(name, v) for name, s in SERVICES.items() for v in (("cpu", "cuda") if s.model_server else ("cpu",))]
ALL_RECIPES = [*VARIANTS, (GATEWAY.name, "cpu")]


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
    assert re.fullmatch(r"\d+(:\d+)?", args["USER"]) and not args["USER"].startswith("0"), "run as a numeric non-root uid"
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN"), "USER after the last RUN"
    assert f'"grpc-health", "127.0.0.1:{svc.port}", "{svc.full_name}"' in args["HEALTHCHECK"]
    assert args["EXPOSE"].split() == [str(svc.port), str(svc.metrics_port)]
    assert args["ENTRYPOINT"] == f'["python", "-m", "services.cli", "serve", "{name}"]'
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(rest for op, rest in ins if op == "ENV")))
    assert env[f"{svc.env_prefix}HOST"] == "0.0.0.0"
    assert env[f"{svc.env_prefix}PORT"] == str(svc.port)
    assert env[f"{svc.env_prefix}METRICS_PORT"] == str(svc.metrics_port)
    index = re.search(r'ARG TORCH_INDEX="([^"]+)"', path.read_text()).group(1)
    assert index.endswith("/whl/cu128" if variant == "cuda" else "/whl/cpu")
    fields = settings_fields(name)
    if fields is not None:
        for var in env:
            if var.startswith(svc.env_prefix):
                assert var[len(svc.env_prefix):].lower() in fields, f"{path.name}: unknown setting {var}"


@pytest.mark.parametrize("name,variant", ALL_RECIPES)
def test_build_context_is_trimmed_and_copied_scripts_exist(name: str, variant: str) -> None:
    path = _dockerfile(name, variant)
    ignore = Path(f"{path}.dockerignore").read_text().split()
    for heavy in (".venv", ".models", ".git", "unfragile"):
        assert heavy in ignore, f"{path.name}.dockerignore should exclude {heavy}"
    for script in re.findall(r"install -m 0755 (\S+)", path.read_text()):
        assert (ROOT / script).is_file(), script


def test_gateway_recipe_runs_non_root_and_serves_http() -> None:
    path = _dockerfile(GATEWAY.name, "cpu")
    ins = _instructions(path)
    args = {op: rest for op, rest in ins}
    assert re.fullmatch(r"\d+(:\d+)?", args["USER"]) and not args["USER"].startswith("0")
    assert args["EXPOSE"].split() == [str(GATEWAY.port)]
    assert f"http://127.0.0.1:{GATEWAY.port}/healthz" in args["HEALTHCHECK"]
    assert "from services.gateway.server import run" in args["ENTRYPOINT"]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(rest for op, rest in ins if op == "ENV")))
    assert env["UNFRAGILE_GATEWAY_HOST"] == "0.0.0.0" and env["UNFRAGILE_GATEWAY_PORT"] == str(GATEWAY.port)
    fields = settings_fields(GATEWAY.name)
    if fields is not None:
        for var in env:
            if var.startswith(GATEWAY.env_prefix):
                assert var[len(GATEWAY.env_prefix):].lower() in fields, var


@pytest.fixture()
def serving_server():
    """A real core server (health SERVING once 'loaded') to run the health check against."""
    from services.core.server import GrpcService, start_server
    from services.core.settings import ServiceSettings

    release = threading.Event()
    service = GrpcService(name="probe", full_name="test.v1.Probe", servicer=object(),
                         add_to_server=lambda s, server: None)
    srv = start_server(ServiceSettings(port=0, metrics_port=-1), service)
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
