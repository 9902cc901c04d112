"""Compare: two models side by side, with differences, robustness, verdict and the rendered page.

Every dimension is compared only where it is measured for both; quality only within the
tasks both models have (``quality.pair``), so a captioner and an image generator are "not
comparable" on quality, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import InvalidArgument
from graph import page_sources, pages, quality, rank
from graph.catalogue import Catalogue
from graph.config import EngineConfig
from graph.counts import MatchCounts
from graph.probing import Prober
from graph.rank import DimensionScores, ScoreCard
from graph.robustness import Robustness
from graph.scoring import Scorer, ScoreState
from graph.store import Store
from graph.verdict import VERDICT_DIMENSIONS, DimensionResult, headline, rests_on_sentence, test_model_sentence, verdict


@dataclass(frozen=True)
class CompareResult:
    comparison: pages.Comparison
    markdown: str
    html: str
    snapshot: int = 0


class Comparer:
    """Builds the comparison of two models: the numbers, the words that follow them, the page."""

    def __init__(self, store: Store, catalogue: Catalogue, counts: MatchCounts, scorer: Scorer,
                 robustness: Robustness, prober: Prober, config: EngineConfig) -> None:
        self.store = store
        self.catalogue = catalogue
        self.counts = counts
        self.scorer = scorer
        self.robustness = robustness
        self.prober = prober
        self.config = config

    def compare(self, name_a: str, name_b: str) -> CompareResult:
        a_id, b_id = self.catalogue.resolve(name_a, "model a:"), self.catalogue.resolve(name_b, "model b:")
        if a_id == b_id:
            raise InvalidArgument(f"a and b are the same model ({a_id!r}); compare two different models")
        st = self.scorer.state()
        i, j = self.catalogue.pos[a_id], self.catalogue.pos[b_id]
        ca, cb = self.scorer.scorecard(st, i), self.scorer.scorecard(st, j)
        rec_a, rec_b = self.catalogue.record_of(a_id), self.catalogue.record_of(b_id)
        shown = tuple((*r.tasks, *(t for t in st.quality.tasks_of.get(r.id, ()) if t not in r.tasks))
                      for r in (rec_a, rec_b))  # declared order, then tasks only its probes showed
        pq = quality.pair(st.quality, a_id, b_id, rec_a.name, rec_b.name, (shown[0], shown[1]))
        both_q = (pq.a.value, pq.b.value) if pq.a.measured and pq.b.measured and pq.reps_a.size else None
        flips, rank_flip = self.robustness.flips(st, i, j, both_q)
        thr = self.config.fragility_threshold

        def result(dim: str, d: DimensionScores) -> DimensionResult:
            r = flips.get(dim, 0) if dim != "rank" else rank_flip
            return DimensionResult(dim, ca.get(dim), cb.get(dim), rank.difference(d, i, j), r, 0 < r <= thr)

        def quality_result() -> DimensionResult:
            r = flips.get("quality", 0)
            diff = rank.difference_of(pq.a.value, pq.b.value, pq.reps_a, pq.reps_b) if both_q else \
                rank.Difference(rank.NAN, rank.NAN, rank.NAN)
            return DimensionResult("quality", pq.a, pq.b, diff, r, 0 < r <= thr, pq.comparable, pq.reason)

        rank_res = result("rank", st.rank)
        dims = tuple(quality_result() if d == "quality" else result(d, st.dims[d]) for d in VERDICT_DIMENSIONS)
        comp = self._comparison(st, (a_id, b_id), (ca, cb), rank_res, dims)
        return CompareResult(comp, pages.markdown(comp), pages.html(comp), st.snapshot)

    def _comparison(self, st: ScoreState, ids: tuple[str, str], cards: tuple[ScoreCard, ScoreCard],
                    rank_res: DimensionResult, dims: tuple[DimensionResult, ...]) -> pages.Comparison:
        a_id, b_id = ids
        rec_a, rec_b = self.catalogue.record_of(a_id), self.catalogue.record_of(b_id)
        ca, cb = cards
        basis = self.prober.quality_basis((a_id, b_id))
        names = {a_id: rec_a.name, b_id: rec_b.name}
        tested = [(names[b.model], b.served.describe()) for b in basis if b.served is not None and b.served.test_model]
        sentences = verdict(rec_a.name, rec_b.name, rank_res, list(dims), rec_a.pricing, rec_b.pricing,
                            test_model_sentence(tested),
                            rests_on_sentence(rec_a.name, ca.rests_on, rec_b.name, cb.rests_on))
        by_dim = {d.dimension: d for d in dims}
        return pages.Comparison(
            rec_a, rec_b, ca, cb, rank_res, dims, pages.feature_rows(rec_a, rec_b, ca, cb, by_dim, tested),
            headline(rec_a.name, rec_b.name, rank_res), tuple(sentences),
            self.counts.graph.version, pages.freshness_note(*self.prober.freshness()), basis,
            page_sources.source_rows(rec_a, rec_b))
