"""Dated readings with their history, shared by both store backends.

Every reading of a model (an adoption or ecosystem count, a fact such as its licence,
release date or last update) is one row of ``observations``: its value, the page it was
read from, the date it was read and what the page says. Upserting a record adds its
readings as new rows and keeps the older ones (history, trends, freshness); a reading of
the same kind from the same source on the same date replaces that one row (a correction).
Scores use the newest reading of each (model, dimension, kind, source).

The statements are written once here with ``{p}`` for the backend's placeholder and
``{order}`` for its insertion-order column (``rowid`` / ``rid``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from graph.records import ModelRecord
from graph.store.rows import OBSERVATION_COLUMNS, QUALITY_OF_MODEL, with_stored_apart

KEY = ("model_id", "dimension", "kind", "source", "observed_at")
_NEWEST = ("o.observed_at = (SELECT MAX(n.observed_at) FROM observations n WHERE n.model_id = o.model_id "
           "AND n.dimension = o.dimension AND n.kind = o.kind AND n.source = o.source)")


def upsert_sql(p: str) -> str:
    cols = ", ".join(OBSERVATION_COLUMNS)
    return (f"INSERT INTO observations ({cols}) VALUES ({', '.join([p] * len(OBSERVATION_COLUMNS))}) "
            f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET value = excluded.value, text_value = excluded.text_value, "
            f"says = excluded.says, period = excluded.period")


def newest_sql(p: str, order: str, columns: str, where: str) -> str:
    """The newest reading of each (model, dimension, kind, source) among the rows matching ``where``."""
    return f"SELECT {columns} FROM observations o WHERE {where} AND {_NEWEST} ORDER BY o.{order}"


def statements(p: str, order: str) -> dict[str, str]:
    """Every read of observations, for one backend."""
    five = "o.model_id, o.kind, o.value, o.source, o.observed_at"
    return {
        "newest": newest_sql(p, order, five, f"o.dimension = {p}"),
        "newest_values": newest_sql(p, order, "o.model_id, o.kind, o.value", f"o.dimension = {p}"),
        "newest_for": newest_sql(p, order, five, f"o.model_id = {p} AND o.dimension = {p}"),
        "newest_record": newest_sql(p, order, "o.dimension, o.kind, o.value, o.text_value, o.source, o.observed_at, "
                                    "o.says, o.period", f"o.model_id = {p}"),
        "facts": newest_sql(p, order, "o.model_id, o.kind, o.text_value, o.source, o.observed_at",
                            "o.dimension = 'fact'"),
        "history": (f"SELECT dimension, kind, value, text_value, source, observed_at, says, period FROM observations "
                    f"WHERE model_id = {p} ORDER BY dimension, kind, source, observed_at"),
        "newest_capable": newest_sql(p, order, "o.model_id, o.dimension, o.kind, o.value, o.text_value, o.source, "
                                     "o.observed_at, o.says, o.period",
                                     "o.model_id IN (SELECT model_id FROM capabilities)"),
        "as_of": "SELECT COALESCE(MAX(observed_at), '') FROM observations",
        "quality": f"SELECT model_id, benchmark, score, source, observed_at, task, scale FROM external_quality "
                   f"ORDER BY {order}",
        "quality_of": f"{QUALITY_OF_MODEL} WHERE model_id = {p} ORDER BY {order}",
        "quality_capable": f"SELECT model_id, {QUALITY_OF_MODEL.removeprefix('SELECT ')} WHERE model_id IN "
                           f"(SELECT model_id FROM capabilities) ORDER BY {order}",
    }


def with_readings(records: list[ModelRecord], rows: Iterable[Any], quality: Iterable[Any]) -> list[ModelRecord]:
    """``records`` with their newest readings from (model_id, dimension, kind, value, text, source, observed_at,
    says, period) rows (``statements()["newest_capable"]``) and their published results from (model_id,
    benchmark, ...) rows (``statements()["quality_capable"]``)."""
    readings: dict[str, list[Any]] = {}
    for r in rows:
        readings.setdefault(str(r[0]), []).append(tuple(r[1:]))
    results: dict[str, list[Any]] = {}
    for q in quality:
        results.setdefault(str(q[0]), []).append(tuple(q[1:]))
    return [with_stored_apart(rec, readings.get(rec.id, []), results.get(rec.id, [])) for rec in records]


class ReadingQueries:
    """The catalogue reads both backends answer with the same statements (mixed into each store before
    ``Store``); a backend provides ``obs`` (its ``statements``) and ``_rows(sql, args)``."""

    obs: dict[str, str]

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError

    def signal_rows(self, dimension: str) -> list[tuple[str, str, float, str, str]]:
        return [tuple(r) for r in self._rows(self.obs["newest"], (dimension,))]

    def signal_values(self, dimension: str) -> list[tuple[str, str, float]]:
        return [tuple(r) for r in self._rows(self.obs["newest_values"], (dimension,))]

    def signal_rows_for(self, model_id: str, dimension: str) -> list[tuple[str, str, float, str, str]]:
        return [tuple(r) for r in self._rows(self.obs["newest_for"], (model_id, dimension))]

    def fact_rows(self) -> list[tuple[str, str, str, str, str]]:
        return [tuple(r) for r in self._rows(self.obs["facts"])]

    def observation_history(self, model_id: str) -> list[tuple[str, str, float, str, str, str, str, str]]:
        return [tuple(r) for r in self._rows(self.obs["history"], (model_id,))]

    def readings_as_of(self) -> str:
        return str(self._rows(self.obs["as_of"])[0][0])

    def model_tasks(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for m, t in self._rows("SELECT model_id, task FROM tasks ORDER BY model_id, task"):
            out.setdefault(str(m), []).append(str(t))
        return {m: tuple(t) for m, t in out.items()}

    def model_types(self) -> dict[str, str]:
        return {str(i): str(t) for i, t in self._rows("SELECT id, type FROM models")}

    def external_quality_rows(self) -> list[tuple[str, str, float, str, str, str, str]]:
        return [tuple(r) for r in self._rows(self.obs["quality"])]
