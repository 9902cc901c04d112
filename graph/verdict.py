"""Verdict rules: words that follow the numbers on the page, never contradict them.

The seed page says "kosmos-2-patch14-224 ranks higher at 42/100 vs Stable Diffusion at
42/100" and "Stable Diffusion is stronger on quality" with quality 0 vs 0. These rules
make both impossible:

1. "X leads on D" only when the 95% interval of the paired difference excludes 0 AND the
   numbers as displayed on the page are in the same order; anything else is "tied on D".
2. "X ranks higher" follows rule 1 on the UnfragileRank; equal displayed ranks are a tie.
3. A dimension with no evidence on either side is "tied (no evidence for either)".
4. The pricing sentence is derived from the two pricing tiers and nothing else (the tiers
   carry their sources: each plan names the licence or price page it was read from).
5. A lead that can be erased by removing a few evidence records is called fragile.
6. Quality measured by probing random-weight test models is said to be so, next to the
   claims it could otherwise be taken for.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from graph.rank import DIMENSION_LABELS, Difference, Score
from graph.records import Pricing

A_LEADS, B_LEADS, TIED = "a", "b", "tie"
VERDICT_DIMENSIONS = ("adoption", "quality", "ecosystem", "match_graph")


def decimals(dimension: str) -> int:
    return 0 if dimension == "rank" else 2


def shown(dimension: str, value: float) -> float:
    """The number exactly as the page displays it."""
    return round(value, decimals(dimension)) + 0.0  # + 0.0 turns -0.0 into 0.0


def fmt(dimension: str, value: float) -> str:
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

    @cached_property
    def outcome(self) -> str:
        return outcome(self.dimension, self.a, self.b, self.diff)

    @property
    def no_evidence(self) -> bool:
        return self.a.evidence_count == 0 and self.b.evidence_count == 0


def outcome(dimension: str, a: Score, b: Score, diff: Difference) -> str:
    """Rule 1: a lead needs an interval that excludes 0 and displayed numbers in that order."""
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
    """Rule 6: (model name, what its probes ran on) for every model whose quality comes from a test model."""
    if not tested:
        return ""
    parts = "; ".join(f"{name} on {what}" for name, what in tested)
    return (f"Quality here comes from live probes of random-weight test models ({parts}), so it says nothing "
            f"about the real models.")


def verdict(name_a: str, name_b: str, rank: DimensionResult, dims: list[DimensionResult],
            pricing_a: Pricing, pricing_b: Pricing, quality_note: str = "") -> list[str]:
    """The verdict paragraph as sentences, in order (``quality_note``: rule 6's sentence, if any)."""
    label = {d: DIMENSION_LABELS[d] if d == "rank" else DIMENSION_LABELS[d].lower() for d in DIMENSION_LABELS}
    out = [headline(name_a, name_b, rank).replace(" ranks higher ", " scores higher ", 1)]
    a_leads = [label[d.dimension] for d in dims if d.outcome == A_LEADS]
    b_leads = [label[d.dimension] for d in dims if d.outcome == B_LEADS]
    if a_leads and b_leads:
        out.append(f"{name_a} leads on {_join(a_leads)}, while {name_b} leads on {_join(b_leads)}.")
    elif a_leads:
        out.append(f"{name_a} leads on {_join(a_leads)}.")
    elif b_leads:
        out.append(f"{name_b} leads on {_join(b_leads)}.")
    tied = [d for d in dims if d.outcome == TIED]
    if tied:
        parts = [label[d.dimension] + (" (no evidence for either)" if d.no_evidence else "") for d in tied]
        out.append(f"{'They' if (a_leads or b_leads) else 'The two'} are tied on {_join(parts)}.")
    if quality_note:
        out.append(quality_note)
    fragile = [d for d in [rank, *dims] if d.outcome != TIED and d.fragile]
    if fragile:
        parts = [f"{name_a if d.outcome == A_LEADS else name_b}'s lead on {label[d.dimension]} disappears if "
                 f"{d.records_to_flip} evidence record{'s are' if d.records_to_flip != 1 else ' is'} removed"
                 for d in fragile]
        out.append(f"Fragile: {'; '.join(parts)}.")
    out.append(pricing_sentence(name_a, pricing_a, name_b, pricing_b))
    return out
