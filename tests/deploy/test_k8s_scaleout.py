"""overlays/scale-out: the MatchGraph as one writer and autoscaled readers on a CloudNativePG cluster.

Rendered like the other overlays (kubectl kustomize when installed, else kustomize_lite), every
object but the CloudNativePG ``Cluster`` (a CRD) passes the Kubernetes schemas, and the topology
holds: two writer-capable Recreate replicas on the cluster's primary whose readiness is leadership
(so the write Service points at the leader) and which advertise their pod address, readers with
probes and scraping on the standby, an HPA on a request rate the Prometheus adapter serves, the
gateway split between them, no SQLite volume left."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import kustomize_lite
import pytest
import yaml
from deploy_support import ADAPTER_VALUES, ENV_PREFIXES, K8S, SERVICES, registered_metrics, settings_fields

try:
    import kubernetes_validate
except ModuleNotFoundError:
    kubernetes_validate = None

OVERLAY = K8S / "overlays" / "scale-out"
GRAPH = SERVICES["matchgraph"]


@pytest.fixture(scope="module")
def objs() -> dict[tuple[str, str], dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    else:
        docs = kustomize_lite.render(OVERLAY)
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _container(deploy: dict[str, Any]) -> dict[str, Any]:
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return c


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.skipif(kubernetes_validate is None, reason="kubernetes-validate is not installed")
def test_every_object_but_the_database_cluster_matches_the_schemas(objs) -> None:
    for (kind, name), obj in objs.items():
        if kind != "Cluster":
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        assert obj["metadata"].get("namespace", "unfragile") == "unfragile", (kind, name)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "unfragile"


def test_the_database_is_a_primary_and_a_hot_standby_whose_secret_the_graph_uses(objs) -> None:
    cluster = objs[("Cluster", "matchgraph-db")]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1" and cluster["spec"]["instances"] == 2
    assert cluster["spec"]["bootstrap"]["initdb"] == {"database": "matchgraph", "owner": "matchgraph"}
    secret = "matchgraph-db-app"  # CloudNativePG names the owner's Secret <cluster>-app
    writer, reader = _env(_container(objs[("Deployment", "matchgraph")])), \
        _env(_container(objs[("Deployment", "matchgraph-reader")]))
    assert writer["UNFRAGILE_GRAPH_DB_URL"] == {"secretKeyRef": {"name": secret, "key": "uri"}}
    assert reader["DB_USER"]["secretKeyRef"] == {"name": secret, "key": "username"}
    assert reader["DB_PASSWORD"]["secretKeyRef"] == {"name": secret, "key": "password"}
    assert reader["UNFRAGILE_GRAPH_DB_URL"] == \
        "postgresql://$(DB_USER):$(DB_PASSWORD)@matchgraph-db-ro:5432/matchgraph"  # the standby
    assert ("PersistentVolumeClaim", "matchgraph-data") not in objs  # no SQLite file any more


def test_two_writer_capable_replicas_whose_readiness_is_leadership(objs) -> None:
    from services.matchgraph.roles import LEADER_HEALTH

    writer = objs[("Deployment", "matchgraph")]
    assert writer["spec"]["replicas"] == 2 and writer["spec"]["strategy"]["type"] == "Recreate"
    c = _container(writer)
    env = _env(c)
    assert env["UNFRAGILE_GRAPH_ROLE"] == "writer"
    assert c["readinessProbe"]["grpc"] == {"port": GRAPH.port, "service": LEADER_HEALTH}
    assert c["startupProbe"]["grpc"] == {"port": GRAPH.port, "service": GRAPH.full_name}  # a standby starts too
    names = [e["name"] for e in c["env"]]
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["UNFRAGILE_GRAPH_ADVERTISE_ADDRESS"] == f"$(POD_IP):{GRAPH.port}"
    assert names.index("POD_IP") < names.index("UNFRAGILE_GRAPH_ADVERTISE_ADDRESS")  # defined before use
    service = objs[("Service", "matchgraph")]
    assert service["spec"]["selector"].items() <= writer["spec"]["template"]["metadata"]["labels"].items()


def test_one_writer_and_readers_with_probes_scraping_and_real_settings(objs) -> None:
    writer = objs[("Deployment", "matchgraph")]
    assert _env(_container(writer))["UNFRAGILE_GRAPH_ROLE"] == "writer"
    reader = objs[("Deployment", "matchgraph-reader")]
    assert reader["spec"]["replicas"] >= 2 and reader["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    c = _container(reader)
    env = _env(c)
    assert env["UNFRAGILE_GRAPH_ROLE"] == "reader"
    assert env["UNFRAGILE_GRAPH_WRITER_ADDRESS"] == f"matchgraph:{GRAPH.port}"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": GRAPH.port, "metrics": GRAPH.metrics_port}
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["grpc"] == {"port": GRAPH.port, "service": GRAPH.full_name}
    notes = reader["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/port"] == str(GRAPH.metrics_port) and notes["prometheus.io/scrape"] == "true"
    pod = reader["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > c["lifecycle"]["preStop"]["sleep"]["seconds"] + \
        float(env["UNFRAGILE_GRAPH_GRACE_SECONDS"])
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["allowPrivilegeEscalation"] is False
    fields = settings_fields("matchgraph")
    for deploy in (writer, reader):
        for var in _env(_container(deploy)):
            if var.startswith(ENV_PREFIXES["matchgraph"]) and fields is not None:
                assert var.removeprefix(ENV_PREFIXES["matchgraph"]).lower() in fields, var


def test_services_select_their_pods_and_the_gateway_splits_reads_and_writes(objs) -> None:
    deployments = {name: d for (kind, name), d in objs.items() if kind == "Deployment"}
    for (kind, name), svc in objs.items():
        if kind != "Service":
            continue
        selected = [d for d in deployments.values()
                    if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} Deployments"
    assert objs[("Service", "matchgraph-reader-headless")]["spec"]["clusterIP"] == "None"
    env = _env(_container(objs[("Deployment", "gateway")]))
    assert env["UNFRAGILE_GATEWAY_MATCHGRAPH_TARGET"] == f"dns:///matchgraph-reader-headless:{GRAPH.port}"
    assert env["UNFRAGILE_GATEWAY_MATCHGRAPH_WRITER_TARGET"] == f"matchgraph:{GRAPH.port}"


def test_readers_autoscale_on_a_request_rate_the_adapter_serves(objs) -> None:
    hpa = objs[("HorizontalPodAutoscaler", "matchgraph-reader")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "matchgraph-reader" and hpa["spec"]["minReplicas"] >= 2
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    rules = {r["name"]["as"]: r for r in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]}
    rule = rules[name]
    series = rule["seriesQuery"].split("{")[0]
    assert registered_metrics()[series].kind == "counter" and "rate(" in rule["metricsQuery"]
    assert 'service="matchgraph"' in rule["seriesQuery"] and 'service="matchgraph"' in rule["metricsQuery"]
