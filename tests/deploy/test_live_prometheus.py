"""The real thing: the three services as processes (as `unfragile up --graph-readers 1` runs them:
the MatchGraph as a writer plus one reader of its SQLite file) on tiny
models plus the HTTP gateway and the OpenAI-compatible API (the commands their images run),
Debian's real `prometheus` on loopback scraping them with the project's scrape config and alert rules, real gRPC and
HTTP traffic (good and bad calls), and then, through
Prometheus' HTTP API: every PromQL expression of every Grafana panel, every alert rule
(its query without the threshold) and the Prometheus adapter's HPA query returns data,
and every rule evaluates without error."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import live_traffic
import pytest
import yaml
from deploy_support import (
    DEPLOY,
    GATEWAY,
    OPENAI,
    RULES,
    SERVICES,
    Query,
    adapter_queries,
    alert_rules,
    dashboard_queries,
    gateway_missing,
    prometheus_bin,
    rule_queries,
    service_missing,
    services_needed,
)

PROMETHEUS = prometheus_bin()
pytestmark = [
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package `prometheus`; "
                       "`.ci/run` installs it)"),
    # The first test also pays for starting four processes on a 2-core box (~30 s when
    # idle, minutes when other suites run beside it).
    pytest.mark.timeout(600),
]
SCRAPE_S = 1.0
READER_1 = "matchgraph-reader-1"
QUERIES = [*dashboard_queries(), *rule_queries(), *adapter_queries()]


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open until each is known, so no repeats)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Live:
    prom_url: str
    running: list[str]
    missing: dict[str, str]
    # Queries are evaluated at this instant (set once the traffic has been scraped), so
    # their windows hold the traffic however long the tests after the fixture take.
    at: float = field(default_factory=time.time)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.prom_url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, time=f"{self.at:.3f}")
        return data["result"] if data["resultType"] in ("vector", "matrix") else [{"value": data["result"]}]

    def wait_for_scrape(self, after: float, timeout: float = 20.0) -> None:
        """Until every target has been scraped (successfully) after ``after`` (epoch s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = self.api("targets")["activeTargets"]
            done = [t for t in targets if t["health"] == "up"
                    and datetime.fromisoformat(t["lastScrape"].replace("Z", "+00:00")).timestamp() > after]
            if targets and len(done) == len(targets):
                return
            time.sleep(0.2)
        raise TimeoutError(f"targets not scraped after {after}: {self.api('targets')['activeTargets']}")


def _prometheus_config(metrics_ports: dict[str, list[int]], prom_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with loopback targets (only what runs; the MatchGraph job also
    scrapes the reader) and 1 s scrapes."""
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    interval = f"{SCRAPE_S:g}s"
    cfg["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    cfg["rule_files"] = [str(p) for p in RULES]
    jobs = []
    for job in cfg["scrape_configs"]:
        name = job["job_name"].removeprefix("unfragile-")
        if name in metrics_ports:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in metrics_ports[name]]}]
        elif name == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
        else:
            continue
        jobs.append(job)
    cfg["scrape_configs"] = jobs
    return cfg


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def _missing_services() -> dict[str, str]:
    missing = {name: why for name in SERVICES if (why := service_missing(name))}
    if "matchgraph" not in missing:
        try:  # the graph's clients of the model services (used once their targets are set)
            __import__("services.matchgraph.backends")
        except ModuleNotFoundError as exc:
            missing["matchgraph"] = f"services/matchgraph/backends.py is not importable yet ({exc})"
    if why := gateway_missing() or ("matchgraph is not running" if "matchgraph" in missing else None):
        missing[GATEWAY.name] = why
    model_servers_missing = "the model services are not running" if {"visionlanguage", "diffusion"} & set(
        missing) else None
    if why := gateway_missing(OPENAI.name) or model_servers_missing:
        missing[OPENAI.name] = why
    return missing


def _gateway_command(name: str = GATEWAY.name) -> list[str]:
    """The gateway's (or another HTTP service's) image ENTRYPOINT, run with this interpreter: what the
    container runs."""
    dockerfile = (DEPLOY / "docker" / f"{name}.Dockerfile").read_text()
    entry = json.loads(next(line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT "))[11:])
    assert entry[0] == "python"
    return [sys.executable, *entry[1:]]


def _start_gateway(stack: Any, port: int) -> subprocess.Popen[bytes]:
    """The gateway as its image runs it: reads from the MatchGraph reader, writes to the writer."""
    env = {**os.environ, "UNFRAGILE_GATEWAY_HOST": "127.0.0.1", "UNFRAGILE_GATEWAY_PORT": str(port),
           "UNFRAGILE_GATEWAY_MATCHGRAPH_TARGET": stack.graph_read_target(),
           "UNFRAGILE_GATEWAY_MATCHGRAPH_WRITER_TARGET": stack.target("matchgraph"),
           "UNFRAGILE_GATEWAY_GRACE_SECONDS": "5",
           # opt-in search recording, flushed at once, so its panel has data too
           "UNFRAGILE_GATEWAY_RECORD_SEARCHES": "true", "UNFRAGILE_GATEWAY_RECORD_FLUSH_S": "0"}
    gw = subprocess.Popen(_gateway_command(), env=env)
    _wait_http(f"http://127.0.0.1:{port}/readyz", gw, timeout=60)
    return gw


def _start_openai(stack: Any, port: int) -> subprocess.Popen[bytes]:
    """The OpenAI-compatible API as its image runs it, in front of both model servers."""
    env = {**os.environ, "UNFRAGILE_OPENAI_HOST": "127.0.0.1", "UNFRAGILE_OPENAI_PORT": str(port),
           "UNFRAGILE_OPENAI_VISIONLANGUAGE_TARGET": stack.target("visionlanguage"),
           "UNFRAGILE_OPENAI_DIFFUSION_TARGET": stack.target("diffusion"), "UNFRAGILE_OPENAI_GRACE_SECONDS": "5"}
    proc = subprocess.Popen(_gateway_command(OPENAI.name), env=env)
    _wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
    return proc


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    from services.stack import Stack

    missing = _missing_services()
    running = [n for n in SERVICES if n not in missing]
    with_gateway = GATEWAY.name not in missing
    with_openai = OPENAI.name not in missing
    if not running:
        pytest.skip(f"no service can start yet: {missing}")
    tmp = tmp_path_factory.mktemp("live")
    # An empty models folder: each model server builds its tiny model there on first
    # start (the documented default), in parallel, as `unfragile up` on a fresh box does.
    models = tmp / "models"
    free = iter(_free_ports(2 * len(SERVICES) + 5))
    ports = {n: (next(free), next(free)) for n in [*SERVICES, READER_1]}
    stack = Stack(host="127.0.0.1", models_dir=models, data_dir=tmp / "data", ports=ports,
                  graph_readers=1 if "matchgraph" in running else 0)
    prom_port, gw_port, oa_port = next(free), next(free), next(free)
    metrics_ports = {n: [ports[n][1]] for n in running} | ({GATEWAY.name: [gw_port]} if with_gateway else {})
    metrics_ports |= {OPENAI.name: [oa_port]} if with_openai else {}
    if stack.graph_readers:
        metrics_ports["matchgraph"].append(ports[READER_1][1])
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(_prometheus_config(metrics_ports, prom_port)))
    targets = {n: stack.target(n) for n in running} | {GATEWAY.name: f"http://127.0.0.1:{gw_port}",
                                                        OPENAI.name: f"http://127.0.0.1:{oa_port}"}
    prom = gw = oa = None
    prom_log = open(tmp / "prometheus.log", "wb")
    try:
        stack.start(running, timeout=240)
        if with_gateway:
            gw = _start_gateway(stack, gw_port)
        if with_openai:
            oa = _start_openai(stack, oa_port)
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=prom_log)
        live = Live(f"http://127.0.0.1:{prom_port}", list(metrics_ports), missing)
        try:
            _wait_http(f"{live.prom_url}/-/ready", prom)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"prometheus did not start: {(tmp / 'prometheus.log').read_text()[-2000:]}") from exc
        live.wait_for_scrape(after=time.time())
        for phase in (1, 2):
            for name in live.running:  # the gateway last: matchgraph traffic seeded the graph
                live_traffic.TRAFFIC[name](targets[name], phase)
                if name == "matchgraph" and stack.graph_readers:  # the gateway reads from the reader
                    live_traffic.wait_for_reader(stack.target("matchgraph"), stack.target(READER_1))
            live.wait_for_scrape(after=time.time())
        time.sleep(2 * SCRAPE_S)  # let every rule group evaluate on the latest samples
        live.at = time.time()
        yield live
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=30)
        prom_log.close()
        gw_code = {}
        for name, proc in ((GATEWAY.name, gw), (OPENAI.name, oa)):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                gw_code[name] = proc.wait(timeout=30)
        codes = stack.stop() | gw_code
        assert all(code == 0 for code in codes.values()), f"services did not drain cleanly: {codes}"


def test_every_service_is_scraped_and_ready(live: Live) -> None:
    targets = live.api("targets")["activeTargets"]
    jobs = {t["labels"]["job"]: t["health"] for t in targets}
    for name in live.running:
        assert jobs[f"unfragile-{name}"] == "up"
    ready = {r["metric"]["service"]: float(r["value"][1]) for r in live.query("unfragile_model_ready")}
    assert ready == {name: 1.0 for name in live.running if name in SERVICES}


@pytest.mark.parametrize("query", QUERIES, ids=[q.id for q in QUERIES])
def test_query_returns_data(live: Live, query: Query) -> None:
    """Non-empty, and at least one finite value (NaN would draw an empty panel)."""
    absent = {n: live.missing[n] for n in services_needed(query) if n in live.missing}
    if absent:
        pytest.skip("; ".join(f"{n} not running: {why}" for n, why in absent.items()))
    result = live.query(query.check)
    assert result, f"{query.source}: no data for\n{query.check}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"{query.source}: only NaN/Inf ({values}) for\n{query.check}"


def test_every_rule_evaluates_without_error(live: Live) -> None:
    groups = live.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(rule_queries())
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"


def test_no_alert_fires_on_a_healthy_stack(live: Live) -> None:
    """Bad requests are client mistakes: they must not page anyone, and nothing is down,
    unready, failing or saturated. Latency alerts are left out: their thresholds are wall
    clock, and a loaded CI box may cross them."""
    latency = {r["alert"] for r in alert_rules() if "_seconds_bucket" in r["expr"]}
    alerts = [(a["labels"]["alertname"], a["state"]) for a in live.api("alerts")["alerts"]]
    assert [a for a in alerts if a[0] not in latency] == []
