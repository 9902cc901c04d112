"""RunProbes: check what can be probed, run the probes, store the run, report the refreshed quality.

With each run the engine keeps what every probed model's service had loaded and which
judge scored it (the probe basis), so pages can say whether quality was measured on the
real model or on a random-weight test model, and by whom. A run that could measure
nothing (no independent judge, or the judge is a contestant) is stored too, with why.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterable

from common.errors import FailedPrecondition, InvalidArgument, UnfragileError
from graph.catalogue import Catalogue
from graph.config import EngineConfig
from graph.probe_sets import PROBE_PROMPTS, probe_images
from graph.probes import JudgeModel, ProbeBackend, ProbeBasis, ProbeRun, ServedModel, run_probes
from graph.rank import Score
from graph.scoring import Scorer
from graph.store import KEPT_STATE, Store
from graph.sync import Sync

# Stored beside the runs as a graph_state row that is source data, not derived state (seq 0; kept by
# delete_state): [{"run_id", "model", "served": ServedModel fields, "judge": JudgeModel fields, "task"}]
# ("judge" and "task" are absent from entries recorded before independent judging).
BASIS_KEY = "probe_basis"
assert BASIS_KEY in KEPT_STATE
Provenance = tuple[ServedModel | None, JudgeModel | None, str]  # what served it, who judged, the task
Recorded = dict[tuple[str, str], Provenance]  # (run id, model id) -> its provenance in that run


class Prober:
    """Runs live quality probes against the models this deployment serves."""

    def __init__(self, store: Store, catalogue: Catalogue, scorer: Scorer, backend: ProbeBackend | None,
                 config: EngineConfig, lock: threading.RLock, sync: Sync) -> None:
        self.store = store
        self.sync = sync
        self.catalogue = catalogue
        self.scorer = scorer
        self.backend = backend
        self.config = config
        self.lock = lock
        # (probe version, recorded basis, runs with results per model), read once per probe version
        self._recorded: tuple[int, Recorded, dict[str, set[str]]] | None = None
        self._freshness: tuple[int, tuple[int, int, str]] | None = None  # (probe version, probe_freshness)

    def run(self, models: list[str], max_prompts: int, seed: int,
            check_cancel: Callable[[], None] = lambda: None) -> tuple[ProbeRun, dict[str, Score]]:
        """Probe ``models`` (all served ones when empty); returns the run and each probed model's quality."""
        if self.backend is None:
            raise FailedPrecondition("probes need the model services: set visionlanguage_target and "
                                     "diffusion_target (UNFRAGILE_GRAPH_VISIONLANGUAGE_TARGET / _DIFFUSION_TARGET)")
        served = self._served(models)
        prompts = PROBE_PROMPTS[:max_prompts] if max_prompts else PROBE_PROMPTS
        images = probe_images()[:max_prompts] if max_prompts else probe_images()
        try:
            run = run_probes(self.backend, served, seed, prompts, images, self.config.probe_tie_margin, check_cancel,
                             self._other_names())
        except UnfragileError as exc:  # a model service down or too slow: record it, pages say quality is stale
            self.store.record_probe_failure(exc.message)
            self.sync.note_probes()
            self.scorer.probes_changed()
            raise
        self._record_basis(run)  # before the run itself: a run is never stored without its basis
        self.store.add_probe_run(run.run_id, seed, list(run.prompts), list(run.results), list(run.outcomes),
                                 list(run.scores), list(run.skipped))
        self.sync.note_probes()
        self.scorer.probes_changed()
        st = self.scorer.state()
        probed = sorted({r.model_id for r in run.results})
        return run, {m: st.dims["quality"].score(self.catalogue.pos[m]) for m in probed}

    def _served(self, models: list[str]) -> list[tuple[str, str, str]]:
        """(id, endpoint, version) of the served models to probe: all of them, or those named."""
        served = self.store.serving()
        if models:
            wanted = {self.catalogue.resolve(m) for m in models}
            not_served = sorted(wanted - {s[0] for s in served})
            if not_served:
                raise InvalidArgument(f"models {not_served} are not served by this deployment "
                                      f"(serving_endpoint is empty); probes run only on served models")
            served = [s for s in served if s[0] in wanted]
        if not served:
            raise FailedPrecondition("no served models to probe: set serving_endpoint on a model record")
        return served

    def _other_names(self) -> dict[str, frozenset[str]]:
        """Each model's aliases (a judge that is a contestant under another name is refused too)."""
        names: dict[str, set[str]] = {}
        for alias, model in self.store.aliases().items():
            names.setdefault(model, set()).add(alias)
        return {m: frozenset(a) for m, a in names.items()}

    def freshness(self) -> tuple[int, int, str]:
        """``Store.probe_freshness``, read once per probe version (every run and failed attempt bumps it)."""
        version = self.scorer.probe_version
        if self._freshness is None or self._freshness[0] != version:
            self._freshness = (version, self.store.probe_freshness())
        return self._freshness[1]

    def quality_basis(self, model_ids: Iterable[str]) -> tuple[ProbeBasis, ...]:
        """What the stored probe results of each model ran on and who judged them (scorable or not), one row
        per distinct (served model, judge, task)."""
        recorded, runs_of = self._load_basis()
        out: list[ProbeBasis] = []
        for m in model_ids:
            tally: dict[Provenance, int] = {}
            for run in sorted(runs_of.get(m, ())):
                key = recorded.get((run, m), (None, None, ""))
                tally[key] = tally.get(key, 0) + 1
            rows = [ProbeBasis(m, s, n, j, t) for (s, j, t), n in tally.items()]
            out += sorted(rows, key=lambda b: (b.task, b.served is None, repr(b.served), repr(b.judge)))
        return tuple(out)

    def _record_basis(self, run: ProbeRun) -> None:
        entries: list[dict[str, object]] = [
            {"run_id": run.run_id, "model": b.model, "task": b.task,
             "served": dataclasses.asdict(b.served) if b.served is not None else None,
             "judge": dataclasses.asdict(b.judge) if b.judge is not None else None}
            for b in run.basis if b.served is not None or b.judge is not None]
        if not entries:
            return
        with self.lock:  # read-modify-write of one stored list: one run at a time
            self._append_basis(entries)

    def _append_basis(self, entries: list[dict[str, object]]) -> None:
        saved = self.store.load_state(BASIS_KEY)
        previous = json.loads(saved[1]) if saved is not None else []
        everything = previous + entries
        self.store.save_state({BASIS_KEY: (0, json.dumps(everything).encode())})
        self._recorded = None

    def _load_basis(self) -> tuple[Recorded, dict[str, set[str]]]:
        """The recorded basis of every run and the runs with results of each model, read once per probe version."""
        version = self.scorer.probe_version
        if self._recorded is None or self._recorded[0] != version:
            saved = self.store.load_state(BASIS_KEY)
            rows = json.loads(saved[1]) if saved is not None else []
            recorded: Recorded = {
                (r["run_id"], r["model"]): (ServedModel(**r["served"]) if r.get("served") else None,
                                            JudgeModel(**r["judge"]) if r.get("judge") else None, r.get("task", ""))
                for r in rows}
            runs_of: dict[str, set[str]] = {}
            for res in self.store.probe_results():
                runs_of.setdefault(res.model_id, set()).add(res.run_id)
            self._recorded = (version, recorded, runs_of)
        return self._recorded[1], self._recorded[2]
