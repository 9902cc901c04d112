"""GetModel: one model's record and scores, and (explain) the evidence rows behind every number.

Each row names the dimension it feeds, what it says, its raw value, its contribution to the
dimension's score and where it came from, so the signal rows of a dimension add up to its
sub-score and the weight rows add up to UnfragileRank.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from graph import rank
from graph.catalogue import Catalogue
from graph.config import EngineConfig
from graph.counts import MatchCounts
from graph.probing import Prober
from graph.rank import DIMENSIONS, ScoreCard
from graph.records import ModelRecord, Signal
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
        for dim, sigs in (("adoption", record.adoption), ("ecosystem", record.ecosystem)):
            out += self._signal_rows(st, i, dim, sigs)
        out += self._graph_rows(record, card)
        out += self._query_rows(record)
        out += self._quality_rows(record)
        out += self._weight_rows(card)
        return out

    def _signal_rows(self, st: ScoreState, i: int, dim: str, sigs: tuple[Signal, ...]) -> list[EvidenceRow]:
        """One row per observation of a kind; their contributions add up to the sub-score."""
        out: list[EvidenceRow] = []
        kinds, x, cols = st.signal_x[dim]
        n_kinds = max(len(kinds), 1)
        per_kind = {k: [s for s in sigs if s.kind == k] for k in kinds}
        for c, k in enumerate(kinds):
            p = _pct_among(x[i, c], cols[c], x[i, c], len(st.ids))
            for s in per_kind[k]:
                out.append(EvidenceRow(dim, k, f"{k} = {s.value:,.0f}: percentile {p:.2f} among "
                                       f"{len(st.ids)} models (log1p scale)", s.value,
                                       p / n_kinds / len(per_kind[k]), s.source, s.observed_at))
        for k in kinds:
            if not per_kind[k]:
                out.append(EvidenceRow(dim, k, f"no {k} recorded: counts 0", 0.0, 0.0))
        return out

    def _graph_rows(self, record: ModelRecord, card: ScoreCard) -> list[EvidenceRow]:
        """PageRank on the co-match graph and the strongest co-matches."""
        g = self.counts.graph
        node = self.catalogue.node_of[record.id]
        gi = g.index[node]
        out = [EvidenceRow("match_graph", "pagerank",
                           f"PageRank {g.pr[gi]:.3e} on the co-match graph (weighted degree "
                           f"{g.degree()[gi]:.0f}, {card.times_matched} events matched it); "
                           f"percentile {card.match_graph.value:.2f}", float(g.pr[gi]),
                           card.match_graph.value, f"graph version {g.version}")]
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

    def _quality_rows(self, record: ModelRecord) -> list[EvidenceRow]:
        """Probe outcomes per opponent and run, or the external benchmarks when never probed."""
        outcomes = [o for o in self.store.probe_outcomes() if record.id in (o.model_a, o.model_b)]
        if not outcomes:  # never probed, or only probes that may not score (test models): say what they ran on
            n = max(len(record.external_quality), 1)
            return self._basis_rows(record) + [
                EvidenceRow("quality", "external", f"{q.benchmark}: {q.score:.3f}", q.score, q.score / n, q.source,
                            q.observed_at) for q in record.external_quality]
        tally: dict[tuple[str, str], list[float]] = {}
        for o in outcomes:
            me_a = o.model_a == record.id
            opp = o.model_b if me_a else o.model_a
            tally.setdefault((opp, o.run_id), []).append(o.a_score if me_a else 1 - o.a_score)
        out = self._basis_rows(record)
        for (opp, run), scores in sorted(tally.items()):
            w = sum(s == 1 for s in scores)
            t = sum(s == 0.5 for s in scores)
            out.append(EvidenceRow("quality", "probe_outcome",
                                   f"vs {self.catalogue.name(opp)}: {w} wins, {t} ties, "
                                   f"{len(scores) - w - t} losses on shared probes", float(np.mean(scores)),
                                   0.0, f"probe run {run}"))
        return out

    def _basis_rows(self, record: ModelRecord) -> list[EvidenceRow]:
        """What the probes behind the quality score ran on (a random-weight test model says so)."""
        out = []
        for b in self.prober.quality_basis([record.id]):
            runs = f"{b.runs} probe run{'s' if b.runs != 1 else ''}"
            if b.served is None:
                out.append(EvidenceRow("quality", "probe_basis", f"{runs} on a served model that was not recorded",
                                       b.runs, 0.0))
                continue
            caveat = ": its quality says nothing about the real model" if b.served.test_model else ""
            out.append(EvidenceRow("quality", "probe_basis", f"{runs} on {b.served.describe()}{caveat}", b.runs,
                                   0.0, f"ModelInfo of the {b.served.endpoint} service"))
        return out

    def _weight_rows(self, card: ScoreCard) -> list[EvidenceRow]:
        """Each sub-score times its weight: these rows add up to UnfragileRank."""
        total_w = sum(self.config.weights.values())
        out = []
        for d in DIMENSIONS:
            w = self.config.weights[d] / total_w
            out.append(EvidenceRow("rank", "weight", f"{rank.DIMENSION_LABELS[d]} {card.get(d).value:.3f} x "
                                   f"weight {w:.3f} x 100", w, card.get(d).value * w * 100, "settings"))
        return out


def _pct_among(val: float, sorted_col: np.ndarray, self_val: float, n: int) -> float:
    """Mid-rank percentile of ``val`` among a column that contains ``self_val`` once."""
    if val <= 0 or n <= 1:
        return float(val > 0)
    lt = np.searchsorted(sorted_col, val, "left") - (self_val < val)
    eq = np.searchsorted(sorted_col, val, "right") - np.searchsorted(sorted_col, val, "left") - (self_val == val)
    return float((lt + 0.5 * eq) / (n - 1))
