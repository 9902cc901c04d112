#!/usr/bin/env python3
"""Generate the Grafana dashboards (deploy/grafana/dashboards/*.json) from one spec.

Why generated: the dashboards share the same request/error/latency panels, and every
PromQL expression here is checked against a real Prometheus scraping the real services
(tests/deploy/test_live_prometheus.py). Editing one spec keeps them consistent; the
suite fails when the JSON files drift from this script.

    .venv/bin/python deploy/grafana/build_dashboards.py        # rewrite the JSON files
    .venv/bin/python deploy/grafana/build_dashboards.py --check  # exit 1 if stale
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"


@dataclass
class Panel:
    """One Grafana panel: a title, what it tells an operator, and its PromQL targets."""

    title: str
    description: str
    targets: list[tuple[str, str]]  # (expr, legendFormat)
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat
    width: int = 12
    mappings: list[dict] = field(default_factory=list)


@dataclass
class Row:
    title: str
    panels: list[Panel]


def _q(quantile: float, metric: str, by: str = "", matchers: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({quantile}, sum by ({group}) (rate({metric}_bucket{{{matchers}}}[{RI}])))"


def _percentiles(metric: str, by: str = "", matchers: str = "", quantiles=(0.5, 0.95, 0.99)) -> list[tuple[str, str]]:
    prefix = "{{" + by + "}} " if by else ""
    return [(_q(q, metric, by, matchers), f"{prefix}p{int(q * 100)}") for q in quantiles]


READY_MAPPINGS = [{"type": "value", "options": {"0": {"text": "NOT READY", "color": "red"},
                                                 "1": {"text": "READY", "color": "green"}}}]


def core_rows(service: str) -> list[Row]:
    """The request/error/latency panels every service gets, from the core interceptor's metrics."""
    sel = f'service="{service}", method=~"$method"'
    return [
        Row("Traffic and errors", [
            Panel("Request rate by method", "RPCs finished per second, all status codes.",
                  [(f"sum by (method) (rate(unfragile_grpc_requests_total{{{sel}}}[{RI}]))", "{{method}}")], "reqps"),
            Panel("Errors by status code", "RPCs that did not end OK, by gRPC status code "
                  "(INVALID_ARGUMENT/NOT_FOUND are client mistakes; INTERNAL/UNAVAILABLE are ours).",
                  [(f'sum by (code) (rate(unfragile_grpc_requests_total{{{sel}, code!="OK"}}[{RI}]))',
                    "{{code}}")], "reqps"),
            Panel("Domain errors by class", "Typed errors raised to clients (common.errors), by class "
                  "and method.",
                  [(f"sum by (error, method) (rate(unfragile_errors_total{{{sel}}}[{RI}]))",
                    "{{error}} {{method}}")], "reqps"),
            Panel("In-flight RPCs", "RPCs being served right now (open streams included).",
                  [(f"sum by (method) (unfragile_grpc_requests_in_flight{{{sel}}})", "{{method}}")]),
        ]),
        Row("Latency", [
            Panel("RPC latency p50 / p95 / p99", "Arrival to final status, all methods together. "
                  "Streams count until their last message.",
                  _percentiles("unfragile_grpc_request_duration_seconds", matchers=sel), "s"),
            Panel("RPC latency p95 by method", "Which method is slow.",
                  [(_q(0.95, "unfragile_grpc_request_duration_seconds", "method", sel), "{{method}}")], "s"),
        ]),
    ]


def model_ready_panel(service: str) -> Panel:
    return Panel("Model ready", "1 once the model (or database) is loaded and health says SERVING; 0 while "
                 "loading or draining.", [(f'min(unfragile_model_ready{{service="{service}"}})', "ready")],
                 kind="stat", width=6, mappings=READY_MAPPINGS)


def targets_up_panel(service: str) -> Panel:
    return Panel("Scrape targets up", "Replicas Prometheus can scrape, out of those it knows.",
                 [(f'sum(up{{job="unfragile-{service}"}})', "up"),
                  (f'count(up{{job="unfragile-{service}"}})', "known")], kind="stat", width=6)


VL = "unfragile_vl_"
VISIONLANGUAGE = [
    Row("Generation", [
        Panel("Time to first token", "Request accepted -> first generated token (queue + prefill).",
              _percentiles(VL + "time_to_first_token_seconds"), "s"),
        Panel("Inter-token latency", "Time between consecutive tokens of one sequence (decode step time).",
              _percentiles(VL + "inter_token_latency_seconds"), "s"),
        Panel("Queue time", "How long work waited in the scheduler queue before it ran.",
              _percentiles(VL + "request_queue_duration_seconds"), "s"),
        Panel("End-to-end latency p95 by kind", "Accepted -> result ready, by kind of work.",
              [(_q(0.95, VL + "e2e_request_latency_seconds", "kind"), "{{kind}}")], "s"),
    ]),
    Row("Scheduler", [
        Panel("Queue depth", "Work waiting in the queue and sequences in the running decode batch, all "
              "replicas. The HPA scales on the waiting count.",
              [(f"sum({VL}num_requests_waiting)", "waiting"), (f"sum({VL}num_requests_running)", "running")]),
        Panel("Batch size", "Sequences per decode step (continuous batching) and per prefill: mean and p95; "
              "Embed/Similarity requests combined per model batch: mean.",
              [(f"sum(rate({VL}batch_size_sum[{RI}])) / sum(rate({VL}batch_size_count[{RI}]))", "decode mean"),
               (_q(0.95, VL + "batch_size"), "decode p95"),
               (f"sum(rate({VL}prefill_batch_size_sum[{RI}])) / sum(rate({VL}prefill_batch_size_count[{RI}]))",
                "prefill mean"),
               (f"sum(rate({VL}embed_batch_requests_sum[{RI}])) / sum(rate({VL}embed_batch_requests_count[{RI}]))",
                "embed requests mean")]),
        Panel("Tokens per second", "Generated and prompt (prefilled) tokens per second.",
              [(f"sum(rate({VL}generation_tokens_total[{RI}]))", "generated"),
               (f"sum(rate({VL}prompt_tokens_total[{RI}]))", "prompt")], "short"),
        Panel("Finished sequences by reason", "length / eos / stop / cancelled / error, per second.",
              [(f"sum by (finish_reason) (rate({VL}request_success_total[{RI}]))", "{{finish_reason}}")], "reqps"),
        Panel("Image-feature and prefix caches", "Lookups by result: the image-feature cache (a hit skips "
              "the vision encoder) and the image-prefix KV cache (a hit skips prefilling the image slots for "
              "another prompt on the same image).",
              [(f"sum by (result) (rate({VL}image_feature_cache_total[{RI}]))", "features {{result}}"),
               (f"sum by (result) (rate({VL}prefix_cache_total[{RI}]))", "prefix {{result}}")], "reqps"),
        Panel("Rejected (queue full)", "Requests refused with RESOURCE_EXHAUSTED because the queue was full.",
              [(f"sum(rate({VL}requests_rejected_total[{RI}]))", "rejected")], "reqps"),
    ]),
    Row("Device memory", [
        Panel("Out of device memory", "Model calls that ran out of device memory, by stage; the requests hit got "
              "RESOURCE_EXHAUSTED or were retried in a smaller batch.",
              [(f"sum by (stage) (rate({VL}out_of_memory_total[{RI}]))", "{{stage}}")], "ops"),
        Panel("Admitted batch limit", "Sequences the scheduler admits now: max_batch_size, lowered after running "
              "out of memory and grown back step by step.", [(f"min({VL}batch_limit)", "limit")]),
        Panel("Image preprocessing", "Resizing and normalising one request image on the preprocessing workers.",
              _percentiles(VL + "image_preprocess_seconds"), "s"),
    ]),
]

DF = "unfragile_diffusion_"
DIFFUSION = [
    Row("Generation", [
        Panel("Denoising step duration", "Wall time of one UNet step of a batch: the number that tells a slow "
              "device or an oversized batch.", _percentiles(DF + "step_duration_seconds"), "s"),
        Panel("Step duration p95 by mode", "txt2img / img2img / inpaint / style.",
              [(_q(0.95, DF + "step_duration_seconds", "mode"), "{{mode}}")], "s"),
        Panel("End-to-end latency p95 by mode", "Accepted -> final images ready, per generation job.",
              [(_q(0.95, DF + "e2e_request_latency_seconds", "mode"), "{{mode}}")], "s"),
        Panel("Queue time p95 by mode", "How long jobs waited before their first step.",
              [(_q(0.95, DF + "queue_duration_seconds", "mode"), "{{mode}}")], "s"),
        Panel("Time to first preview p95", "Accepted -> first preview image streamed (jobs that asked for "
              "previews).", [(_q(0.95, DF + "time_to_first_preview_seconds", "mode"), "{{mode}}")], "s"),
        Panel("Images per second by mode", "Images returned to clients.",
              [(f"sum by (mode) (rate({DF}images_generated_total[{RI}]))", "{{mode}}")]),
    ]),
    Row("Scheduler", [
        Panel("Queue depth", "Jobs waiting and jobs being denoised, all replicas. The HPA scales on the waiting "
              "count.", [(f"sum({DF}num_requests_waiting)", "waiting"), (f"sum({DF}num_requests_running)", "running")]),
        Panel("Batch size", "Images per UNet batch (requests with the same shape and steps are batched): mean "
              "and p95.",
              [(f"sum(rate({DF}batch_size_sum[{RI}])) / sum(rate({DF}batch_size_count[{RI}]))", "mean"),
               (_q(0.95, DF + "batch_size"), "p95")]),
        Panel("Generation jobs by final state", "succeeded / failed / cancelled per second.",
              [(f"sum by (state) (rate({DF}jobs_finished_total[{RI}]))", "{{state}}")], "reqps", width=24),
    ]),
    Row("Fine-tuning (LoRA)", [
        Panel("Fine-tune jobs by state", "Jobs the server remembers, by state; a rise in failed fires "
              "UnfragileFineTuneJobFailed.", [(f"sum by (state) ({DF}finetune_jobs)", "{{state}}")], width=8),
        Panel("Training loss", "Loss of the last training step, per adapter being trained.",
              [(f"max by (adapter) ({DF}finetune_loss)", "{{adapter}}")], width=8),
        Panel("Training step duration", "Wall time of one LoRA training step.",
              _percentiles(DF + "finetune_step_duration_seconds", quantiles=(0.5, 0.95)), "s", width=8),
    ]),
]
GR = "unfragile_graph_"
MATCHGRAPH = [
    Row("Graph", [
        Panel("Catalogue and co-match graph", "Models and tools in the catalogue, and distinct model-model "
              "co-match edges.", [(f"max({GR}models)", "models"), (f"max({GR}comatch_edges)", "co-match edges")]),
        Panel("Graph version", "Sequence number of the last stored match event: flat while nothing is ingested.",
              [(f"max({GR}version)", "version")]),
        Panel("Match events ingested", "RecordMatches events per second, inserted vs duplicate (already "
              "stored, ignored).", [(f"sum by (result) (rate({GR}events_total[{RI}]))", "{{result}}")]),
        Panel("Ingest batch size", "Events per RecordMatches message: mean and p95.",
              [(f"sum(rate({GR}ingest_batch_size_sum[{RI}])) / sum(rate({GR}ingest_batch_size_count[{RI}]))",
                "mean"), (_q(0.95, GR + "ingest_batch_size"), "p95")]),
        Panel("Rank refresh: PageRank iterations", "Power iterations of each incremental (warm-started) "
              "PageRank refresh after new matches: the work a rank refresh costs (mean and p99).",
              [(f"sum(rate({GR}pagerank_iterations_sum[{RI}])) / sum(rate({GR}pagerank_iterations_count[{RI}]))",
                "mean"), (_q(0.99, GR + "pagerank_iterations"), "p99")]),
        Panel("Rank refresh time", "Wall time of each incremental rank refresh (warm-started PageRank, then "
              "persisting it) after new matches: p50 and p95.",
              [(_q(0.5, GR + "rank_refresh_seconds"), "p50"), (_q(0.95, GR + "rank_refresh_seconds"), "p95")], "s"),
        Panel("Compare / Rank latency p95", "The RPCs behind comparison pages and leaderboards.",
              [(_q(0.95, "unfragile_grpc_request_duration_seconds", "method",
                   'service="matchgraph", method=~"Compare|Rank|GetModel|Search"'), "{{method}}")], "s"),
    ]),
    Row("Writer and readers", [
        Panel("Reader lag (events)", "Committed match events a process does not serve yet (0 on the writer and "
              "on a single process).", [(f"max by (instance) ({GR}reader_lag_events)", "{{instance}}")], width=8),
        Panel("Reader lag (seconds) and stale readers", "How old the oldest commit a process does not serve yet is "
              "(with a standby's replay delay); stale = 1 past max_staleness_s, when answers say they are stale.",
              [(f"max by (instance) ({GR}reader_lag_seconds)", "{{instance}} lag"),
               (f"max by (instance) ({GR}reader_stale)", "{{instance}} stale")], "s", width=8),
        Panel("Snapshot served", "The writer's publication each process serves: caught-up readers draw its line.",
              [(f"max by (instance) ({GR}snapshot_version)", "{{instance}}")], width=8),
        Panel("Notify to visible", "Readers: a committed change first seen (notice or poll) -> served, p50/p99.",
              [(_q(q, GR + "notify_to_visible_seconds"), f"p{int(q * 100)}") for q in (0.5, 0.99)], "s"),
        Panel("Database pool saturation", "PostgreSQL connections per process: open, checked out, and calls "
              "waiting for one (> 0: saturated; raise pg_pool_max_size or add readers). 0 on SQLite (no pool).",
              [(f"sum by (instance) ({GR}db_pool_{k})", "{{instance}} " + k) for k in ("size", "in_use", "waiting")]),
        Panel("Leader term", "Writer-capable processes on PostgreSQL: the leadership term each writes under (0 while "
              "standing by). One line above 0 at a time; a step up is a takeover, no line above 0 means no writes.",
              [(f"max by (instance) ({GR}leader_term)", "{{instance}}")]),
    ]),
    Row("Probes and search", [
        Panel("Probe runs by result", "Probe runs (Kosmos-2 / Stable Diffusion called for quality evidence) "
              "per second, by trigger (rpc, schedule) and result (ok, error).",
              [(f"sum by (trigger, result) (rate({GR}probe_runs_total[{RI}]))", "{{trigger}} {{result}}")],
              "reqps"),
        Panel("Degraded searches", "Searches answered from full-text search alone because the embedding "
              "service (VisionLanguage) was unavailable.",
              [(f"sum(rate({GR}search_degraded_total[{RI}]))", "degraded")], "reqps"),
    ]),
]

GW_HTTP = "unfragile_http_"
GATEWAY = [
    Row("Health", [
        targets_up_panel("gateway"),
        Panel("HTTP requests in flight", "Requests being served now, all replicas.",
              [(f"sum({GW_HTTP}requests_in_flight)", "in flight")], kind="stat", width=6),
        Panel("Server error ratio (5xx)", "Share of answers with a 5xx status; 0 when none. 502/503/504 mean "
              "MatchGraph failed, was down or too slow.",
              [(f'(sum(rate({GW_HTTP}requests_total{{status=~"5.."}}[{RI}])) '
                f"or sum(rate({GW_HTTP}requests_total[{RI}])) * 0) / sum(rate({GW_HTTP}requests_total[{RI}]))",
                "5xx")], "percentunit", kind="stat", width=12),
    ]),
    Row("HTTP", [
        Panel("Requests by route", "Requests per second by route template (never raw paths).",
              [(f"sum by (route) (rate({GW_HTTP}requests_total[{RI}]))", "{{route}}")], "reqps"),
        Panel("Responses by status", "Answers per second by HTTP status (4xx: bad queries, 304: cache hits "
              "via ETag).", [(f"sum by (status) (rate({GW_HTTP}requests_total[{RI}]))", "{{status}}")], "reqps"),
        Panel("Latency p50 / p95 / p99", "Request start to the end of the response body, all routes.",
              _percentiles(GW_HTTP + "request_duration_seconds"), "s"),
        Panel("Latency p95 by route", "Which page or endpoint is slow.",
              [(_q(0.95, GW_HTTP + "request_duration_seconds", "route"), "{{route}}")], "s"),
        Panel("304 Not Modified by route", "Answers served from the client's cache (If-None-Match matched the "
              "snapshot ETag).", [("sum by (route) (rate(unfragile_gateway_not_modified_total"
                                   f"[{RI}]))", "{{route}}")], "reqps"),
        Panel("Search events recorded", "Searches made on the pages, sent to MatchGraph's RecordMatches or "
              "dropped while it was down (only with UNFRAGILE_GATEWAY_RECORD_SEARCHES=true: it stores what "
              "users typed, so it is opt-in).",
              [(f"sum by (result) (rate(unfragile_gateway_search_events_total[{RI}]))", "{{result}}")], "reqps"),
    ]),
    Row("Upstream: MatchGraph", [
        Panel("MatchGraph RPCs by status code", "Calls the gateway made, by RPC and gRPC status.",
              [(f"sum by (rpc, code) (rate(unfragile_gateway_upstream_requests_total[{RI}]))", "{{rpc}} {{code}}")],
              "reqps"),
        Panel("MatchGraph RPC latency p95", "As the gateway sees it (network included).",
              [(_q(0.95, "unfragile_gateway_upstream_duration_seconds", "rpc"), "{{rpc}}")], "s"),
    ]),
]

OA = "unfragile_openai_"
OPENAI = [
    Row("Health", [
        targets_up_panel("openai"),
        Panel("Requests in flight", "HTTP requests being served now, open streams included, all replicas (the HPA "
              "scales on it per pod).", [(f"sum({OA}requests_in_flight)", "in flight")], kind="stat", width=6),
        Panel("Server error ratio (5xx)", "Share of answers with a 5xx status; 0 when none. 503 = a model service "
              "is down, 504 = it did not answer within chat_timeout_s / image_timeout_s, 502 = it failed.",
              [(f'(sum(rate({OA}requests_total{{status=~"5.."}}[{RI}])) '
                f"or sum(rate({OA}requests_total[{RI}])) * 0) / sum(rate({OA}requests_total[{RI}]))", "5xx")],
              "percentunit", kind="stat", width=12),
    ]),
    Row("HTTP", [
        Panel("Requests by route", "Requests per second by endpoint (/v1/chat/completions, /v1/embeddings, "
              "/v1/images/...).", [(f"sum by (route) (rate({OA}requests_total[{RI}]))", "{{route}}")], "reqps"),
        Panel("Responses by status", "Answers per second by HTTP status (400: bad input, 401: API key, 404: "
              "unknown model, 413: too large, 429: a model queue is full).",
              [(f"sum by (status) (rate({OA}requests_total[{RI}]))", "{{status}}")], "reqps"),
        Panel("Latency p50 / p95 / p99", "Request start to the end of the response body (streams: to their last "
              "event), all routes.", _percentiles(OA + "request_duration_seconds"), "s"),
        Panel("Latency p95 by route", "Which endpoint is slow.",
              [(_q(0.95, OA + "request_duration_seconds", "route"), "{{route}}")], "s"),
        Panel("Time to first streamed chunk p95", "Streams: request start to the first content token (chat) or "
              "partial image, by route.", [(_q(0.95, OA + "time_to_first_chunk_seconds", "route"), "{{route}}")],
              "s"),
        Panel("Tokens and images per second", "Chat tokens by kind (prompt, completion) and images returned by "
              "operation (generations, edits).",
              [(f"sum by (kind) (rate({OA}tokens_total[{RI}]))", "tokens {{kind}}"),
               (f"sum by (operation) (rate({OA}images_total[{RI}]))", "images {{operation}}")]),
    ]),
    Row("Upstream: model services", [
        Panel("gRPC calls by status code", "Calls the frontend made to VisionLanguage and Diffusion, by RPC and "
              "gRPC status.",
              [(f"sum by (rpc, code) (rate({OA}upstream_requests_total[{RI}]))", "{{rpc}} {{code}}")], "reqps"),
        Panel("gRPC call latency p95", "As the frontend sees it (queue, generation and network).",
              [(_q(0.95, OA + "upstream_duration_seconds", "rpc"), "{{rpc}}")], "s"),
        Panel("Calls cancelled by client disconnects", "Generations stopped upstream because the HTTP client "
              "went away (no work done for nobody).",
              [(f"sum by (rpc) (rate({OA}upstream_cancelled_total[{RI}]))", "{{rpc}}")], "reqps"),
        Panel("Remote image fetches", "http(s) image_url downloads by result: ok, refused by the SSRF guard, "
              "failed (only with allow_remote_images).",
              [(f"sum by (result) (rate({OA}remote_images_total[{RI}]))", "{{result}}")], "reqps"),
    ]),
]

SERVICES = {
    # name: (dashboard uid, title, service-specific rows)
    "visionlanguage": ("unfragile-visionlanguage", "VisionLanguage (Kosmos-2)", VISIONLANGUAGE),
    "diffusion": ("unfragile-diffusion", "Diffusion (Stable Diffusion)", DIFFUSION),
    "matchgraph": ("unfragile-matchgraph", "MatchGraph", MATCHGRAPH),
}

SERVER_ERRORS = 'code=~"INTERNAL|UNKNOWN|UNAVAILABLE|DEADLINE_EXCEEDED|DATA_LOSS"'


def overview_rows() -> list[Row]:
    """One screen for the whole stack: is everything up, how busy, how many errors, how slow."""
    return [
        Row("Health", [
            Panel("Model ready by service", "1 = loaded and SERVING.",
                  [("min by (service) (unfragile_model_ready)", "{{service}}")], kind="stat", width=12,
                  mappings=READY_MAPPINGS),
            Panel("Scrape targets up", "Replicas Prometheus reaches, per job.",
                  [('sum by (job) (up{job=~"unfragile-.+"})', "{{job}}")], kind="stat", width=12),
        ]),
        Row("Traffic", [
            Panel("Request rate by service", "RPCs finished per second.",
                  [(f"sum by (service) (rate(unfragile_grpc_requests_total[{RI}]))", "{{service}}")], "reqps"),
            Panel("Server error ratio by service", "Share of RPCs that failed on our side (INTERNAL, UNKNOWN, "
                  "UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS); 0 when none. Client mistakes are not counted.",
                  [(f"(sum by (service) (rate(unfragile_grpc_requests_total{{{SERVER_ERRORS}}}[{RI}])) "
                    f"or sum by (service) (rate(unfragile_grpc_requests_total[{RI}])) * 0) "
                    f"/ sum by (service) (rate(unfragile_grpc_requests_total[{RI}]))", "{{service}}")],
                  "percentunit"),
            Panel("Non-OK RPCs by service and code", "Every status code other than OK, per second.",
                  [(f'sum by (service, code) (rate(unfragile_grpc_requests_total{{code!="OK"}}[{RI}]))',
                    "{{service}} {{code}}")], "reqps"),
            Panel("RPC latency p95 by service", "Arrival to final status (streams until their last message).",
                  [(_q(0.95, "unfragile_grpc_request_duration_seconds", "service"), "{{service}}")], "s"),
        ]),
        Row("Web", [
            Panel("Gateway requests by status", "HTTP answers of the gateway per second, by status.",
                  [(f"sum by (status) (rate({GW_HTTP}requests_total[{RI}]))", "{{status}}")], "reqps"),
            Panel("Gateway latency p95", "HTTP request start to the end of the response body.",
                  [(_q(0.95, GW_HTTP + "request_duration_seconds"), "p95")], "s"),
        ]),
        Row("OpenAI API", [
            Panel("OpenAI API requests by status", "HTTP answers of the OpenAI-compatible frontend per second, "
                  "by status.", [(f"sum by (status) (rate({OA}requests_total[{RI}]))", "{{status}}")], "reqps"),
            Panel("OpenAI API latency p95 by route", "Request start to the end of the response body.",
                  [(_q(0.95, OA + "request_duration_seconds", "route"), "{{route}}")], "s"),
        ]),
        Row("Load", [
            Panel("Queue depth", "Requests waiting in each model server's queue, all replicas.",
                  [(f"sum({VL}num_requests_waiting)", "visionlanguage"),
                   ("sum(unfragile_diffusion_num_requests_waiting)", "diffusion")]),
            Panel("In-flight RPCs by service", "RPCs being served now, open streams included.",
                  [("sum by (service) (unfragile_grpc_requests_in_flight)", "{{service}}")]),
        ]),
    ]


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict:
    height = 5 if panel.kind == "stat" else 8
    targets = [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
               for i, (expr, legend) in enumerate(panel.targets)]
    out: dict = {
        "id": pid, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": height, "w": panel.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": panel.unit, "mappings": panel.mappings}, "overrides": []},
    }
    if panel.kind == "timeseries":
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    else:
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "background", "graphMode": "none"}
    return out


def _layout(rows: list[Row]) -> list[dict]:
    panels, pid, y = [], 1, 0
    for row in rows:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, row_h = 0, y + row_h, 0
            item = _panel_json(panel, pid, x, y)
            panels.append(item)
            pid, x, row_h = pid + 1, x + panel.width, max(row_h, item["gridPos"]["h"])
        y += row_h
    return panels


def _datasource_var() -> dict:
    return {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {"text": "Prometheus", "value": "prometheus"}, "hide": 0}


def _method_var(service: str) -> dict:
    return {"name": "method", "label": "Method", "type": "query", "datasource": DATASOURCE,
            "query": {"query": f'label_values(unfragile_grpc_requests_total{{service="{service}"}}, method)',
                      "refId": "method"},
            "definition": f'label_values(unfragile_grpc_requests_total{{service="{service}"}}, method)',
            "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
            "current": {"text": "All", "value": "$__all"}}


def _dashboard(uid: str, title: str, rows: list[Row], variables: list[dict]) -> dict:
    return {
        "uid": uid, "title": f"unfragile / {title}", "tags": ["unfragile"], "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "10s", "timezone": "browser",
        "time": {"from": "now-1h", "to": "now"}, "graphTooltip": 1,
        "annotations": {"list": []}, "links": [{"type": "dashboards", "tags": ["unfragile"], "asDropdown": True,
                                                "title": "unfragile"}],
        "templating": {"list": [_datasource_var(), *variables]},
        "panels": _layout(rows),
    }


def dashboards() -> dict[str, dict]:
    """File name -> dashboard JSON object, for every dashboard this project ships."""
    out = {"overview.json": _dashboard("unfragile-overview", "Overview", overview_rows(), [])}
    for name, (uid, title, rows) in SERVICES.items():
        health = Row("Health", [model_ready_panel(name), targets_up_panel(name)])
        out[f"{name}.json"] = _dashboard(uid, title, [health, *core_rows(name), *rows], [_method_var(name)])
    out["gateway.json"] = _dashboard("unfragile-gateway", "Gateway (HTTP)", GATEWAY, [])
    out["openai.json"] = _dashboard("unfragile-openai", "OpenAI-compatible API", OPENAI, [])
    return out


def render(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for fname, obj in dashboards().items():
        path = OUT / fname
        text = render(obj)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(fname)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale dashboards: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
