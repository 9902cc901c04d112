"""``unfragile graph ...``: client commands talking gRPC to a running MatchGraph server, and
``migrate``, which copies a MatchGraph database between backends (SQLite -> PostgreSQL)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from services.matchgraph.cli_common import DEFAULT_TARGET as DEFAULT_TARGET
from services.matchgraph.cli_common import TargetOpt
from services.matchgraph.cli_common import fail as _fail
from services.matchgraph.cli_common import reads as _stub
from services.matchgraph.cli_common import write as _write
from services.matchgraph.cli_import import import_app

graph_app = typer.Typer(help="MatchGraph client: seed, compare, rank, search, record events, run probes; "
                        "migrate copies a database between backends.",
                        no_args_is_help=True)
graph_app.add_typer(import_app, name="import")


@graph_app.command("seed")
def seed(target: str = TargetOpt) -> None:
    """Upsert the two models of the seed page (kosmos-2-patch14-224, Stable Diffusion)."""
    from graph.seed_data import SEED_MODELS
    from services.matchgraph.types import record_to_pb
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    try:
        for m in SEED_MODELS:
            request = pb.UpsertModelRequest(model=record_to_pb(m))
            r = _write(target, lambda stub, request=request: stub.UpsertModel(request, timeout=30))
            verb = "created" if r.created else "updated"
            typer.echo(f"{verb} {r.model.id} ({len(r.model.capabilities)} capabilities)")
    except Exception as exc:
        _fail(exc)


@graph_app.command("compare")
def compare(a: str, b: str, target: str = TargetOpt,
            fmt: str = typer.Option("markdown", "--format", help="markdown | html | json")) -> None:
    """Print the comparison page of A vs B from a real Compare call."""
    from google.protobuf import json_format

    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    try:
        r = _stub(target).Compare(pb.CompareRequest(a=a, b=b), timeout=60)
    except Exception as exc:
        _fail(exc)
        return
    if fmt == "html":
        typer.echo(r.html)
    elif fmt == "json":
        typer.echo(json_format.MessageToJson(r))
    else:
        typer.echo(r.markdown)


@graph_app.command("get")
def get(model: str, target: str = TargetOpt, explain: bool = typer.Option(False, help="include evidence rows")) -> None:
    """Show one model's scores (and with --explain the evidence behind each)."""
    from google.protobuf import json_format

    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    try:
        r = _stub(target).GetModel(pb.GetModelRequest(model=model, explain=explain), timeout=60)
    except Exception as exc:
        _fail(exc)
        return
    typer.echo(json_format.MessageToJson(r))


@graph_app.command("rank")
def rank(target: str = TargetOpt, capability: str = typer.Option("", help="filter by capability text"),
         limit: int = typer.Option(20)) -> None:
    """List models by the lower bound of their UnfragileRank interval."""
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    try:
        r = _stub(target).Rank(pb.RankRequest(capability=capability, limit=limit), timeout=60)
    except Exception as exc:
        _fail(exc)
        return
    for m in r.models:
        s = m.scores.rank
        score = f"{s.value:5.1f}/100  (95% {s.low:.1f}–{s.high:.1f})" if s.measured else \
            f"not measured ({s.not_measured_reason})"
        typer.echo(f"{m.position:3d}. {m.name:40s} {score}")


@graph_app.command("search")
def search(query: str, target: str = TargetOpt, limit: int = typer.Option(10)) -> None:
    """Free-text search over models and capabilities."""
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    try:
        r = _stub(target).Search(pb.SearchRequest(query=query, limit=limit), timeout=60)
    except Exception as exc:
        _fail(exc)
        return
    if not r.embeddings_used:
        typer.echo(f"(degraded: {r.degraded_reason})", err=True)
    for h in r.hits:
        typer.echo(f"{h.score:.4f}  {h.name:30s} {h.capability}")


@graph_app.command("snapshot")
def snapshot(target: str = TargetOpt) -> None:
    """What the server answers from: role, snapshot version, graph version, lag (GetSnapshot)."""
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    try:
        s = _stub(target).GetSnapshot(pb.GetSnapshotRequest(), timeout=10)
    except Exception as exc:
        _fail(exc)
        return
    typer.echo(f"role {s.role}, snapshot {s.snapshot_version}, graph version {s.graph_version} "
               f"(store {s.store_graph_version}), lag {s.lag_events} events / {s.lag_seconds:.1f} s"
               + (f", STALE (bound {s.max_staleness_s:g} s)" if s.stale else "")
               + (f", writer {s.writer_address}" if s.writer_address else "")
               + (f", leader {s.leader_address} (term {s.term})" if s.leader_address else ""))


@graph_app.command("record")
def record(events_file: Path = typer.Argument(..., help="JSON lines: {event_id, query, matched, compared, clicked}"),
           target: str = TargetOpt, batch: int = typer.Option(5000)) -> None:
    """Stream match events from a JSON-lines file (``-`` = stdin) with RecordMatches."""
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    def batches() -> Iterator[pb.RecordMatchesRequest]:
        src = sys.stdin if str(events_file) == "-" else events_file.open()
        buf: list[pb.MatchEvent] = []
        for line in src:
            if line.strip():
                d = json.loads(line)
                buf.append(pb.MatchEvent(event_id=str(d["event_id"]), query=d["query"], matched=d["matched"],
                                         compared=d.get("compared", []), clicked=d.get("clicked", []),
                                         timestamp_ms=int(d.get("timestamp_ms", 0))))
                if len(buf) >= batch:
                    yield pb.RecordMatchesRequest(events=buf)
                    buf = []
        if buf:
            yield pb.RecordMatchesRequest(events=buf)

    try:
        if "," in target:  # several writers: the messages are kept, so a takeover is retried on the new leader
            messages = list(batches())
            r = _write(target, lambda stub: stub.RecordMatches(iter(messages), timeout=600))
        else:  # streamed as read
            r = _write(target, lambda stub: stub.RecordMatches(batches(), timeout=600))
    except Exception as exc:
        _fail(exc)
        return
    typer.echo(f"received {r.received}, inserted {r.inserted}, duplicates {r.duplicates}, "
               f"graph version {r.graph_version}")


@graph_app.command("probes")
def probes(target: str = TargetOpt, max_prompts: int = typer.Option(0), seed: int = typer.Option(0),
           model: list[str] | None = typer.Option(None, help="served models to probe (default all)")) -> None:
    """Run the quality probes now and print the refreshed quality scores."""
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    try:
        request = pb.RunProbesRequest(models=model or [], max_prompts=max_prompts, seed=seed)
        r = _write(target, lambda stub: stub.RunProbes(request, timeout=600))
    except Exception as exc:
        _fail(exc)
        return
    typer.echo(f"run {r.run_id}: {len(r.results)} results, {len(r.outcomes)} pairwise outcomes")
    if r.HasField("judge"):
        j = r.judge
        typer.echo(f"  judged by {j.model_id} ({j.architecture}) version {j.version}"
                   + (": a random-weight test model, its scores never count" if j.test_model else ""))
    for x in r.scores:
        typer.echo(f"  {x.model_id:30s} {x.task}: mean judged score {x.mean:.3f} over {x.n} probes"
                   + ("" if x.scorable else f" (not scored: {x.reason})"))
    for m, q in sorted(r.quality.items()):
        typer.echo(f"  {m:30s} quality {q.value:.2f} (95% {q.low:.2f}–{q.high:.2f}, {q.evidence_count} games)"
                   if q.measured else f"  {m:30s} quality not measured ({q.not_measured_reason})")
    for b in r.served:
        what = f"{b.served.model_id} ({b.served.endpoint})" if b.HasField("served") else "a model it did not report"
        typer.echo(f"  {b.model} ran on {what}" + (": a random-weight test model" if b.served.test_model else ""))
    for s in r.skipped:
        typer.echo(f"  skipped: {s}")


@graph_app.command("migrate")
def migrate(source: str = typer.Option(..., "--from", help="db_url to copy from, e.g. sqlite:///var/matchgraph.db"),
            dest: str = typer.Option(..., "--to", help="db_url to copy into, e.g. postgresql://user@host:5432/db"),
            quiet: bool = typer.Option(False, "--quiet", help="print only the summary")) -> None:
    """Copy a match graph between stores (catalogue, events with their ids and order, probes, state).

    Idempotent: run it again to append the events written since. Stop the server writing to
    --from first (or run it again after stopping it) so nothing is left behind.
    """
    from common.errors import UnfragileError
    from graph.store import open_store, parse_db_url
    from graph.store.migrate import migrate as copy_store

    try:
        if parse_db_url(source) == parse_db_url(dest):
            raise typer.BadParameter("--from and --to name the same database")
        src, dst = open_store(source), open_store(dest)
    except (ValueError, UnfragileError) as exc:
        typer.echo(f"error: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(2) from None
    try:
        report = copy_store(src, dst, progress=(lambda _m: None) if quiet else typer.echo)
    except UnfragileError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        src.close()
        dst.close()
    typer.echo(f"migrated {src.url} -> {dst.url}: {report.events_copied} events copied "
               f"({report.events_before} already there), {report.rows.get('models', 0)} models, "
               f"{report.rows.get('probe_runs', 0)} probe runs, {report.rows.get('graph_state', 0)} state rows")


def register(root: typer.Typer) -> None:
    root.add_typer(graph_app, name="graph")
