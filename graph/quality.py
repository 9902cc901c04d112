"""Quality within a task: models are compared only with models of the same capability family.

Each model lists its tasks ("image-to-text", "text-to-image", ...). Quality evidence comes as
pairwise *games* inside one task:

- **Probe outcomes** of a probe run (1 / 0 / 0.5 for a tie): two models of one task, judged by one
  independent judge on one probe set (graph/probes.py). The outcome's task is the task the prober
  ran (a generator's images, a captioner's captions), so it counts in that task and adds it to both
  models' tasks. Outcomes the store keeps only for the record (a random-weight model probed or
  judging, a contestant judging itself, rows from before tasks were recorded) never get here: the
  store returns only scorable outcomes.
- **Published benchmarks**: the same benchmark compared across the models of the task that
  report it. Every pair of such models plays one game per benchmark: the better score wins
  (results within 1% of the benchmark's spread are a tie). Scores are compared as published,
  so no scale conversion is needed; a benchmark whose name says lower is better (FID, error,
  WER, CER, loss, latency) counts the lower score as the win. A benchmark only one model of
  the task reports gives no game.

Per task, a Bradley-Terry model is fitted on the games with ``bt_prior`` pseudo-games on every
pair that met (the shrinkage: one game moves a win probability by at most
``0.5 / (1 + bt_prior)``), and a model's quality in the task is its mean win probability
against the task's other players (0.5 = as good as the average opponent). Its interval is a
parametric bootstrap: the games are resampled with replacement (FastChat's arena method) and
each resampled game's outcome redrawn from the fitted win probability of its pair, so a
few one-sided games give a wide interval rather than a point, narrowing as games
accumulate. A model's Quality is the mean over the tasks it is measured in; a comparison
uses only the tasks both models have (``pair``). No game in any task: not measured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from graph import bradley_terry
from graph.rank import DimensionScores, Score, interval

LOWER_IS_BETTER = re.compile(r"\b(fid|error|wer|cer|loss|latency)\b", re.IGNORECASE)
TIE_FRACTION = 0.01
Game = tuple[str, str, float, str]  # model a, model b, a's score (1 / 0.5 / 0), source ("probe run x", benchmark)


@dataclass
class TaskScores:
    """Quality of the players of one task."""

    task: str
    players: list[str]
    value: np.ndarray  # (P,)
    reps: np.ndarray  # (B, P)
    games: list[Game]
    count: np.ndarray  # (P,) games each player took part in

    def index(self, model: str) -> int | None:
        try:
            return self.players.index(model)
        except ValueError:
            return None


@dataclass
class QualityScores:
    dims: DimensionScores  # per model: mean over its measured tasks
    tasks: dict[str, TaskScores] = field(default_factory=dict)
    tasks_of: dict[str, tuple[str, ...]] = field(default_factory=dict)


def benchmark_games(external: list[tuple[str, str, float, str]], tasks_of: dict[str, tuple[str, ...]]
                    ) -> dict[str, list[Game]]:
    """task -> games from published results: (model, benchmark, score, task) rows (see the module doc)."""
    by: dict[tuple[str, str], dict[str, list[float]]] = {}
    for model, bench, score, task in external:
        mine = tasks_of.get(model, ())
        t = task or (mine[0] if len(mine) == 1 else "")
        if t and t in mine:
            by.setdefault((t, bench), {}).setdefault(model, []).append(score)
    out: dict[str, list[Game]] = {}
    for (task, bench), results in sorted(by.items()):
        models = sorted(results)
        mean = {m: float(np.mean(results[m])) for m in models}
        spread = max(mean.values()) - min(mean.values())
        lower = bool(LOWER_IS_BETTER.search(bench))
        for x in range(len(models)):
            for y in range(x + 1, len(models)):
                a, b = models[x], models[y]
                d = (mean[b] - mean[a]) if lower else (mean[a] - mean[b])
                s = 0.5 if abs(d) <= TIE_FRACTION * spread else (1.0 if d > 0 else 0.0)
                out.setdefault(task, []).append((a, b, s, bench))
    return out


def probe_games(outcomes: list[tuple[str, str, float, str, str]]) -> dict[str, list[Game]]:
    """task -> games from probe outcomes (model a, model b, a's score, task, run id); an outcome without a
    task (none is scorable) is not used."""
    out: dict[str, list[Game]] = {}
    for a, b, s, task, run in outcomes:
        if task:
            out.setdefault(task, []).append((a, b, s, f"probe run {run}"))
    return out


def with_probed_tasks(tasks_of: dict[str, tuple[str, ...]], outcomes: list[tuple[str, str, float, str, str]]
                      ) -> dict[str, tuple[str, ...]]:
    """``tasks_of`` with the task of every probe outcome added to both of its models (after their own)."""
    out = dict(tasks_of)
    for a, b, _s, task, _run in outcomes:
        for m in (a, b):
            if task and task not in out.get(m, ()):
                out[m] = (*out.get(m, ()), task)
    return out


def fit_task(task: str, games: list[Game], rounds: int, rng: np.random.Generator, prior: float) -> TaskScores:
    players = sorted({g[0] for g in games} | {g[1] for g in games})
    p_of = {m: k for k, m in enumerate(players)}
    i = np.array([p_of[g[0]] for g in games], dtype=np.int64)
    j = np.array([p_of[g[1]] for g in games], dtype=np.int64)
    s = np.array([g[2] for g in games], dtype=np.float64)
    value = bradley_terry.win_probability(bradley_terry.fit(i, j, s, len(players), prior, played_only=True))
    reps = bradley_terry.bootstrap(i, j, s, len(players), rounds, rng, prior, played_only=True, parametric=True)
    count = np.bincount(np.concatenate([i, j]), minlength=len(players)).astype(np.int64)
    return TaskScores(task, players, value, reps, games, count)


def quality_dimension(ids: list[str], tasks_of: dict[str, tuple[str, ...]],
                      outcomes: list[tuple[str, str, float, str, str]], external: list[tuple[str, str, float, str]],
                      rounds: int, rng: np.random.Generator, prior: float = 10.0) -> QualityScores:
    """Quality of every model, per task and overall (see the module doc)."""
    n = len(ids)
    pos = {m: i for i, m in enumerate(ids)}
    outcomes = [o for o in outcomes if o[0] in pos and o[1] in pos]
    tasks_of = with_probed_tasks(tasks_of, outcomes)
    games = probe_games(outcomes)
    for task, more in benchmark_games([e for e in external if e[0] in pos], tasks_of).items():
        games.setdefault(task, []).extend(more)
    tasks = {t: fit_task(t, g, rounds, rng, prior) for t, g in sorted(games.items()) if g}
    total = np.zeros(n)
    reps = np.zeros((rounds, n))
    k = np.zeros(n)
    count = np.zeros(n, dtype=np.int64)
    for ts in tasks.values():
        idx = np.array([pos[m] for m in ts.players], dtype=np.int64)
        total[idx] += ts.value
        reps[:, idx] += ts.reps
        k[idx] += 1
        count[idx] += ts.count
    measured = k > 0
    value = np.divide(total, k, out=np.zeros(n), where=measured)
    reps = np.divide(reps, k, out=np.zeros_like(reps), where=measured)
    reasons = None
    if not measured.all():
        reasons = [_why_not(ids[i], tasks_of) if not measured[i] else "" for i in range(n)]
    return QualityScores(DimensionScores(value, reps, count, measured, reasons), tasks, tasks_of)


def _why_not(model: str, tasks_of: dict[str, tuple[str, ...]]) -> str:
    mine = tasks_of.get(model, ())
    if not mine:
        return "no task recorded, so nothing to compare it with"
    return f"no comparable result in {', '.join(mine)} (no shared benchmark or probe with another model of its task)"


def describe_tasks(name: str, tasks: tuple[str, ...]) -> str:
    return f"{name} is {' and '.join(tasks)}" if tasks else f"no task is recorded for {name}"


@dataclass(frozen=True)
class PairQuality:
    """Quality of two models on the tasks both have: scores, paired replicates, or why not."""

    a: Score
    b: Score
    reps_a: np.ndarray
    reps_b: np.ndarray
    tasks: tuple[str, ...]  # the shared tasks both are measured in
    comparable: bool  # False: they share no task
    reason: str  # why not comparable / not measured ("" when both are measured)


def pair(q: QualityScores, a: str, b: str, name_a: str, name_b: str, shown: tuple[tuple[str, ...],
         tuple[str, ...]] | None = None) -> PairQuality:
    """Quality of ``a`` and ``b`` over the tasks they share (see the module doc); ``shown``: their tasks in the
    order the reason should list them (default: stored order)."""
    ta, tb = q.tasks_of.get(a, ()), q.tasks_of.get(b, ())
    shared = tuple(t for t in ta if t in tb)
    empty = np.zeros(0)
    if not shared:
        show_a, show_b = shown or (ta, tb)
        why = f"not comparable: {describe_tasks(name_a, show_a)}, {describe_tasks(name_b, show_b)}"
        s = Score.not_measured(why)
        return PairQuality(s, s, empty, empty, (), False, why)
    both = [t for t in shared if t in q.tasks and q.tasks[t].index(a) is not None and q.tasks[t].index(b) is not None]
    if not both:
        def missing(m: str, name: str) -> str:
            has = [t for t in shared if t in q.tasks and q.tasks[t].index(m) is not None]
            return "" if has else f"{name} has no comparable {' or '.join(shared)} result"
        parts = [x for x in (missing(a, name_a), missing(b, name_b)) if x]
        why = "not measured: " + ("; ".join(parts) if parts else
                                  f"{name_a} and {name_b} have no {' or '.join(shared)} result in common")
        return PairQuality(_score_or_none(q, a, shared, why), _score_or_none(q, b, shared, why), empty, empty,
                           tuple(shared), True, why)
    sa, ra = _over(q, a, both)
    sb, rb = _over(q, b, both)
    return PairQuality(sa, sb, ra, rb, tuple(both), True, "")


def _over(q: QualityScores, m: str, tasks: list[str]) -> tuple[Score, np.ndarray]:
    vals, reps, n = [], [], 0
    for t in tasks:
        ts = q.tasks[t]
        k = ts.index(m)
        assert k is not None
        vals.append(ts.value[k])
        reps.append(ts.reps[:, k])
        n += int(ts.count[k])
    r = np.mean(reps, axis=0)
    lo, hi = interval(r) if r.size else (float(np.mean(vals)),) * 2
    return Score(float(np.mean(vals)), lo, hi, n, True, f"within {', '.join(tasks)}"), r


def _score_or_none(q: QualityScores, m: str, shared: tuple[str, ...], why: str) -> Score:
    has = [t for t in shared if t in q.tasks and q.tasks[t].index(m) is not None]
    return _over(q, m, has)[0] if has else Score.not_measured(why)
