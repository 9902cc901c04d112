"""Free-text search: full text (SQLite FTS5 BM25, or PostgreSQL ts_rank_cd) fused with embedding
similarity by reciprocal rank fusion.

Two rankings of the catalogue's search documents (one per model name, one per
capability) are made: the store's full-text ranking (stop words dropped), and cosine similarity between the query's
embedding and each document's embedding from the VisionLanguage service's ``Embed``.
Each is reduced to one rank per model (its best document), and the model lists are fused
with RRF, score = sum 1 / (k + rank) (Cormack et al. 2009; k = 60). When the embedder is
not configured or fails, search answers from FTS alone and says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from graph.store import Store

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Turns texts into vectors (one row per text). Raise any exception when unavailable."""

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class SearchHit:
    model_id: str
    name: str
    capability: str
    score: float
    fts_rank: int  # 1-based; 0 = not in the FTS list
    embedding_rank: int  # 1-based; 0 = not used or not in the list
    snippet: str


@dataclass(frozen=True)
class SearchResult:
    hits: tuple[SearchHit, ...]
    embeddings_used: bool
    degraded_reason: str


def rrf(rankings: list[list[str]], k: int = 60) -> dict[str, float]:
    """Reciprocal rank fusion of ranked key lists."""
    out: dict[str, float] = {}
    for ranking in rankings:
        for r, key in enumerate(ranking, start=1):
            out[key] = out.get(key, 0.0) + 1.0 / (k + r)
    return out


class Searcher:
    """Search over the store's documents; embeddings of documents are cached by (id, text)."""

    def __init__(self, store: Store, embedder: Embedder | None, rrf_k: int = 60, fts_candidates: int = 200,
                 embed_max_docs: int = 5000) -> None:
        self.store = store
        self.embedder = embedder
        self.rrf_k = rrf_k
        self.fts_candidates = fts_candidates
        self.embed_max_docs = embed_max_docs
        self._doc_vecs: dict[tuple[int, str], np.ndarray] = {}

    def search(self, query: str, limit: int, names: dict[str, str]) -> SearchResult:
        fts = self.store.search_fts(query, self.fts_candidates)
        fts_models: list[str] = []
        best_doc: dict[str, tuple[str, str]] = {}
        for model_id, capability, _bm25, snippet in fts:
            if model_id not in best_doc:
                best_doc[model_id] = (capability, snippet)
                fts_models.append(model_id)
        emb_models: list[str] = []
        used, reason = False, ""
        if self.embedder is None:
            reason = "no VisionLanguage target configured: FTS5 only"
        else:
            try:
                emb_models, emb_best = self._embedding_ranking(query, set(fts_models))
                used = True
                for m, cap in emb_best.items():
                    best_doc.setdefault(m, (cap, ""))
            except Exception as exc:
                reason = f"embedding service unavailable ({type(exc).__name__}: {str(exc)[:120]}): FTS5 only"
                log.warning("search degraded to FTS5: %s", reason)
        fused = rrf([fts_models, emb_models], self.rrf_k)
        fts_rank = {m: i for i, m in enumerate(fts_models, start=1)}
        emb_rank = {m: i for i, m in enumerate(emb_models, start=1)}
        order = sorted(fused, key=lambda m: (-fused[m], m))[:limit]
        hits = tuple(SearchHit(m, names.get(m, m), best_doc.get(m, ("", ""))[0], fused[m], fts_rank.get(m, 0),
                               emb_rank.get(m, 0), best_doc.get(m, ("", ""))[1]) for m in order)
        return SearchResult(hits, used, reason)

    def _embedding_ranking(self, query: str, fts_models: set[str]) -> tuple[list[str], dict[str, str]]:
        assert self.embedder is not None
        docs = self.store.search_docs()
        if len(docs) > self.embed_max_docs:  # large catalogues: re-rank the FTS candidates only
            docs = [d for d in docs if d[1] in fts_models]
        missing = [d for d in docs if (d[0], d[3] + "\n" + d[4]) not in self._doc_vecs]
        for start in range(0, len(missing), 64):
            chunk = missing[start:start + 64]
            vecs = self.embedder.embed_texts([f"{d[3]}. {d[4]}"[:1000] for d in chunk])
            for d, v in zip(chunk, vecs):
                self._doc_vecs[(d[0], d[3] + "\n" + d[4])] = _unit(np.asarray(v, dtype=np.float64))
        q = _unit(np.asarray(self.embedder.embed_texts([query])[0], dtype=np.float64))
        scored = sorted(((float(self._doc_vecs[(d[0], d[3] + "\n" + d[4])] @ q), d[0], d[1], d[2]) for d in docs),
                        key=lambda t: (-t[0], t[1]))
        models: list[str] = []
        best: dict[str, str] = {}
        for _s, _doc_id, model_id, capability in scored:
            if model_id not in best:
                best[model_id] = capability
                models.append(model_id)
        return models, best


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v
