"""Search quality on the shipped catalogue: NDCG@5 and recall@5 of the labelled queries.

The real catalogue (graph/data/catalogue.jsonl, read by ``graph.catalogue_file`` as `unfragile graph import
catalogue` reads it) is loaded into a real MatchGraph server (its own SQLite file, gRPC on a free port) with
ImportModels; each query of benchmarks/search_eval.jsonl is sent to Search
(limit 5, no embedder: the deployment's text embedder may be a random-weight test model) and its hits are
scored against the query's graded labels (``grades``: 3, 2 or 1 per listed model, 0 for any other; the
protocol is in docs/catalogue.md, "Search evaluation labels"):

- NDCG@5 = DCG@5 / ideal DCG@5 with graded gains, DCG = sum over ranks r of (2^grade_r - 1) / log2(r + 1),
  the ideal taking the labelled grades best first;
- recall@5 = relevant models (grade 2 or 3; a query whose listed models are all grade 1: those) in the
  top 5 / min(5, relevant models).

The queries are split once, by a hash of their text, into a tuning half (the one the intent lexicon and
the weights were adjusted on) and a held-out half; both halves' numbers are reported beside the whole set's,
and the targets (NDCG@5 >= 0.8, recall@5 >= 0.9) apply to the whole set and to the held-out half.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Result
from graph import catalogue_file

PREFIX = "graph.truth.search"
ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "graph" / "data" / "catalogue.jsonl"
EVAL = Path(__file__).resolve().parent / "search_eval.jsonl"
K = 5


def half(query: str) -> str:
    """"tune" or "held-out", fixed by the query's text."""
    return "tune" if hashlib.sha256(query.encode()).digest()[0] % 2 == 0 else "held-out"


def ndcg(ranked: list[str], grades: dict[str, int], k: int = K) -> float:
    """Graded NDCG@k: exponential gains 2^grade - 1, unlisted models grade 0."""
    dcg = sum((2 ** grades.get(m, 0) - 1) / math.log2(r + 2) for r, m in enumerate(ranked[:k]))
    best = sorted(grades.values(), reverse=True)[:k]
    ideal = sum((2 ** g - 1) / math.log2(r + 2) for r, g in enumerate(best))
    return dcg / ideal if ideal else 0.0


def relevant(grades: dict[str, int]) -> set[str]:
    """The models recall counts: grade 2 or 3, or every listed one when none is."""
    return {m for m, g in grades.items() if g >= 2} or set(grades)


def recall(ranked: list[str], relevant: set[str], k: int = K) -> float:
    return len(set(ranked[:k]) & relevant) / min(k, len(relevant)) if relevant else 0.0


def evaluate(search: Any, rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{"all" | "tune" | "held-out": {"ndcg": mean NDCG@5, "recall": mean recall@5, "n": queries}}."""
    scores: dict[str, list[tuple[float, float]]] = {"all": [], "tune": [], "held-out": []}
    for row in rows:
        ranked = search(row["query"])
        grades = dict(zip(row["relevant"], row.get("grades") or [1] * len(row["relevant"]), strict=True))
        pair = (ndcg(ranked, grades), recall(ranked, relevant(grades)))
        scores["all"].append(pair)
        scores[half(row["query"])].append(pair)
    return {k: {"ndcg": sum(p[0] for p in v) / len(v), "recall": sum(p[1] for p in v) / len(v), "n": len(v)}
            for k, v in scores.items() if v}


def run() -> list[Result]:
    import grpc

    from services.core.server import start_server
    from services.matchgraph.app import Settings, build_service
    from services.matchgraph.types import record_to_pb
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    records = catalogue_file.load(CATALOGUE)
    rows = [json.loads(x) for x in EVAL.read_text().splitlines() if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(port=0, metrics_port=-1, db_url=f"sqlite:///{tmp}/search.db", bootstrap_rounds=20,
                            graph_bootstrap_rounds=5, log_level="WARNING")
        server = start_server(settings, build_service(settings))
        try:
            with grpc.insecure_channel(server.address) as ch:
                stub = pb_grpc.MatchGraphStub(ch)
                stub.ImportModels(iter([pb.ImportModelsRequest(models=[record_to_pb(r) for r in records])]))
                got = evaluate(lambda q: [h.model_id for h in stub.Search(pb.SearchRequest(query=q, limit=K)).hits],
                               rows)
        finally:
            server.stop(0)
    notes = (f"{len(rows)} labelled queries over {len(records)} catalogue models; " + "; ".join(
        f"{k} half ({v['n']:.0f} queries): NDCG@5 {v['ndcg']:.3f}, recall@5 {v['recall']:.3f}"
        for k, v in got.items() if k != "all"))
    out = []
    for part, suffix in (("all", ""), ("held-out", "_heldout")):
        v = got[part]
        what = "all queries" if part == "all" else "the held-out half"
        out += [Result(f"{PREFIX}_ndcg5{suffix}", v["ndcg"], 0.8, "higher", "NDCG@5", "absolute",
                       f"mean over {what}; {notes}"),
                Result(f"{PREFIX}_recall5{suffix}", v["recall"], 0.9, "higher", "recall@5", "absolute",
                       f"mean over {what}; {notes}")]
    return out


if __name__ == "__main__":
    for r in run():
        print(f"{r.name} = {r.value:.4f} (target {r.target}, {'met' if r.met else 'NOT met'})")
    print(run.__doc__ or "")
