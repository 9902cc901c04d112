"""GetModel: one model's record and scores, and (explain) the evidence rows behind every number.

Each row names the dimension it feeds, what it says, its raw value, its contribution to the
dimension's score and where it came from (the page a reading was read from and the date), so
the rows of a measured dimension add up to its sub-score and the weight rows add up to
UnfragileRank. A dimension that is not measured gets one row saying why; older readings a
newer one superseded are listed as history (contribution 0).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from graph import freshness as fresh
from graph import rates
from graph.catalogue import Catalogue
from graph.config import EngineConfig
from graph.counts import MatchCounts
from graph.probing import Prober
from graph.rank import DIMENSION_LABELS, DIMENSIONS, ScoreCard
from graph.records import ModelRecord
from graph.scoring import Scorer, ScoreState
from graph.store import Store, normalise_query

TOP_QUERIES = 5
TOP_NEIGHBOURS = 10


@dataclass(frozen=True)
class EvidenceRow:
    dimension: str
    kind: str
    detail: str
    value: float
    contribution: float
    source: str = ""
    observed_at: str = ""


class Explainer:
    """Answers GetModel: the record, its score card and, when asked, its evidence rows."""

    def __init__(self, store: Store, catalogue: Catalogue, counts: MatchCounts, scorer: Scorer, prober: Prober,
                 config: EngineConfig) -> None:
        self.store = store
        self.catalogue = catalogue
        self.counts = counts
        self.scorer = scorer
        self.prober = prober
        self.config = config

    def get(self, name: str, explain: bool) -> tuple[ModelRecord, ScoreCard, list[EvidenceRow], int]:
        model_id = self.catalogue.resolve(name)
        st = self.scorer.state()
        i = self.catalogue.pos[model_id]
        card = self.scorer.scorecard(st, i)
        record = self.catalogue.record_of(model_id)
        return record, card, (self.evidence(st, i, record, card) if explain else []), st.snapshot

    def evidence(self, st: ScoreState, i: int, record: ModelRecord, card: ScoreCard) -> list[EvidenceRow]:
        out: list[EvidenceRow] = []
        for dim in ("adoption", "ecosystem"):
            out += self._signal_rows(st, i, dim, card)
        out += self._history_rows(record)
        out += self._graph_rows(record, card)
        out += self._query_rows(record)
        out += self._quality_rows(st, record, card)
        out += self._freshness_rows(st, record, card)
        out += self._weight_rows(card)
        return out

    def _signal_rows(self, st: ScoreState, i: int, dim: str, card: ScoreCard) -> list[EvidenceRow]:
        """One row per newest reading of a kind and source; their contributions add up to the sub-score."""
        score = card.get(dim)
        if not score.measured:
            return [EvidenceRow(dim, "not_measured", f"{DIMENSION_LABELS[dim]} not measured: {score.reason}", 0.0, 0.0)]
        scale = st.scales[dim]
        rows = self.store.signal_rows_for(st.ids[i], dim)
        kinds = [k for c, k in enumerate(scale.kinds) if not np.isnan(scale.x[i, c])]
        out = []
        for r in rows:
            c = scale.kinds.index(r[1])
            per_kind = sum(1 for x in rows if x[1] == r[1])
            s, ref = float(scale.score[i, c]), float(np.expm1(scale.ref[i, c]))
            out.append(EvidenceRow(dim, r[1], f"{r[1]} = {r[2]:,.0f}: log1p({r[2]:,.0f}) / log1p({ref:,.0f}), the "
                                   f"largest {r[1]} of its artifact type, = {s:.2f}", r[2],
                                   s / len(kinds) / per_kind, r[3], r[4]))
        return out

    def _history_rows(self, record: ModelRecord) -> list[EvidenceRow]:
        """Readings superseded by a newer one of the same kind and source: the trend, not the score."""
        rows = self.store.observation_history(record.id)
        newest: dict[tuple[str, str, str], str] = {}
        for dim, kind, _v, _t, src, at, _says, _p in rows:
            newest[(dim, kind, src)] = max(at, newest.get((dim, kind, src), ""))
        return [EvidenceRow(dim if dim != "fact" else "freshness", "history",
                            f"{kind} read {at}: {text or f'{v:,.0f}'} (superseded by the reading of "
                            f"{newest[(dim, kind, src)]})", v, 0.0, src, at)
                for dim, kind, v, text, src, at, _says, _p in rows if at < newest[(dim, kind, src)]]

    def _graph_rows(self, record: ModelRecord, card: ScoreCard) -> list[EvidenceRow]:
        """Centrality on the co-match graph, its shrinkage, and the strongest co-matches."""
        g = self.counts.graph
        node = self.catalogue.node_of[record.id]
        gi = g.index[node]
        c = self.config
        raw = float(rates.centrality(g.pr)[gi]) if g.pr.shape[0] else 0.0
        n = card.times_matched
        out = [EvidenceRow("match_graph", "pagerank",
                           f"PageRank {g.pr[gi]:.3e} = {g.pr[gi] * len(g.pr):.2f} x the average model's (weighted "
                           f"degree {g.degree()[gi]:.0f}): centrality x/(1+x) = {raw:.2f}; "
                           f"matched in {n} searches, shrunk toward the prior {c.match_graph_prior:g} with "
                           f"{c.match_graph_strength:g} pseudo-searches: ({n} x {raw:.2f} + {c.match_graph_strength:g} "
                           f"x {c.match_graph_prior:g}) / ({n} + {c.match_graph_strength:g}) = "
                           f"{card.match_graph.value:.3f}", float(g.pr[gi]), card.match_graph.value,
                           f"graph version {g.version}")]
        for other, cnt in g.neighbours(node, TOP_NEIGHBOURS):
            mid = self.catalogue.ids[g.index[other]]
            out.append(EvidenceRow("match_graph", "co_match", f"co-matched with {self.catalogue.name(mid)} "
                                   f"in {cnt:.0f} searches", cnt, 0.0, "events (co-match counts)"))
        return out

    def _query_rows(self, record: ModelRecord) -> list[EvidenceRow]:
        """The queries that matched the model most often among its most recent events."""
        recent = self.store.events_with(record.id, self.config.explain_scan_events)
        queries = Counter(normalise_query(q) for _e, q, _m in recent)
        return [EvidenceRow("match_graph", "query", f"query {q!r} matched it {cnt} times (of the last "
                            f"{len(recent)} events that matched it)", cnt, 0.0, "events")
                for q, cnt in sorted(queries.items(), key=lambda t: (-t[1], t[0]))[:TOP_QUERIES]]

    def _quality_rows(self, st: ScoreState, record: ModelRecord, card: ScoreCard) -> list[EvidenceRow]:
        """Per task: the win probability, the benchmark results and probe outcomes behind it."""
        out = self._basis_rows(record)
        if not card.quality.measured:
            return out + [EvidenceRow("quality", "not_measured", f"Quality not measured: {card.quality.reason}",
                                      0.0, 0.0)]
        q = st.quality
        mine = [t for t in q.tasks_of.get(record.id, ()) if t in q.tasks and q.tasks[t].index(record.id) is not None]
        for t in mine:
            ts = q.tasks[t]
            k = ts.index(record.id)
            assert k is not None
            out.append(EvidenceRow("quality", "task", f"{t}: mean win probability {ts.value[k]:.3f} against "
                                   f"{len(ts.players) - 1} other {t} models over {ts.count[k]} games", ts.value[k],
                                   ts.value[k] / len(mine)))
            tally: dict[tuple[str, str], list[float]] = {}
            for a, b, s, src in ts.games:
                if record.id in (a, b):
                    opp, mine_s = (b, s) if a == record.id else (a, 1 - s)
                    tally.setdefault((src, opp), []).append(mine_s)
            for (src, opp), scores in sorted(tally.items()):
                w, ties = sum(x == 1 for x in scores), sum(x == 0.5 for x in scores)
                kind = "probe_outcome" if src.startswith("probe run") else "benchmark_game"
                out.append(EvidenceRow("quality", kind, f"{t}, {src}: vs {self.catalogue.name(opp)}: {w} wins, "
                                       f"{ties} ties, {len(scores) - w - ties} losses", float(np.mean(scores)),
                                       0.0, src))
        for e in record.external_quality:
            out.append(EvidenceRow("quality", "external", f"{e.benchmark} ({e.task or 'its task'}): {e.score:g}"
                                   + (f" on {e.scale}" if e.scale else ""), e.score, 0.0, e.source, e.observed_at))
        return out

    def _basis_rows(self, record: ModelRecord) -> list[EvidenceRow]:
        """What the probes of the model ran on (a random-weight test model says so: those probes are not scored)."""
        out = []
        for b in self.prober.quality_basis([record.id]):
            runs = f"{b.runs} probe run{'s' if b.runs != 1 else ''}"
            if b.served is None:
                out.append(EvidenceRow("quality", "probe_basis", f"{runs} on a served model that was not recorded",
                                       b.runs, 0.0))
                continue
            caveat = (": its quality says nothing about the real model, so these probes enter no score"
                      if b.served.test_model else "")
            out.append(EvidenceRow("quality", "probe_basis", f"{runs} on {b.served.describe()}{caveat}", b.runs,
                                   0.0, f"ModelInfo of the {b.served.endpoint} service"))
        return out

    def _freshness_rows(self, st: ScoreState, record: ModelRecord, card: ScoreCard) -> list[EvidenceRow]:
        if not card.freshness.measured:
            return [EvidenceRow("freshness", "not_measured", f"Freshness not measured: {card.freshness.reason}",
                                0.0, 0.0)]
        dates = st.dates.get(record.id, {})
        h = self.config.freshness_half_life_days.get(record.type, 365.0)
        out = []
        for name, date in sorted(dates.items()):
            f = record.fact(name)
            age = fresh.days_before(date, st.as_of)
            decay = 0.5 ** (age / h)
            out.append(EvidenceRow("freshness", name, f"{name.replace('_', ' ')} {date}: {age:.0f} days before "
                                   f"{st.as_of}, half-life {h:g} days: 0.5^({age:.0f}/{h:g}) = {decay:.3f}", decay,
                                   decay / len(dates), f.source if f else "", f.observed_at if f else ""))
        return out

    def _weight_rows(self, card: ScoreCard) -> list[EvidenceRow]:
        """Each measured sub-score times its renormalised weight: these rows add up to UnfragileRank."""
        out = []
        for d in DIMENSIONS:
            if d in card.rank_weights:
                w = card.rank_weights[d]
                out.append(EvidenceRow("rank", "weight", f"{DIMENSION_LABELS[d]} {card.get(d).value:.3f} x weight "
                                       f"{w:.3f} (renormalised over the measured dimensions) x 100", w,
                                       card.get(d).value * w * 100, "settings"))
            elif card.weights.get(d, 0) > 0:
                out.append(EvidenceRow("rank", "dropped", f"{DIMENSION_LABELS[d]} is not measured: its weight "
                                       f"{card.weights[d]:.2f} is dropped and the others renormalised; the interval "
                                       f"counts it anywhere in 0..1", card.weights[d], 0.0, "settings"))
        return out
