"""What both store backends share at the row level: stop words, query words, record JSON, event rows."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import TypeVar

from graph.records import Capability, MatchEvent, ModelRecord, Pricing, PricingPlan, QualityEvidence, Signal

T = TypeVar("T")
EventRow = tuple[str, str, str, str, str, int]  # event_id, query, matched, compared, clicked, ts_ms

# PostgreSQL's English stop words (tsearch_data/english.stop): dropped from queries on both
# backends, so "draw a picture" does not match every document that contains "a".
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves what which who whom this that these those am is are
was were be been being have has had having do does did doing a an the and but if or because as until while
of at by for with about against between into through during before after above below to from up down in out
on off over under again further then once here there when where why how all any both each few more most
other some such no nor not only own same so than too very s t can will just don should now
""".split())
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_WORDS = 32


def normalise_query(text: str) -> str:
    """Queries that differ only in case or spacing are the same query node."""
    return " ".join(text.lower().split())


def search_words(text: str) -> list[str]:
    """The words of a free-text query that search uses: lower case, stop words dropped."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS][:MAX_QUERY_WORDS]


def record_to_json(record: ModelRecord) -> str:
    return json.dumps(asdict(record), sort_keys=True)


def record_from_json(text: str) -> ModelRecord:
    d = json.loads(text)
    return ModelRecord(
        id=d["id"],
        name=d["name"],
        type=d["type"],
        aliases=tuple(d["aliases"]),
        pricing=Pricing(d["pricing"]["tier"], tuple(PricingPlan(**p) for p in d["pricing"]["plans"])),
        adoption=tuple(Signal(**s) for s in d["adoption"]),
        ecosystem=tuple(Signal(**s) for s in d["ecosystem"]),
        serving_endpoint=d["serving_endpoint"],
        version=d["version"],
        capabilities=tuple(Capability(**c) for c in d["capabilities"]),
        external_quality=tuple(QualityEvidence(**q) for q in d["external_quality"]),
    )


def search_doc_rows(record: ModelRecord) -> list[tuple[str, str, str, str]]:
    """(model_id, capability, title, body) of a record's search documents: its names, then each capability."""
    docs = [(record.id, "", record.name, " ".join((record.id, record.name, *record.aliases)))]
    docs += [(record.id, c.title, c.title, " ".join((c.description, c.unique, c.vs_alternatives)))
             for c in record.capabilities]
    return docs


def signal_rows_of(record: ModelRecord) -> list[tuple[str, str, str, float, str, str]]:
    """(model_id, dimension, kind, value, source, observed_at) of a record's signals."""
    return [(record.id, dim, s.kind, s.value, s.source, s.observed_at)
            for dim, sigs in (("adoption", record.adoption), ("ecosystem", record.ecosystem)) for s in sigs]


def event_row(e: MatchEvent, now_ms: int) -> EventRow:
    """(event_id, query, matched, compared, clicked, ts_ms) as stored (id lists space-separated)."""
    return (e.event_id, e.query, " ".join(e.matched), " ".join(e.compared), " ".join(e.clicked),
            e.timestamp_ms or now_ms)


def unique_events(events: list[MatchEvent]) -> list[MatchEvent]:
    """``events`` without repeats of an event id (the first one counts)."""
    seen: set[str] = set()
    out = []
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            out.append(e)
    return out


def now_ms() -> int:
    return int(time.time() * 1000)


def chunks(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk
