"""Records to flip: how much evidence must be removed to erase a lead, per dimension and on the rank.

For a pair (leader, trailer) and one dimension measured for both, the leader's supporting
evidence is removed record by record and both point scores recomputed, giving a curve of the
difference after k removals (``graph.fragility`` turns curves into counts). Readings are
removed greedily (the signal scales held fixed; removing every reading leaves the dimension
not measured, which erases the lead), quality games (probe outcomes and benchmark games of
the tasks both share) in a fixed most-damaging-first order, and match events that matched
the leader without the trailer largest first. Freshness rests on dates, not on records that
can be outweighed: its lead is reported as not flippable by removals. The rank count merges
the curves of the dimensions both ranks rest on, each worth its renormalised weight.
"""

from __future__ import annotations

import numpy as np

from graph import fragility, quality, rates
from graph.catalogue import Catalogue
from graph.config import EngineConfig
from graph.counts import MatchCounts
from graph.rank import DIMENSIONS
from graph.scoring import ScoreState, StateKey
from graph.store import Store

Flips = tuple[dict[str, int], int]  # records to flip per dimension, and on the rank
CACHE_PAIRS = 10_000


class Robustness:
    """Records-to-flip counts of a pair of models, cached per score state."""

    def __init__(self, store: Store, catalogue: Catalogue, counts: MatchCounts, config: EngineConfig) -> None:
        self.store = store
        self.catalogue = catalogue
        self.counts = counts
        self.config = config
        self._cache: dict[tuple[StateKey, int, int], Flips] = {}
        self._cache_state: StateKey | None = None

    def flips(self, st: ScoreState, i: int, j: int, pair_quality: tuple[float, float] | None = None) -> Flips:
        """Records to flip each dimension's order of models ``i`` and ``j``, and their rank order.

        ``pair_quality``: the two quality values over their shared tasks (None: not comparable or not
        measured for both), which is what the quality row of their comparison shows.
        """
        if self._cache_state != st.key:  # new scores: the old counts describe other numbers
            self._cache.clear()
            self._cache_state = st.key
        key = (st.key, i, j)
        if key in self._cache:
            return self._cache[key]
        cap = self.config.fragility_max_records
        flips: dict[str, int] = {}
        rank_curves: dict[str, list[float]] = {}
        both = st.rank.mask[i] and st.rank.mask[j]
        lead, trail = (i, j) if st.rank.value[i] >= st.rank.value[j] else (j, i)
        graph_skipped = False
        for dim in DIMENSIONS:
            vals = self._values(st, dim, i, j, pair_quality)
            if vals is None:
                flips[dim] = 0
                continue
            dl, dt = (i, j) if vals[0] >= vals[1] else (j, i)
            curve = self._curve(st, dim, dl, dt, cap, stop=True, start=abs(vals[0] - vals[1]))
            if curve is None:
                flips[dim] = 0 if vals[0] == vals[1] else -2
                graph_skipped = True
                rank_curves[dim] = [vals[0 if lead == i else 1] - vals[1 if lead == i else 0]]
                continue
            flips[dim] = fragility.records_to_flip(curve, dim)
            lead_diff = (vals[0] - vals[1]) if lead == i else (vals[1] - vals[0])
            if (dl, dt) == (lead, trail) and curve[-1] <= 0 and len(curve) > 1:
                curve = self._curve(st, dim, lead, trail, cap, stop=False, start=lead_diff) or curve
            elif (dl, dt) != (lead, trail):
                curve = self._curve(st, dim, lead, trail, cap, stop=False, start=lead_diff) or [lead_diff]
            rank_curves[dim] = curve
        r = 0
        if both:
            points = self._points(st, lead, trail, rank_curves)
            start = float(st.rank.value[lead] - st.rank.value[trail])
            r = fragility.merge_rank_curves({d: c for d, c in rank_curves.items() if d in points}, points, cap, start)
            if r == -1 and graph_skipped:
                r = -2
        if len(self._cache) >= CACHE_PAIRS:  # bounded: pairs are cheap to recompute
            self._cache.clear()
        self._cache[key] = (flips, r)
        return flips, r

    @staticmethod
    def _points(st: ScoreState, lead: int, trail: int, curves: dict[str, list[float]]) -> dict[str, float]:
        """Rank points per unit of each dimension's difference: mean of the two models' renormalised weights x 100."""
        out = {}
        for k, d in enumerate(DIMENSIONS):
            if d not in curves or not (st.ranks.rests_on[lead, k] and st.ranks.rests_on[trail, k]):
                continue
            share = []
            for m in (lead, trail):
                w = np.where(st.ranks.rests_on[m], st.ranks.weights[m], 0.0)
                share.append(float(w[k] / w.sum()) if w.sum() > 0 else 0.0)
            out[d] = 100 * (share[0] + share[1]) / 2
        return out

    @staticmethod
    def _values(st: ScoreState, dim: str, i: int, j: int, pair_quality: tuple[float, float] | None
                ) -> tuple[float, float] | None:
        if dim == "quality":
            return pair_quality
        d = st.dims[dim]
        if not (d.mask[i] and d.mask[j]):
            return None
        return float(d.value[i]), float(d.value[j])

    def _curve(self, st: ScoreState, dim: str, lead: int, trail: int, cap: int, stop: bool, start: float
               ) -> list[float] | None:
        if dim in ("adoption", "ecosystem"):
            return self._signal_curve(st, dim, lead, trail, cap, stop)
        if dim == "quality":
            return self._quality_curve(st, lead, trail, cap, stop)
        if dim == "freshness":
            return [start]
        return self._graph_curve(lead, trail, cap, stop)

    def _signal_curve(self, st: ScoreState, dim: str, lead: int, trail: int, cap: int, stop: bool) -> list[float]:
        scale = st.scales[dim]
        kinds = scale.kinds
        rows = [(kinds.index(r[1]), float(np.log1p(r[2]))) for r in self.store.signal_rows_for(st.ids[lead], dim)
                if r[1] in kinds]
        other = float(st.dims[dim].value[trail])
        ref = scale.ref[lead]

        def diff_without(removed: list[object]) -> float:
            gone = set(removed)
            sums, cnt = np.zeros(len(kinds)), np.zeros(len(kinds))
            for r_i, (k, v) in enumerate(rows):
                if r_i not in gone:
                    sums[k] += v
                    cnt[k] += 1
            have = cnt > 0
            if not have.any():
                return 0.0  # no reading left: not measured, so no lead
            s = np.divide(sums / np.maximum(cnt, 1), ref, out=np.zeros_like(sums), where=ref > 0)
            return float(s[have].mean() - other)

        return fragility.greedy_curve(list(range(len(rows))), diff_without, cap, stop)

    def _quality_curve(self, st: ScoreState, lead: int, trail: int, cap: int, stop: bool) -> list[float]:
        lid, tid = st.ids[lead], st.ids[trail]
        q = st.quality
        shared = [t for t in q.tasks_of.get(lid, ()) if t in q.tasks_of.get(tid, ()) and t in q.tasks]
        games = [(t, k, g) for t in shared for k, g in enumerate(q.tasks[t].games) if lid in g[:2] or tid in g[:2]]

        def lead_score(g: quality.Game) -> float:
            return g[2] if g[0] == lid else 1 - g[2] if g[1] == lid else -1.0

        def trail_score(g: quality.Game) -> float:
            return g[2] if g[0] == tid else 1 - g[2] if g[1] == tid else -1.0

        cand = [(t, k) for t, k, g in games if lead_score(g) == 1 and trail_score(g) == 0]
        cand += [(t, k) for t, k, g in games if lead_score(g) == 1 and trail_score(g) == -1]
        cand += [(t, k) for t, k, g in games if trail_score(g) == 0 and lead_score(g) == -1]
        cand += [(t, k) for t, k, g in games if lead_score(g) == 0.5]

        def diff_without(removed: list[object]) -> float:
            gone = set(removed)
            a, b = [], []
            for t in shared:
                kept = [g for k, g in enumerate(q.tasks[t].games) if (t, k) not in gone]
                if not kept:
                    continue
                ts = quality.fit_task(t, kept, 0, np.random.default_rng(0), self.config.bt_prior)
                ka, kb = ts.index(lid), ts.index(tid)
                if ka is not None and kb is not None:
                    a.append(ts.value[ka])
                    b.append(ts.value[kb])
            return float(np.mean(a) - np.mean(b)) if a else 0.0

        return fragility.prefix_curve(cand, diff_without, cap, stop)

    def _graph_curve(self, lead: int, trail: int, cap: int, stop: bool) -> list[float] | None:
        g = self.counts.graph
        if g.w.nnz // 2 > self.config.fragility_max_edges:
            return None
        ids, pos, node_of = self.catalogue.ids, self.catalogue.pos, self.catalogue.node_of
        lid, tid = ids[lead], ids[trail]
        events = [m.split() for _e, _q, m in self.store.events_with(lid, cap * 20)]
        events = [e for e in events if tid not in e]
        events.sort(key=lambda e: -len(e))
        removable = [tuple(pos[m] for m in e) for e in events]
        ia, it = g.index[node_of[lid]], g.index[node_of[tid]]
        matched = self.counts.stats[:, 0].astype(np.float64)
        c = self.config

        def diff_without(removed: list[object]) -> float:
            n = matched.copy()
            if removed:
                groups = [e for e in removed if isinstance(e, tuple)]
                pr, _deg = g.without(groups)
                for grp in groups:
                    n[list(grp)] -= 1
            else:
                pr = g.pr
            v = rates.match_graph_point(pr, n, c.match_graph_prior, c.match_graph_strength)
            return float(v[ia] - v[it])

        return fragility.prefix_curve(removable, diff_without, cap, stop)
