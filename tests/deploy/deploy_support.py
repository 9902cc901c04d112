"""Shared knowledge for the deploy/ checks: where things are, which services exist, which
metrics they register, and every PromQL expression the dashboards and rules use."""

from __future__ import annotations

import importlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
MIN_K8S = "1.30.0"  # preStop `sleep` handlers (beta, on by default) arrived in 1.30


@dataclass(frozen=True)
class Svc:
    name: str
    env_prefix: str
    port: int
    metrics_port: int
    full_name: str
    model_server: bool


SERVICES = {
    "visionlanguage": Svc("visionlanguage", "UNFRAGILE_VL_", 50051, 9101,
                          "unfragile.visionlanguage.v1.VisionLanguage", True),
    "diffusion": Svc("diffusion", "UNFRAGILE_DIFFUSION_", 50052, 9102, "unfragile.diffusion.v1.Diffusion", True),
    "matchgraph": Svc("matchgraph", "UNFRAGILE_GRAPH_", 50053, 9103, "unfragile.matchgraph.v1.MatchGraph", False),
}


@dataclass(frozen=True)
class HttpSvc:
    """The HTTP gateway: JSON API and pages in front of MatchGraph, metrics on its own port."""

    name: str
    env_prefix: str
    port: int


GATEWAY = HttpSvc("gateway", "UNFRAGILE_GATEWAY_", 8080)
# The OpenAI-compatible HTTP API in front of VisionLanguage and Diffusion (metrics on its HTTP port too).
OPENAI = HttpSvc("openai", "UNFRAGILE_OPENAI_", 8000)
HTTP_SERVICES = {GATEWAY.name: GATEWAY, OPENAI.name: OPENAI}
ENV_PREFIXES = {**{n: s.env_prefix for n, s in SERVICES.items()}, **{n: s.env_prefix for n, s in HTTP_SERVICES.items()}}
METRICS_PORTS = {**{n: s.metrics_port for n, s in SERVICES.items()}, **{n: s.port for n, s in HTTP_SERVICES.items()}}
DEPLOYED = [*SERVICES, *HTTP_SERVICES]  # everything deploy/ runs


def gateway_missing(name: str = GATEWAY.name) -> str | None:
    """Why the HTTP service ``name`` (gateway, openai) cannot be started yet, or None (`unfragile serve
    NAME` runs services.NAME.server.run)."""
    try:
        server = importlib.import_module(f"services.{name}.server")
        importlib.import_module(f"services.{name}.settings")
    except ModuleNotFoundError as exc:
        return f"services/{name} is not importable yet ({exc})"
    return None if hasattr(server, "run") else f"services/{name}/server.py has no run() yet"


def service_missing(name: str) -> str | None:
    """Why ``name`` cannot be started yet (its app module or contract is missing), or None."""
    try:
        app = importlib.import_module(f"services.{name}.app")
    except ModuleNotFoundError as exc:
        return f"services/{name}/app.py is not importable yet ({exc})"
    for attr in ("Settings", "build_service"):
        if not hasattr(app, attr):
            return f"services/{name}/app.py has no {attr} yet"
    return None


def settings_fields(name: str) -> set[str] | None:
    """Field names of the service's Settings class, or None while it does not exist."""
    if name in HTTP_SERVICES:
        if gateway_missing(name):
            return None
        return set(importlib.import_module(f"services.{name}.settings").Settings.model_fields)
    if service_missing(name):
        return None
    app = importlib.import_module(f"services.{name}.app")
    return set(app.Settings.model_fields)


# ---------------------------------------------------------------- metrics registered
@dataclass(frozen=True)
class Metric:
    name: str  # the family name as exposed (counters with _total)
    kind: str  # counter | gauge | histogram | summary
    labels: tuple[str, ...]
    service: str  # "core" or the service whose metrics.py defines it
    doc: str

    def series_names(self) -> set[str]:
        if self.kind == "histogram":
            base = self.name
            return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        if self.kind == "summary":
            return {self.name, f"{self.name}_sum", f"{self.name}_count"}
        return {self.name}


def metric_modules() -> dict[str, Any]:
    """"core" and every services/<pkg>/metrics.py that exists (the three gRPC services and
    any other package, such as an HTTP gateway), imported."""
    mods = {"core": importlib.import_module("services.core.metrics")}
    for path in sorted((ROOT / "services").glob("*/metrics.py")):
        name = path.parent.name
        if name != "core":
            mods[name] = importlib.import_module(f"services.{name}.metrics")
    return mods


def registered_metrics() -> dict[str, Metric]:
    """Every unfragile_* metric the code defines, by exposed family name."""
    from prometheus_client.metrics import MetricWrapperBase

    out: dict[str, Metric] = {}
    for owner, mod in metric_modules().items():
        for obj in vars(mod).values():
            if not isinstance(obj, MetricWrapperBase):
                continue
            kind = obj._type
            name = obj._name + ("_total" if kind == "counter" else "")
            if name.startswith("unfragile_"):
                out[name] = Metric(name, kind, tuple(obj._labelnames), owner, obj._documentation)
    return out


def series_owner() -> dict[str, str]:
    """Exposed series name (e.g. ..._bucket) -> "core" or the owning service."""
    return {series: m.service for m in registered_metrics().values() for series in m.series_names()}


# ---------------------------------------------------------------- PromQL in the repo
@dataclass(frozen=True)
class Query:
    source: str  # where it comes from, e.g. "visionlanguage.json: Time to first token [A]"
    expr: str  # as written (Grafana variables unreplaced)
    check: str  # what to evaluate: variables replaced, alert thresholds stripped

    @property
    def id(self) -> str:
        return self.source


GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$method": ".*"}
_THRESHOLD = re.compile(r"^(?P<inner>.*\S)\s*(?:>=|<=|==|!=|>|<)\s*(?:bool\s+)?-?[0-9.]+(?:e[+-]?[0-9]+)?\s*$", re.S)


def grafana_substitute(expr: str, rate_interval: str = "1m") -> str:
    for var, value in {**GRAFANA_VARS, "$__rate_interval": rate_interval}.items():
        expr = expr.replace(var, value)
    return expr


def strip_threshold(expr: str) -> str:
    """`<query> > 0.05` -> `<query>`: the part of an alert that must return data."""
    match = _THRESHOLD.match(expr.strip())
    if not match:
        raise ValueError(f"alert expression does not end in `<op> <number>`: {expr!r}")
    return match["inner"].strip()


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def dashboard_queries(rate_interval: str = "1m") -> list[Query]:
    out = []
    for path in dashboard_files():
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append(Query(f"{path.name}: {panel['title']} [{target['refId']}]", target["expr"],
                                 grafana_substitute(target["expr"], rate_interval)))
    return out


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                rules.append({**rule, "_file": path.name, "_group": group["name"]})
    return rules


def rule_queries() -> list[Query]:
    out = []
    for rule in alert_rules():
        name = rule.get("alert") or rule.get("record")
        expr = rule["expr"].strip()
        check = strip_threshold(expr) if "alert" in rule else expr
        out.append(Query(f"{rule['_file']}: {name}", expr, check))
    return out


def adapter_queries() -> list[Query]:
    """The Prometheus adapter's metricsQuery templates, rendered the way the adapter
    would for one pod (namespace/pod matchers dropped: loopback series have none)."""
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    out = []
    for rule in values["rules"]["custom"]:
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)
        query = (rule["metricsQuery"].replace("<<.Series>>", series)
                 .replace("<<.LabelMatchers>>", 'instance!=""').replace("<<.GroupBy>>", "instance"))
        out.append(Query(f"prometheus-adapter: {series}", rule["metricsQuery"], query))
    return out


_NAME = re.compile(r"\b(unfragile_[a-z0-9_]+|up)\b")


def metric_names_in(expr: str) -> set[str]:
    """Series names an expression reads (ignores label values inside quotes)."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(_NAME.findall(unquoted))


def services_needed(query: Query) -> set[str]:
    """Which services must be running for this query to have data."""
    owners = series_owner()
    needed = {owners[n] for n in metric_names_in(query.check) if owners.get(n, "core") != "core"}
    needed |= set(re.findall(r'service="([a-z]+)"', query.check))
    needed |= set(re.findall(r'job="unfragile-([a-z]+)"', query.check))
    return needed & set(DEPLOYED)


def promtool() -> str | None:
    return shutil.which("promtool")


def prometheus_bin() -> str | None:
    return shutil.which("prometheus")
