"""The quality judge: a CLIP-family dual encoder loaded beside Kosmos-2, behind the Judge RPC.

The MatchGraph's quality probes need a judge that is none of the contestants: Kosmos-2
must not grade its own captions, nor Stable Diffusion's images. ``judge_model`` names a
separate checkpoint (e.g. ``openai/clip-vit-large-patch14`` or a SigLIP one) loaded with
``AutoModel``/``AutoProcessor.from_pretrained`` (safetensors only) on the service's
device and dtype; anything that is not a dual encoder with image and text towers is
refused at start. Its score of an image–text pair is the cosine of the two L2-normalised
embeddings; ``JudgeResult`` turns it into CLIPScore = max(100 · cos, 0) (texts longer
than the judge's context are truncated, as CLIPScore does).

The judge's version is the hub commit of a cached checkpoint, else ``sha256:`` + 16 hex
of its config and weight files (hashed once at load): scores of two judges, or of two
versions of one, are never compared. Work runs one request at a time beside the Kosmos-2
scheduler; at most ``max_waiting`` requests wait, later ones get RESOURCE_EXHAUSTED with
a retry hint, and a cancelled caller stops waiting.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import torch

from common.errors import ModelUnavailable, ResourceExhausted
from services.core.cancel import CancelToken
from services.core.loading import TEST_MODEL_DETAIL, TEST_PRESET_DETAIL, pretrained_source, test_model_details
from services.visionlanguage.results import JudgeIdentity, JudgeResult, Timing
from services.visionlanguage.types import JudgeRequest

WEIGHT_FILES = ("*.safetensors", "config.json")


def weights_version(folder: Path) -> str:
    """The hub commit of a cached snapshot folder, else 'sha256:<16 hex>' of its config and weight files."""
    if folder.parent.name == "snapshots":
        return folder.name
    h = hashlib.sha256()
    for path in sorted({p for pattern in WEIGHT_FILES for p in folder.glob(pattern)}):
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return f"sha256:{h.hexdigest()[:16]}"


def _local_folder(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, local_files_only=True))  # pretrained_source checked it is cached


class ClipJudge:
    """A CLIP-family dual encoder (CLIPModel, SiglipModel, ...) loaded with from_pretrained."""

    def __init__(self, model_source: str | Path, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoProcessor

        source, extra = pretrained_source(model_source)
        self.model_id = str(model_source)
        try:
            self.processor: Any = AutoProcessor.from_pretrained(source, **extra)
            model: Any = AutoModel.from_pretrained(source, dtype=dtype, use_safetensors=True, **extra)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"could not load the judge model {self.model_id!r}: {exc}") from None
        if not all(hasattr(model, f) for f in ("get_image_features", "get_text_features")) or \
                not all(hasattr(self.processor, p) for p in ("tokenizer", "image_processor")):
            raise ModelUnavailable(f"judge_model {self.model_id!r} is a {type(model).__name__}, not a CLIP-family "
                                   f"dual encoder with image and text towers (e.g. openai/clip-vit-large-patch14 or a "
                                   f"SigLIP checkpoint)")
        self.model = model.to(device).eval()
        self.device, self.dtype = device, dtype
        cfg = model.config
        self.parameters = sum(p.numel() for p in model.parameters())
        self.max_text = int(min(self.processor.tokenizer.model_max_length, cfg.text_config.max_position_embeddings))
        self.pad_to_max = cfg.model_type.startswith("siglip")  # SigLIP was trained on max-length padded text
        details = test_model_details(self.model_id)
        self.identity = JudgeIdentity(self.model_id, type(model).__name__, weights_version(_local_folder(source)),
                                      int(self.parameters), str(device), str(dtype).removeprefix("torch."),
                                      details.get(TEST_MODEL_DETAIL) == "true", details.get(TEST_PRESET_DETAIL, ""))

    @torch.inference_mode()
    def cosine(self, images: list[Any], texts: list[str]) -> list[float]:
        """Cosine similarity of ``images[i]`` (PIL) and ``texts[i]`` for every i, in one batch."""
        tokens = self.processor.tokenizer(texts, padding="max_length" if self.pad_to_max else True, truncation=True,
                                          max_length=self.max_text, return_tensors="pt")
        pixels = self.processor.image_processor(images=[im.convert("RGB") for im in images],
                                                return_tensors="pt")["pixel_values"]
        out = self.model(**{k: v.to(self.device) for k, v in tokens.items()},
                         pixel_values=pixels.to(self.device, self.dtype))
        img = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        return [float(c) for c in (img * txt).sum(dim=-1).cpu()]


class JudgeService:
    """Runs Judge requests one at a time on a ``ClipJudge``, with a bounded wait (see the module docstring)."""

    def __init__(self, judge: ClipJudge, max_waiting: int) -> None:
        self.judge = judge
        self.max_waiting = max_waiting
        self._run = threading.Lock()
        self._count = threading.Lock()
        self._waiting = 0
        self._ewma_s = 0.1  # recent request duration, for retry hints

    @property
    def identity(self) -> JudgeIdentity:
        return self.judge.identity

    def score(self, req: JudgeRequest, cancel: CancelToken) -> JudgeResult:
        if not req.images:
            return JudgeResult([], self.identity)
        t0 = time.perf_counter()
        with self._count:
            if self._waiting >= self.max_waiting:
                raise ResourceExhausted(f"the judge has {self._waiting} requests waiting; retry shortly",
                                        retry_after_s=round(self._ewma_s * self._waiting, 3))
            self._waiting += 1
        try:
            while not self._run.acquire(timeout=0.05):
                cancel.raise_if_cancelled("judge request")
            try:
                t1 = time.perf_counter()
                cancel.raise_if_cancelled("judge request")
                cosine = self.judge.cosine([i.image for i in req.images], list(req.texts))
                t2 = time.perf_counter()
            finally:
                self._run.release()
        finally:
            with self._count:
                self._waiting -= 1
        self._ewma_s = 0.8 * self._ewma_s + 0.2 * (t2 - t1)
        return JudgeResult(cosine, self.identity, Timing(queue_ms=(t1 - t0) * 1000, inference_ms=(t2 - t1) * 1000,
                                                         total_ms=(t2 - t0) * 1000))
