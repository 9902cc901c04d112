"""The probe rows both store backends keep: results, pairwise outcomes, per-task mean scores and runs."""

from __future__ import annotations

from dataclasses import dataclass

# Tasks (capability families) probes compare models within; quality is never compared across them.
TASK_TEXT_TO_IMAGE = "text-to-image"
TASK_IMAGE_TO_TEXT = "image-to-text"


@dataclass(frozen=True)
class ProbeOutcomeRow:
    """One pairwise outcome of two models of the same task, judged by the same judge on the same probe item."""

    run_id: str
    prompt: str  # the probe item: the prompt (text-to-image) or the probe image's name (image-to-text)
    model_a: str
    model_b: str
    version_a: str
    version_b: str
    a_score: float  # 1 a won, 0 b won, 0.5 tie
    task: str = ""  # "text-to-image" or "image-to-text" ("" for outcomes stored before tasks were recorded)
    judge_id: str = ""  # the judge's model id and version: outcomes compare only under one judge
    judge_version: str = ""
    probe_set: str = ""  # the probe set both models were judged on (see graph.probe_sets)
    scorable: bool = False  # False: stored for the record only (test models or judge, self-judging); never scored
    reason: str = ""  # why it is not scorable ("" when scorable)


@dataclass(frozen=True)
class ProbeResultRow:
    """One model's judged score on one probe item."""

    run_id: str
    model_id: str
    model_version: str
    prompt: str  # the probe item: the prompt (text-to-image) or the probe image's name (image-to-text)
    score: float  # the judge's CLIPScore / 100 = max(cosine, 0), in 0..1
    detail: str
    task: str = ""
    judge_id: str = ""
    judge_version: str = ""
    probe_set: str = ""
    scorable: bool = False
    reason: str = ""


@dataclass(frozen=True)
class ProbeScoreRow:
    """One model's mean judged score over one task's probe set in one run: an absolute score, comparable
    only with scores of the same task, judge (id and version) and probe set."""

    run_id: str
    task: str
    model_id: str
    model_version: str
    judge_id: str
    judge_version: str
    probe_set: str
    mean: float  # mean of the run's ProbeResultRow.score of this model and task, 0..1
    n: int  # probe items behind the mean
    scorable: bool = False
    reason: str = ""


@dataclass(frozen=True)
class ProbeRunRow:
    """One probe run: when, its seed, the probe items it used, and what it could not measure and why."""

    run_id: str
    started_ms: int
    seed: int
    prompts: tuple[str, ...]  # probe items of every task that ran (prompts, then probe image names)
    skipped: tuple[str, ...] = ()  # "model: why" for each model and task not measured
