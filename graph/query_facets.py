"""What a query asks of a model besides an intent: a licence, or popularity.

- A licence named in the query ("MIT", "Apache 2.0", "BSD", "OpenRAIL", or "permissive": MIT, Apache-2.0,
  BSD, ISC, Unlicense, CC0, CC-BY) is met by models with that licence (their newest licence reading, as the
  catalogue and the Hub importer record it, and ``license:<id>`` tags, as the Hub writes them);
- "most downloaded", "most popular", "widely used", ... ask for the models with the most downloads.

Search blends each into the match score (graph/search.py); words that are stop words never form a facet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from graph.records import ModelRecord

PERMISSIVE = frozenset({"mit", "apache-2.0", "bsd-3-clause", "bsd-2-clause", "bsd", "isc", "unlicense", "cc0-1.0",
                        "cc-by-4.0"})
LICENCES: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = tuple((re.compile(rf"\b{p}\b"), ids) for p, ids in (
    (r"mit", frozenset({"mit"})),
    (r"apache(?:[\s-]*(?:2(?:\.0)?|licen[cs]e))?", frozenset({"apache-2.0"})),
    (r"bsd", frozenset({"bsd-3-clause", "bsd-2-clause", "bsd"})),
    (r"open[\s-]*rail(?:\+\+|-m)?", frozenset({"openrail", "openrail++", "openrail-m", "creativeml-openrail-m"})),
    (r"permissive(?:ly)?(?:[\s-]+licen[cs]ed?)?", PERMISSIVE),
))
POPULAR = re.compile(r"\b(?:most\s+(?:downloaded|popular|used|liked|starred)|popular|widely[\s-]+used|"
                     r"best[\s-]+known|well[\s-]+known|mainstream)\b")


@dataclass(frozen=True)
class Facets:
    licences: frozenset[str]  # a model meets the query's licence wish with any of these ("" = none asked)
    popular: bool  # the query asks for the most downloaded


def facets(query: str) -> Facets:
    low = " ".join(query.lower().split())
    wanted: set[str] = set()
    for rx, ids in LICENCES:
        if rx.search(low):
            wanted |= ids
    return Facets(frozenset(wanted), POPULAR.search(low) is not None)


def licences_of(record: ModelRecord) -> frozenset[str]:
    """The licence ids a record names: its newest licence reading and its ``license:<id>`` tags."""
    tags = {t.split(":", 1)[1].lower() for t in record.tags if t.lower().startswith("license:")}
    reading = record.fact("licence")
    return frozenset(tags | {reading.value.lower()} if reading is not None else tags)


def downloads_of(record: ModelRecord) -> float:
    """Its largest downloads reading (0 = none recorded)."""
    return max((s.value for s in record.adoption if s.kind == "downloads"), default=0.0)
