"""``unfragile graph import ...``: the catalogue file, models read from the Hugging Face Hub or GitHub, and
unfragile.yml manifests, sent to the MatchGraph's writer."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from services.matchgraph.cli_common import TargetOpt
from services.matchgraph.cli_common import fail as _fail
from services.matchgraph.cli_common import reads as _stub
from services.matchgraph.cli_common import write as _write

import_app = typer.Typer(help="Import into the MatchGraph: the catalogue file (JSON Lines), models read from the "
                         "Hugging Face Hub or GitHub, or an unfragile.yml manifest. Every reading is stored as a "
                         "dated observation; older readings are kept.",
                         no_args_is_help=True)


def import_stream(target: str, records: list, batch: int = 0) -> tuple[int, int, int]:
    """Send ``records`` (ModelRecord domain objects) to the writer with ImportModels, ``batch`` per message
    (0: ``catalogue_file.IMPORT_BATCH``); returns (created, updated, batches). After a takeover among several
    writers the whole stream is sent again to the new leader: the import is an upsert."""
    from graph.catalogue_file import IMPORT_BATCH
    from services.matchgraph.types import record_to_pb
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    batch = batch or IMPORT_BATCH
    msgs = [pb.ImportModelsRequest(models=[record_to_pb(r) for r in records[i:i + batch]])
            for i in range(0, len(records), batch)]
    r = _write(target, lambda w: w.ImportModels(iter(msgs), timeout=600))
    return r.created, r.updated, r.batches


@import_app.command("catalogue")
def import_catalogue(file: Path = typer.Argument(None, help="JSON Lines catalogue (default: the shipped "
                                                 "graph/data/catalogue.jsonl)"),
                     target: str = TargetOpt, batch: int = typer.Option(
                         0, min=0, max=5000, help="Models per ImportModels message, one transaction each (0: the "
                         "default, 2,000)")
                     ) -> None:
    """Load a catalogue file: the whole file is checked first, then sent with ImportModels in batches."""
    from common.errors import UnfragileError
    from graph import catalogue_file

    path = file or catalogue_file.DEFAULT_PATH
    try:
        records = catalogue_file.load(path)
    except (UnfragileError, OSError) as exc:
        typer.echo(f"error: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(2) from None
    try:
        created, updated, batches = import_stream(target, records, batch)
    except Exception as exc:
        _fail(exc)
        return
    typer.echo(f"imported {len(records)} models from {path} ({created} created, {updated} updated, "
               f"{batches} batches)")


@import_app.command("hf")
def import_hf(ids: list[str] = typer.Argument(..., help="Hub repo ids, e.g. microsoft/kosmos-2-patch14-224"),
              target: str = TargetOpt,
              endpoint: str = typer.Option("", help="Hub endpoint (default: HF_ENDPOINT, else huggingface.co)"),
              ) -> None:
    """Read downloads, likes, tags, pipeline tag, licence and dates from the Hub and store them as dated readings
    of the catalogue model with that Hub id (a model the catalogue lacks is created)."""
    import grpc

    from common.errors import UnfragileError
    from graph.importers import hf
    from services.matchgraph.types import record_from_pb
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    stub = _stub(target)
    records = []
    try:
        for repo in ids:
            reading = hf.read(repo, endpoint)
            try:
                known = record_from_pb(stub.GetModel(pb.GetModelRequest(model=repo), timeout=30).model)
                records.append(hf.merge(known, reading))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    raise
                records.append(hf.new_record(reading))
            r = records[-1]
            figures = ", ".join(f"{s.kind} {s.value:,.0f}" for s in reading.signals())
            typer.echo(f"{r.id}: {figures or 'no counts'}; " + ", ".join(f"{f.name} {f.value}" for f in reading.facts())
                       + f" (from {reading.source}, read {reading.observed_at})")
        created, updated, _batches = import_stream(target, records)
    except UnfragileError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:
        _fail(exc)
        return
    typer.echo(f"stored the readings of {len(records)} models ({created} created, {updated} updated)")


@import_app.command("github")
def import_github(pairs: list[str] = typer.Argument(..., help="MODEL=OWNER/REPO, e.g. "
                                                    "kosmos-2-patch14-224=microsoft/unilm"),
                  target: str = TargetOpt,
                  endpoint: str = typer.Option("", help="GitHub API (default: GITHUB_API_URL, else "
                                               "https://api.github.com)")) -> None:
    """Read each repository's stars through GitHub's REST API and store them as a dated reading of the model."""
    from common.errors import UnfragileError
    from graph.importers import github
    from services.matchgraph.types import record_from_pb
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    stub = _stub(target)
    records = []
    try:
        for pair in pairs:
            model, sep, repo = pair.partition("=")
            if not sep:
                raise typer.BadParameter(f"{pair!r} must be MODEL=OWNER/REPO")
            stars = github.read_stars(repo, endpoint)
            known = record_from_pb(stub.GetModel(pb.GetModelRequest(model=model), timeout=30).model)
            records.append(github.merge(known, stars))
            typer.echo(f"{known.id}: {stars.value:,.0f} stars (from {stars.source}, read {stars.observed_at})")
        import_stream(target, records)
    except UnfragileError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except typer.BadParameter:
        raise
    except Exception as exc:
        _fail(exc)
        return
    typer.echo(f"stored the stars of {len(records)} models")


@import_app.command("manifest")
def import_manifest(file: Path = typer.Argument(..., help="an unfragile.yml manifest (- = stdin)"),
                    target: str = TargetOpt,
                    check: bool = typer.Option(False, "--check", help="validate only; import nothing")) -> None:
    """Import an unfragile.yml manifest: a new model, or an update of the model its slug, id or name names (its
    adoption, ecosystem and quality evidence kept). Every problem is printed with the path of its field."""
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    stub = _stub(target)
    try:
        v = stub.ValidateManifest(pb.ValidateManifestRequest(text=text), timeout=60)
        for issue in v.warnings:
            typer.echo(f"warning: {issue.path or '/'}: {issue.message}", err=True)
        for issue in v.errors:
            typer.echo(f"error: {issue.path or '/'}: {issue.message} [{issue.code}]", err=True)
        if not v.valid:
            raise typer.Exit(1)
        if check:
            typer.echo(f"valid: would {'update ' + v.updates if v.updates else 'add ' + v.model.id}")
            return
        r = _write(target, lambda w: w.ImportManifest(pb.ValidateManifestRequest(text=text), timeout=60))
    except typer.Exit:
        raise
    except Exception as exc:
        _fail(exc)
        return
    verb = "created" if r.created else "updated"
    typer.echo(f"{verb} {r.model.id} (slug {r.model.slug or r.model.id}, {len(r.model.capabilities)} capabilities)")
