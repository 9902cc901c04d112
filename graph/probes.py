"""Quality from live probes, compared only within a task and scored by an independent judge.

Probes are per task (capability family), from the endpoint that serves a model
(``ENDPOINT_TASKS``):

- **text-to-image**: every served generator draws one image per fixed prompt (seed
  ``seed + i`` for prompt i) and the judge scores the image against its prompt;
- **image-to-text**: every served captioner captions each image of the fixed probe image
  set shipped with the project, and the judge scores the caption against its image
  (reference-free: no human caption is involved).

The judge is a CLIP-family dual encoder hosted by a model service (the VisionLanguage
service's ``judge_model``) that is none of the contestants. Its score of an image–text
pair is CLIPScore = max(100 · cos, 0) (Hessel et al. 2021 write it as
w · max(cos, 0) with w = 2.5); results store it normalised to 0..1 as CLIPScore / 100
= max(cos, 0). If no judge is configured, or the judge is one of a task's contestants
(same model id or catalogue name), that task's quality is *not measured*: the run
records why in ``skipped`` and probes nothing for it.

Pairwise outcomes (1 / 0, or 0.5 within ``tie_margin``) are formed only between models
of the same task, judged by the same judge (id and version) on the same probe item of
the same probe set; each model's mean judged score per task is stored too, as an
absolute score comparable only under the same judge and probe set. Everything carries
``scorable``: results of a model its service reports as a random-weight test model, or
scored by a test-model judge, are stored for the record (pages say what the probes ran
on) but never enter a score, with the reason.

The backend is a small Protocol so tests can replace the model services.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.errors import FailedPrecondition, Unavailable
from graph.probe_sets import PROBE_PROMPTS, ProbeImage, probe_set_id
from graph.store import TASK_IMAGE_TO_TEXT, TASK_TEXT_TO_IMAGE, ProbeOutcomeRow, ProbeResultRow, ProbeScoreRow

__all__ = ["ENDPOINT_TASKS", "PROBE_PROMPTS", "JudgeModel", "JudgeScores", "ProbeBackend", "ProbeBasis", "ProbeRun",
           "ServedModel", "pairwise", "run_probes", "task_means"]

TASKS = (TASK_TEXT_TO_IMAGE, TASK_IMAGE_TO_TEXT)
ENDPOINT_TASKS = {"diffusion": TASK_TEXT_TO_IMAGE, "visionlanguage": TASK_IMAGE_TO_TEXT}
NO_JUDGE = "no independent judge is configured (set judge_model on the VisionLanguage service)"


def _described(what: str, architecture: str, parameters: int, test_model: bool, test_preset: str,
               version: str = "") -> str:
    facts = ", ".join(x for x in (architecture, f"{parameters:,} parameters" if parameters else "") if x)
    text = (f"{what} ({facts})" if facts else what) + (f" version {version}" if version else "")
    if test_model:
        kind = f"{test_preset} " if test_preset else ""
        return f"{text}, a {kind}random-weight test model"
    return text


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
        return _described(self.model_id, self.architecture, self.parameters, self.test_model, self.test_preset)


@dataclass(frozen=True)
class JudgeModel:
    """The independent judge of a probe run: a CLIP-family dual encoder and where it was served."""

    model_id: str  # hub id or folder the judge was loaded from
    architecture: str = ""  # e.g. "CLIPModel", "SiglipModel"
    version: str = ""  # the hub commit of a cached checkpoint, else a hash of its config and weights
    test_model: bool = False  # random weights: its scores say nothing about any model
    test_preset: str = ""
    parameters: int = 0
    endpoint: str = "visionlanguage"  # the service hosting it

    def describe(self) -> str:
        """'<model_id> (CLIPModel, 1,234 parameters) version <v>, a tiny random-weight test model'."""
        return _described(self.model_id, self.architecture, self.parameters, self.test_model, self.test_preset,
                          self.version)


@dataclass(frozen=True)
class JudgeScores:
    """The judge's cosine similarity of each (image, text) pair, and who judged."""

    cosine: tuple[float, ...]
    judge: JudgeModel


@dataclass(frozen=True)
class ProbeBasis:
    """Which served model, judged by which judge, the probe results of one catalogue model came from."""

    model: str  # catalogue model id
    served: ServedModel | None  # None: the service did not say (or the runs predate recording it)
    runs: int = 1
    judge: JudgeModel | None = None  # None: the runs predate independent judging
    task: str = ""  # the task probed ("" for runs before tasks were recorded)


class ProbeBackend(Protocol):
    """What probes need from the model services (gRPC in production, fakes in tests)."""

    def served_model(self, endpoint: str) -> ServedModel | None:
        """What the service behind ``endpoint`` ("visionlanguage" or "diffusion") has loaded (None: not said)."""

    def judge_model(self) -> JudgeModel | None:
        """The judge the model services offer (None: none is configured)."""

    def text_to_image(self, model: str, endpoint: str, prompt: str, seed: int) -> bytes:
        """PNG bytes of one image generated for ``prompt`` by the service serving catalogue model ``model``."""

    def caption(self, model: str, endpoint: str, image: bytes) -> str:
        """A caption of ``image`` by the service serving catalogue model ``model``."""

    def judge(self, images: list[bytes], texts: list[str]) -> JudgeScores:
        """The judge's cosine similarity of ``images[i]`` and ``texts[i]`` for every i (-1..1)."""


@dataclass(frozen=True)
class ProbeRun:
    run_id: str
    seed: int
    prompts: tuple[str, ...]  # the probe items of every task that ran (prompts, then probe image names)
    results: tuple[ProbeResultRow, ...]
    outcomes: tuple[ProbeOutcomeRow, ...]
    skipped: tuple[str, ...]  # "model: why" for every model whose quality was not measured
    basis: tuple[ProbeBasis, ...] = ()  # what each probed model's service had loaded, and the judge
    judge: JudgeModel | None = None
    scores: tuple[ProbeScoreRow, ...] = ()  # each probed model's mean judged score per task


@dataclass(frozen=True)
class _Task:
    """One task's probing in one run: who is probed, the judge, the probe set, the provenance of each model."""

    name: str
    run_id: str
    members: tuple[tuple[str, str, str], ...]  # (catalogue id, endpoint, version)
    judge: JudgeModel
    probe_set: str
    provenance: Mapping[str, tuple[bool, str]]  # model id -> (scorable, reason)

    def row(self, model: tuple[str, str, str], item: str, cosine: float, detail: str) -> ProbeResultRow:
        scorable, reason = self.provenance[model[0]]
        return ProbeResultRow(self.run_id, model[0], model[2], item, clip01(cosine), detail, self.name,
                              self.judge.model_id, self.judge.version, self.probe_set, scorable, reason)


def clip01(cosine: float) -> float:
    """The stored score: CLIPScore / 100 = max(cosine, 0), in 0..1 (0 for a non-finite cosine)."""
    return float(min(1.0, max(0.0, cosine))) if np.isfinite(cosine) else 0.0


def _clip_score(cosine: float) -> str:
    return f"CLIPScore {100 * clip01(cosine):.2f} (cosine {cosine:.4f})"


def _norm(name: str) -> str:
    return name.strip().rstrip("/").lower()


def self_judging(judge: JudgeModel | None, members: list[tuple[str, str, str]],
                 loaded: Mapping[str, ServedModel | None], names: Mapping[str, frozenset[str]]) -> str:
    """Why ``judge`` may not judge these contestants ("" when it may): none configured, or it is one of them."""
    if judge is None:
        return NO_JUDGE
    for model, endpoint, _v in members:
        served = loaded.get(endpoint)
        known = {model, *names.get(model, ()), *((served.model_id,) if served is not None else ())}
        if _norm(judge.model_id) in {_norm(n) for n in known}:
            return (f"the only judge available, {judge.model_id}, is a contestant ({model}): a model may not "
                    f"judge itself")
    return ""


def _provenance(served: ServedModel | None, judge: JudgeModel) -> tuple[bool, str]:
    """(scorable, reason): never scorable when the probed model or the judge has random weights."""
    why = []
    if served is not None and served.test_model:
        why.append(f"probed on {served.describe()}")
    if judge.test_model:
        why.append(f"judged by {judge.describe()}")
    return (False, "; ".join(why) + ": says nothing about the real model") if why else (True, "")


def _judged(backend: ProbeBackend, judge: JudgeModel, images: list[bytes], texts: list[str]) -> list[float]:
    """The judge's cosines of the pairs, checked to come from the judge the run recorded."""
    if not images:
        return []
    got = backend.judge(images, texts)
    if (got.judge.model_id, got.judge.version) != (judge.model_id, judge.version):
        raise FailedPrecondition(f"the judge changed during the probe run ({judge.describe()} -> "
                                 f"{got.judge.describe()}); run the probes again")
    if len(got.cosine) != len(images):
        raise Unavailable(f"the judge answered {len(got.cosine)} scores for {len(images)} image-text pairs")
    return [float(c) for c in got.cosine]


def _text_to_image(backend: ProbeBackend, t: _Task, prompts: tuple[str, ...], seed: int,
                   check_cancel: Callable[[], None]) -> list[ProbeResultRow]:
    drawn: list[tuple[tuple[str, str, str], str, bytes]] = []
    for i, prompt in enumerate(prompts):
        for m in t.members:
            check_cancel()
            drawn.append((m, prompt, backend.text_to_image(m[0], m[1], prompt, seed + i)))
    check_cancel()
    cos = _judged(backend, t.judge, [img for _m, _p, img in drawn], [p for _m, p, _i in drawn])
    return [t.row(m, p, c, f"its image for the prompt: {_clip_score(c)}") for (m, p, _i), c in zip(drawn, cos)]


def _image_to_text(backend: ProbeBackend, t: _Task, images: tuple[ProbeImage, ...],
                   check_cancel: Callable[[], None]) -> list[ProbeResultRow]:
    written: list[tuple[tuple[str, str, str], ProbeImage, str]] = []
    for image in images:
        for m in t.members:
            check_cancel()
            written.append((m, image, backend.caption(m[0], m[1], image.data).strip()))
    check_cancel()
    said = [(k, w) for k, w in enumerate(written) if w[2]]  # an empty caption says nothing: it scores 0
    cos = dict(zip((k for k, _w in said), _judged(backend, t.judge, [w[1].data for _k, w in said],
                                                  [w[2] for _k, w in said])))
    return [t.row(m, img.name, cos.get(k, 0.0),
                  f"caption {text[:200]!r}: {_clip_score(cos[k])}" if k in cos else "empty caption: CLIPScore 0")
            for k, (m, img, text) in enumerate(written)]


def run_probes(backend: ProbeBackend, served: list[tuple[str, str, str]], seed: int, prompts: tuple[str, ...],
               images: tuple[ProbeImage, ...], tie_margin: float = 0.02,
               check_cancel: Callable[[], None] = lambda: None,
               names: Mapping[str, frozenset[str]] | None = None) -> ProbeRun:
    """Probe every served model (id, endpoint, version) on its task's probe set (see the module docstring).

    ``names``: other names of each catalogue model (aliases), so a judge that is a contestant under
    another name is still refused.
    """
    run_id = uuid.uuid4().hex[:16]
    skipped: list[str] = []
    by_task: dict[str, list[tuple[str, str, str]]] = {}
    for m in served:
        if m[1] in ENDPOINT_TASKS:
            by_task.setdefault(ENDPOINT_TASKS[m[1]], []).append(m)
        else:
            skipped.append(f"{m[0]}: quality not measured: no probes exist for models served by {m[1]!r}")
    loaded = {ep: backend.served_model(ep) for ep in sorted({m[1] for ms in by_task.values() for m in ms})}
    judge = backend.judge_model()
    results: list[ProbeResultRow] = []
    items: list[str] = []
    basis: list[ProbeBasis] = []
    for task in TASKS:
        members = by_task.get(task, [])
        why = self_judging(judge, members, loaded, names or {}) if members else ""
        if why:
            skipped += [f"{m[0]}: quality not measured for {task}: {why}" for m in members]
        if not members or why or judge is None:
            continue
        provenance = {m[0]: _provenance(loaded[m[1]], judge) for m in members}
        if task == TASK_TEXT_TO_IMAGE:
            t = _Task(task, run_id, tuple(members), judge,
                      probe_set_id(task, [(p, p.encode()) for p in prompts]), provenance)
            results += _text_to_image(backend, t, prompts, seed, check_cancel)
            items += prompts
        else:
            t = _Task(task, run_id, tuple(members), judge,
                      probe_set_id(task, [(i.name, i.data) for i in images]), provenance)
            results += _image_to_text(backend, t, images, check_cancel)
            items += [i.name for i in images]
        basis += [ProbeBasis(m[0], loaded[m[1]], 1, judge, task) for m in members]
    return ProbeRun(run_id, seed, tuple(items), tuple(results), tuple(pairwise(results, tie_margin)), tuple(skipped),
                    tuple(basis), judge, tuple(task_means(results)))


def _combined(*reasons: str) -> str:
    return "; ".join(dict.fromkeys(r for r in reasons if r))


def pairwise(results: list[ProbeResultRow], tie_margin: float) -> list[ProbeOutcomeRow]:
    """Outcomes for every pair of models scored on the same probe item of the same task, judge and probe set
    (a model's mean when it was scored twice). Never across tasks, judges or probe sets."""
    groups: dict[tuple[str, str, str, str, str], dict[tuple[str, str], list[ProbeResultRow]]] = {}
    for r in results:
        key = (r.task, r.judge_id, r.judge_version, r.probe_set, r.prompt)
        groups.setdefault(key, {}).setdefault((r.model_id, r.model_version), []).append(r)
    out = []
    for (task, judge_id, judge_version, probe_set, item), models in groups.items():
        keys = sorted(models)
        for x in range(len(keys)):
            for y in range(x + 1, len(keys)):
                ra, rb = models[keys[x]], models[keys[y]]
                sa, sb = float(np.mean([r.score for r in ra])), float(np.mean([r.score for r in rb]))
                s = 0.5 if abs(sa - sb) <= tie_margin else (1.0 if sa > sb else 0.0)
                scorable = all(r.scorable for r in (*ra, *rb))
                reason = "" if scorable else _combined(*(r.reason for r in (*ra, *rb)))
                out.append(ProbeOutcomeRow(ra[0].run_id, item, keys[x][0], keys[y][0], keys[x][1], keys[y][1], s,
                                           task, judge_id, judge_version, probe_set, scorable, reason))
    return out


def task_means(results: list[ProbeResultRow]) -> list[ProbeScoreRow]:
    """Each model's mean judged score per run, task, judge and probe set, in first-seen order."""
    groups: dict[tuple[str, str, str, str, str, str, str], list[ProbeResultRow]] = {}
    for r in results:
        key = (r.run_id, r.task, r.model_id, r.model_version, r.judge_id, r.judge_version, r.probe_set)
        groups.setdefault(key, []).append(r)
    out = []
    for key, rows in groups.items():
        scorable = all(r.scorable for r in rows)
        out.append(ProbeScoreRow(*key, float(np.mean([r.score for r in rows])), len(rows), scorable,
                                 "" if scorable else _combined(*(r.reason for r in rows))))
    return out
