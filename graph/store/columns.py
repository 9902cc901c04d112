"""The columns of every table both backends store, in the order they store them."""

from __future__ import annotations

from dataclasses import fields

from graph.store.probe_rows import ProbeOutcomeRow, ProbeResultRow, ProbeScoreRow

# Columns copied by ``unfragile graph migrate``, per table, in the order both backends store them.
# Rows are read and written in insertion order (rowid / serial id), which scoring depends on.
PORTABLE: dict[str, tuple[str, ...]] = {
    "models": ("node", "id", "name", "type", "pricing_tier", "serving_endpoint", "version", "record", "updated_ms"),
    "aliases": ("alias", "model_id"),
    "observations": ("model_id", "dimension", "kind", "value", "text_value", "source", "observed_at", "says", "period",
                     "recorded_ms"),
    "tasks": ("model_id", "task"),
    "capabilities": ("model_id", "position", "title", "description", "unique_note", "vs_alternatives"),
    "external_quality": ("model_id", "benchmark", "score", "source", "observed_at", "task", "scale", "says"),
    "search_docs": ("id", "model_id", "capability", "title", "body"),
    "probe_runs": ("run_id", "started_ms", "seed", "prompts", "skipped"),
    "probe_results": tuple(f.name for f in fields(ProbeResultRow)),
    "probe_outcomes": tuple(f.name for f in fields(ProbeOutcomeRow)),
    "probe_scores": tuple(f.name for f in fields(ProbeScoreRow)),
    "graph_state": ("key", "version", "snapshot", "saved_ms", "data"),
    "meta": ("key", "value"),
    "feedback": ("event_id", "outcome", "clicked_through", "source", "comment", "credited", "ts_ms"),
}
EVENT_COLUMNS = ("seq", "event_id", "query", "matched", "compared", "clicked", "ts_ms")
LOCAL_META = frozenset({"schema_version"})  # meta rows that describe one database, never copied
