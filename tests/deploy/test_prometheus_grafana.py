"""Prometheus configs and rules through the real promtool, and the Grafana dashboards:
up to date with their generator, well formed, every PromQL expression valid and naming
only metrics the code defines. (Whether each returns data: test_live_prometheus.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    DASHBOARDS,
    DEPLOY,
    DEPLOYED,
    RULES,
    SERVICES,
    adapter_queries,
    alert_rules,
    dashboard_files,
    dashboard_queries,
    metric_names_in,
    promtool,
    registered_metrics,
    series_owner,
)

PROMTOOL = promtool()
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`; "
                                    ".ci/run installs it)")
PROM = DEPLOY / "prometheus"


def _promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@needs_promtool
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_promtool_check_config(config: str) -> None:
    out = _promtool("check", "config", config)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_check_kubernetes_config() -> None:
    out = _promtool("check", "config", "kubernetes.yml")
    if out.returncode != 0 and "kubernetes_sd_configs not found" in out.stdout + out.stderr:
        pytest.skip("this promtool is built without Kubernetes service discovery (Debian's is); "
                    "kubernetes.yml is checked structurally by test_kubernetes_config_structure")
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_kubernetes_config_relabelling_passes_promtool(tmp_path: Path) -> None:
    """Where promtool lacks Kubernetes SD, check everything else of kubernetes.yml with it:
    the same file with the discovery swapped for a static target."""
    cfg = yaml.safe_load((PROM / "kubernetes.yml").read_text())
    for job in cfg["scrape_configs"]:
        job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["pod.example:9101"]}]
    cfg["rule_files"] = [str(p) for p in RULES]
    path = tmp_path / "kubernetes-static.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = _promtool("check", "config", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_kubernetes_config_structure() -> None:
    """What promtool cannot check where it lacks Kubernetes SD: the relabelling."""
    cfg = yaml.safe_load((PROM / "kubernetes.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"__address__", "__metrics_path__", "job", "namespace", "pod"} <= targets
    for rule in job["relabel_configs"]:
        re.compile(rule.get("regex", "(.*)"))
    assert "service" not in targets  # would rename the services' own `service` label
    assert cfg["rule_files"] == ["rules/*.yml"]


@needs_promtool
def test_promtool_check_rules() -> None:
    out = _promtool("check", "rules", *map(str, RULES))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    """deploy/prometheus/tests: each alert fires on synthetic series when it should."""
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    out = _promtool("test", "rules", *map(str, tests))
    assert out.returncode == 0, out.stdout + out.stderr


def test_local_config_is_the_compose_config_on_loopback() -> None:
    main = yaml.safe_load((PROM / "prometheus.yml").read_text())
    local = yaml.safe_load((PROM / "prometheus.local.yml").read_text())
    for job in main["scrape_configs"]:
        for sc in job.get("static_configs", []):
            sc["targets"] = [re.sub(r"^(visionlanguage|diffusion|matchgraph|gateway|openai):", "127.0.0.1:", t)
                             for t in sc["targets"]]
    assert local == main
    jobs = {j["job_name"] for j in main["scrape_configs"]}
    assert {f"unfragile-{name}" for name in SERVICES} <= jobs


def test_every_alert_is_labelled_annotated_and_known_to_the_tests() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    required = {"UnfragileHighErrorRate", "UnfragileModelNotReady", "UnfragileFineTuneJobFailed", "UnfragileShedding",
                "UnfragileVisionLanguageQueueSaturated", "UnfragileDiffusionQueueSaturated",
                "UnfragileVisionLanguageSlow", "UnfragileDiffusionSlow", "UnfragileMatchGraphSlow"}
    assert required <= set(names)
    unit_tested = set(re.findall(r"alertname: (\w+)", "".join(p.read_text() for p in (PROM / "tests").glob("*.yml"))))
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert {"UnfragileHighErrorRate", "UnfragileModelNotReady", "UnfragileFineTuneJobFailed",
            "UnfragileVisionLanguageQueueSaturated", "UnfragileTargetDown"} <= unit_tested


# ------------------------------------------------------------------------ dashboards
def test_dashboards_are_generated_from_the_spec() -> None:
    out = subprocess.run([sys.executable, str(DEPLOY / "grafana" / "build_dashboards.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["uid"].startswith("unfragile-") and "unfragile" in board["tags"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    names = [v["name"] for v in board["templating"]["list"]]
    assert names[0] == "datasource"
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for var in re.findall(r"\$(\w+)", json.dumps(panel["targets"])):
            assert var.startswith("__") or var in names, f"{panel['title']} uses undefined ${var}"


def test_every_dashboard_has_a_file_per_service_and_an_overview() -> None:
    assert {p.stem for p in dashboard_files()} == {"overview", *DEPLOYED}
    assert DASHBOARDS.is_dir()


def _all_queries():
    from deploy_support import rule_queries

    return [*dashboard_queries(), *rule_queries(), *adapter_queries()]


def test_every_expression_names_only_metrics_the_code_defines() -> None:
    owners = series_owner()
    for q in _all_queries():
        for name in metric_names_in(q.check):
            assert name == "up" or name in owners, f"{q.source}: no service defines {name}"


@needs_promtool
def test_every_expression_parses(tmp_path: Path) -> None:
    """promtool parses PromQL offline when it is a recording rule: wrap each one."""
    queries = _all_queries()
    rules = {"groups": [{"name": "syntax", "rules": [{"record": f"check:{i}", "expr": q.check}
                                                     for i, q in enumerate(queries)]}]}
    path = tmp_path / "syntax.yml"
    path.write_text(yaml.safe_dump(rules))
    out = _promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_service_specific_metrics_all_appear_on_a_dashboard() -> None:
    """A metric a service exports but no panel shows is a metric nobody looks at."""
    shown = set()
    for q in dashboard_queries():
        shown |= metric_names_in(q.check)
    by_series = series_owner()
    for metric in registered_metrics().values():
        assert metric.series_names() & shown, f"{metric.name} ({metric.service}) is on no dashboard"
    assert by_series
