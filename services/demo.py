"""What ``make run`` shows a new user, through real gRPC calls to the running stack.

Seeds the match graph with the shipped catalogue (graph/data/catalogue.jsonl: real models,
every figure a sourced, dated reading) through ImportModels, generates one image, captions
it, probes both model servers (tiny random-weight test models here: their probes enter no
score), and prints the comparison page of Kosmos-2 and Stable Diffusion.
"""

from __future__ import annotations

from pathlib import Path

import typer

from services.core.client import channel
from services.stack import Stack

PAGE_PAIR = ("kosmos-2-patch14-224", "stable-diffusion")


def seed_graph(target: str, path: Path | None = None) -> list[str]:
    """Import the catalogue file (the shipped one by default) with ImportModels; returns the ids imported."""
    from graph import catalogue_file
    from services.matchgraph.types import record_to_pb
    from unfragile.matchgraph.v1 import matchgraph_pb2 as mg
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as mg_grpc

    records = catalogue_file.load(path or catalogue_file.DEFAULT_PATH)
    with channel(target) as ch:
        mg_grpc.MatchGraphStub(ch).ImportModels(iter([mg.ImportModelsRequest(
            models=[record_to_pb(r) for r in records])]), timeout=120)
    return [r.id for r in records]


def generate_png(target: str, prompt: str, seed: int = 0) -> bytes:
    """One TextToImage stream; returns the final PNG bytes (progress is echoed)."""
    from unfragile.diffusion.v1 import diffusion_pb2 as df
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as df_grpc

    params = df.GenerationParams(prompt=prompt, width=64, height=64, steps=4, seed=seed, num_images=1)
    with channel(target) as ch:
        for event in df_grpc.DiffusionStub(ch).TextToImage(df.TextToImageRequest(params=params), timeout=120):
            kind = event.WhichOneof("event")
            if kind == "progress":
                typer.echo(f"  step {event.progress.step}/{event.progress.total_steps}")
            elif kind == "result":
                return event.result.images[0].image.data
    raise RuntimeError("TextToImage ended without a result")


def caption_png(target: str, png: bytes) -> str:
    from unfragile.common.v1 import common_pb2 as common
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as vl
    from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as vl_grpc

    req = vl.CaptionRequest(image=common.Image(data=png, mime_type="image/png"), mode=vl.CAPTION_MODE_BRIEF,
                            sampling=vl.SamplingParams(max_new_tokens=16, seed=0))
    with channel(target) as ch:
        resp = vl_grpc.VisionLanguageStub(ch).Caption(req, timeout=60)
    return f"{resp.text!r} ({len(resp.entities)} grounded entities, {resp.usage.completion_tokens} tokens)"


def run_probes(target: str) -> str:
    from unfragile.matchgraph.v1 import matchgraph_pb2 as mg
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as mg_grpc

    with channel(target) as ch:
        resp = mg_grpc.MatchGraphStub(ch).RunProbes(mg.RunProbesRequest(max_prompts=2, seed=0), timeout=300)
    ran_on = "; ".join(f"{b.model} on {b.served.model_id}" + (" (random-weight test model)" if b.served.test_model
                                                                else "") for b in resp.served if b.HasField("served"))
    return (f"run {resp.run_id}: {len(resp.results)} probe results, skipped: {list(resp.skipped) or 'none'}; "
            f"ran on: {ran_on or 'not reported'}")


def compare_markdown(target: str, a: str, b: str) -> str:
    from unfragile.matchgraph.v1 import matchgraph_pb2 as mg
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as mg_grpc

    with channel(target) as ch:
        return mg_grpc.MatchGraphStub(ch).Compare(mg.CompareRequest(a=a, b=b), timeout=30).markdown


def run_demo(stack: Stack, out_dir: Path) -> None:
    """The walk-through printed by ``make run`` once every service is SERVING."""
    out_dir.mkdir(parents=True, exist_ok=True)
    graph, diffusion, vl = stack.target("matchgraph"), stack.target("diffusion"), stack.target("visionlanguage")
    ids = seed_graph(graph)
    typer.echo(f"seeded the match graph with the catalogue: {len(ids)} models ({', '.join(ids[:6])}, ...)")
    typer.echo("generating one image (tiny random-weight Stable Diffusion: expect noise):")
    png = generate_png(diffusion, "a snowman in a sunny park")
    path = out_dir / "demo.png"
    path.write_bytes(png)
    typer.echo(f"  saved {path} ({len(png)} bytes)")
    typer.echo(f"caption of that image (tiny random-weight Kosmos-2: expect nonsense): {caption_png(vl, png)}")
    typer.echo(f"quality probes: {run_probes(graph)}")
    typer.echo("\n" + compare_markdown(graph, *PAGE_PAIR))
    from services.gateway.server import compare_url

    typer.echo(f"\nthe comparison page on the web: {compare_url(stack.gateway_url, *PAGE_PAIR)}")
