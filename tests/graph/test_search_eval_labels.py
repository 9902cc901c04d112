"""The search evaluation set follows its labelling protocol (docs/catalogue.md, "Search evaluation
labels"): graded ids that exist in the catalogue, best first, grade-1 ids only where few serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "graph" / "data" / "catalogue.jsonl"
EVAL = ROOT / "benchmarks" / "search_eval.jsonl"
FIELDS = {"query", "intent", "relevant", "grades", "note", "original_query"}


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


MODELS = _lines(CATALOGUE)
QUERIES = _lines(EVAL)
IDS = {m["id"] for m in MODELS}
INTENTS = {i for m in MODELS for c in m["capabilities"] for i in c["intents"]}


def test_queries_are_unique_and_many() -> None:
    assert len(QUERIES) >= 80
    assert len({q["query"] for q in QUERIES}) == len(QUERIES)


@pytest.mark.parametrize("q", QUERIES, ids=[q["query"][:40] for q in QUERIES])
def test_query_labels_follow_the_protocol(q: dict[str, Any]) -> None:
    assert set(q) <= FIELDS and {"query", "intent", "relevant", "grades"} <= set(q)
    assert q["intent"] in INTENTS
    ids, grades = q["relevant"], q["grades"]
    assert ids and len(ids) == len(grades) == len(set(ids))
    assert set(ids) <= IDS, set(ids) - IDS
    assert set(grades) <= {1, 2, 3} and grades == sorted(grades, reverse=True)
    assert grades[0] >= 2
    if sum(g >= 2 for g in grades) >= 5:
        assert 1 not in grades, "grade-1 ids are listed only when fewer than 5 have grade 2 or 3"
    for field in ("note", "original_query"):
        assert field not in q or q[field].strip()
