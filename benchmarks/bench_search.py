"""Search quality on the shipped catalogue: NDCG@5 and recall@5 of the labelled queries.

The real catalogue (graph/data/catalogue.jsonl) is loaded into a real MatchGraph server (its own SQLite
file, gRPC on a free port) with UpsertModel; each query of benchmarks/search_eval.jsonl is sent to Search
(limit 5, no embedder: the deployment's text embedder may be a random-weight test model) and its hits are
scored against the query's labelled relevant models (binary relevance):

- NDCG@5 = DCG@5 / ideal DCG@5, DCG = sum over ranks r of rel_r / log2(r + 1);
- recall@5 = relevant models in the top 5 / min(5, relevant models).

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
from graph.records import Capability, ModelRecord, Pricing, Signal

PREFIX = "graph.truth.search"
ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "graph" / "data" / "catalogue.jsonl"
EVAL = Path(__file__).resolve().parent / "search_eval.jsonl"
K = 5
TIERS = {"open_source": "free", "free": "free", "freemium": "freemium", "usage": "paid", "paid": "paid"}


def half(query: str) -> str:
    """"tune" or "held-out", fixed by the query's text."""
    return "tune" if hashlib.sha256(query.encode()).digest()[0] % 2 == 0 else "held-out"


def ndcg(ranked: list[str], relevant: set[str], k: int = K) -> float:
    dcg = sum(1 / math.log2(r + 2) for r, m in enumerate(ranked[:k]) if m in relevant)
    ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0


def recall(ranked: list[str], relevant: set[str], k: int = K) -> float:
    return len(set(ranked[:k]) & relevant) / min(k, len(relevant)) if relevant else 0.0


def record(d: dict[str, Any]) -> ModelRecord:
    """A catalogue line as a record: what search reads (names, capabilities, the licence as the Hub's
    ``license:<id>`` tag) and what ranks it (readings)."""
    price = d.get("pricing") or {}
    signals = [Signal(s["kind"], float(s["value"]), s["source"], s["observed_at"])
               for s in d.get("adoption", [])]
    eco = [Signal(s["kind"], float(s["value"]), s["source"], s["observed_at"]) for s in d.get("ecosystem", [])]
    caps = tuple(Capability(c["name"], c["description"], intents=tuple(c.get("intents", ())),
                            best_for=tuple(c.get("best_for", ())), limitations=tuple(c.get("limitations", ())),
                            input_types=tuple(c.get("input_types", ())), output_types=tuple(c.get("output_types", ())))
                 for c in d.get("capabilities", []))
    model = price.get("model") or ""
    licence = ((d.get("facts") or {}).get("licence") or {}).get("value")
    tags = tuple(dict.fromkeys((*d.get("tags", ()), *((f"license:{licence}",) if licence else ()))))
    start = price.get("starting_price")  # a number, or the page's words ("$8.00e-8 per prompt token"): not a price
    start = float(start) if isinstance(start, int | float) and not isinstance(start, bool) else None
    return ModelRecord(
        id=d["id"], name=d["name"], type=d.get("type", "model"), aliases=tuple(d.get("aliases", ())),
        pricing=Pricing(TIERS.get(model, "unknown"), model=model, starting_price=start),
        adoption=tuple(dict.fromkeys(signals)), ecosystem=tuple(dict.fromkeys(eco)),
        serving_endpoint=d.get("serving_endpoint") or "", capabilities=caps, slug=d.get("slug") or "",
        url=d.get("url") or "", pipeline_tag=d.get("pipeline_tag") or "", tags=tags)


def evaluate(search: Any, rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{"all" | "tune" | "held-out": {"ndcg": mean NDCG@5, "recall": mean recall@5, "n": queries}}."""
    scores: dict[str, list[tuple[float, float]]] = {"all": [], "tune": [], "held-out": []}
    for row in rows:
        ranked = search(row["query"])
        rel = set(row["relevant"])
        pair = (ndcg(ranked, rel), recall(ranked, rel))
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

    lines = [json.loads(x) for x in CATALOGUE.read_text().splitlines() if x.strip()]
    rows = [json.loads(x) for x in EVAL.read_text().splitlines() if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(port=0, metrics_port=-1, db_url=f"sqlite:///{tmp}/search.db", bootstrap_rounds=20,
                            graph_bootstrap_rounds=5, log_level="WARNING")
        server = start_server(settings, build_service(settings))
        try:
            with grpc.insecure_channel(server.address) as ch:
                stub = pb_grpc.MatchGraphStub(ch)
                for d in lines:
                    stub.UpsertModel(pb.UpsertModelRequest(model=record_to_pb(record(d))))
                got = evaluate(lambda q: [h.model_id for h in stub.Search(pb.SearchRequest(query=q, limit=K)).hits],
                               rows)
        finally:
            server.stop(0)
    notes = (f"{len(rows)} labelled queries over {len(lines)} catalogue models; " + "; ".join(
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
