"""Client commands for the Diffusion service (they talk gRPC to a running server).

``unfragile generate "a red cat" --out cat.png`` shows the queue position while waiting,
then a progress bar fed by the per-step events of the stream, and saves the images
(``cat.png``, or ``cat-0.png``, ``cat-1.png`` ... with ``--num-images``) with their seeds.
``--control NAME:IMAGE[:SCALE[:PREPROCESS]]`` (repeatable) steers it with a ControlNet or
T2I-Adapter, ``--ip-adapter NAME --reference IMAGE`` with an image prompt; ``--control-maps``
saves the maps the server made (``cat-control-0.png`` ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import typer

from services.core.client import bearer, channel

DEFAULT_TARGET = "127.0.0.1:50052"

TargetOpt = typer.Option(DEFAULT_TARGET, "--target", help="host:port of the Diffusion server")
TokenOpt = typer.Option(None, "--token", help="bearer token, when the server enforces auth")


def _pb() -> tuple[Any, Any, Any]:
    from unfragile.common.v1 import common_pb2 as cpb
    from unfragile.diffusion.v1 import diffusion_pb2 as pb
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

    return cpb, pb, pb_grpc


def _params(prompt: str, negative: str, width: int, height: int, steps: int, guidance: float | None,
            scheduler: str, seed: int | None, num_images: int, adapters: list[str], preview_every: int) -> Any:
    _, pb, _ = _pb()
    specs = []
    for a in adapters:
        name, _, weight = a.partition(":")
        specs.append(pb.AdapterWeight(name=name, weight=float(weight)) if weight else pb.AdapterWeight(name=name))
    p = pb.GenerationParams(prompt=prompt, negative_prompt=negative, width=width, height=height, steps=steps,
                            scheduler=scheduler, num_images=num_images, adapters=specs, preview_every=preview_every)
    if guidance is not None:
        p.guidance_scale = guidance
    if seed is not None:
        p.seed = seed
    return p


def _controls(specs: list[str], reference: list[Path], ip_adapter: str, ip_scale: float | None,
              control_maps: bool) -> dict[str, Any]:
    """GenerationParams fields for ``--control NAME:IMAGE[:SCALE[:PREPROCESS]]`` and ``--ip-adapter``."""
    _, pb, _ = _pb()
    controls = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise typer.BadParameter(f"--control {spec!r}: use NAME:IMAGE[:SCALE[:PREPROCESS]], e.g. "
                                     f"canny:edges.png:0.8 or canny:photo.png:1:canny")
        c = pb.Control(controlnet=parts[0], image=_image(Path(parts[1])))
        if len(parts) > 2 and parts[2]:
            try:
                c.conditioning_scale = float(parts[2])
            except ValueError:
                raise typer.BadParameter(f"--control {spec!r}: {parts[2]!r} is not a number") from None
        if len(parts) > 3:
            c.preprocess = parts[3]
        controls.append(c)
    fields: dict[str, Any] = {"controls": controls, "return_control_maps": control_maps and bool(controls)}
    if ip_adapter or reference:
        fields |= {"ip_adapter": ip_adapter, "reference_images": [_image(r) for r in reference]}
        if ip_scale is not None:
            fields["ip_adapter_scale"] = ip_scale
    return fields


ControlOpt = typer.Option([], "--control", help="NAME:IMAGE[:SCALE[:PREPROCESS]]: a ControlNet / T2I-Adapter "
                                                 "(see `unfragile controlnets`) with its control image (repeatable)")
IpAdapterOpt = typer.Option("", "--ip-adapter", help="IP-Adapter name (image prompt)")
ReferenceOpt = typer.Option([], "--reference", help="IP-Adapter reference image (repeatable)")
IpScaleOpt = typer.Option(None, "--ip-scale", help="IP-Adapter scale in [0, 2] (default 1)")
MapsOpt = typer.Option(False, "--control-maps", help="also save the control maps the server made")


def _out_path(out: Path, i: int, n: int) -> Path:
    return out if n == 1 else out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}")


def consume(stream: Iterator[Any], out: Path, preview_dir: Path | None = None) -> Any:
    """Show queue position and a progress bar from the stream; save the images; return the result."""
    bar: Any = None
    try:
        for ev in stream:
            kind = ev.WhichOneof("event")
            if kind == "status" and ev.status.queue_position:
                typer.echo(f"job {ev.job_id}: queued, position {ev.status.queue_position}", err=True)
            elif kind == "progress":
                if bar is None:
                    bar = typer.progressbar(length=ev.progress.total_steps, label="denoising", file=None)
                    bar.__enter__()
                bar.update(1)
            elif kind == "preview" and preview_dir is not None:
                preview_dir.mkdir(parents=True, exist_ok=True)
                (preview_dir / f"step{ev.preview.step:03d}-{ev.preview.index}.png").write_bytes(ev.preview.image.data)
            elif kind == "result":
                if bar is not None:
                    bar.__exit__(None, None, None)
                    bar = None
                res = ev.result
                for i, img in enumerate(res.images):
                    path = _out_path(out, i, len(res.images))
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(img.image.data)
                    typer.echo(f"{path}  seed={img.seed}  {img.width}x{img.height}")
                for j, m in enumerate(res.control_maps):
                    path = out.with_name(f"{out.stem}-control-{j}{out.suffix or '.png'}")
                    path.write_bytes(m.data)
                    typer.echo(f"{path}  control map {j}")
                typer.echo(f"job {ev.job_id}: {res.steps} steps ({res.scheduler}), queue {res.timings.queue_ms:.0f} ms,"
                           f" total {res.timings.total_ms:.0f} ms, batch of {res.batch_images} image(s)", err=True)
                return res
    except grpc.RpcError as exc:
        if bar is not None:
            bar.__exit__(None, None, None)
        typer.echo(f"error: {exc.code().name}: {exc.details()}", err=True)
        raise typer.Exit(1) from None
    typer.echo("error: the stream ended without a result", err=True)
    raise typer.Exit(1)


def _image(path: Path) -> Any:
    cpb, _, _ = _pb()
    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a file")
    return cpb.Image(data=path.read_bytes())


def _edit_params(prompt: str, steps: int, seed: int | None) -> Any:
    """Generation parameters of an edit (one image, the input's size, the family's scheduler)."""
    return _params(prompt, "", 0, 0, steps, None, "", seed, 1, [], 0)


def _generate(target: str, token: str | None, rpc: str, request: Any, out: Path,
              preview_dir: Path | None = None) -> None:
    """Call the streaming generation RPC ``rpc`` and write what it streams (see ``consume``)."""
    _, _, pb_grpc = _pb()
    with channel(target) as ch:
        stream = getattr(pb_grpc.DiffusionStub(ch), rpc)(request, metadata=bearer(token) if token else None)
        consume(stream, out, preview_dir)


def register(root: typer.Typer) -> None:
    """Add the Diffusion client commands to the ``unfragile`` CLI."""

    @root.command()
    def generate(
        prompt: str = typer.Argument(..., help="what to draw"),
        out: Path = typer.Option(Path("out.png"), "--out", "-o", help="output PNG (suffixed -i for several)"),
        negative: str = typer.Option("", help="negative prompt"),
        width: int = typer.Option(0, help="multiple of 8; 0 = model size"),
        height: int = typer.Option(0, help="multiple of 8; 0 = model size"),
        steps: int = typer.Option(0, help="denoising steps; 0 = server default"),
        guidance: float | None = typer.Option(None, help="guidance scale (default 7.5)"),
        scheduler: str = typer.Option("", help="ddim | euler | euler-a | dpm++ (per family; \"\" = its default)"),
        seed: int | None = typer.Option(None, help="seed of the first image (random if unset)"),
        num_images: int = typer.Option(1, help="images to generate"),
        adapter: list[str] = typer.Option([], help="LoRA adapter NAME or NAME:WEIGHT (repeatable)"),
        preview_every: int = typer.Option(0, help="save a preview every N steps into --preview-dir"),
        preview_dir: Path | None = typer.Option(None, help="where previews go"),
        control: list[str] = ControlOpt,
        ip_adapter: str = IpAdapterOpt,
        reference: list[Path] = ReferenceOpt,
        ip_scale: float | None = IpScaleOpt,
        control_maps: bool = MapsOpt,
        target: str = TargetOpt,
        token: str | None = TokenOpt,
    ) -> None:
        """Text to image, with a progress bar fed by the stream."""
        _, pb, _ = _pb()
        p = _params(prompt, negative, width, height, steps, guidance, scheduler, seed, num_images, adapter,
                    preview_every)
        p.MergeFrom(pb.GenerationParams(**_controls(control, reference, ip_adapter, ip_scale, control_maps)))
        _generate(target, token, "TextToImage", pb.TextToImageRequest(params=p), out, preview_dir)

    @root.command()
    def img2img(
        image: Path = typer.Argument(..., help="input image"),
        prompt: str = typer.Argument(..., help="what to turn it into"),
        out: Path = typer.Option(Path("out.png"), "--out", "-o"),
        strength: float = typer.Option(0.75, help="noise strength in (0, 1]"),
        steps: int = typer.Option(0),
        seed: int | None = typer.Option(None),
        scheduler: str = typer.Option(""),
        adapter: list[str] = typer.Option([], help="NAME or NAME:WEIGHT"),
        control: list[str] = ControlOpt,
        ip_adapter: str = IpAdapterOpt,
        reference: list[Path] = ReferenceOpt,
        ip_scale: float | None = IpScaleOpt,
        control_maps: bool = MapsOpt,
        target: str = TargetOpt,
        token: str | None = TokenOpt,
    ) -> None:
        """Image to image."""
        _, pb, _ = _pb()
        p = _params(prompt, "", 0, 0, steps, None, scheduler, seed, 1, adapter, 0)
        p.MergeFrom(pb.GenerationParams(**_controls(control, reference, ip_adapter, ip_scale, control_maps)))
        _generate(target, token, "ImageToImage",
                  pb.ImageToImageRequest(params=p, image=_image(image), strength=strength), out)

    @root.command()
    def inpaint(
        image: Path = typer.Argument(..., help="image to edit"),
        mask: Path = typer.Argument(..., help="same-size mask: white = repaint, black = keep"),
        prompt: str = typer.Argument(..., help="what to paint in the white area"),
        out: Path = typer.Option(Path("out.png"), "--out", "-o"),
        steps: int = typer.Option(0),
        strength: float = typer.Option(1.0, help="noise strength in (0, 1]"),
        seed: int | None = typer.Option(None),
        control: list[str] = ControlOpt,
        ip_adapter: str = IpAdapterOpt,
        reference: list[Path] = ReferenceOpt,
        ip_scale: float | None = IpScaleOpt,
        control_maps: bool = MapsOpt,
        target: str = TargetOpt,
        token: str | None = TokenOpt,
    ) -> None:
        """Inpaint the white part of a mask; the rest is kept byte for byte."""
        _, pb, _ = _pb()
        p = _edit_params(prompt, steps, seed)
        p.MergeFrom(pb.GenerationParams(**_controls(control, reference, ip_adapter, ip_scale, control_maps)))
        _generate(target, token, "Inpaint",
                  pb.InpaintRequest(params=p, image=_image(image), mask=_image(mask), strength=strength), out)

    @root.command()
    def style(
        content: Path = typer.Argument(..., help="content image (layout kept)"),
        style_image: Path = typer.Argument(..., help="style image (latent statistics borrowed)"),
        out: Path = typer.Option(Path("out.png"), "--out", "-o"),
        prompt: str = typer.Option("", help="optional guiding prompt"),
        weight: float = typer.Option(0.5, help="style weight in [0, 1]"),
        strength: float = typer.Option(0.5, help="noise strength in (0, 1]"),
        steps: int = typer.Option(0),
        seed: int | None = typer.Option(None),
        target: str = TargetOpt,
        token: str | None = TokenOpt,
    ) -> None:
        """Style transfer: AdaIN blend of latents, then img2img denoising."""
        _, pb, _ = _pb()
        _generate(target, token, "StyleTransfer",
                  pb.StyleTransferRequest(params=_edit_params(prompt, steps, seed), content_image=_image(content),
                                          style_image=_image(style_image), style_weight=weight, strength=strength),
                  out)

    @root.command()
    def finetune(
        name: str = typer.Argument(..., help="adapter name to save"),
        image: list[Path] = typer.Option([], help="training image (repeatable); caption from IMAGE.txt"),
        caption: list[str] = typer.Option([], help="captions in the order of --image (else IMAGE.txt)"),
        data_folder: str = typer.Option("", help="folder under the server's data root instead of uploads"),
        steps: int = typer.Option(100),
        learning_rate: float = typer.Option(1e-4),
        rank: int = typer.Option(4),
        overwrite: bool = typer.Option(False, help="replace an adapter of the same name"),
        watch: bool = typer.Option(True, help="follow progress until the job ends"),
        target: str = TargetOpt,
        token: str | None = TokenOpt,
    ) -> None:
        """Train a LoRA adapter on the server; shows step / loss / ETA."""
        cpb, pb, pb_grpc = _pb()
        examples = []
        for i, path in enumerate(image):
            text = caption[i] if i < len(caption) else (
                path.with_suffix(".txt").read_text().strip() if path.with_suffix(".txt").is_file() else "")
            examples.append(pb.TrainingExample(image=_image(path), caption=text))
        md = bearer(token) if token else None
        with channel(target) as ch:
            stub = pb_grpc.DiffusionStub(ch)
            try:
                resp = stub.StartFineTune(pb.StartFineTuneRequest(
                    adapter_name=name, examples=examples, data_folder=data_folder, steps=steps,
                    learning_rate=learning_rate, rank=rank, overwrite=overwrite), metadata=md)
                typer.echo(f"job {resp.job_id}: {cpb.JobState.Name(resp.status.state)}")
                if not watch:
                    return
                last = None
                with typer.progressbar(length=steps, label=f"training {name}") as bar:
                    done = 0
                    for ev in stub.WatchJob(pb.WatchJobRequest(job_id=resp.job_id), metadata=md):
                        if ev.step > done:
                            bar.update(ev.step - done)
                            done = ev.step
                            bar.label = f"training {name} loss={ev.loss:.4f} eta={ev.eta_ms / 1000:.0f}s"
                        last = ev
            except grpc.RpcError as exc:
                typer.echo(f"error: {exc.code().name}: {exc.details()}", err=True)
                raise typer.Exit(1) from None
            state = cpb.JobState.Name(last.status.state) if last else "UNKNOWN"
            typer.echo(f"job {resp.job_id}: {state} {last.status.message if last else ''}")
            if last is None or last.status.state != cpb.JOB_STATE_SUCCEEDED:
                raise typer.Exit(1)

    @root.command()
    def adapters(target: str = TargetOpt, token: str | None = TokenOpt) -> None:
        """List the LoRA adapters of a Diffusion server (trained ones and lora_dir files)."""
        _, pb, pb_grpc = _pb()
        with channel(target) as ch:
            resp = pb_grpc.DiffusionStub(ch).ListAdapters(pb.ListAdaptersRequest(),
                                                         metadata=bearer(token) if token else None)
        for a in resp.adapters:
            typer.echo(f"{a.name}\tfamily={a.family or '?'}\t{a.source}/{a.format}\trank={a.rank}\tsteps={a.steps}\t"
                   f"loss={a.final_loss:.4f}\t{a.size_bytes} B\t{a.created_at}")

    @root.command()
    def controlnets(target: str = TargetOpt, token: str | None = TokenOpt) -> None:
        """List the control models of a Diffusion server (ControlNets, T2I-Adapters, IP-Adapters)."""
        _, pb, pb_grpc = _pb()
        with channel(target) as ch:
            resp = pb_grpc.DiffusionStub(ch).ListControlNets(pb.ListControlNetsRequest(),
                                                             metadata=bearer(token) if token else None)
        for m in resp.models:
            modes = ",".join(m.modes) or "not on this model"
            typer.echo(f"{m.name}\t{m.kind}\tfamily={m.family or '?'}\t{m.format}\t{m.class_name}\t{modes}\t"
                       f"{m.size_bytes} B{'  (loaded)' if m.loaded else ''}")
        typer.echo(f"preprocessors: {', '.join(resp.preprocessors)}")
