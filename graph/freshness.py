"""Freshness: how recent a model's release and last update are, with an exponential decay.

Each date a model has a reading of (its release date and its last update) decays with the
half-life of its artifact type (``freshness_half_life_days``): a date ``age`` days before
the snapshot's "as of" date scores ``0.5 ** (age / half_life)`` (1 for today, 0.5 one
half-life ago; a date after "as of" counts as today). Freshness is the mean over the dates
read. "As of" is a setting or, by default, the newest read date of any reading in the
store, never the wall clock: the same data always gives the same numbers.

The interval says what the date nobody read could do: with only a release date, the last
update lies between it and "as of" (its decay between the release's and 1); with only a
last update, the release lies before it (its decay between 0 and the update's). Each
replicate draws the missing date's decay uniformly from that range; with both dates read
the value is exact. A model with neither date is *not measured*.

When several pages give a date, the newest reading's value is used (the latest one for the
last update).
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

from graph.rank import DimensionScores, not_measured

NO_DATE = "no release or last-update date recorded"


def _days(a: str, b: _dt.date) -> float:
    return float((b - _dt.date.fromisoformat(a)).days)


def days_before(date: str, as_of: str) -> float:
    """Days from ``date`` to ``as_of`` (0 when ``date`` is later): the age freshness decays with."""
    return max(_days(date, _dt.date.fromisoformat(as_of)), 0.0)


def dates_of(fact_rows: list[tuple[str, str, str, str, str]]) -> dict[str, dict[str, str]]:
    """model id -> {"released": date, "last_modified": date} from (model, name, value, source, observed_at) rows."""
    best: dict[tuple[str, str], tuple[str, str]] = {}  # (model, name) -> (observed_at, value)
    for m, name, value, _src, at in fact_rows:
        if name not in ("released", "last_modified"):
            continue
        prev = best.get((m, name))
        if name == "last_modified":
            if prev is None or value > prev[1]:
                best[(m, name)] = (at, value)
        elif prev is None or at > prev[0]:
            best[(m, name)] = (at, value)
    out: dict[str, dict[str, str]] = {}
    for (m, name), (_at, value) in best.items():
        out.setdefault(m, {})[name] = value
    return out


def freshness_dimension(ids: list[str], dates: dict[str, dict[str, str]], types: list[str], as_of: str,
                        half_life: dict[str, float], rounds: int, rng: np.random.Generator) -> DimensionScores:
    """Freshness of every model (see the module doc); ``as_of`` "" (no reading at all) = not measured."""
    n = len(ids)
    if not as_of or not dates:
        return not_measured(n, rounds, NO_DATE)
    ref = _dt.date.fromisoformat(as_of)
    value = np.zeros(n)
    lo = np.zeros(n)  # the range the missing date's decay may take
    hi = np.zeros(n)
    known = np.zeros(n)  # decay of the one date read (when only one is)
    kind = np.zeros(n, dtype=np.int64)  # 0 none, 1 both, 2 release only, 3 update only
    count = np.zeros(n, dtype=np.int64)
    for i, m in enumerate(ids):
        d = dates.get(m)
        if not d:
            continue
        h = half_life.get(types[i], half_life.get("model", 365.0))
        decay = {k: 0.5 ** (max(_days(v, ref), 0.0) / h) for k, v in d.items()}
        count[i] = len(decay)
        if len(decay) == 2:
            kind[i], value[i] = 1, (decay["released"] + decay["last_modified"]) / 2
        elif "released" in decay:
            kind[i], known[i] = 2, decay["released"]
            value[i], lo[i], hi[i] = known[i], known[i], 1.0
        else:
            kind[i], known[i] = 3, decay["last_modified"]
            value[i], lo[i], hi[i] = known[i], 0.0, known[i]
    measured = kind > 0
    reps = np.tile(value, (rounds, 1))
    one = np.flatnonzero(kind >= 2)
    if one.size and rounds:
        draw = lo[one] + (hi[one] - lo[one]) * rng.random((rounds, one.size))
        reps[:, one] = (known[one] + draw) / 2
    reasons = None if measured.all() else [NO_DATE if not measured[i] else "" for i in range(n)]
    out = DimensionScores(value, reps, count, measured, reasons)
    b = out.bounds()
    out._bounds = np.vstack([np.minimum(b[0], value), np.maximum(b[1], value)])
    return out
