"""Verdict rules: words that follow the numbers on the page, never contradict them.

The seed page says "kosmos-2-patch14-224 ranks higher at 42/100 vs Stable Diffusion at
42/100" and "Stable Diffusion is stronger on quality" with quality 0 vs 0. These rules
make both impossible:

1. A sentence cites a dimension only when it is measured for both models (with evidence:
   a Match Graph at its prior alone is not). Then "X leads on D" only when the 95%
   interval of the paired difference excludes 0 AND the numbers as displayed on the page
   are in the same order; anything else is "tied on D".
2. "X ranks higher" follows rule 1 on the UnfragileRank; equal displayed ranks are a tie.
   A model with no measured dimension has no rank, and the headline says so.
3. A dimension not measured for one or both is said to be "not measured" (with whom it
   lacks), never "tied"; two models that share no task are "not comparable" on quality,
   with the reason.
4. The pricing sentence is derived from the two pricing tiers and nothing else (the tiers
   carry their sources: each plan names the licence or price page it was read from).
5. A lead that can be erased by removing a few evidence records is called fragile.
6. Probes of random-weight test models enter no score, and the page says quality is not
   measured on the real model next to the claims it could otherwise be taken for.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from graph.rank import DIMENSION_LABELS, Difference, Score
from graph.records import Pricing

A_LEADS, B_LEADS, TIED = "a", "b", "tie"
NOT_MEASURED, NOT_COMPARABLE = "not_measured", "not_comparable"
VERDICT_DIMENSIONS = ("adoption", "quality", "ecosystem", "match_graph", "freshness")


def decimals(dimension: str) -> int:
    return 0 if dimension == "rank" else 2


def shown(dimension: str, value: float) -> float:
    """The number exactly as the page displays it."""
    return round(value, decimals(dimension)) + 0.0  # + 0.0 turns -0.0 into 0.0


def fmt(dimension: str, value: float) -> str:
    if value != value:  # NaN: not measured
        return "not measured"
    return f"{shown(dimension, value):.{decimals(dimension)}f}"


def fmt_signed(dimension: str, value: float) -> str:
    v = shown(dimension, value)
    return f"{'+' if v > 0 else ''}{v:.{decimals(dimension)}f}"


@dataclass(frozen=True)
class DimensionResult:
    """Everything the verdict needs about one dimension of a comparison."""

    dimension: str  # "rank" or one of rank.DIMENSIONS
    a: Score
    b: Score
    diff: Difference
    records_to_flip: int = 0  # -1: no flip found by removals; -2: not computed
    fragile: bool = False
    comparable: bool = True  # False: the two share no task (quality)
    note: str = ""  # why it is not comparable or not measured

    @cached_property
    def outcome(self) -> str:
        if not self.comparable:
            return NOT_COMPARABLE
        if not self.measured_both:
            return NOT_MEASURED
        return outcome(self.dimension, self.a, self.b, self.diff)

    @property
    def measured_both(self) -> bool:
        """Rule 1: measured for both, with evidence behind each."""
        return all(s.measured and s.evidence_count > 0 for s in (self.a, self.b))

    @property
    def no_evidence(self) -> bool:
        return self.a.evidence_count == 0 and self.b.evidence_count == 0


def outcome(dimension: str, a: Score, b: Score, diff: Difference) -> str:
    """Rule 1: a lead needs an interval that excludes 0 and displayed numbers in that order."""
    if not (a.measured and b.measured) or diff.low != diff.low:
        return NOT_MEASURED
    sa, sb = shown(dimension, a.value), shown(dimension, b.value)
    if diff.low > 0 and sa > sb:
        return A_LEADS
    if diff.high < 0 and sa < sb:
        return B_LEADS
    return TIED


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def headline(name_a: str, name_b: str, rank: DimensionResult) -> str:
    """Rule 2: the first sentence of the page."""
    if not (rank.a.measured and rank.b.measured):
        if not rank.a.measured and not rank.b.measured:
            return f"Neither {name_a} nor {name_b} has an UnfragileRank yet: no dimension is measured for either."
        ranked, unranked, s = (name_a, name_b, rank.a) if rank.a.measured else (name_b, name_a, rank.b)
        return (f"{ranked} has an UnfragileRank of {fmt('rank', s.value)}/100 (95% interval {fmt('rank', s.low)}"
                f"–{fmt('rank', s.high)}); {unranked} has none yet: no dimension is measured for it.")
    ra, rb = fmt("rank", rank.a.value), fmt("rank", rank.b.value)
    ci = f"{fmt_signed('rank', rank.diff.low)} to {fmt_signed('rank', rank.diff.high)}"
    o = rank.outcome
    if o == A_LEADS:
        return (f"{name_a} ranks higher at {ra}/100 vs {name_b} at {rb}/100 "
                f"(95% interval of the difference: {ci}).")
    if o == B_LEADS:
        return (f"{name_b} ranks higher at {rb}/100 vs {name_a} at {ra}/100 "
                f"(95% interval of the difference: {fmt_signed('rank', -rank.diff.high)} to "
                f"{fmt_signed('rank', -rank.diff.low)}).")
    if ra == rb:
        return f"{name_a} and {name_b} are tied at {ra}/100 each (95% interval of the difference: {ci})."
    return (f"{name_a} and {name_b} are statistically tied at {ra}/100 vs {rb}/100: the 95% interval of "
            f"the difference ({ci}) includes 0.")


def _free(p: Pricing) -> str:
    return "is free to use" if p.tier == "free" else "has a free tier"


def pricing_sentence(name_a: str, pa: Pricing, name_b: str, pb: Pricing) -> str:
    """Rule 4: only the tiers decide what is said about price."""
    if pa.tier == "unknown" and pb.tier == "unknown":
        return "Pricing is not recorded for either."
    if pa.tier == "unknown" or pb.tier == "unknown":
        known, kp, unknown = (name_b, pb, name_a) if pa.tier == "unknown" else (name_a, pa, name_b)
        return f"{known} is {kp.label.lower()}; pricing is not recorded for {unknown}."
    if pa.has_free_tier and not pb.has_free_tier:
        return f"{name_a} {_free(pa)}, making it more accessible; {name_b} is paid only."
    if pb.has_free_tier and not pa.has_free_tier:
        return f"{name_b} {_free(pb)}, making it more accessible; {name_a} is paid only."
    if pa.tier == pb.tier == "free":
        return "Both are free to use."
    if pa.has_free_tier and pb.has_free_tier:
        return f"Both have a free tier ({name_a}: {pa.label.lower()}, {name_b}: {pb.label.lower()})."
    return "Neither has a free tier: both are paid."


def test_model_sentence(tested: list[tuple[str, str]]) -> str:
    """Rule 6: (model name, what its probes ran on) for every model whose probes ran on a test model."""
    if not tested:
        return ""
    parts = "; ".join(f"{name} on {what}" for name, what in tested)
    return (f"Quality not measured on the real model: the live probes ran on random-weight test models ({parts}); "
            f"a test model's quality says nothing about the real models, so these probes enter no score.")


def _label(dimension: str) -> str:
    return DIMENSION_LABELS[dimension] if dimension == "rank" else DIMENSION_LABELS[dimension].lower()


def _lacks(d: DimensionResult, name_a: str, name_b: str) -> str:
    """Rule 3: 'adoption (measured for neither)', 'match graph (no search has matched B yet)'."""
    def missing(s: Score) -> bool:
        return not s.measured or s.evidence_count == 0

    def prior_only(s: Score) -> bool:
        return s.measured and s.evidence_count == 0

    if missing(d.a) and missing(d.b):
        if prior_only(d.a) and prior_only(d.b):
            return f"{_label(d.dimension)} (no recorded search has matched either yet)"
        return f"{_label(d.dimension)} (measured for neither)"
    who, s = (name_a, d.a) if missing(d.a) else (name_b, d.b)
    if prior_only(s):
        return f"{_label(d.dimension)} (no recorded search has matched {who} yet)"
    return f"{_label(d.dimension)} (not measured for {who})"


def rests_on_sentence(name_a: str, on_a: tuple[str, ...], name_b: str, on_b: tuple[str, ...]) -> str:
    """Which dimensions each rank rests on, when they differ."""
    if set(on_a) == set(on_b) or not on_a or not on_b:
        return ""
    return (f"The ranks rest on different evidence: {name_a}'s on {_join([_label(d) for d in on_a])}, "
            f"{name_b}'s on {_join([_label(d) for d in on_b])}.")


def verdict(name_a: str, name_b: str, rank: DimensionResult, dims: list[DimensionResult],
            pricing_a: Pricing, pricing_b: Pricing, quality_note: str = "", rests_on: str = "") -> list[str]:
    """The verdict paragraph as sentences, in order (``quality_note``: rule 6's sentence, if any;
    ``rests_on``: ``rests_on_sentence``)."""
    label = {d: _label(d) for d in DIMENSION_LABELS}
    out = [headline(name_a, name_b, rank).replace(" ranks higher ", " scores higher ", 1)]
    if rests_on:
        out.append(rests_on)
    a_leads = [label[d.dimension] for d in dims if d.outcome == A_LEADS]
    b_leads = [label[d.dimension] for d in dims if d.outcome == B_LEADS]
    if a_leads and b_leads:
        out.append(f"{name_a} leads on {_join(a_leads)}, while {name_b} leads on {_join(b_leads)}.")
    elif a_leads:
        out.append(f"{name_a} leads on {_join(a_leads)}.")
    elif b_leads:
        out.append(f"{name_b} leads on {_join(b_leads)}.")
    tied = [label[d.dimension] for d in dims if d.outcome == TIED]
    if tied:
        out.append(f"{'They' if (a_leads or b_leads) else 'The two'} are tied on {_join(tied)}.")
    unmeasured = [_lacks(d, name_a, name_b) for d in dims if d.outcome == NOT_MEASURED]
    if unmeasured:
        out.append(f"Not compared, for want of measurements: {_join(unmeasured)}.")
    for d in dims:
        if d.outcome == NOT_COMPARABLE:
            out.append(f"{DIMENSION_LABELS[d.dimension]} is {d.note}.")
    if quality_note:
        out.append(quality_note)
    fragile = [d for d in [rank, *dims] if d.outcome in (A_LEADS, B_LEADS) and d.fragile]
    if fragile:
        parts = [f"{name_a if d.outcome == A_LEADS else name_b}'s lead on {label[d.dimension]} disappears if "
                 f"{d.records_to_flip} evidence record{'s are' if d.records_to_flip != 1 else ' is'} removed"
                 for d in fragile]
        out.append(f"Fragile: {'; '.join(parts)}.")
    out.append(pricing_sentence(name_a, pricing_a, name_b, pricing_b))
    return out
