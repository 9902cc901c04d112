"""Kubernetes manifests: every file parses, every rendered object passes the Kubernetes
OpenAPI schemas (kubernetes-validate, offline, strict: unknown fields fail), and the
things an operator relies on hold in both overlays (probes, drain, GPUs, Services,
storage, autoscaling, scraping)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kustomize_lite
import pytest
import yaml
from deploy_support import (
    ADAPTER_VALUES,
    DEPLOYED,
    ENV_PREFIXES,
    GATEWAY,
    K8S,
    METRICS_PORTS,
    MIN_K8S,
    OPENAI,
    SERVICES,
    registered_metrics,
    settings_fields,
)

try:
    import kubernetes_validate
except ModuleNotFoundError:  # a dev dependency: say so instead of failing collection
    kubernetes_validate = None
needs_schemas = pytest.mark.skipif(kubernetes_validate is None, reason="kubernetes-validate is not installed "
                                   "(pip install kubernetes-validate==1.37.0: offline Kubernetes schemas)")

OVERLAYS = ["cpu", "gpu"]
SCHEMA_VERSIONS = [MIN_K8S, kubernetes_validate.latest_version() if kubernetes_validate else "latest"]
NOT_IN_SCHEMAS = {"Kustomization", "Component", "ServiceMonitor", "PrometheusRule", "Cluster"}  # kustomize, CRDs
PATCH_PREFIXES = ("gpu-", "cpu-", "patch-")  # partial resources merged into a base: not checked alone
KUBECTL = shutil.which("kubectl")


def _render_kubectl(folder: Path) -> list[dict[str, Any]]:
    out = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    """(overlay, objects) rendered by kubectl kustomize when installed, else kustomize_lite."""
    folder = K8S / "overlays" / request.param
    objs = _render_kubectl(folder) if KUBECTL else kustomize_lite.render(folder)
    return request.param, objs


def _by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def _pod(deploy: dict[str, Any]) -> dict[str, Any]:
    return deploy["spec"]["template"]["spec"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_every_yaml_file_parses_and_names_its_kind() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        docs = kustomize_lite.load_docs(path)
        assert docs, f"{path} is empty"
        if path == ADAPTER_VALUES:
            continue  # Helm values, not a manifest
        for doc in docs:
            assert {"apiVersion", "kind"} <= set(doc), f"{path}: a document without apiVersion/kind"


@needs_schemas
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_base_files_match_kubernetes_schemas(version: str) -> None:
    """Full resources in base/ and overlays (not patches, which are partial)."""
    checked = 0
    for path in sorted(K8S.rglob("*.yaml")):
        if path == ADAPTER_VALUES or path.name.startswith(PATCH_PREFIXES):
            continue
        for doc in kustomize_lite.load_docs(path):
            if doc["kind"] in NOT_IN_SCHEMAS:
                continue
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
    assert checked >= 10


@needs_schemas
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_rendered_overlay_matches_kubernetes_schemas(rendered, version: str) -> None:
    overlay, objs = rendered
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "Deployment", "Service", "PersistentVolumeClaim", "HorizontalPodAutoscaler"} <= kinds
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {exc.message}")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed: kustomize_lite renders alone")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_lite_renders_like_kubectl(overlay: str) -> None:
    """Keeps the kubectl-free renderer honest where kubectl exists."""
    folder = K8S / "overlays" / overlay
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731 - a sort key
    ours = {key(o): o for o in kustomize_lite.render(folder)}
    theirs = {key(o): o for o in _render_kubectl(folder)}
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k] == theirs[k], f"{overlay}: {k} differs"


def test_everything_lands_in_the_unfragile_namespace_with_its_label(rendered) -> None:
    overlay, objs = rendered
    for obj in objs:
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/part-of"] == "unfragile", (overlay, meta["name"])
        if obj["kind"] != "Namespace":
            assert meta.get("namespace") == "unfragile", f"{overlay}: {obj['kind']}/{meta['name']} has no namespace"


def test_each_service_has_a_deployment_with_native_grpc_probes(rendered) -> None:
    overlay, objs = rendered
    deployments = _by_kind(objs, "Deployment")
    assert set(deployments) == set(DEPLOYED)
    for name, svc in SERVICES.items():
        pod = _pod(deployments[name])
        (container,) = [c for c in pod["containers"] if c["name"] == name]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": svc.port, "metrics": svc.metrics_port}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == svc.port, (overlay, name, probe)
        # readiness and startup ask for the service by name: SERVING only once loaded
        assert container["readinessProbe"]["grpc"]["service"] == svc.full_name
        assert container["startupProbe"]["grpc"]["service"] == svc.full_name
        env = _env(container)
        assert env[f"{svc.env_prefix}PORT"] == str(svc.port)
        assert env[f"{svc.env_prefix}METRICS_PORT"] == str(svc.metrics_port)
        assert env[f"{svc.env_prefix}HOST"] == "0.0.0.0"


def test_termination_grace_outlasts_prestop_and_drain(rendered) -> None:
    overlay, objs = rendered
    for name, deploy in _by_kind(objs, "Deployment").items():
        pod = _pod(deploy)
        (container,) = [c for c in pod["containers"] if c["name"] == name]
        drain = float(_env(container)[f"{ENV_PREFIXES[name]}GRACE_SECONDS"])
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > pre_stop + drain, (overlay, name)


def test_pods_run_as_non_root_and_drop_privileges(rendered) -> None:
    overlay, objs = rendered
    for name, deploy in _by_kind(objs, "Deployment").items():
        pod = _pod(deploy)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for c in [*pod["containers"], *pod.get("initContainers", [])]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])


def test_images_and_gpus_follow_the_overlay(rendered) -> None:
    overlay, objs = rendered
    for name, deploy in _by_kind(objs, "Deployment").items():
        pod = _pod(deploy)
        (container,) = [c for c in pod["containers"] if c["name"] == name]
        model_on_gpu = overlay == "gpu" and name in SERVICES and SERVICES[name].model_server
        assert container["image"] == f"unfragile/{name}:{'cuda' if model_on_gpu else 'cpu'}"
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        if model_on_gpu:
            assert gpus == 1
            assert _env(container)[f"{SERVICES[name].env_prefix}DEVICE"] == "cuda"
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
            (init,) = pod["initContainers"]
            assert init["command"] == ["fetch-model"] and init["image"] == container["image"]
        else:
            assert gpus is None, f"{overlay}: {name} asks for a GPU"


def test_services_select_pods_and_model_servers_have_headless_twins(rendered) -> None:
    _, objs = rendered
    deployments = _by_kind(objs, "Deployment")
    services = _by_kind(objs, "Service")
    for svc_name, svc in services.items():
        selected = [d for d in deployments.values()
                    if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"Service {svc_name} selects {len(selected)} Deployments"
        container_ports = {p["name"] for c in _pod(selected[0])["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in container_ports, (svc_name, port)
    for name, svc in SERVICES.items():
        assert services[name]["spec"]["ports"][0]["appProtocol"] == "grpc"
        if svc.model_server:
            headless = services[f"{name}-headless"]
            assert headless["spec"]["clusterIP"] == "None"


def test_volumes_claims_and_config_references_exist(rendered) -> None:
    overlay, objs = rendered
    claims = _by_kind(objs, "PersistentVolumeClaim")
    config_maps = _by_kind(objs, "ConfigMap")
    assert claims["matchgraph-data"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claims["diffusion-adapters"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, deploy in _by_kind(objs, "Deployment").items():
        pod = _pod(deploy)
        volumes = {v["name"]: v for v in pod["volumes"]}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, (overlay, name, v)
            assert len(set(v) - {"name"}) == 1, f"{overlay}: volume {v['name']} of {name} has two sources"
        for c in [*pod["containers"], *pod.get("initContainers", [])]:
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, (overlay, name, mount)
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["key"] in config_maps[ref["name"]]["data"], (overlay, name, ref)
    graph = _by_kind(objs, "Deployment")["matchgraph"]
    assert graph["spec"]["replicas"] == 1 and graph["spec"]["strategy"]["type"] == "Recreate"  # one SQLite writer
    env = _env(_pod(graph)["containers"][0])
    assert env["UNFRAGILE_GRAPH_DB_URL"].startswith("sqlite:////data/")


def test_pods_are_annotated_for_scraping_on_their_metrics_port(rendered) -> None:
    _, objs = rendered
    for name, deploy in _by_kind(objs, "Deployment").items():
        notes = deploy["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert notes["prometheus.io/port"] == str(METRICS_PORTS[name])
        assert notes["prometheus.io/path"] == "/metrics"


def test_autoscalers_scale_on_queue_depth_the_adapter_serves(rendered) -> None:
    _, objs = rendered
    hpas = _by_kind(objs, "HorizontalPodAutoscaler")
    deployments = _by_kind(objs, "Deployment")
    metrics = registered_metrics()
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    served = {rule["seriesQuery"].split("{")[0].strip() for rule in adapter}
    assert {"visionlanguage", "diffusion"} <= set(hpas)
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        for m in hpa["spec"]["metrics"]:
            metric = m["pods"]["metric"]["name"]
            assert metric in served, f"HPA {name} scales on {metric}, which no adapter rule serves"
            if metric.startswith("unfragile_"):
                assert metric in metrics, f"HPA {name}: no service exports {metric}"
                assert metrics[metric].kind == "gauge"


def test_adapter_rules_map_namespace_and_pod() -> None:
    for rule in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]:
        assert 'namespace!=""' in rule["seriesQuery"] and 'pod!=""' in rule["seriesQuery"]
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]


def test_servicemonitor_component_targets_every_metrics_port() -> None:
    (monitor,) = kustomize_lite.load_docs(K8S / "components" / "prometheus-operator" / "servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    (expr,) = monitor["spec"]["selector"]["matchExpressions"]
    assert expr["key"] == "app.kubernetes.io/name" and set(expr["values"]) == set(DEPLOYED)
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert set(endpoints) == {"metrics", "http"}  # gRPC services: `metrics`; gateway: its HTTP port
    assert all(e["path"] == "/metrics" for e in endpoints.values())
    services = _by_kind(kustomize_lite.render(K8S / "overlays" / "cpu"), "Service")
    for name in SERVICES:
        assert "metrics" in {p["name"] for p in services[name]["spec"]["ports"]}
    assert "http" in {p["name"] for p in services[GATEWAY.name]["spec"]["ports"]}
    assert "http" in {p["name"] for p in services[OPENAI.name]["spec"]["ports"]}


def test_env_variables_name_real_settings_fields(rendered) -> None:
    """A typo in an env name is silently ignored by pydantic-settings (extra="ignore")."""
    overlay, objs = rendered
    for name, deploy in _by_kind(objs, "Deployment").items():
        fields = settings_fields(name)
        if fields is None:
            continue  # covered once the service's app.py lands (test_settings_env reports it)
        prefix = ENV_PREFIXES[name]
        for c in _pod(deploy)["containers"]:
            for var in _env(c):
                if var.startswith(prefix):
                    assert var[len(prefix):].lower() in fields, f"{overlay}: {name} sets unknown {var}"


def test_gateway_is_probed_over_http_and_points_at_matchgraph(rendered) -> None:
    overlay, objs = rendered
    deploy = _by_kind(objs, "Deployment")[GATEWAY.name]
    (container,) = _pod(deploy)["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": GATEWAY.port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = _env(container)
    graph = SERVICES["matchgraph"]
    assert env["UNFRAGILE_GATEWAY_MATCHGRAPH_TARGET"] == f"matchgraph:{graph.port}"
    assert env["UNFRAGILE_GATEWAY_HOST"] == "0.0.0.0" and env["UNFRAGILE_GATEWAY_PORT"] == str(GATEWAY.port)
    assert deploy["spec"]["replicas"] >= 2  # stateless: survive one pod's restart


def test_prometheusrule_carries_exactly_the_rule_files() -> None:
    out = subprocess.run([sys.executable, str(K8S.parent / "prometheus" / "build_prometheusrule.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (rule,) = kustomize_lite.load_docs(K8S / "components" / "prometheus-operator" / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert names and len(names) == len(set(names))


def test_operator_component_renders_into_an_overlay(tmp_path: Path) -> None:
    """An overlay that adds the component renders (kubectl when installed, else kustomize_lite)."""
    overlay = tmp_path / "with-operator"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "unfragile",
        "resources": [os.path.relpath(K8S / "overlays" / "cpu", overlay)],  # kustomize wants relative paths
        "components": [os.path.relpath(K8S / "components" / "prometheus-operator", overlay)]}))
    objs = kustomize_lite.render(overlay)
    kinds = {o["kind"] for o in objs}
    assert {"ServiceMonitor", "PrometheusRule", "Deployment"} <= kinds
    assert all(o["metadata"].get("namespace") == "unfragile" for o in objs if o["kind"] != "Namespace")
    if KUBECTL:
        key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731 - a sort key
        assert sorted(map(key, _render_kubectl(overlay))) == sorted(map(key, objs))


def test_openai_frontend_is_probed_over_http_and_spreads_over_the_model_pods(rendered) -> None:
    overlay, objs = rendered
    deploy = _by_kind(objs, "Deployment")[OPENAI.name]
    (container,) = _pod(deploy)["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": OPENAI.port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    env = _env(container)
    for name in ("visionlanguage", "diffusion"):  # the headless Services: round robin over every model pod
        assert env[f"UNFRAGILE_OPENAI_{name.upper()}_TARGET"] == f"dns:///{name}-headless:{SERVICES[name].port}"
    assert env["UNFRAGILE_OPENAI_API_KEYS"]["secretKeyRef"]["optional"] is True  # keys from a Secret, if any
    assert deploy["spec"]["replicas"] >= 2
    hpa = _by_kind(objs, "HorizontalPodAutoscaler")[OPENAI.name]
    assert hpa["spec"]["scaleTargetRef"]["name"] == OPENAI.name and hpa["spec"]["minReplicas"] >= 2
