"""GetPassport: a model's record and scores with what the match graph observed per capability.

The searches that matched the model (its most recent ``passport_scan_events``) are read with the
outcome reported on each. A search's query is classified (``graph.intents``); its most confident
intent attributes it to the model's capability that serves that intent most strongly (none: the
search counts for the model only). Per capability that gives ``matches`` and, from the outcomes
credited to the model on those searches, a success rate shrunk toward its Beta prior
(``feedback_prior``, ``feedback_strength``). The model's own success rate counts every outcome
credited to it (``Store.feedback_counts``), not only the scanned ones. A rate with no outcome behind
it is *not measured* (``trials = 0``), never 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from graph.catalogue import Catalogue
from graph.config import EngineConfig
from graph.intent_index import IndexedCapability, IntentIndex
from graph.intents import Intent, capability_intents
from graph.rank import ScoreCard
from graph.records import ModelRecord
from graph.scoring import Scorer
from graph.shrinkage import Rate, beta_rate
from graph.store import Store

TOP_INTENTS = 5


@dataclass(frozen=True)
class CapabilityOutcomes:
    position: int
    uri: str  # capability://<category of its main intent>.<words of its title>
    intents: tuple[Intent, ...]
    confidence: float
    confidence_measured: bool
    matches: int
    success_rate: Rate


@dataclass(frozen=True)
class Outcomes:
    matches: int  # every event that matched the model
    scanned: int
    success_rate: Rate
    avg_confidence: float
    classified: int  # scanned events with a recognised intent (0: avg_confidence not measured)
    top_intents: tuple[tuple[Intent, int], ...]


@dataclass(frozen=True)
class Passport:
    record: ModelRecord
    card: ScoreCard
    capabilities: tuple[CapabilityOutcomes, ...]
    outcomes: Outcomes
    snapshot: int


class Passports:
    """Builds passports from the store, the scores and the intent index."""

    def __init__(self, store: Store, catalogue: Catalogue, scorer: Scorer, index: IntentIndex,
                 config: EngineConfig) -> None:
        self.store = store
        self.catalogue = catalogue
        self.scorer = scorer
        self.index = index
        self.config = config

    def rate(self, successes: int, trials: int) -> Rate:
        return beta_rate(successes, trials, self.config.feedback_prior, self.config.feedback_strength)

    def get(self, name: str) -> Passport:
        model_id = self.catalogue.resolve(name)
        st = self.scorer.state()
        card = self.scorer.scorecard(st, self.catalogue.pos[model_id])
        record = self.catalogue.record_of(model_id)
        caps = self.index.of_model(model_id) or [
            IndexedCapability(model_id, i, c.title, capability_intents(c.title, c.intents), len(record.capabilities))
            for i, c in enumerate(record.capabilities)]
        rows = self.store.outcomes_with(model_id, self.config.passport_scan_events)
        matches: Counter[int] = Counter()
        wins: Counter[int] = Counter()
        trials: Counter[int] = Counter()
        intents: Counter[str] = Counter()
        best_of: dict[str, Intent] = {}
        confidences: list[float] = []
        for _event_id, query, outcome, credited in rows:
            found = self.index.classify(query)
            if not found:
                continue
            top = found[0]
            intents[top.id] += 1
            best_of.setdefault(top.id, top)
            confidences.append(top.confidence)
            serving = [(c.serves(top.id), -c.position, c.position) for c in caps if c.serves(top.id) > 0]
            if not serving:
                continue
            pos = max(serving)[2]
            matches[pos] += 1
            if outcome and model_id in credited.split():
                trials[pos] += 1
                wins[pos] += outcome == "success"
        out_caps = tuple(CapabilityOutcomes(
            c.position, c.uri, c.intents.intents, c.intents.confidence,
            bool(c.intents.intents), matches[c.position], self.rate(wins[c.position], trials[c.position]))
            for c in caps)
        s, n = self.store.feedback_counts().get(model_id, (0, 0))
        ranked = sorted(intents.items(), key=lambda t: (-t[1], t[0]))[:TOP_INTENTS]
        avg = sum(confidences) / len(confidences) if confidences else 0.0
        outcomes = Outcomes(card.times_matched, len(rows), self.rate(s, n), avg, len(confidences),
                            tuple((best_of[i], k) for i, k in ranked))
        return Passport(record, card, out_caps, outcomes, st.snapshot)
