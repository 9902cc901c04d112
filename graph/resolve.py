"""Resolve: an intent in the user's words -> the capabilities that serve it and the models behind them.

The text is classified (``graph.intents``); each intent found is one capability group (most
confident first), holding every model with a capability that serves it, ordered by

    match = (1 - p) * strength + p * UnfragileRank / 100

(``strength``: how strongly its best capability serves the intent; ``p``: ``search_prior_weight``; a model
whose rank is not measured gets no share from it, as Rank lists it after the ranked ones).
A text with no recognisable intent is searched instead, and the capabilities of its best hits give
the groups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from graph.intent_index import IntentIndex, ModelFacts
from graph.intents import BY_ID, Intent, uri
from graph.rank import Score
from graph.search import SearchResult
from graph.shrinkage import Rate


@dataclass(frozen=True)
class ResolvedArtifact:
    model_id: str
    slug: str
    name: str
    capability: str
    match_score: float
    rank: Score
    success_rate: Rate


@dataclass(frozen=True)
class ResolveResult:
    intents: tuple[Intent, ...]  # the text's (or, when it has none, those of the capabilities its search found)
    groups: tuple[tuple[Intent, tuple[ResolvedArtifact, ...]], ...]
    snapshot: int


class Resolver:
    def __init__(self, index: IntentIndex, prior_weight: float) -> None:
        self.index = index
        self.p = prior_weight

    def resolve(self, text: str, limit: int, names: dict[str, str], model_info: Callable[[str], ModelFacts],
                rank_of: Callable[[str], Score], rate_of: Callable[[str], Rate],
                search: Callable[[str, int], SearchResult], snapshot: int) -> ResolveResult:
        intents = self.index.classify(text)
        if not intents:
            intents = self._from_search(search(text, limit * 4))
        groups = []
        for intent in intents:
            best: dict[str, tuple[float, str]] = {}
            for cap in self.index.serving(intent.id):
                s = cap.serves(intent.id)
                if s > best.get(cap.model_id, (0.0, ""))[0]:
                    best[cap.model_id] = (s, cap.title)
            arts = []
            for model_id, (strength, title) in best.items():
                rank = rank_of(model_id)
                score = (1 - self.p) * strength + self.p * (rank.value / 100.0 if rank.measured else 0.0)
                arts.append(ResolvedArtifact(model_id, model_info(model_id).slug, names.get(model_id, model_id), title,
                                             score, rank, rate_of(model_id)))
            arts.sort(key=lambda a: (-a.match_score, -(a.rank.low if a.rank.measured else -1.0), a.model_id))
            if arts:
                groups.append((intent, tuple(arts[:limit])))
        return ResolveResult(tuple(intents), tuple(groups), snapshot)

    def _from_search(self, found: SearchResult) -> list[Intent]:
        """The main intents of the capabilities the best hits matched on (every capability of a hit on its name),
        in hit order (confidence: the hit's match score)."""
        out: dict[str, Intent] = {}
        for h in found.hits:
            for cap in self.index.of_model(h.model_id):
                main = cap.intents.main
                if (cap.title == h.capability or not h.capability) and main and main not in out:
                    d = BY_ID[main]
                    out[main] = Intent(d.id, d.label, uri(d.id), h.score, 0.0, 0.0, ())
        return list(out.values())
