"""Results of the VisionLanguage RPCs and their protobuf conversion."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image as PILImage

from services.core.images import encode_png
from services.visionlanguage import grounding as g
from services.visionlanguage.types import TokenizeRequest
from unfragile.common.v1 import common_pb2
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb

FINISH = {"length": pb.FINISH_REASON_LENGTH, "eos": pb.FINISH_REASON_EOS, "stop": pb.FINISH_REASON_STOP_SEQUENCE}


@dataclass
class Timing:
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0
    first_token_ms: float = 0.0

    def to_pb(self) -> common_pb2.Timings:
        return common_pb2.Timings(queue_ms=self.queue_ms, inference_ms=self.inference_ms, total_ms=self.total_ms,
                                  first_token_ms=self.first_token_ms)


def box_pb(box: g.NormBox, width: int, height: int) -> common_pb2.Box:
    px = box.to_pixels(width, height)
    return common_pb2.Box(x_min=box.x_min, y_min=box.y_min, x_max=box.x_max, y_max=box.y_max,
                          x_min_px=px[0], y_min_px=px[1], x_max_px=px[2], y_max_px=px[3])


@dataclass
class CaptionResult:
    text: str
    completion: str
    raw_text: str
    entities: list[g.GroundedEntity]
    finish_reason: str
    language: str
    seed: int
    prompt: str
    prompt_tokens: int
    token_ids: list[int]
    width: int
    height: int
    timing: Timing = field(default_factory=Timing)

    def to_pb(self) -> pb.CaptionResponse:
        return pb.CaptionResponse(
            text=self.text, completion=self.completion, raw_text=self.raw_text,
            entities=[pb.Entity(phrase=e.phrase, start=e.start, end=e.end,
                                boxes=[box_pb(b, self.width, self.height) for b in e.boxes]) for e in self.entities],
            finish_reason=FINISH.get(self.finish_reason, pb.FINISH_REASON_UNSPECIFIED), language=self.language,
            seed=self.seed, usage=common_pb2.Usage(prompt_tokens=self.prompt_tokens,
                                                   completion_tokens=len(self.token_ids), images=1),
            timings=self.timing.to_pb(), token_ids=self.token_ids, prompt=self.prompt)

@dataclass
class CaptionEvent:
    """One streamed event: a queue position, new text, or the final result."""

    queue_position: int = 0
    delta: str = ""
    token_ids: list[int] = field(default_factory=list)
    final: CaptionResult | None = None

    def to_pb(self, index: int) -> pb.CaptionChunk:
        chunk = pb.CaptionChunk(index=index, queue_position=self.queue_position, delta=self.delta,
                                token_ids=self.token_ids)
        if self.final is not None:
            chunk.final.CopyFrom(self.final.to_pb())
        return chunk

POOLING = ("text-decoder last hidden state (after the final layer norm), mean over the 64 image slots "
           "of '<s><image>[slots]</image>' (images) or over the tokens of '<s> text' without <s> (texts), "
           "then L2-normalised")


@dataclass
class EmbedResult:
    image_vectors: list[list[float]]
    text_vectors: list[list[float]]
    dim: int
    timing: Timing = field(default_factory=Timing)

    def to_pb(self) -> pb.EmbedResponse:
        return pb.EmbedResponse(image_embeddings=[pb.Embedding(values=v) for v in self.image_vectors],
                                text_embeddings=[pb.Embedding(values=v) for v in self.text_vectors],
                                dim=self.dim, pooling=POOLING, timings=self.timing.to_pb())

CLIP_SCORE_WEIGHT = 2.5


@dataclass
class SimilarityResult:
    cosine: list[list[float]]
    timing: Timing = field(default_factory=Timing)

    def to_pb(self) -> pb.SimilarityResponse:
        flat = [c for row in self.cosine for c in row]
        return pb.SimilarityResponse(rows=len(self.cosine), cols=len(self.cosine[0]) if self.cosine else 0,
                                     cosine=flat, clip_score=[CLIP_SCORE_WEIGHT * max(c, 0.0) for c in flat],
                                     timings=self.timing.to_pb())

@dataclass
class TokenizeResult:
    request: TokenizeRequest
    token_ids: list[int]
    tokens: list[str]

    def to_pb(self) -> pb.TokenizeResponse:
        img = self.request.image
        w, h = (img.width, img.height) if img is not None else (0, 0)
        resp = pb.TokenizeResponse(token_ids=self.token_ids, tokens=self.tokens, location_grid=g.LOCATION_GRID,
                                   image_width=w, image_height=h)
        if img is not None:
            resp.patch_grid.CopyFrom(pb.PatchGrid(rows=g.PATCH_GRID, cols=g.PATCH_GRID, patch_size=g.PATCH_SIZE,
                                                  count=g.PATCH_GRID * g.PATCH_GRID, image_size=g.IMAGE_SIZE))
        for box in self.request.boxes:
            text, ul, lr = g.box_to_tokens(box)
            resp.box_tokens.append(pb.LocationTokens(text=text, upper_left=ul, lower_right=lr,
                                                     box=box_pb(g.cells_to_box(ul, lr), w, h)))
        for s in self.request.location_tokens:
            resp.boxes.append(box_pb(g.tokens_to_box(s), w, h))
        return resp

@dataclass
class AttentionMapResult:
    caption: CaptionResult
    grid: int
    tokens: list[tuple[int, str, list[float]]]
    overlay: PILImage.Image
    token_overlays: list[PILImage.Image] | None = None

    def to_pb(self) -> pb.AttentionMapResponse:
        resp = pb.AttentionMapResponse(caption=self.caption.to_pb(), grid_rows=self.grid, grid_cols=self.grid,
                                       overlay=common_pb2.Image(data=encode_png(self.overlay), mime_type="image/png"))
        for i, (tid, tok, weights) in enumerate(self.tokens):
            ta = pb.TokenAttention(token_id=tid, token=tok, weights=weights)
            if self.token_overlays is not None:
                ta.overlay.CopyFrom(common_pb2.Image(data=encode_png(self.token_overlays[i]), mime_type="image/png"))
            resp.tokens.append(ta)
        return resp


@dataclass(frozen=True)
class JudgeIdentity:
    """Who judges: the judge model's id, architecture, version and placement."""

    model_id: str
    architecture: str
    version: str
    parameters: int
    device: str
    dtype: str
    test_model: bool = False
    test_preset: str = ""

    def to_pb(self) -> pb.JudgeModel:
        return pb.JudgeModel(model_id=self.model_id, architecture=self.architecture, version=self.version,
                             test_model=self.test_model, test_preset=self.test_preset, parameters=self.parameters,
                             device=self.device, dtype=self.dtype)


@dataclass
class JudgeResult:
    """The judge's cosine per pair; CLIPScore = max(100 * cosine, 0) and its 0..1 form follow from it."""

    cosine: list[float]
    judge: JudgeIdentity
    timing: Timing = field(default_factory=Timing)

    def to_pb(self) -> pb.JudgeResponse:
        clip = [max(100.0 * c, 0.0) for c in self.cosine]
        return pb.JudgeResponse(cosine=self.cosine, clip_score=clip, score=[min(s / 100.0, 1.0) for s in clip],
                                judge=self.judge.to_pb(), timings=self.timing.to_pb())
