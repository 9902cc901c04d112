"""Quality from live probes against the models this deployment serves.

One probe = one prompt of a fixed set. The diffusion model generates an image for it
(fixed seed); the vision-language service then judges:

- the diffusion model's score is the CLIPScore-style image-text similarity between its
  image and the prompt (clamped to 0..1);
- the vision-language model's score is a round trip: it captions that image, and the
  similarity of the caption's and the prompt's text embeddings is its score.

On each shared probe every pair of probed models gets an outcome (1 / 0, or 0.5 when the
scores are within ``tie_margin``), and the outcomes feed the Bradley-Terry fit in
``rank.quality_dimension``. Results are stored with each model's version and the seed,
so a run is reproducible. The judge is the served VisionLanguage model itself: with the
tiny random models of tests the numbers are noise, and the tests check plumbing only.
Each run also records what every service had loaded (``ServedModel``, from ModelInfo),
so a page can say when quality was measured on a random-weight test model.

The backend is a small Protocol so tests can replace the two gRPC services.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from graph.store import ProbeOutcomeRow, ProbeResultRow

PROBE_PROMPTS: tuple[str, ...] = (
    "a red apple on a wooden table",
    "a snowman in a field at sunset",
    "two dogs running on a beach",
    "a city street at night with neon signs",
    "a bowl of soup with a spoon",
    "a lighthouse on a rocky coast",
    "a cat sleeping on a blue sofa",
    "a mountain lake reflecting pine trees",
)


@dataclass(frozen=True)
class ServedModel:
    """What a model service had loaded when it was probed (its ModelInfo)."""

    endpoint: str  # "visionlanguage" or "diffusion"
    model_id: str  # hub id or folder the service loaded
    architecture: str = ""
    parameters: int = 0
    test_model: bool = False  # random weights, built offline for tests: says nothing about the real model
    test_preset: str = ""  # its build preset ("tiny", "bench")

    def describe(self) -> str:
        """'<model_id> (Architecture, 1,234 parameters), a tiny random-weight test model'."""
        facts = ", ".join(x for x in (self.architecture, f"{self.parameters:,} parameters" if self.parameters
                                      else "") if x)
        what = f"{self.model_id} ({facts})" if facts else self.model_id
        if self.test_model:
            kind = f"{self.test_preset} " if self.test_preset else ""
            return f"{what}, a {kind}random-weight test model"
        return what


@dataclass(frozen=True)
class ProbeBasis:
    """Which served model the probe results of one catalogue model came from, over ``runs`` runs."""

    model: str  # catalogue model id
    served: ServedModel | None  # None: the service did not say (or the runs predate recording it)
    runs: int = 1


class ProbeBackend(Protocol):
    """What probes need from the model services (gRPC in production, fakes in tests)."""

    def served_model(self, endpoint: str) -> ServedModel | None:
        """What the service behind ``endpoint`` ("visionlanguage" or "diffusion") has loaded (None: not said)."""

    def text_to_image(self, prompt: str, seed: int) -> bytes:
        """PNG bytes of one image generated for ``prompt`` by the diffusion service."""

    def image_text_similarity(self, image: bytes, text: str) -> float:
        """Image-text similarity from the vision-language service (cosine, -1..1)."""

    def caption(self, image: bytes) -> str:
        """A caption of ``image`` from the vision-language service."""

    def text_similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two texts' embeddings from the vision-language service."""


@dataclass(frozen=True)
class ProbeRun:
    run_id: str
    seed: int
    prompts: tuple[str, ...]
    results: tuple[ProbeResultRow, ...]
    outcomes: tuple[ProbeOutcomeRow, ...]
    skipped: tuple[str, ...]
    basis: tuple[ProbeBasis, ...] = ()  # what each probed model's service had loaded


def _clamp01(x: float) -> float:
    return float(min(1.0, max(0.0, x))) if np.isfinite(x) else 0.0


def run_probes(backend: ProbeBackend, served: list[tuple[str, str, str]], prompts: tuple[str, ...], seed: int,
               tie_margin: float = 0.02, check_cancel: Callable[[], None] = lambda: None) -> ProbeRun:
    """Probe every served model (id, endpoint, version) on ``prompts``; returns results and outcomes."""
    run_id = uuid.uuid4().hex[:16]
    diffusion = [m for m in served if m[1] == "diffusion"]
    vl = [m for m in served if m[1] == "visionlanguage"]
    skipped: list[str] = []
    results: list[ProbeResultRow] = []
    if not diffusion:
        skipped += [f"{m[0]}: no diffusion model is served to generate probe images" for m in vl]
        return ProbeRun(run_id, seed, prompts, (), (), tuple(skipped))
    if not vl:
        skipped += [f"{m[0]}: no vision-language model is served to judge probe images" for m in diffusion]
        return ProbeRun(run_id, seed, prompts, (), (), tuple(skipped))
    for i, prompt in enumerate(prompts):
        for d_id, _ep, d_ver in diffusion:
            check_cancel()
            image = backend.text_to_image(prompt, seed + i)
            sim = backend.image_text_similarity(image, prompt)
            results.append(ProbeResultRow(run_id, d_id, d_ver, prompt, _clamp01(sim),
                                          f"image-text similarity {sim:.4f}"))
            for v_id, _vep, v_ver in vl:
                check_cancel()
                caption = backend.caption(image)
                ts = backend.text_similarity(caption, prompt)
                results.append(ProbeResultRow(run_id, v_id, v_ver, prompt, _clamp01(ts),
                                              f"caption {caption[:200]!r} vs prompt: {ts:.4f}"))
    loaded = {ep: backend.served_model(ep) for ep in ("diffusion", "visionlanguage")}  # what the probes ran on
    basis = tuple(ProbeBasis(m[0], loaded[m[1]]) for m in (*diffusion, *vl))
    return ProbeRun(run_id, seed, prompts, tuple(results), tuple(pairwise(results, tie_margin)), tuple(skipped),
                    basis)


def pairwise(results: list[ProbeResultRow], tie_margin: float) -> list[ProbeOutcomeRow]:
    """Outcomes for every pair of models scored on the same prompt (mean if scored twice)."""
    by_prompt: dict[str, dict[tuple[str, str], list[float]]] = {}
    for r in results:
        by_prompt.setdefault(r.prompt, {}).setdefault((r.model_id, r.model_version), []).append(r.score)
    out = []
    for prompt, models in by_prompt.items():
        keys = sorted(models)
        for x in range(len(keys)):
            for y in range(x + 1, len(keys)):
                (ma, va), (mb, vb) = keys[x], keys[y]
                sa, sb = float(np.mean(models[keys[x]])), float(np.mean(models[keys[y]]))
                s = 0.5 if abs(sa - sb) <= tie_margin else (1.0 if sa > sb else 0.0)
                out.append(ProbeOutcomeRow(results[0].run_id, prompt, ma, mb, va, vb, s))
    return out
