"""Free-text search that matches intents: the query's intent meets the capabilities that serve it, fused with
full text (SQLite FTS5 BM25 or PostgreSQL ts_rank_cd) and, when configured, embedding similarity.

Every model gets a ``match_score`` on 0..1:

    match = (1 - p) * (a * c * intent + (1 - a * c) * text) + p * prior

- ``intent``: the query's intents (``graph.intents``, shares summing to 1) against each of the model's
  capabilities, ``sum_i share_i * strength_c,i``, at its best capability;
- ``c``: how clearly the query expresses any intent at all (``graph.intents.clarity``), so a query with
  no recognisable intent is matched on its text alone and a vague one leans on its text;
- ``text``: the model's best search document's full-text score relative to the best document's (1 for
  the best), averaged with its relative embedding similarity when the embedder answers;
- ``prior``: the model's UnfragileRank / 100 (0 when not measured), a small share ``p`` that orders models which match
  equally well (e.g. two captioners for "caption an image");
- ``a``: the weight of the intent part (``search_intent_weight``).

Stop words never decide a result: full text drops them, the embedder sees the query without them, and
an intent cue counts only where it matched a word that is not a stop word. A query of stop words
alone matches nothing. A model that serves none of the query's intents is a hit only on a text score
of at least ``MIN_TEXT``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from graph.intent_index import IndexedCapability, IntentIndex, ModelFacts
from graph.intents import Intent, clarity
from graph.query_facets import facets as query_facets
from graph.store import Store, search_words

log = logging.getLogger(__name__)
MIN_TEXT = 0.05  # a model that serves none of the query's intents needs at least this text score to be a hit
LICENCE_WEIGHT = 0.4  # a query naming a licence: models without it keep 1 - LICENCE_WEIGHT of their score
POPULAR_WEIGHT = 0.5  # "most downloaded": a model keeps 1 - w + w * sqrt(its downloads / the most among the hits)


class Embedder(Protocol):
    """Turns texts into vectors (one row per text). Raise any exception when unavailable."""

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class SearchHit:
    model_id: str
    name: str
    capability: str  # best matching capability title ("" = the model's own document)
    score: float  # = match_score
    fts_rank: int  # 1-based; 0 = not in the full-text list
    embedding_rank: int  # 1-based; 0 = not used or not in the list
    snippet: str
    slug: str = ""
    model_type: str = ""
    intent: str = ""  # id of the query intent its best capability serves ("" = text only)
    intent_score: float = 0.0
    text_score: float = 0.0
    capability_uri: str = ""


@dataclass(frozen=True)
class SearchResult:
    hits: tuple[SearchHit, ...]
    embeddings_used: bool
    degraded_reason: str
    intents: tuple[Intent, ...] = ()  # the query's, most confident first


@dataclass
class _Candidate:
    text: float = 0.0
    fts_rank: int = 0
    emb_rank: int = 0
    capability: str = ""
    snippet: str = ""
    intent: float = 0.0
    intent_id: str = ""
    intent_capability: str = ""
    uri: str = ""


@dataclass(frozen=True)
class SearchWeights:
    intent: float = 0.8  # a
    prior: float = 0.05  # p
    primary: float = 0.0  # a model's k-th capability (0-based) counts 1 / (1 + primary * k): the first is its main
    focus: float = 0.25  # share of the intent score that depends on how many of its capabilities serve the query


class Searcher:
    """Search over the store's documents and the intent index; document embeddings are cached by (id, text)."""

    def __init__(self, store: Store, embedder: Embedder | None, index: IntentIndex,
                 weights: SearchWeights | None = None, fts_candidates: int = 200, embed_max_docs: int = 5000) -> None:
        self.store = store
        self.embedder = embedder
        self.index = index
        self.weights = weights or SearchWeights()
        self.fts_candidates = fts_candidates
        self.embed_max_docs = embed_max_docs
        self._doc_vecs: dict[tuple[int, str], np.ndarray] = {}

    def search(self, query: str, limit: int, names: dict[str, str], model_info: Callable[[str], ModelFacts],
               prior: Callable[[str], float], type_filter: str = "") -> SearchResult:
        """Best ``limit`` models for ``query``; ``prior(id)`` -> 0..1 (UnfragileRank / 100)."""
        words = search_words(query)
        intents = self.index.classify(query)
        cands: dict[str, _Candidate] = {}
        self._text_part(query, cands)
        used, reason, emb_ranks = self._embedding_part(" ".join(words), cands)
        self._intent_part(intents, cands)
        a = self.weights.intent * clarity(intents)
        p = self.weights.prior
        facts = {m: model_info(m) for m, c in cands.items() if c.intent > 0 or c.text >= MIN_TEXT}
        facts = {m: f for m, f in facts.items() if not type_filter or f.type == type_filter}
        want = query_facets(query)
        top_downloads = max((f.downloads for f in facts.values()), default=0.0)
        scored = []
        for m, f in facts.items():
            c = cands[m]
            score = (1 - p) * (a * c.intent + (1 - a) * c.text) + p * prior(m)
            if want.licences:
                score *= 1 - LICENCE_WEIGHT + LICENCE_WEIGHT * float(bool(f.licences & want.licences))
            if want.popular and top_downloads > 0:
                score *= 1 - POPULAR_WEIGHT + POPULAR_WEIGHT * math.sqrt(f.downloads / top_downloads)
            scored.append((score, m, c, f))
        scored.sort(key=lambda t: (-t[0], -t[2].intent, -t[2].text, t[1]))
        hits = tuple(SearchHit(
            m, names.get(m, m), c.intent_capability or c.capability, score, c.fts_rank, emb_ranks.get(m, 0),
            c.snippet, f.slug, f.type, c.intent_id, c.intent, c.text, c.uri)
            for score, m, c, f in scored[:limit])
        return SearchResult(hits, used, reason, tuple(intents))

    def _text_part(self, query: str, cands: dict[str, _Candidate]) -> None:
        """Full text: each model's best document, its score relative to the best document's."""
        best_score = 0.0
        for model_id, capability, score, snippet in self.store.search_fts(query, self.fts_candidates):
            if model_id in cands:
                continue
            best_score = best_score or score
            rel = score / best_score if best_score else 0.0  # both "lower is better" negatives
            cands[model_id] = _Candidate(text=max(0.0, min(1.0, rel)), fts_rank=len(cands) + 1,
                                         capability=capability, snippet=snippet)

    def _embedding_part(self, text: str, cands: dict[str, _Candidate]) -> tuple[bool, str, dict[str, int]]:
        if self.embedder is None:
            return False, "no VisionLanguage target configured: full text only", {}
        if not text:
            return True, "", {}
        try:
            ranked = self._embedding_ranking(text, set(cands))
        except Exception as exc:
            reason = f"embedding service unavailable ({type(exc).__name__}: {str(exc)[:120]}): full text only"
            log.warning("search degraded to full text: %s", reason)
            return False, reason, {}
        top = max((s for s, _m, _c in ranked), default=0.0)
        ranks = {}
        for r, (sim, model_id, capability) in enumerate(ranked, start=1):
            ranks[model_id] = r
            c = cands.get(model_id)
            emb = max(0.0, sim) / top if top > 0 else 0.0
            if c is None:
                cands[model_id] = _Candidate(text=emb / 2, capability=capability)
            else:
                c.text = (c.text + emb) / 2
        return True, "", ranks

    def _intent_part(self, intents: list[Intent], cands: dict[str, _Candidate]) -> None:
        """Each model's best capability for the query's intents (see the module docstring)."""
        per_cap: dict[tuple[str, int], dict[str, float]] = {}
        caps: dict[tuple[str, int], IndexedCapability] = {}
        for i in intents:
            for cap in self.index.serving(i.id):
                key = (cap.model_id, cap.position)
                caps[key] = cap
                per_cap.setdefault(key, {})[i.id] = i.share * cap.serves(i.id)
        serving: dict[str, int] = {}
        for model_id, _pos in per_cap:
            serving[model_id] = serving.get(model_id, 0) + 1
        for key in sorted(per_cap):
            parts = per_cap[key]
            cap = caps[key]
            focus = serving[key[0]] / max(1, cap.of_capabilities)
            w = self.weights
            score = min(1.0, sum(parts.values())) / (1 + w.primary * key[1]) * (1 - w.focus + w.focus * focus)
            c = cands.setdefault(key[0], _Candidate())
            if score > c.intent:
                c.intent, c.intent_capability, c.uri = score, cap.title, cap.uri
                c.intent_id = max(parts, key=lambda k: (parts[k], k))

    def _embedding_ranking(self, text: str, fts_models: set[str]) -> list[tuple[float, str, str]]:
        """(similarity, model_id, capability) of each model's most similar document, best first."""
        assert self.embedder is not None
        docs = self.store.search_docs()
        if len(docs) > self.embed_max_docs:  # large catalogues: re-rank the full-text candidates only
            docs = [d for d in docs if d[1] in fts_models]
        missing = [d for d in docs if (d[0], d[3] + "\n" + d[4]) not in self._doc_vecs]
        for start in range(0, len(missing), 64):
            chunk = missing[start:start + 64]
            vecs = self.embedder.embed_texts([f"{d[3]}. {d[4]}"[:1000] for d in chunk])
            for d, v in zip(chunk, vecs):
                self._doc_vecs[(d[0], d[3] + "\n" + d[4])] = _unit(np.asarray(v, dtype=np.float64))
        q = _unit(np.asarray(self.embedder.embed_texts([text])[0], dtype=np.float64))
        scored = sorted(((float(self._doc_vecs[(d[0], d[3] + "\n" + d[4])] @ q), d[1], d[2]) for d in docs),
                        key=lambda t: (-t[0], t[1]))
        out: list[tuple[float, str, str]] = []
        seen: set[str] = set()
        for sim, model_id, capability in scored:
            if model_id not in seen:
                seen.add(model_id)
                out.append((sim, model_id, capability))
        return out


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v
