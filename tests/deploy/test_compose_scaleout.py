"""docker-compose.scale-out.yml: the one-box stack with the MatchGraph as two writer-capable instances (one
leads) and two readers on a `postgres` service. Checked with `docker-compose config` and the Compose spec
schema where installed, and its Prometheus config with promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, DEPLOYED, ENV_PREFIXES, SERVICES, promtool, settings_fields

COMPOSE = DEPLOY / "docker-compose.yml"
SCALE_OUT = DEPLOY / "docker-compose.scale-out.yml"
DOCKER_COMPOSE = shutil.which("docker-compose")
SPEC_SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")  # Debian's docker-compose
GRAPH = SERVICES["matchgraph"]


def _merged() -> dict[str, Any]:
    """The two files merged by docker-compose where installed, else the override alone."""
    if DOCKER_COMPOSE is None:
        return yaml.safe_load(SCALE_OUT.read_text())
    out = subprocess.run([DOCKER_COMPOSE, "-f", str(COMPOSE), "-f", str(SCALE_OUT), "config"], capture_output=True,
                         text=True, timeout=60, cwd=DEPLOY)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_the_override_adds_postgres_and_readers_and_splits_the_gateway() -> None:
    doc = _merged()
    services = doc["services"]
    if DOCKER_COMPOSE is not None:
        assert set(services) == {*DEPLOYED, "prometheus", "grafana", "postgres", "matchgraph-standby",
                                 "matchgraph-reader"}
    writer, reader, gateway = services["matchgraph"], services["matchgraph-reader"], services["gateway"]
    standby = services["matchgraph-standby"]
    url = "postgresql://matchgraph:${MATCHGRAPH_DB_PASSWORD:-matchgraph}@postgres:5432/matchgraph"
    if DOCKER_COMPOSE is not None:
        url = "postgresql://matchgraph:matchgraph@postgres:5432/matchgraph"  # interpolated by compose
    for name, w in (("matchgraph", writer), ("matchgraph-standby", standby)):  # two writer-capable instances
        assert w["environment"]["UNFRAGILE_GRAPH_ROLE"] == "writer"
        assert w["environment"]["UNFRAGILE_GRAPH_ADVERTISE_ADDRESS"] == f"{name}:{GRAPH.port}"
        assert w["environment"]["UNFRAGILE_GRAPH_DB_URL"] == url
        assert w["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert standby["healthcheck"]["test"] == ["CMD", "grpc-health", f"127.0.0.1:{GRAPH.port}", GRAPH.full_name]
    assert reader["environment"]["UNFRAGILE_GRAPH_DB_URL"] == url
    assert reader["environment"]["UNFRAGILE_GRAPH_ROLE"] == "reader"
    assert "UNFRAGILE_GRAPH_WRITER_ADDRESS" not in reader["environment"]  # it names the leader it follows
    assert reader["deploy"]["replicas"] >= 2
    assert reader["healthcheck"]["test"] == ["CMD", "grpc-health", f"127.0.0.1:{GRAPH.port}", GRAPH.full_name]
    assert "ports" not in reader  # replicas cannot share a published port: reached by DNS inside the network
    assert gateway["environment"]["UNFRAGILE_GATEWAY_MATCHGRAPH_TARGET"] == f"dns:///matchgraph-reader:{GRAPH.port}"
    assert gateway["environment"]["UNFRAGILE_GATEWAY_MATCHGRAPH_WRITER_TARGET"] == \
        f"matchgraph:{GRAPH.port},matchgraph-standby:{GRAPH.port}"  # the gateway follows the leader
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]


def test_environment_names_real_settings_fields() -> None:
    doc = yaml.safe_load(SCALE_OUT.read_text())
    for name, spec in doc["services"].items():
        service = "matchgraph" if name.startswith("matchgraph") else name
        if service not in ENV_PREFIXES or (fields := settings_fields(service)) is None:
            continue
        for var in spec.get("environment", {}):
            assert var.removeprefix(ENV_PREFIXES[service]).lower() in fields, f"{name} sets unknown {var}"


def test_prometheus_finds_the_readers_by_dns_in_the_matchgraph_job() -> None:
    doc = yaml.safe_load(SCALE_OUT.read_text())
    (mount,) = doc["services"]["prometheus"]["volumes"]
    source, target = mount.split(":")[:2]
    assert target == "/etc/prometheus/prometheus.yml" and (DEPLOY / source).is_file()
    cfg = yaml.safe_load((DEPLOY / source).read_text())
    one_box = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs.keys() == {j["job_name"] for j in one_box["scrape_configs"]}
    assert jobs["unfragile-matchgraph"]["dns_sd_configs"] == [
        {"names": ["matchgraph-reader"], "type": "A", "port": GRAPH.metrics_port}]
    assert jobs["unfragile-matchgraph"]["static_configs"] == [
        {"targets": [f"matchgraph:{GRAPH.metrics_port}", f"matchgraph-standby:{GRAPH.metrics_port}"]}]
    tool = promtool()
    if tool is not None:
        out = subprocess.run([tool, "check", "config", source.removeprefix("./prometheus/")], capture_output=True,
                             text=True, timeout=60, cwd=DEPLOY / "prometheus")
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(not SPEC_SCHEMA.exists(), reason=f"Compose spec schema not found at {SPEC_SCHEMA}")
def test_the_override_matches_the_compose_spec_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SPEC_SCHEMA.read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(yaml.safe_load(SCALE_OUT.read_text())))
    assert not errors, [e.message for e in errors]
