"""What both store backends share at the row level: stop words, query words, record JSON, event rows."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import orjson

from graph.records import (
    Capability,
    Fact,
    FailureMode,
    Link,
    MatchEvent,
    ModelRecord,
    Pricing,
    PricingPlan,
    QualityEvidence,
    Signal,
)

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


# Parts of a record stored once, in tables of their own, and not in its JSON: readings as dated observations
# (``observation_rows_of``; reads take the newest of each), published results as ``external_quality`` rows.
STORED_APART = ("adoption", "ecosystem", "facts", "external_quality")
_JSON_FIELDS = tuple(f.name for f in fields(ModelRecord) if f.name not in STORED_APART)


def record_to_json(record: ModelRecord) -> str:
    """The record as stored in its row: its fields in declaration order (tuples as lists) but those of
    ``STORED_APART``; the same text for the same record.

    orjson serialises the dataclasses natively (compact, UTF-8), several times faster than ``dataclasses.asdict``
    + ``json.dumps``: this is on the catalogue import's hot path."""
    return orjson.dumps({k: getattr(record, k) for k in _JSON_FIELDS}).decode()


_CAPABILITY_LISTS = ("intents", "best_for", "limitations", "input_types", "output_types", "requires")


def _capability(c: dict[str, Any]) -> Capability:
    """A stored capability; lists stored before a field existed read as empty."""
    lists = {k: tuple(c.get(k, ())) for k in _CAPABILITY_LISTS}
    return Capability(c["title"], c["description"], c.get("unique", ""), c.get("vs_alternatives", ""), **lists)


def record_from_json(text: str) -> ModelRecord:
    """The record ``record_to_json`` wrote; fields added since a row was stored take their defaults. Rows written
    before ``STORED_APART`` held those parts too: they are read, and the stores replace them with the rows
    they keep apart (``with_stored_apart``)."""
    d = orjson.loads(text)
    p = d["pricing"]
    return ModelRecord(
        id=d["id"],
        name=d["name"],
        type=d["type"],
        aliases=tuple(d["aliases"]),
        pricing=Pricing(p["tier"], tuple(PricingPlan(**x) for x in p["plans"]), model=p.get("model", ""),
                        starting_price=p.get("starting_price")),
        adoption=tuple(Signal(**s) for s in d.get("adoption", ())),
        ecosystem=tuple(Signal(**s) for s in d.get("ecosystem", ())),
        serving_endpoint=d["serving_endpoint"],
        version=d["version"],
        capabilities=tuple(_capability(c) for c in d["capabilities"]),
        external_quality=tuple(QualityEvidence(**q) for q in d.get("external_quality", ())),
        tasks=tuple(d.get("tasks", ())),
        facts=tuple(Fact(**f) for f in d.get("facts", ())),
        hub_id=d.get("hub_id", ""),
        organization=d.get("organization", ""),
        slug=d.get("slug", ""),
        url=d.get("url", ""),
        pipeline_tag=d.get("pipeline_tag", ""),
        tags=tuple(d.get("tags", ())),
        failure_modes=tuple(FailureMode(**f) for f in d.get("failure_modes", ())),
        links=tuple(Link(**x) for x in d.get("links", ())),
    )


def alias_rows(record: ModelRecord) -> list[tuple[str, str]]:
    """(alias, model_id) of every lower-cased name that resolves to ``record``: its name, aliases and slug."""
    names = {a.lower() for a in (record.name, *record.aliases, record.slug) if a} - {record.id}
    return [(alias, record.id) for alias in sorted(names)]


def capability_text(c: Capability) -> str:
    """The searchable text of a capability besides its title: what it does, the intents it serves, who it suits."""
    return " ".join((c.description, c.unique, c.vs_alternatives, *c.intents, *c.best_for))


def search_doc_rows(record: ModelRecord) -> list[tuple[str, str, str, str]]:
    """(model_id, capability, title, body) of a record's search documents: its names, then each capability."""
    names = (record.id, record.name, *record.aliases, record.slug, record.pipeline_tag, *record.tags)
    docs = [(record.id, "", record.name, " ".join(n for n in names if n))]
    docs += [(record.id, c.title, c.title, capability_text(c)) for c in record.capabilities]
    return docs


ObservationRow = tuple[str, str, str, float, str, str, str, str, str, int]
OBSERVATION_COLUMNS = ("model_id", "dimension", "kind", "value", "text_value", "source", "observed_at", "says",
                       "period", "recorded_ms")


def observation_rows_of(record: ModelRecord, recorded_ms: int) -> list[ObservationRow]:
    """A record's readings as observation rows (``OBSERVATION_COLUMNS``): adoption and ecosystem signals
    (numbers) and facts (dimension "fact", the value as text)."""
    rows: list[ObservationRow] = [
        (record.id, dim, s.kind, float(s.value), "", s.source, s.observed_at, s.says, s.window, recorded_ms)
        for dim, sigs in (("adoption", record.adoption), ("ecosystem", record.ecosystem)) for s in sigs]
    rows += [(record.id, "fact", f.name, 0.0, f.value, f.source, f.observed_at, f.says, "", recorded_ms)
             for f in record.facts]
    return rows


QualityRow = tuple[str, float, str, str, str, str, str]  # benchmark, score, source, observed_at, task, scale, says
QUALITY_OF_MODEL = "SELECT benchmark, score, source, observed_at, task, scale, says FROM external_quality"


def with_stored_apart(record: ModelRecord, readings: list[tuple[str, str, float, str, str, str, str, str]],
                      quality: list[QualityRow]) -> ModelRecord:
    """``record`` (from its JSON) with the parts stored apart: the newest reading of each (kind, source) from
    (dimension, kind, value, text, source, observed_at, says, window) rows, and its published results."""
    adoption = tuple(Signal(k, v, src, at, says, win) for dim, k, v, _t, src, at, says, win in readings
                     if dim == "adoption")
    ecosystem = tuple(Signal(k, v, src, at, says, win) for dim, k, v, _t, src, at, says, win in readings
                      if dim == "ecosystem")
    facts = tuple(Fact(k, t, src, at, says) for dim, k, _v, t, src, at, says, _w in readings if dim == "fact")
    return replace(record, adoption=adoption, ecosystem=ecosystem, facts=facts,
                   external_quality=tuple(QualityEvidence(*q) for q in quality))


def event_row(e: MatchEvent, now_ms: int) -> EventRow:
    """(event_id, query, matched, compared, clicked, ts_ms) as stored (id lists space-separated)."""
    return (e.event_id, e.query, " ".join(e.matched), " ".join(e.compared), " ".join(e.clicked),
            e.timestamp_ms or now_ms)


@dataclass(frozen=True)
class FeedbackRow:
    """The outcome recorded on one match record (at most one per event)."""

    event_id: str
    outcome: str  # "success" | "failure"
    clicked_through: bool
    source: str
    comment: str
    credited: tuple[str, ...]  # the model ids the outcome counts for
    ts_ms: int

    def as_row(self) -> tuple[Any, ...]:
        """As stored: the columns of ``PORTABLE["feedback"]``."""
        return (self.event_id, self.outcome, int(self.clicked_through), self.source, self.comment,
                " ".join(self.credited), self.ts_ms)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> FeedbackRow:
        return cls(str(row[0]), str(row[1]), bool(row[2]), str(row[3]), str(row[4]), tuple(str(row[5]).split()),
                   int(row[6]))


def event_from_row(row: tuple[Any, ...]) -> MatchEvent:
    """The MatchEvent of a stored (event_id, query, matched, compared, clicked, ts_ms) row."""
    return MatchEvent(str(row[0]), str(row[1]), tuple(str(row[2]).split()), tuple(str(row[3]).split()),
                      tuple(str(row[4]).split()), int(row[5]))


def feedback_totals(rows: Iterable[tuple[Any, ...]]) -> dict[str, tuple[int, int]]:
    """{model_id: (successes, trials)} of (outcome, credited ids space-separated) rows."""
    out: dict[str, tuple[int, int]] = {}
    for outcome, credited in rows:
        win = int(outcome == "success")
        for m in str(credited).split():
            s, n = out.get(m, (0, 0))
            out[m] = (s + win, n + 1)
    return out


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
