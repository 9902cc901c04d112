"""Evidence rules: not measured is not 0, ranks drop and renormalise, quality only within a task,
probes of test models never score, and every rate-like dimension is shrunk by a stated amount."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from graph import quality, rates
from graph.config import EngineConfig
from graph.engine import Engine
from graph.rank import DIMENSIONS, Difference, difference, difference_of
from graph.records import Fact, MatchEvent, ModelRecord, QualityEvidence, Signal
from graph.seed_data import SEED_MODELS
from graph.shrinkage import beta_rate, max_step
from graph.store import ProbeOutcomeRow, ProbeResultRow, SqliteStore
from tests.graph.conftest import T, seed_with_readings, with_readings
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

CONFIG = EngineConfig(bootstrap_rounds=120, graph_bootstrap_rounds=10)


def _engine(records: list[ModelRecord], config: EngineConfig = CONFIG) -> Engine:
    e = Engine(SqliteStore(":memory:"), config)
    e.load()
    e.import_models(records)
    return e


def _sig(kind: str, value: float, src: str = "a", at: str = "2026-11-01") -> Signal:
    return Signal(kind, value, f"{T}/{src}", at)


def _card(e: Engine, model: str):
    return e.get(model, False)[1]


# ---------------------------------------------------------------- not measured is not 0
def test_a_dimension_without_evidence_is_not_measured_on_every_surface(seeded):
    r = seeded.stub.GetModel(pb.GetModelRequest(model="sd"))
    for dim in ("adoption", "ecosystem", "quality", "freshness", "rank"):
        s = getattr(r.scores, dim)
        assert not s.measured and s.not_measured_reason and (s.value, s.low, s.high) == (0, 0, 0)
    assert r.scores.adoption.not_measured_reason == "no adoption reading recorded"
    assert list(r.scores.rests_on) == [] and not r.scores.rank_weights
    page = seeded.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    rows = {x.feature: (x.a, x.b) for x in page.rows}
    assert rows["Adoption"] == ("not measured (no adoption reading recorded)",) * 2
    assert "0.00" not in page.markdown.split("## Evidence")[0]  # nothing unmeasured is shown as a number
    assert "no reading" in page.markdown and 'class="no-reading"' in page.html


def test_rank_drops_unmeasured_dimensions_renormalises_and_widens_its_interval():
    dates = (Fact("released", "2026-01-01", f"{T}/f", "2026-11-01"),
             Fact("last_modified", "2026-06-01", f"{T}/f", "2026-11-01"))
    full = ModelRecord("full", "Full", tasks=("text-to-image",), adoption=(_sig("downloads", 1000),),
                       ecosystem=(_sig("finetunes", 10),), facts=dates,
                       external_quality=(QualityEvidence("GenEval", 0.6, f"{T}/q", "2026-11-01", "text-to-image",
                                                         "0..1"),))
    rival = replace(full, id="rival", name="Rival", external_quality=(
        QualityEvidence("GenEval", 0.4, f"{T}/q", "2026-11-01", "text-to-image", "0..1"),))
    thin = ModelRecord("thin", "Thin", adoption=(_sig("downloads", 1000),))
    empty = ModelRecord("empty", "Empty")
    e = _engine([full, rival, thin, empty])
    cf, ct, ce = _card(e, "full"), _card(e, "thin"), _card(e, "empty")
    assert ct.rests_on == ("adoption", "match_graph")  # match graph at its prior; nothing else was read
    w = EngineConfig().weights
    assert ct.rank_weights == pytest.approx({"adoption": w["adoption"] / (w["adoption"] + w["match_graph"]),
                                             "match_graph": w["match_graph"] / (w["adoption"] + w["match_graph"])})
    assert ct.rank.value == pytest.approx(100 * sum(ct.rank_weights[d] * ct.get(d).value for d in ct.rests_on))
    assert cf.rests_on == DIMENSIONS
    # what the rank does not rest on may lie anywhere in its range: a much wider interval
    assert (ct.rank.high - ct.rank.low) > 2 * (cf.rank.high - cf.rank.low)
    for c in (cf, ct):
        assert c.rank.low <= c.rank.value <= c.rank.high
    assert not ce.rank.measured and ce.rank.reason == "no dimension is measured for it"
    order = [m for m, _n, _c in e.rank("", 10, 0)[0]]
    assert order[-1] == "empty"


# ---------------------------------------------------------------- adoption: log-normalised per type
def test_adoption_is_log_normalised_per_kind_and_artifact_type_and_skips_missing_kinds():
    a = ModelRecord("a", "A", adoption=(_sig("downloads", 1_000_000), _sig("likes", 100)))
    b = ModelRecord("b", "B", adoption=(_sig("downloads", 1000),))  # no likes: skipped, not 0
    tool = ModelRecord("t", "T", type="tool", adoption=(_sig("downloads", 50),))  # its own scale
    e = _engine([a, b, tool])
    ca, cb, ct = _card(e, "a"), _card(e, "b"), _card(e, "t")
    assert ca.adoption.value == pytest.approx(1.0)
    assert cb.adoption.value == pytest.approx(np.log1p(1000) / np.log1p(1_000_000))
    assert ct.adoption.value == pytest.approx(1.0)
    # two models are not a landslide: b keeps half of a's log-scale adoption
    assert 0.4 < cb.adoption.value < 0.6


def test_one_reading_gives_a_wide_adoption_interval_and_agreeing_readings_a_narrower_one():
    one = ModelRecord("one", "One", adoption=(_sig("downloads", 5000),))
    three = ModelRecord("three", "Three", adoption=(_sig("downloads", 5000), _sig("likes", 50), _sig("stars", 400)))
    top = ModelRecord("top", "Top", adoption=(_sig("downloads", 10**7), _sig("likes", 10**5), _sig("stars", 10**5)))
    e = _engine([one, three, top])
    w1 = _card(e, "one").adoption.high - _card(e, "one").adoption.low
    w3 = _card(e, "three").adoption.high - _card(e, "three").adoption.low
    assert w1 > 0.1 and w3 < w1


def test_history_is_kept_and_scores_use_the_newest_reading(make_server):
    s = make_server()
    rec = ModelRecord("m", "M", adoption=(_sig("downloads", 100, at="2026-09-01"),))
    other = ModelRecord("o", "O", adoption=(_sig("downloads", 10_000, at="2026-09-01"),))
    from tests.graph.conftest import import_records

    import_records(s.stub, [rec, other])
    before = s.stub.GetModel(pb.GetModelRequest(model="m")).scores.adoption.value
    import_records(s.stub, [replace(rec, adoption=(_sig("downloads", 5000, at="2026-11-01"),))])
    r = s.stub.GetModel(pb.GetModelRequest(model="m", explain=True))
    assert r.scores.adoption.value > before
    assert r.scores.adoption.value == pytest.approx(np.log1p(5000) / np.log1p(10_000))
    assert [(x.value, x.observed_at) for x in r.model.adoption] == [(5000, "2026-11-01")]
    hist = s.engine.store.observation_history("m")
    assert [(h[2], h[5]) for h in hist] == [(100.0, "2026-09-01"), (5000.0, "2026-11-01")]
    assert any(x.kind == "history" and "read 2026-09-01" in x.detail and "superseded" in x.detail
               for x in r.evidence)
    # an upsert without readings keeps them: readings are history, not part of the record's last version
    import_records(s.stub, [replace(rec, adoption=())])
    kept = s.stub.GetModel(pb.GetModelRequest(model="m")).scores.adoption.value
    assert kept == pytest.approx(r.scores.adoption.value)


# ---------------------------------------------------------------- freshness
def test_freshness_decays_with_a_half_life_at_the_newest_reading_date():
    rec = ModelRecord("m", "M", facts=(Fact("released", "2025-11-01", f"{T}/m", "2026-11-01"),
                                       Fact("last_modified", "2026-11-01", f"{T}/m", "2026-11-01")))
    half = ModelRecord("h", "H", facts=(Fact("released", "2025-11-01", f"{T}/h", "2026-11-01"),))
    e = _engine([rec, half], EngineConfig(bootstrap_rounds=200, freshness_half_life_days={"model": 365.0}))
    c = _card(e, "m")
    assert c.freshness.value == pytest.approx((0.5 + 1.0) / 2)  # one year old (one half-life), updated today
    assert c.freshness.low == c.freshness.high == pytest.approx(0.75)  # both dates read: exact
    h = _card(e, "h")
    assert h.freshness.value == pytest.approx(0.5)
    assert h.freshness.low == pytest.approx(0.5) and h.freshness.high > 0.6  # an unread update could be fresher
    again = _engine([rec, half], EngineConfig(bootstrap_rounds=200, freshness_half_life_days={"model": 365.0}))
    assert _card(again, "h").freshness == h.freshness  # the same data, the same numbers, whatever the clock says
    st = e.state()  # "h" sits at the low end of its own range: the difference's interval still holds the point
    for a, b in (("m", "h"), ("h", "m")):
        d = difference(st.dims["freshness"], st.ids.index(a), st.ids.index(b))
        assert d.low <= d.diff <= d.high
    assert difference_of(0.5, 0.5, np.full(9, 0.7), np.full(9, 0.5)) == Difference(0.0, 0.0, pytest.approx(0.2))


# ---------------------------------------------------------------- match graph shrinkage
def _mg(e: Engine) -> dict[str, float]:
    st = e.state()
    return {m: float(st.dims["match_graph"].value[i]) for i, m in enumerate(st.ids)}


def test_one_event_moves_the_match_graph_at_most_its_stated_bound_and_many_converge():
    models = [ModelRecord(f"m{k}", f"M{k}", adoption=(_sig("downloads", 10 ** (k + 1)),)) for k in range(5)]
    e = _engine(models)
    bound = rates.one_event_bound(CONFIG.match_graph_strength)
    assert bound <= 0.05
    rng = np.random.default_rng(3)
    for n in range(40):  # one event at a time, on a growing random graph: no model moves more than the bound
        before, ranks = _mg(e), {m: _card(e, m).rank.value for m in _mg(e)}
        pick = rng.choice(5, size=int(rng.integers(1, 4)), replace=False)
        e.record_events([MatchEvent(f"e{n}", "q", tuple(f"m{k}" for k in pick))])
        after = _mg(e)
        for m in after:
            assert abs(after[m] - before[m]) <= bound + 1e-9
            assert abs(_card(e, m).rank.value - ranks[m]) <= 100 * bound + 1e-6
    # 1,000 consistent events: within 0.05 of the unshrunk centrality, with a narrower interval
    width_before = _card(e, "m0").match_graph.high - _card(e, "m0").match_graph.low
    e.record_events([MatchEvent(f"x{n}", "q", ("m0", "m1")) for n in range(1000)])
    st = e.state()
    g = e.graph
    raw = rates.centrality(g.pr)
    for m in ("m0", "m1"):
        i = st.ids.index(m)
        assert abs(st.dims["match_graph"].value[i] - raw[i]) <= 0.05
    c = _card(e, "m0").match_graph
    assert c.high - c.low < width_before


def test_match_graph_prior_is_shown_as_prior_only_and_is_not_cited():
    e = _engine([with_readings(m) for m in SEED_MODELS])
    c = _card(e, "sd")
    assert c.match_graph.measured and c.match_graph.evidence_count == 0
    assert c.match_graph.value == CONFIG.match_graph_prior and "prior only" in c.match_graph.reason
    assert c.match_graph.low < 0.35 and c.match_graph.high > 0.65  # the prior's interval, not a point
    page = e.compare("kosmos2", "sd").comparison
    assert "match graph (prior only)" in page.rows[1][2]
    assert "no recorded search has matched either yet" in " ".join(page.verdict)


# ---------------------------------------------------------------- quality win rates and feedback rates
def _games(n: int, score: float = 1.0) -> list[quality.Game]:
    return [("a", "b", score, "test")] * n


def test_one_game_moves_a_win_probability_at_most_0_05_and_many_converge():
    prior = EngineConfig().bt_prior
    rng = np.random.default_rng(0)
    one = quality.fit_task("t", _games(1), 100, rng, prior)
    assert abs(one.value[0] - 0.5) <= 0.05 and abs(one.value[1] - 0.5) <= 0.05
    widths = []
    for n in (1, 10, 100, 1000):
        ts = quality.fit_task("t", _games(n), 100, rng, prior)
        widths.append(float(np.subtract(*np.quantile(ts.reps[:, 0], [0.975, 0.025]))))
    assert abs(ts.value[0] - 1.0) <= 0.05  # 1,000 wins: within 0.05 of the unshrunk rate (1)
    mixed = quality.fit_task("t", _games(700, 1.0) + _games(300, 0.0), 100, rng, prior)
    assert abs(mixed.value[0] - 0.7) <= 0.05
    assert widths[0] > widths[-1]


def test_feedback_success_rate_is_shrunk_by_its_stated_bound():
    s = EngineConfig().feedback_strength
    one = rates.feedback_scores({"m": (1, 1)}, 0.5, s)["m"]
    assert abs(one.value - 0.5) <= max_step(s) * 0.5 + 1e-12 <= 0.05
    many = rates.feedback_scores({"m": (900, 1000)}, 0.5, s)["m"]
    assert abs(many.value - 0.9) <= 0.05
    assert (many.high - many.low) < (one.high - one.low)
    assert rates.feedback_scores({"m": (0, 0)}, 0.5, s) == {}  # no trials: not measured
    assert beta_rate(1, 1, 0.5, s).value == one.value


def test_recorded_feedback_feeds_the_success_rate_and_changes_the_snapshot(make_server):
    """Outcomes reported on match records (RecordFeedback) are what the scorecard's feedback rate and the passport
    read, and the snapshot id (behind every ETag) changes with each new one, also after a restart."""
    s = make_server()
    seed_with_readings(s.stub)
    k = "kosmos-2-patch14-224"
    s.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=[
        pb.MatchEvent(event_id=f"q{n}", query="caption my photo", matched=[k]) for n in range(3)])]))
    before = s.stub.GetSnapshot(pb.GetSnapshotRequest()).snapshot_version
    card = s.stub.GetModel(pb.GetModelRequest(model=k)).scores
    assert not card.feedback.measured and card.feedback.not_measured_reason == "no feedback recorded"
    s.stub.RecordFeedback(pb.RecordFeedbackRequest(match_id="q0", outcome=pb.MATCH_OUTCOME_SUCCESS))
    after = s.stub.GetSnapshot(pb.GetSnapshotRequest()).snapshot_version
    got = s.stub.GetModel(pb.GetModelRequest(model=k))
    assert after != before and got.snapshot_version == after
    strength = s.settings.feedback_strength
    assert got.scores.feedback.measured and got.scores.feedback.value == pytest.approx(
        beta_rate(1, 1, 0.5, strength).value) and abs(got.scores.feedback.value - 0.5) <= max_step(strength)
    passport = s.stub.GetPassport(pb.GetPassportRequest(model=k))
    assert passport.outcomes.success_rate.value == pytest.approx(got.scores.feedback.value)
    assert passport.snapshot_version == after
    # the same outcome again is a duplicate: nothing changes
    s.stub.RecordFeedback(pb.RecordFeedbackRequest(match_id="q0", outcome=pb.MATCH_OUTCOME_SUCCESS))
    assert s.stub.GetSnapshot(pb.GetSnapshotRequest()).snapshot_version == after
    s.stub.RecordFeedback(pb.RecordFeedbackRequest(match_id="q1", outcome=pb.MATCH_OUTCOME_FAILURE))
    third = s.stub.GetSnapshot(pb.GetSnapshotRequest()).snapshot_version
    assert third not in (before, after)
    s.restart()  # the stored counter, not process memory, decides the id
    assert s.stub.GetSnapshot(pb.GetSnapshotRequest()).snapshot_version == third
    assert s.stub.GetModel(pb.GetModelRequest(model=k)).scores.feedback.evidence_count == 2


# ---------------------------------------------------------------- quality within a task
def test_benchmarks_compare_within_their_task_and_lower_is_better_for_fid():
    rows = [("a", "FID-30K", 8.0, "text-to-image"), ("b", "FID-30K", 12.0, "text-to-image"),
            ("a", "GenEval", 0.5, "text-to-image"), ("c", "GenEval", 0.6, "text-to-image"),
            ("cap", "GenEval", 0.9, "")]  # a captioner's stray GenEval result: not its task, no game
    tasks = {"a": ("text-to-image",), "b": ("text-to-image",), "c": ("text-to-image",), "cap": ("image-to-text",)}
    games = quality.benchmark_games(rows, tasks)
    assert set(games) == {"text-to-image"}
    assert ("a", "b", 1.0, "FID-30K") in games["text-to-image"] and ("a", "c", 0.0, "GenEval") in games["text-to-image"]


def test_quality_compares_only_shared_tasks_and_says_why_not(evidenced):
    page = evidenced.stub.Compare(pb.CompareRequest(a="kosmos2", b="blip-base"))
    q = next(d for d in page.dimensions if d.dimension == "quality")
    assert q.comparable and q.outcome in (pb.OUTCOME_A_LEADS, pb.OUTCOME_B_LEADS, pb.OUTCOME_TIED)
    assert q.a.note == q.b.note == "within image-to-text" and q.a.evidence_count == 1
    other = evidenced.stub.Compare(pb.CompareRequest(a="kosmos2", b="sdxl"))
    q = next(d for d in other.dimensions if d.dimension == "quality")
    assert q.outcome == pb.OUTCOME_NOT_COMPARABLE and not q.a.measured
    assert q.note == "not comparable: kosmos-2-patch14-224 is image-to-text, SDXL base 1.0 is text-to-image"


def _probe_run(e: Engine, test_model: bool) -> None:
    """Six outcomes of kosmos-2 beating BLIP (both image-to-text) under an independent judge, recorded with what
    they ran on; on a test model they are stored unscorable, with the reason, as the prober stores them."""
    from graph.probes import JudgeModel, ProbeBasis, ProbeRun, ServedModel

    served = ServedModel("visionlanguage", "/models/vl", "Arch", 10, test_model, "tiny" if test_model else "")
    judge = JudgeModel("/models/judge-clip", "CLIPModel", "sha256:0123456789abcdef", parameters=1000)
    reason = f"probed on {served.describe()}: says nothing about the real model" if test_model else ""
    outs = [ProbeOutcomeRow("run1", f"p{k}", "kosmos-2-patch14-224", "blip-image-captioning-base", "", "", 1.0,
                            task="image-to-text", judge_id=judge.model_id, judge_version=judge.version,
                            probe_set="image-to-text:6:test", scorable=not test_model, reason=reason)
            for k in range(6)]
    run = ProbeRun("run1", 0, (), (), tuple(outs), (), (
        ProbeBasis("kosmos-2-patch14-224", served, judge=judge, task="image-to-text"),
        ProbeBasis("blip-image-captioning-base", served, judge=judge, task="image-to-text")), judge=judge)
    results = [ProbeResultRow("run1", m, "", f"p{k}", score, "a caption", "image-to-text", judge.model_id,
                              judge.version, "image-to-text:6:test", not test_model, reason)
               for k in range(6) for m, score in (("kosmos-2-patch14-224", 0.3), ("blip-image-captioning-base", 0.2))]
    e.prober._record_basis(run)
    e.store.add_probe_run("run1", 0, [f"p{k}" for k in range(6)], results, outs)
    e.scorer.probes_changed()


@pytest.mark.parametrize("test_model", [False, True])
def test_probe_outcomes_score_within_the_task_unless_they_ran_on_a_test_model(test_model):
    from graph import catalogue_file
    from tests.graph.conftest import SAMPLE_CATALOGUE

    blip = next(r for r in catalogue_file.load(SAMPLE_CATALOGUE) if r.id.startswith("blip"))
    kosmos = replace(with_readings(SEED_MODELS[0]), external_quality=())
    e = _engine([kosmos, replace(blip, external_quality=())])
    _probe_run(e, test_model)
    c = e.compare("kosmos2", "blip-base").comparison
    q = next(d for d in c.dimensions if d.dimension == "quality")
    if test_model:  # never scored: the page says quality is not measured on the real model
        assert not q.a.measured and not q.b.measured
        assert "Quality not measured on the real model" in " ".join(c.verdict)
        assert dict((f, a) for f, a, _b in c.rows)["Quality"].startswith("not measured on the real model")
    else:
        assert q.a.measured and q.a.value > 0.5 > q.b.value and q.a.evidence_count == 6
        assert 0 < q.records_to_flip <= 6


# ---------------------------------------------------------------- one event on the real page
def test_one_event_moves_no_score_on_the_comparison_page_beyond_its_bound(evidenced):
    def scores() -> dict[str, float]:
        out = {}
        for m in ("kosmos2", "sd", "blip-base", "sdxl"):
            r = evidenced.stub.GetModel(pb.GetModelRequest(model=m)).scores
            for d in ("rank", *DIMENSIONS):
                s = getattr(r, d)
                if s.measured:
                    out[f"{m}.{d}"] = s.value / (100 if d == "rank" else 1)
        return out

    before = scores()
    evidenced.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=[
        pb.MatchEvent(event_id="one", query="caption or draw", matched=["kosmos2", "sd"])])]))
    after = scores()
    assert before.keys() == after.keys()
    bound = rates.one_event_bound(EngineConfig().match_graph_strength)
    assert max(abs(after[k] - before[k]) for k in after) <= bound
    assert any(after[k] != before[k] for k in after)


def test_seed_readings_page_stable_diffusion_leads_adoption(evidenced):
    seed_with_readings(evidenced.stub)  # re-importing the same readings changes nothing
    page = evidenced.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    a = next(d for d in page.dimensions if d.dimension == "adoption")
    assert a.outcome == pb.OUTCOME_B_LEADS
    sources = {r.label: r for r in page.sources}
    assert sources["Downloads (adoption)"].b[0].text == "1,500,000 (last 30 days)"
    assert sources["Downloads (adoption)"].b[0].source == f"{T}/sd"
    assert not sources["Last updated"].b  # no reading: the page says so
