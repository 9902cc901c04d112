"""Hypothesis property tests: verdict words never contradict the numbers beside them."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph.config import EngineConfig
from graph.engine import Engine
from graph.rank import Difference, Score
from graph.records import ModelRecord, Pricing, Signal
from graph.store import SqliteStore
from graph.verdict import (
    A_LEADS,
    B_LEADS,
    NOT_COMPARABLE,
    NOT_MEASURED,
    TIED,
    DimensionResult,
    headline,
    pricing_sentence,
    shown,
    verdict,
)

DIMS = ("adoption", "quality", "ecosystem", "match_graph", "freshness")
LABEL = {"adoption": "adoption", "quality": "quality", "ecosystem": "ecosystem", "match_graph": "match graph",
         "freshness": "freshness"}
unit = st.floats(0, 1, allow_nan=False)


@st.composite
def dimension(draw, name: str) -> DimensionResult:
    scale = 100.0 if name == "rank" else 1.0
    a, b = draw(unit) * scale, draw(unit) * scale
    # intervals anywhere around the point difference, including ones that barely exclude 0
    lo = (a - b) - draw(st.floats(0, 1)) * scale * draw(st.sampled_from([0, 0.001, 0.1, 1]))
    hi = (a - b) + draw(st.floats(0, 1)) * scale * draw(st.sampled_from([0, 0.001, 0.1, 1]))
    if draw(st.booleans()):  # equal numbers, as in the seed's 42 vs 42
        b = a
        if draw(st.booleans()):  # usually the interval then straddles 0, but not always
            lo, hi = min(lo, 0.0), max(hi, 0.0)
    ev = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    flip = draw(st.integers(-2, 8))
    sa, sb = Score(a, a, a, ev[0]), Score(b, b, b, ev[1])
    if name != "rank" and draw(st.integers(0, 4)) == 0:  # sometimes not measured for one or both
        gone = Score.not_measured("no reading")
        sa, sb = draw(st.sampled_from([(gone, sb), (sa, gone), (gone, gone)]))
        lo = hi = a = b = float("nan")
    comparable = name != "quality" or draw(st.integers(0, 4)) > 0
    return DimensionResult(name, sa, sb, Difference(a - b, lo, hi), flip, 0 < flip <= 5, comparable,
                           "" if comparable else "not comparable: Alpha is image-to-text, Beta is text-to-image")


tiers = st.sampled_from(["unknown", "free", "freemium", "paid"])


@settings(max_examples=400, deadline=None)
@given(rank=dimension("rank"), d1=dimension("adoption"), d2=dimension("quality"), d3=dimension("ecosystem"),
       d4=dimension("match_graph"), d5=dimension("freshness"), ta=tiers, tb=tiers)
def test_verdict_never_contradicts_numbers(rank, d1, d2, d3, d4, d5, ta, tb):
    dims = [d1, d2, d3, d4, d5]
    pa, pb = Pricing(ta), Pricing(tb)
    sentences = verdict("Alpha", "Beta", rank, dims, pa, pb)
    text = " ".join(sentences)
    head = headline("Alpha", "Beta", rank)
    ra, rb = shown("rank", rank.a.value), shown("rank", rank.b.value)
    # rule 2: "ranks higher" only with an interval excluding 0 and displayed ranks in that order
    if "Alpha ranks higher" in head:
        assert rank.diff.low > 0 and ra > rb
    elif "Beta ranks higher" in head:
        assert rank.diff.high < 0 and rb > ra
    else:
        assert "tied" in head
    if ra == rb:
        assert "higher" not in head and "higher" not in text
    assert f"{ra:.0f}/100" in head and f"{rb:.0f}/100" in head
    # rule 1: each "X leads on" list holds exactly the dimensions whose interval excludes 0
    leads = {"Alpha": set(), "Beta": set()}
    for who, listed in re.findall(r"(Alpha|Beta) leads on ([a-z ,]+?)(?:,? while|\.)", text):
        leads[who] |= {d for d in DIMS if re.search(rf"\b{LABEL[d]}\b", listed)}
    for d in dims:
        in_a, in_b = d.dimension in leads["Alpha"], d.dimension in leads["Beta"]
        # rule 1: only dimensions measured for both (with evidence) are cited at all
        both = d.comparable and all(s.measured and s.evidence_count > 0 for s in (d.a, d.b))
        if not both:
            assert not in_a and not in_b and d.outcome in (NOT_MEASURED, NOT_COMPARABLE)
            assert not re.search(rf"tied on [^.]*\b{LABEL[d.dimension]}\b", text)  # rule 3: never "tied"
            if d.outcome == NOT_COMPARABLE:
                assert f"{LABEL[d.dimension].capitalize()} is not comparable: Alpha is image-to-text" in text
            else:
                assert re.search(rf"Not compared, for want of measurements: [^.]*\b{LABEL[d.dimension]}\b", text)
            continue
        sa, sb = shown(d.dimension, d.a.value), shown(d.dimension, d.b.value)
        assert in_a == (d.diff.low > 0 and sa > sb)
        assert in_b == (d.diff.high < 0 and sb > sa)
        if sa == sb:
            assert d.outcome == TIED and not in_a and not in_b
    # fragility is only claimed for real leads
    for d in [rank, *dims]:
        if d.outcome == TIED:
            claim = f"lead on {LABEL.get(d.dimension, 'UnfragileRank')} disappears"
            assert claim not in text or d.dimension == "rank" and rank.outcome != TIED
    # rule 4: the pricing sentence follows the tiers
    p = sentences[-1]
    assert p == pricing_sentence("Alpha", pa, "Beta", pb)
    free = {"free", "freemium"}
    if ta in free and tb == "paid":
        assert "Alpha" in p and "more accessible" in p and "Beta is paid only" in p
    elif tb in free and ta == "paid":
        assert "Beta" in p and "more accessible" in p and "Alpha is paid only" in p
    elif ta == tb == "free":
        assert p == "Both are free to use."
    elif ta in free and tb in free:
        assert p.startswith("Both have a free tier")
    elif ta == tb == "paid":
        assert p.startswith("Neither has a free tier")
    else:
        assert "not recorded" in p
    if "more accessible" in p:
        assert (ta in free) != (tb in free)


models = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 500), st.integers(0, 5)), min_size=2, max_size=5)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models=models, tier_a=tiers, tier_b=tiers, events=st.lists(st.lists(st.integers(0, 4), min_size=1,
                                                                            max_size=4, unique=True), max_size=30))
def test_engine_pages_agree_with_their_numbers(models, tier_a, tier_b, events):
    e = Engine(SqliteStore(":memory:"), EngineConfig(bootstrap_rounds=60, graph_bootstrap_rounds=10))
    e.load()
    for k, (dl, likes, integ) in enumerate(models):
        sig = [Signal("downloads", dl, "t", "2026-01-01"), Signal("likes", likes, "t", "2026-01-01")][: 1 + k % 2]
        e.upsert(ModelRecord(f"m{k}", f"Model {k}", pricing=Pricing([tier_a, tier_b][k % 2]), adoption=tuple(sig),
                             ecosystem=(Signal("integrations", integ, "t", "2026-01-01"),)))
    from graph.records import MatchEvent

    evs = [MatchEvent(f"e{i}", "q", tuple(f"m{x}" for x in ev if x < len(models))) for i, ev in enumerate(events)]
    evs = [x for x in evs if x.matched]
    if evs:
        e.record_events(evs)
    r = e.compare("m0", "m1").comparison
    for d in (r.rank, *r.dimensions):
        if d.outcome in (NOT_MEASURED, NOT_COMPARABLE):  # nothing is said about numbers that are not there
            assert not (d.a.measured and d.b.measured and d.a.evidence_count and d.b.evidence_count) or \
                d.outcome == NOT_COMPARABLE
            continue
        sa, sb = shown(d.dimension, d.a.value), shown(d.dimension, d.b.value)
        if d.outcome == A_LEADS:
            assert d.diff.low > 0 and sa > sb
        elif d.outcome == B_LEADS:
            assert d.diff.high < 0 and sb > sa
        # the interval of each score contains... the replicates; point diff equals a - b
        assert abs(d.diff.diff - (d.a.value - d.b.value)) < 1e-9
        assert d.diff.low <= d.diff.high and d.a.low <= d.a.high
    if shown("rank", r.rank.a.value) == shown("rank", r.rank.b.value):
        assert "ranks higher" not in r.headline
