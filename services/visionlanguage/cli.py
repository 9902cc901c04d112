"""Client commands for the VisionLanguage service: ``unfragile vl ...``.

All but ``export-onnx`` talk gRPC to a running server (``--target host:port``);
``export-onnx`` works on a model folder locally.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import typer

from services.core.client import bearer, channel

DEFAULT_TARGET = "127.0.0.1:50051"
TargetOpt = typer.Option(DEFAULT_TARGET, "--target", help="host:port of the VisionLanguage server")
TokenOpt = typer.Option(None, "--token", help="bearer token, when the server enforces auth")
MODES = ("brief", "detailed", "prompt", "question", "phrases")


def _pb() -> tuple[Any, Any, Any]:
    from unfragile.common.v1 import common_pb2 as cpb
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
    from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

    return cpb, pb, pb_grpc


def _image(path: Path) -> Any:
    cpb, _, _ = _pb()
    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a file")
    return cpb.Image(data=path.read_bytes())


def _call(target: str, token: str | None, fn: Any) -> Any:
    _, _, pb_grpc = _pb()
    with channel(target) as ch:
        try:
            return fn(pb_grpc.VisionLanguageStub(ch), bearer(token) if token else None)
        except grpc.RpcError as err:
            typer.echo(f"error: {err.code().name}: {err.details()}", err=True)
            raise typer.Exit(1) from None


def caption_request(image: Path, mode: str, prompt: str, phrases: list[str], language: str, max_new_tokens: int,
                    temperature: float, top_p: float, top_k: int, num_beams: int, seed: int | None,
                    stop: list[str], grounding: bool | None) -> Any:
    _, pb, _ = _pb()
    if mode not in MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(MODES)}")
    req = pb.CaptionRequest(image=_image(image), mode=getattr(pb, f"CAPTION_MODE_{mode.upper()}"), prompt=prompt,
                            phrases=phrases, language=language)
    if grounding is not None:
        req.grounding = grounding
    req.sampling.CopyFrom(pb.SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                            top_k=top_k, num_beams=num_beams, stop=stop))
    if seed is not None:
        req.sampling.seed = seed
    return req


def caption(
    image: Path = typer.Argument(..., help="image file"),
    mode: str = typer.Option("brief", help="brief | detailed | prompt | question | phrases"),
    prompt: str = typer.Option("", help="prompt text (mode prompt) or question (mode question)"),
    phrase: list[str] = typer.Option([], help="phrase to ground (mode phrases; repeatable)"),
    language: str = typer.Option("en", help="en fr de es ru zh ja ar hi (non-English is zero-shot)"),
    max_new_tokens: int = typer.Option(0, help="0 = server default"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_p: float = typer.Option(0.0, help="nucleus sampling (needs temperature > 0)"),
    top_k: int = typer.Option(0, help="top-k sampling (needs temperature > 0)"),
    num_beams: int = typer.Option(0, help="beam search width (greedy only)"),
    seed: int | None = typer.Option(None, help="seed; unset = server picks and reports it"),
    stop: list[str] = typer.Option([], help="stop sequence (repeatable)"),
    grounding: bool | None = typer.Option(None, "--grounding/--no-grounding", help="add <grounding>"),
    stream: bool = typer.Option(False, help="print tokens as they are generated"),
    as_json: bool = typer.Option(False, "--json", help="print the whole response as JSON"),
    target: str = TargetOpt,
    token: str | None = TokenOpt,
) -> None:
    """Caption an image (grounded), answer a question about it, or locate phrases."""
    req = caption_request(image, mode, prompt, phrase, language, max_new_tokens, temperature, top_p, top_k,
                          num_beams, seed, stop, grounding)

    resp = _call(target, token, lambda stub, md: _send_caption(stub, md, req, stream, as_json))
    _print_caption(resp, stream, as_json)


def _send_caption(stub: Any, md: Any, req: Any, stream: bool, as_json: bool) -> Any:
    """Caption, or StreamCaption printing the text as it comes; returns the final response."""
    if not stream:
        return stub.Caption(req, metadata=md)
    final = None
    for chunk in stub.StreamCaption(req, metadata=md):
        if chunk.queue_position:
            typer.echo(f"[queued: position {chunk.queue_position}]", err=True)
        if chunk.delta and not as_json:
            typer.echo(chunk.delta, nl=False)
        if chunk.HasField("final"):
            final = chunk.final
    if not as_json:
        typer.echo()
    return final


def _print_caption(resp: Any, streamed: bool, as_json: bool) -> None:
    from google.protobuf.json_format import MessageToDict

    if as_json:
        typer.echo(json.dumps(MessageToDict(resp), indent=2, ensure_ascii=False))
        return
    if not streamed:
        typer.echo(resp.text)
    for e in resp.entities:
        boxes = "; ".join(f"({b.x_min_px:.0f},{b.y_min_px:.0f})-({b.x_max_px:.0f},{b.y_max_px:.0f})px"
                          for b in e.boxes)
        typer.echo(f"  {e.phrase!r} [{e.start}:{e.end}] {boxes}")
    typer.echo(f"[{resp.usage.completion_tokens} tokens, seed {resp.seed}, "
               f"{resp.timings.total_ms:.0f} ms, language {resp.language}]", err=True)

def info(target: str = TargetOpt, token: str | None = TokenOpt) -> None:
    """Show what the server has loaded."""
    cpb, _, _ = _pb()
    resp = _call(target, token, lambda s, md: s.ModelInfo(cpb.ModelInfoRequest(), metadata=md))
    typer.echo(f"{resp.model_id} ({resp.architecture}) on {resp.device} {resp.dtype}, "
               f"{resp.parameters:,} parameters{', ' + resp.quantization if resp.quantization else ''}")
    for k, v in sorted(resp.details.items()):
        typer.echo(f"  {k}: {v}")

def similarity(
    image: list[Path] = typer.Option(..., help="image file (repeatable)"),
    text: list[str] = typer.Option(..., help="text (repeatable)"),
    target: str = TargetOpt,
    token: str | None = TokenOpt,
) -> None:
    """Cosine and CLIPScore-style scores, images x texts."""
    _, pb, _ = _pb()
    req = pb.SimilarityRequest(images=[_image(p) for p in image], texts=text)
    resp = _call(target, token, lambda s, md: s.Similarity(req, metadata=md))
    for i, p in enumerate(image):
        for j, t in enumerate(text):
            k = i * resp.cols + j
            typer.echo(f"{p.name} x {t!r}: cosine {resp.cosine[k]:+.4f}  clip_score {resp.clip_score[k]:.4f}")

def tokenize(
    text: str = typer.Option("", help="text to tokenize"),
    box: list[str] = typer.Option([], help="x_min,y_min,x_max,y_max normalised (repeatable)"),
    tokens: list[str] = typer.Option([], help="'<patch_index_XXXX><patch_index_YYYY>' (repeatable)"),
    image: Path | None = typer.Option(None, help="image, for its patch grid and pixel boxes"),
    target: str = TargetOpt,
    token: str | None = TokenOpt,
) -> None:
    """Tokens of a text; boxes <-> location tokens."""
    from google.protobuf.json_format import MessageToDict

    cpb, pb, _ = _pb()
    boxes = []
    for b in box:
        x0, y0, x1, y1 = (float(v) for v in b.split(","))
        boxes.append(cpb.Box(x_min=x0, y_min=y0, x_max=x1, y_max=y1))
    req = pb.TokenizeRequest(text=text, boxes=boxes, location_tokens=tokens)
    if image is not None:
        req.image.CopyFrom(_image(image))
    resp = _call(target, token, lambda s, md: s.Tokenize(req, metadata=md))
    typer.echo(json.dumps(MessageToDict(resp), indent=2, ensure_ascii=False))

def attention(
    image: Path = typer.Argument(..., help="image file"),
    out: Path = typer.Option(Path("attention.png"), "--out", "-o", help="heatmap overlay PNG"),
    max_new_tokens: int = typer.Option(8, help="tokens to explain"),
    target: str = TargetOpt,
    token: str | None = TokenOpt,
) -> None:
    """Save the mean attention heatmap of a caption over the image, print per-token peaks."""
    _, pb, _ = _pb()
    cap = pb.CaptionRequest(image=_image(image))
    cap.sampling.max_new_tokens = max_new_tokens
    resp = _call(target, token, lambda s, md: s.AttentionMap(pb.AttentionMapRequest(caption=cap), metadata=md))
    out.write_bytes(resp.overlay.data)
    for t in resp.tokens:
        k = max(range(len(t.weights)), key=t.weights.__getitem__)
        typer.echo(f"{t.token!r}: peak patch row {k // resp.grid_cols}, col {k % resp.grid_cols} "
                   f"({t.weights[k]:.3f})")
    typer.echo(f"wrote {out}")

def export_onnx(
    model: Path = typer.Option(Path(".models/tiny-kosmos2"), help="Kosmos-2 folder (or hub id in the cache)"),
    out: Path = typer.Option(Path("kosmos2-vision.onnx"), "--out", "-o", help="output .onnx file"),
    opset: int = typer.Option(18, help="ONNX opset"),
) -> None:
    """Export the vision encoder + projection (pixel_values -> image_embeds) to ONNX."""
    from services.visionlanguage.onnx_export import export_vision_onnx

    path = export_vision_onnx(model, out, opset)
    typer.echo(f"wrote {path} ({path.stat().st_size:,} bytes)")


def register(root: typer.Typer) -> None:
    """Add ``unfragile vl ...`` client commands."""
    vl = typer.Typer(help="VisionLanguage (Kosmos-2) client commands.", no_args_is_help=True)
    root.add_typer(vl, name="vl")
    for command in (caption, info, similarity, tokenize, attention):
        vl.command()(command)
    vl.command("export-onnx")(export_onnx)
