"""Quality probes per task, scored by an independent judge, through the replaceable ProbeBackend.

The fake backend's outputs name the model that made them and its judge scores them by a table,
so every stored number is known: outcomes form within a task only, test models and test judges
are stored but never scored, and a judge that is a contestant leaves the task not measured.
"""

from __future__ import annotations

import sqlite3

import pytest

from graph.probe_sets import PROBE_PROMPTS, probe_images
from graph.probes import NO_JUDGE, JudgeModel, pairwise, task_means
from graph.store import ProbeResultRow, open_store
from graph.store.probe_schema import LEGACY_REASON
from tests.graph.conftest import JUDGE, FakeProbes
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

T2I, I2T = "text-to-image", "image-to-text"
GENERATORS = {"stable-diffusion", "sdxl"}
CAPTIONERS = {"kosmos-2-patch14-224", "blip"}


def _serve_two_per_task(stub) -> None:
    """Beside the two seed models: a second generator and a second captioner, both served."""
    for mid, endpoint in (("sdxl", "diffusion"), ("blip", "visionlanguage")):
        stub.UpsertModel(pb.UpsertModelRequest(model=pb.ModelRecord(
            id=mid, name=mid.upper(), type=pb.MODEL_TYPE_MODEL, serving_endpoint=endpoint, version="1")))


def _row(model: str, item: str, score: float, task: str = T2I, judge: tuple[str, str] = ("j", "1"),
         probe_set: str = "s") -> ProbeResultRow:
    return ProbeResultRow("r", model, "1", item, score, "", task, *judge, probe_set, True, "")


def test_pairwise_never_crosses_tasks_judges_or_probe_sets():
    rows = [_row("a", "p", 0.9), _row("b", "p", 0.1),  # the one comparable pair
            _row("c", "p", 0.5, task=I2T),  # same item name, another task
            _row("d", "p", 0.4, judge=("j", "2")),  # another version of the judge
            _row("e", "p", 0.3, probe_set="other")]  # another probe set
    out = pairwise(rows, 0.02)
    assert [(o.model_a, o.model_b, o.a_score, o.task, o.judge_version, o.scorable) for o in out] == [
        ("a", "b", 1.0, T2I, "1", True)]
    means = {(m.model_id, m.task): (m.mean, m.n) for m in task_means(rows + [_row("a", "q", 0.5)])}
    assert means[("a", T2I)] == (pytest.approx(0.7), 2) and means[("c", I2T)] == (0.5, 1)
    # one unscorable side makes the outcome unscorable, with its reason
    mixed = pairwise([_row("a", "p", 0.9), ProbeResultRow("r", "b", "1", "p", 0.1, "", T2I, "j", "1", "s", False,
                                                          "probed on a test model")], 0.02)
    assert [(o.scorable, o.reason) for o in mixed] == [(False, "probed on a test model")]


def test_outcomes_form_only_within_a_task_under_an_independent_judge(make_server, upsert_seed):
    fake = FakeProbes(scores={"stable-diffusion": 0.8, "sdxl": 0.3, "kosmos-2-patch14-224": 0.4, "blip": 0.6})
    s = make_server(probe_backend=fake)
    upsert_seed(s.stub)
    _serve_two_per_task(s.stub)
    r = s.stub.RunProbes(pb.RunProbesRequest(max_prompts=3, seed=7))
    assert not r.skipped and len(r.results) == 12 and fake.seeds == [7, 7, 8, 8, 9, 9]
    task_of = {x.model_id: x.task for x in r.results}
    assert task_of == {**dict.fromkeys(GENERATORS, T2I), **dict.fromkeys(CAPTIONERS, I2T)}
    assert {x.prompt for x in r.results if x.task == T2I} == set(PROBE_PROMPTS[:3])
    assert {x.prompt for x in r.results if x.task == I2T} == {i.name for i in probe_images()[:3]}
    assert all((x.judge_id, x.judge_version, x.scorable, x.reason) == (JUDGE.model_id, JUDGE.version, True, "")
               for x in r.results)
    assert {x.probe_set.rsplit(":", 1)[0] for x in r.results} == {f"{T2I}:3", f"{I2T}:3"}
    # the judge saw each generated image with its prompt and each probe image with its caption
    assert len(fake.judged) == 12 and sum(img.startswith(b"\x89PNG") for img, _t in fake.judged) == 6
    # three outcomes per task, never a generator against a captioner
    assert len(r.outcomes) == 6
    for o in r.outcomes:
        pair = {o.model_a, o.model_b}
        assert pair in (GENERATORS, CAPTIONERS) and o.task == (T2I if pair == GENERATORS else I2T)
        winner = "blip" if o.task == I2T else "stable-diffusion"
        assert o.scorable and o.judge_id == JUDGE.model_id and o.a_score == (1.0 if o.model_a == winner else 0.0)
    assert {(x.model_id, x.task, round(x.mean, 6), x.n, x.scorable) for x in r.scores} == {
        ("stable-diffusion", T2I, 0.8, 3, True), ("sdxl", T2I, 0.3, 3, True),
        ("kosmos-2-patch14-224", I2T, 0.4, 3, True), ("blip", I2T, 0.6, 3, True)}
    assert r.judge.model_id == JUDGE.model_id and r.judge.version == JUDGE.version and not r.judge.test_model
    assert {(b.model, b.task, b.judge.model_id) for b in r.served} == {(m, task_of[m], JUDGE.model_id)
                                                                       for m in task_of}
    assert r.quality["stable-diffusion"].value > r.quality["sdxl"].value
    assert r.quality["blip"].value > r.quality["kosmos-2-patch14-224"].value
    # stored as answered, with tasks and judge, on either backend, and kept over a restart
    s.restart()
    store = s.engine.store
    assert [(o.task, o.model_a, o.model_b, o.a_score, o.probe_set) for o in store.probe_outcomes()] == \
        [(o.task, o.model_a, o.model_b, o.a_score, o.probe_set) for o in r.outcomes]
    assert [(x.model_id, x.task, x.mean, x.n) for x in store.probe_scores()] == \
        [(x.model_id, x.task, pytest.approx(x.mean), x.n) for x in r.scores]
    assert store.probe_runs()[-1].prompts == tuple(PROBE_PROMPTS[:3]) + tuple(i.name for i in probe_images()[:3])
    page = s.stub.Compare(pb.CompareRequest(a="sd", b="sdxl"))
    assert [(b.model, b.task, b.judge.version) for b in page.probe_basis] == [
        ("stable-diffusion", T2I, JUDGE.version), ("sdxl", T2I, JUDGE.version)]


@pytest.mark.parametrize("db_backend", ["sqlite"])  # the rule, not storage (stored runs: see below)
@pytest.mark.parametrize("judge_id", ["/models/visionlanguage", "microsoft/kosmos-2-patch14-224", "KOSMOS2/"])
def test_a_judge_that_is_a_contestant_leaves_its_task_not_measured(make_server, upsert_seed, judge_id):
    """The served model's id, or any catalogue name of a contestant, as the judge's id: no self-judging."""
    s = make_server(probe_backend=FakeProbes(judge=JudgeModel(judge_id, "CLIPModel", "v1")))
    upsert_seed(s.stub)
    r = s.stub.RunProbes(pb.RunProbesRequest(max_prompts=2, seed=1))
    assert list(r.skipped) == [f"kosmos-2-patch14-224: quality not measured for {I2T}: the only judge available, "
                               f"{judge_id}, is a contestant (kosmos-2-patch14-224): a model may not judge itself"]
    assert {x.model_id for x in r.results} == {"stable-diffusion"}  # the other task is judged as usual
    assert s.engine.store.probe_runs()[-1].skipped == tuple(r.skipped)


def test_without_a_judge_nothing_is_measured_and_the_run_says_why(make_server, upsert_seed):
    s = make_server(probe_backend=FakeProbes(judge=None))
    upsert_seed(s.stub)
    r = s.stub.RunProbes(pb.RunProbesRequest(max_prompts=2, seed=1))
    assert not r.results and not r.outcomes and not r.scores and not r.HasField("judge")
    assert sorted(r.skipped) == [f"kosmos-2-patch14-224: quality not measured for {I2T}: {NO_JUDGE}",
                                 f"stable-diffusion: quality not measured for {T2I}: {NO_JUDGE}"]
    store = s.engine.store
    assert [run.skipped for run in store.probe_runs()] == [tuple(r.skipped)]
    assert store.probe_freshness()[0] == 0  # a run that measured nothing is no evidence
    assert s.stub.GetModel(pb.GetModelRequest(model="sd")).scores.quality.evidence_count == 0


@pytest.mark.parametrize("test_models,judge,says", [
    (True, JUDGE, "probed on /models/diffusion (DiffusionArch, 1,000 parameters), a tiny random-weight test model"),
    (False, JudgeModel("/models/tiny-clip", "CLIPModel", "v1", test_model=True, test_preset="tiny"),
     "judged by /models/tiny-clip (CLIPModel) version v1, a tiny random-weight test model")])
def test_test_models_and_test_judges_are_stored_but_never_scored(make_server, upsert_seed, test_models, judge,
                                                                 says):
    s = make_server(probe_backend=FakeProbes(test_models=test_models, judge=judge,
                                             scores={"stable-diffusion": 0.9, "sdxl": 0.1}))
    upsert_seed(s.stub)
    _serve_two_per_task(s.stub)
    r = s.stub.RunProbes(pb.RunProbesRequest(max_prompts=2, seed=1))
    assert len(r.results) == 8 and len(r.outcomes) == 4 and len(r.scores) == 4
    assert not any(x.scorable for x in [*r.results, *r.outcomes, *r.scores])
    sd = next(x for x in r.results if x.model_id == "stable-diffusion")
    assert says in sd.reason and sd.reason.endswith("says nothing about the real model")
    store = s.engine.store
    assert store.probe_outcomes() == [] and store.probe_scores() == []  # what scoring reads
    assert len(store.probe_outcomes(include_unscorable=True)) == 4 and len(store.probe_results()) == 8
    assert len(store.probe_scores(include_unscorable=True)) == 4
    assert all(q.evidence_count == 0 for q in r.quality.values())
    assert s.stub.GetModel(pb.GetModelRequest(model="sd")).scores.quality.evidence_count == 0
    page = s.stub.Compare(pb.CompareRequest(a="sd", b="sdxl"))  # pages still say what the probes ran on
    assert [(b.model, b.runs, b.judge.test_model) for b in page.probe_basis] == [
        ("stable-diffusion", 1, judge.test_model), ("sdxl", 1, judge.test_model)]


def _downgrade(url: str, backend: str) -> None:
    """Make a schema-3 database look like one written before it: probe columns and table of schema 3 gone."""
    drop = ["ALTER TABLE probe_runs DROP COLUMN skipped", "DROP TABLE probe_scores",
            "UPDATE meta SET value = '2' WHERE key = 'schema_version'"]
    drop += [f"ALTER TABLE {t} DROP COLUMN {c}" for t in ("probe_results", "probe_outcomes")
             for c in ("task", "judge_id", "judge_version", "probe_set", "scorable", "reason")]
    old = ["INSERT INTO probe_runs (run_id, started_ms, seed, prompts) VALUES ('old', 1, 0, '[\"p\"]')",
           "INSERT INTO probe_results (run_id, model_id, model_version, prompt, score, detail) "
           "VALUES ('old', 'a', '1', 'p', 0.5, 'round trip')",
           "INSERT INTO probe_outcomes (run_id, prompt, model_a, model_b, version_a, version_b, a_score) "
           "VALUES ('old', 'p', 'a', 'b', '1', '1', 1.0)"]
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        for sql in drop + old:
            conn.execute(sql)
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            for sql in drop + old:
                conn.execute(sql)


def test_databases_from_before_keep_their_probes_for_the_record_but_never_score_them(graph_dbs, db_backend):
    url = graph_dbs.url("old.db")
    open_store(url).close()
    _downgrade(url, db_backend)
    store = open_store(url)  # the upgrade happens on open
    try:
        assert store.probe_outcomes() == [] and store.probe_scores() == []
        (old,) = store.probe_outcomes(include_unscorable=True)
        assert (old.model_a, old.a_score, old.task, old.scorable, old.reason) == ("a", 1.0, "", False, LEGACY_REASON)
        (res,) = store.probe_results()
        assert (res.detail, res.judge_id, res.scorable, res.reason) == ("round trip", "", False, LEGACY_REASON)
        assert store.probe_runs()[0].skipped == ()
        assert dict(store.read_rows("meta").__next__())["schema_version"] == "4"
        # and a new run is stored beside them with all its columns
        store.add_probe_run("new", 1, ["p"], [_row("a", "p", 0.7)], pairwise([_row("a", "p", 0.7),
                                                                              _row("b", "p", 0.2)], 0.02),
                            task_means([_row("a", "p", 0.7)]), ["c: not measured"])
        assert [o.run_id for o in store.probe_outcomes()] == ["r"] and len(store.probe_scores()) == 1
        assert store.probe_runs()[-1].skipped == ("c: not measured",)
    finally:
        store.close()
