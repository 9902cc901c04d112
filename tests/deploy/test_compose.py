"""docker-compose.yml for one box: structure, health checks, volumes, provisioning paths,
and `docker-compose config` / the Compose spec schema where those are installed (there is
no Docker engine here; neither needs one)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, DEPLOYED, ENV_PREFIXES, GATEWAY, OPENAI, ROOT, SERVICES, settings_fields

COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_GPU = DEPLOY / "docker-compose.gpu.yml"
DOCKER_COMPOSE = shutil.which("docker-compose")
# Debian's docker-compose ships the Compose specification's JSON schema.
SPEC_SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_stack_has_the_services_the_gateway_prometheus_and_grafana(compose) -> None:
    assert set(compose["services"]) == {*DEPLOYED, "prometheus", "grafana"}


def test_each_service_builds_its_image_and_is_health_checked_over_grpc(compose) -> None:
    for name, svc in SERVICES.items():
        spec = compose["services"][name]
        assert spec["build"]["context"] == ".."
        dockerfile = (DEPLOY / spec["build"]["context"] / spec["build"]["dockerfile"]).resolve()
        assert dockerfile.is_file(), dockerfile
        assert spec["healthcheck"]["test"] == ["CMD", "grpc-health", f"127.0.0.1:{svc.port}", svc.full_name]
        assert f"{svc.port}:{svc.port}" in spec["ports"]
        assert str(svc.metrics_port) in [str(p) for p in spec["expose"]]
        assert spec["restart"] == "unless-stopped"
        # compose's SIGKILL must come after the server's own drain
        grace = float(spec["environment"][f"{svc.env_prefix}GRACE_SECONDS"])
        assert int(spec["stop_grace_period"].rstrip("s")) > grace


def test_matchgraph_waits_for_healthy_model_servers_and_targets_them(compose) -> None:
    graph = compose["services"]["matchgraph"]
    assert graph["depends_on"] == {"visionlanguage": {"condition": "service_healthy"},
                                   "diffusion": {"condition": "service_healthy"}}
    env = graph["environment"]
    assert env["UNFRAGILE_GRAPH_VISIONLANGUAGE_TARGET"] == "visionlanguage:50051"
    assert env["UNFRAGILE_GRAPH_DIFFUSION_TARGET"] == "diffusion:50052"


def test_named_volumes_are_declared_and_bind_mounts_exist(compose) -> None:
    declared = set(compose["volumes"])
    for name, spec in compose["services"].items():
        for mount in spec.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_prometheus_gets_the_project_config_and_rules(compose) -> None:
    prom = compose["services"]["prometheus"]
    mounts = dict(m.rsplit(":", 1)[0].split(":", 1) for m in prom["volumes"] if m.startswith("."))
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./prometheus/rules"] == "/etc/prometheus/rules"
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    for name, svc in SERVICES.items():
        assert f"{name}:{svc.metrics_port}" in targets  # compose service DNS name + metrics port
    assert f"gateway:{GATEWAY.port}" in targets  # the gateway's /metrics is on its HTTP port
    assert f"openai:{OPENAI.port}" in targets  # so is the OpenAI frontend's


def test_grafana_is_provisioned_with_the_datasource_and_dashboards(compose) -> None:
    graf = compose["services"]["grafana"]
    mounts = dict(m.rsplit(":", 1)[0].split(":", 1) for m in graf["volumes"] if m.startswith("."))
    ds_dir = DEPLOY / "grafana" / "provisioning" / "datasources"
    db_dir = DEPLOY / "grafana" / "provisioning" / "dashboards"
    assert mounts["./grafana/provisioning/datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts["./grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    (ds,) = yaml.safe_load((ds_dir / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" and ds["uid"] == "prometheus"
    (provider,) = yaml.safe_load((db_dir / "unfragile.yml").read_text())["providers"]
    # the provider's path is where compose mounts the dashboards folder
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    boards = sorted(p.name for p in (DEPLOY / "grafana" / "dashboards").glob("*.json"))
    assert boards == sorted(f"{name}.json" for name in ["overview", *DEPLOYED])
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/overview.json"


def test_gpu_override_uses_cuda_images_and_reserves_a_gpu() -> None:
    gpu = yaml.safe_load(COMPOSE_GPU.read_text())
    assert set(gpu["services"]) == {n for n, s in SERVICES.items() if s.model_server}
    for spec in gpu["services"].values():
        assert (ROOT / spec["build"]["dockerfile"]).is_file()
        assert spec["build"]["dockerfile"].endswith(".cuda.Dockerfile")
        (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


def test_environment_names_real_settings_fields(compose) -> None:
    files = [compose, yaml.safe_load(COMPOSE_GPU.read_text())]
    checked = 0
    for doc in files:
        for name, spec in doc["services"].items():
            if name not in ENV_PREFIXES or (fields := settings_fields(name)) is None:
                continue
            prefix = ENV_PREFIXES[name]
            for var in spec.get("environment", {}):
                assert var.startswith(prefix), f"{name}: {var} lacks the {prefix} prefix"
                assert var[len(prefix):].lower() in fields, f"{name} sets unknown {var}"
                checked += 1
    if checked == 0:
        pytest.skip("no service has its app.py (Settings) yet")


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose not installed (Debian package docker-compose)")
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "cpu+gpu"])
def test_docker_compose_config_accepts_the_files(files: list[Path]) -> None:
    args = [DOCKER_COMPOSE]
    for f in files:
        args += ["-f", str(f)]
    out = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60, cwd=DEPLOY)
    assert out.returncode == 0, out.stderr
    merged = yaml.safe_load(out.stdout)
    assert set(merged["services"]) == {*DEPLOYED, "prometheus", "grafana"}
    if len(files) == 2:
        assert merged["services"]["diffusion"]["image"] == "unfragile/diffusion:cuda"


@pytest.mark.skipif(not SPEC_SCHEMA.exists(), reason=f"Compose spec schema not found at {SPEC_SCHEMA} "
                    "(it comes with Debian's docker-compose package)")
@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_files_match_the_compose_spec_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed (kubernetes-validate brings it)")

    schema = json.loads(SPEC_SCHEMA.read_text())
    doc = yaml.safe_load(path.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_published_ports_do_not_collide(compose) -> None:
    published = [re.split(r":", p)[0] for spec in compose["services"].values() for p in spec.get("ports", [])]
    assert len(published) == len(set(published))


def test_gateway_waits_for_matchgraph_and_checks_readiness(compose) -> None:
    gw = compose["services"]["gateway"]
    assert gw["depends_on"] == {"matchgraph": {"condition": "service_healthy"}}
    assert gw["environment"]["UNFRAGILE_GATEWAY_MATCHGRAPH_TARGET"] == f"matchgraph:{SERVICES['matchgraph'].port}"
    assert f"{GATEWAY.port}:{GATEWAY.port}" in gw["ports"]
    assert "/readyz" in " ".join(gw["healthcheck"]["test"])
    assert (DEPLOY / gw["build"]["context"] / gw["build"]["dockerfile"]).resolve().is_file()


def test_openai_frontend_waits_for_the_model_servers_and_targets_them(compose) -> None:
    oa = compose["services"]["openai"]
    assert oa["depends_on"] == {"visionlanguage": {"condition": "service_healthy"},
                                "diffusion": {"condition": "service_healthy"}}
    env = oa["environment"]
    assert env["UNFRAGILE_OPENAI_VISIONLANGUAGE_TARGET"] == f"visionlanguage:{SERVICES['visionlanguage'].port}"
    assert env["UNFRAGILE_OPENAI_DIFFUSION_TARGET"] == f"diffusion:{SERVICES['diffusion'].port}"
    assert f"{OPENAI.port}:{OPENAI.port}" in oa["ports"]
    assert "/readyz" in " ".join(oa["healthcheck"]["test"])
    assert int(oa["stop_grace_period"].rstrip("s")) > float(env["UNFRAGILE_OPENAI_GRACE_SECONDS"])
    assert (DEPLOY / oa["build"]["context"] / oa["build"]["dockerfile"]).resolve().is_file()
