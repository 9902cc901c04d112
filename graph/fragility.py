"""Robustness: how many evidence records must be removed to erase a lead.

For a pair (leader L, other O) and one dimension, we remove L's supporting evidence
(or O's weak evidence) one record at a time and recompute both point scores, giving a
curve ``diff[k]`` = score(L) - score(O) after k removals. The number of records to flip
is the first k where the displayed difference is no longer positive. The removal order
is greedy (the record whose removal hurts L most, re-evaluated each step) for signals
and probe outcomes, and a fixed order for match events (events that matched L without
O, largest first), so the count is an upper bound on the true minimum: a lead reported
as fragile really can be erased by that many removals.

The UnfragileRank curve merges the dimension curves greedily (each step takes the next
removal, from any dimension, that lowers the weighted difference most).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from graph.verdict import shown

Curve = list[float]


def greedy_curve(candidates: Sequence[object], diff_without: Callable[[list[object]], float],
                 max_records: int, stop_at_flip: bool = True) -> Curve:
    """diff after removing 0, 1, ... records, choosing the most damaging record each step."""
    removed: list[object] = []
    remaining = list(candidates)
    curve = [diff_without([])]
    while remaining and len(removed) < max_records:
        best_i, best_v = 0, float("inf")
        for i, c in enumerate(remaining):
            v = diff_without([*removed, c])
            if v < best_v:
                best_i, best_v = i, v
        removed.append(remaining.pop(best_i))
        curve.append(best_v)
        if stop_at_flip and best_v <= 0:
            break
    return curve


def prefix_curve(candidates: Sequence[object], diff_without: Callable[[list[object]], float],
                 max_records: int, stop_at_flip: bool = True) -> Curve:
    """diff after removing the first k candidates in the given order."""
    curve = [diff_without([])]
    for k in range(1, min(len(candidates), max_records) + 1):
        curve.append(diff_without(list(candidates[:k])))
        if stop_at_flip and curve[-1] <= 0:
            break
    return curve


def records_to_flip(curve: Curve, dimension: str) -> int:
    """First k whose displayed difference is <= 0; 0 if there is no lead; -1 if none found."""
    if shown(dimension, curve[0]) <= 0:
        return 0
    for k, v in enumerate(curve):
        if shown(dimension, v) <= 0:
            return k
    return -1


def merge_rank_curves(curves: dict[str, Curve], points: dict[str, float], max_records: int,
                      start: float | None = None) -> int:
    """Records to flip the UnfragileRank: greedy over the dimensions' curves.

    ``points[d]`` is how many rank points one unit of dimension ``d``'s difference is worth
    (its renormalised weight x 100); ``start`` is the rank difference before any removal
    (default: the weighted sum of the curves' first values).
    """
    w = {d: points[d] for d in curves}
    k = {d: 0 for d in curves}
    diff = sum(w[d] * curves[d][0] for d in curves) if start is None else start
    if shown("rank", diff) <= 0:
        return 0
    steps = 0
    while steps < max_records:
        best, gain = None, 0.0
        for d, c in curves.items():
            if k[d] + 1 < len(c):
                g = w[d] * (c[k[d]] - c[k[d] + 1])
                if g > gain:
                    best, gain = d, g
        if best is None:
            return -1
        k[best] += 1
        steps += 1
        diff -= gain
        if shown("rank", diff) <= 0:
            return steps
    return -1
