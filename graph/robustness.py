"""Records to flip: how much evidence must be removed to erase a lead, per dimension and on the rank.

For a pair (leader, trailer) and one dimension the leader's supporting evidence is removed
record by record and both point scores recomputed, giving a curve of the difference after
k removals (``graph.fragility`` turns curves into counts). Signals are removed greedily,
probe outcomes and external benchmarks in a fixed most-damaging-first order, and match
events that matched the leader without the trailer largest first. The rank count merges
the dimension curves.
"""

from __future__ import annotations

import numpy as np

from graph import fragility, rank
from graph.catalogue import Catalogue
from graph.config import EngineConfig
from graph.counts import MatchCounts
from graph.rank import DIMENSIONS
from graph.scoring import ScoreState, StateKey
from graph.store import ProbeOutcomeRow, Store

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

    def flips(self, st: ScoreState, i: int, j: int) -> Flips:
        """Records to flip each dimension's order of models ``i`` and ``j``, and their rank order."""
        if self._cache_state != st.key:  # new scores: the old counts describe other numbers
            self._cache.clear()
            self._cache_state = st.key
        key = (st.key, i, j)
        if key in self._cache:
            return self._cache[key]
        cap = self.config.fragility_max_records
        flips: dict[str, int] = {}
        rank_curves: dict[str, list[float]] = {}
        lead, trail = (i, j) if st.rank.value[i] >= st.rank.value[j] else (j, i)
        graph_skipped = False
        for dim in DIMENSIONS:
            dl, dt = (i, j) if st.dims[dim].value[i] >= st.dims[dim].value[j] else (j, i)
            curve = self._curve(st, dim, dl, dt, cap, stop=True)
            if curve is None:
                flips[dim] = 0 if abs(st.dims[dim].value[i] - st.dims[dim].value[j]) == 0 else -2
                graph_skipped = True
                continue
            flips[dim] = fragility.records_to_flip(curve, dim)
            if (dl, dt) == (lead, trail) and curve[-1] <= 0 and len(curve) > 1:
                curve = self._curve(st, dim, lead, trail, cap, stop=False) or curve
            elif (dl, dt) != (lead, trail):
                curve = self._curve(st, dim, lead, trail, cap, stop=False) or \
                    [st.dims[dim].value[lead] - st.dims[dim].value[trail]]
            rank_curves[dim] = curve
        if graph_skipped:
            mg = st.dims["match_graph"].value
            rank_curves["match_graph"] = [float(mg[lead] - mg[trail])]
        r = fragility.merge_rank_curves(rank_curves, self.config.weights, cap)
        if r == -1 and graph_skipped:
            r = -2
        if len(self._cache) >= CACHE_PAIRS:  # bounded: pairs are cheap to recompute
            self._cache.clear()
        self._cache[key] = (flips, r)
        return flips, r

    def _curve(self, st: ScoreState, dim: str, lead: int, trail: int, cap: int, stop: bool) -> list[float] | None:
        if dim in ("adoption", "ecosystem"):
            return self._signal_curve(st, dim, lead, trail, cap, stop)
        if dim == "quality":
            return self._quality_curve(st, lead, trail, cap, stop)
        return self._graph_curve(lead, trail, cap, stop)

    def _signal_curve(self, st: ScoreState, dim: str, lead: int, trail: int, cap: int, stop: bool) -> list[float]:
        kinds, x, cols = st.signal_x[dim]
        n = len(st.ids)
        if not kinds:
            return [0.0]
        rows = [(kinds.index(r[1]), float(np.log1p(r[2]))) for r in self.store.signal_rows_for(st.ids[lead], dim)]
        xo = x[trail]

        def pct(val: float, c: int, peer: float) -> float:
            """Percentile of ``val`` in column ``c`` with the pair's own values replaced by ``val`` and ``peer``."""
            if val <= 0:
                return 0.0
            s = cols[c]
            lt = np.searchsorted(s, val, "left") - (x[lead, c] < val) - (x[trail, c] < val) + (peer < val)
            eq = np.searchsorted(s, val, "right") - np.searchsorted(s, val, "left") \
                - (x[lead, c] == val) - (x[trail, c] == val) + (peer == val)
            return float((lt + 0.5 * eq) / (n - 1)) if n > 1 else 1.0

        def diff_without(removed: list[object]) -> float:
            gone = set(removed)
            sums = np.zeros(len(kinds))
            cnt = np.zeros(len(kinds))
            for r_i, (k, v) in enumerate(rows):
                if r_i not in gone:
                    sums[k] += v
                    cnt[k] += 1
            xl = np.divide(sums, cnt, out=np.zeros_like(sums), where=cnt > 0)
            pl = np.mean([pct(xl[c], c, xo[c]) for c in range(len(kinds))])
            po = np.mean([pct(xo[c], c, xl[c]) for c in range(len(kinds))])
            return float(pl - po)

        return fragility.greedy_curve(list(range(len(rows))), diff_without, cap, stop)

    def _quality_curve(self, st: ScoreState, lead: int, trail: int, cap: int, stop: bool) -> list[float]:
        lid, tid = st.ids[lead], st.ids[trail]
        outcomes = self.store.probe_outcomes()
        ext = self.store.external_quality_rows()
        cand = _quality_candidates(outcomes, ext, lid, tid)

        def diff_without(removed: list[object]) -> float:
            gone = set(removed)
            outs = [(o.model_a, o.model_b, o.a_score) for k, o in enumerate(outcomes) if ("o", k) not in gone]
            exts = [(r[0], r[2]) for k, r in enumerate(ext) if ("e", k) not in gone and r[0] in (lid, tid)]
            players = sorted({lid, tid} | {o[0] for o in outs} | {o[1] for o in outs})
            d = rank.quality_dimension(players, outs, exts, 0, np.random.default_rng(0), self.config.bt_prior)
            return float(d.value[players.index(lid)] - d.value[players.index(tid)])

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

        def diff_without(removed: list[object]) -> float:
            if removed:
                pr, deg = g.without([e for e in removed if isinstance(e, tuple)])
            else:
                pr, deg = g.pr, g.degree()
            pct = rank.midrank_percentile(np.where(deg > 0, pr, 0.0))
            return float(pct[ia] - pct[it])

        return fragility.prefix_curve(removable, diff_without, cap, stop)


def _quality_candidates(outcomes: list[ProbeOutcomeRow], ext: list[tuple[str, str, float, str, str]],
                        lid: str, tid: str) -> list[tuple[str, int]]:
    """Removal candidates for the leader ``lid``'s quality lead, most damaging first.

    ("o", k) is probe outcome k, ("e", k) external benchmark row k.
    """
    def score_for(k: int, m: str) -> float:
        return outcomes[k].a_score if outcomes[k].model_a == m else 1 - outcomes[k].a_score

    def involves(k: int, m: str) -> bool:
        return m in (outcomes[k].model_a, outcomes[k].model_b)

    def by(k: int) -> float:
        return ext[k][2]

    o_idx = range(len(outcomes))
    cand = [("o", k) for k in o_idx if involves(k, lid) and involves(k, tid) and score_for(k, lid) == 1]
    cand += [("e", k) for k in sorted((k for k, r in enumerate(ext) if r[0] == lid), key=lambda k: -by(k))]
    cand += [("e", k) for k in sorted((k for k, r in enumerate(ext) if r[0] == tid), key=by)]
    cand += [("o", k) for k in o_idx if involves(k, lid) and not involves(k, tid) and score_for(k, lid) == 1]
    cand += [("o", k) for k in o_idx if involves(k, tid) and not involves(k, lid) and score_for(k, tid) == 0]
    cand += [("o", k) for k in o_idx if involves(k, lid) and score_for(k, lid) == 0.5]
    return cand
