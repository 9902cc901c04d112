"""What a search asks for: the intent taxonomy, its synonym table, and the rule-based classifier.

A query (or a capability's declared intent, or its title) is classified by the cues of
``graph.intent_lexicon.CUES``: regular expressions over the lower-cased text, each with a weight. An intent's
evidence ``s`` is the sum of the weights of its distinct cues found in the text; its
``share`` is ``s`` over all intents' evidence, and its ``confidence`` is
``share * (1 - exp(-s))``: one strong cue (weight 1.5) alone gives 0.78, a weak one (0.5)
0.39, and two intents found equally strongly split the share. A cue counts only where the
text it matched holds a word that is not a stop word (``graph.store.rows.STOP_WORDS``), so
stop words never decide an intent. The same classifier reads the catalogue's capabilities
(their declared ``intents`` and title), so a query meets the capabilities that serve it
whatever words either uses.

No model is involved: MatchGraph runs without torch, and the deployment's only text
embedder (the VisionLanguage service) may be a random-weight test model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from graph.intent_lexicon import CUES, TAXONOMY
from graph.store.rows import STOP_WORDS

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Intent:
    """An intent found in a text, with how clearly the text expresses it."""

    id: str
    label: str
    uri: str
    confidence: float  # 0..1
    share: float  # this intent's part of the text's intent evidence (sums to 1 over the intents found)
    evidence: float  # sum of the weights of its cues found
    cues: tuple[str, ...]  # the text each cue matched


BY_ID = {d.id: d for d in TAXONOMY}
_COMPILED = {k: tuple((re.compile(rf"\b{p}\b"), w) for p, w in v) for k, v in CUES.items()}
MIN_SHARE = 0.15  # intents with less of the evidence than this are dropped as noise


def _has_content(text: str) -> bool:
    return any(w not in STOP_WORDS for w in _WORD.findall(text))


def classify(text: str) -> list[Intent]:
    """The intents ``text`` expresses, most confident first (empty: none recognised)."""
    low = " ".join(text.lower().replace("_", " ").split())
    found: dict[str, tuple[float, list[str]]] = {}
    for intent_id, cues in _COMPILED.items():
        weight, hits = 0.0, []
        for rx, w in cues:
            m = rx.search(low)
            if m is not None and _has_content(m.group(0)):
                weight += w
                hits.append(m.group(0))
        if weight > 0:
            found[intent_id] = (weight, hits)
    total = sum(w for w, _h in found.values())
    out = []
    for intent_id, (weight, hits) in found.items():
        share = weight / total
        if share < MIN_SHARE:
            continue
        d = BY_ID[intent_id]
        out.append(Intent(d.id, d.label, uri(d.id), share * (1.0 - math.exp(-weight)), share, weight, tuple(hits)))
    norm = sum(i.share for i in out) or 1.0
    out = [Intent(i.id, i.label, i.uri, i.confidence, i.share / norm, i.evidence, i.cues) for i in out]
    return sorted(out, key=lambda i: (-i.confidence, i.id))


def clarity(intents: list[Intent]) -> float:
    """0..1: how clearly a text expresses any intent at all (1 - exp(-total evidence))."""
    return 1.0 - math.exp(-sum(i.evidence for i in intents))


def uri(intent_id: str) -> str:
    """capability://<category> of a taxonomy intent."""
    return f"capability://{BY_ID[intent_id].category}"


def capability_uri(main_intent: str, title: str) -> str:
    """capability://<category of its main intent>.<words of its title>, as the real catalogue service forms them
    (``uncategorised`` when no intent of the taxonomy is recognised)."""
    base = BY_ID[main_intent].category if main_intent else "uncategorised"
    words = _WORD.findall(title.lower().replace("_", " "))
    return f"capability://{base}" + "".join(f".{w}" for w in words)


@dataclass(frozen=True)
class CapabilityIntents:
    """The taxonomy intents one capability serves, from its declared intents (else its title)."""

    strength: dict[str, float]  # intent id -> 0..1 (the largest share it has in any of the texts)
    confidence: float  # 0..1: the best confidence of any of them (0 = none recognised)
    intents: tuple[Intent, ...]  # strongest first

    @property
    def main(self) -> str:
        """The id of its strongest intent ("" = none)."""
        return self.intents[0].id if self.intents else ""


def capability_intents(title: str, declared: tuple[str, ...]) -> CapabilityIntents:
    """Classify each declared intent (the title when it declares none); an intent counts at its strongest."""
    best: dict[str, Intent] = {}
    for text in declared or (title,):
        for i in classify(text):
            old = best.get(i.id)
            if old is None or (i.share, i.confidence) > (old.share, old.confidence):
                best[i.id] = i
    ordered = tuple(sorted(best.values(), key=lambda i: (-i.share, -i.confidence, i.id)))
    return CapabilityIntents({i.id: i.share for i in ordered}, max((i.confidence for i in ordered), default=0.0),
                             ordered)
