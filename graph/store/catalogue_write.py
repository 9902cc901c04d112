"""The rows a batch of catalogue records writes, shared by both store backends.

``upsert_models`` on either backend writes a batch in one transaction with one statement per
table (not one per record): the model rows are inserted or updated in place (a model keeps its
node number forever), every child row of the batch's models is replaced (aliases, tasks,
capabilities, published results, search documents), and the readings are *added* as dated
observations (``observations.upsert_sql``: older readings stay as history).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from graph.records import ModelRecord
from graph.store.rows import ObservationRow, alias_rows, observation_rows_of, record_to_json, search_doc_rows

CHILD_TABLES = ("aliases", "tasks", "capabilities", "external_quality", "search_docs")
MODEL_COLUMNS = ("id", "name", "type", "pricing_tier", "serving_endpoint", "version", "record", "updated_ms")
QUALITY_COLUMNS = ("model_id", "benchmark", "score", "source", "observed_at", "task", "scale", "says")
SEARCH_COLUMNS = ("model_id", "capability", "title", "body")


@dataclass
class BatchRows:
    models: list[tuple[Any, ...]] = field(default_factory=list)
    aliases: list[tuple[str, str]] = field(default_factory=list)
    tasks: list[tuple[str, str]] = field(default_factory=list)
    observations: list[ObservationRow] = field(default_factory=list)
    capabilities: list[tuple[Any, ...]] = field(default_factory=list)
    external_quality: list[tuple[Any, ...]] = field(default_factory=list)
    search_docs: list[tuple[str, str, str, str]] = field(default_factory=list)


def batch_rows(records: Sequence[ModelRecord], now: int) -> BatchRows:
    out = BatchRows()
    for r in records:
        out.models.append((r.id, r.name, r.type, r.pricing.tier, r.serving_endpoint, r.version, record_to_json(r), now))
        out.aliases += alias_rows(r)
        out.tasks += [(r.id, t) for t in r.tasks]
        out.observations += observation_rows_of(r, now)
        out.capabilities += [(r.id, i, c.title, c.description, c.unique, c.vs_alternatives)
                             for i, c in enumerate(r.capabilities)]
        out.external_quality += [(r.id, q.benchmark, q.score, q.source, q.observed_at, q.task, q.scale, q.says)
                                 for q in r.external_quality]
        out.search_docs += search_doc_rows(r)
    return out


def model_upsert_sql(p: str) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in MODEL_COLUMNS[1:])
    return (f"INSERT INTO models ({', '.join(MODEL_COLUMNS)}) VALUES ({', '.join([p] * len(MODEL_COLUMNS))}) "
            f"ON CONFLICT (id) DO UPDATE SET {updates}")


def insert_sql(table: str, columns: Sequence[str], p: str) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([p] * len(columns))})"
