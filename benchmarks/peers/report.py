"""Turn interleaved rounds into ``peer.*`` results: per-round ratios, medians, spread, same-work checks."""

from __future__ import annotations

import io
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import Result, percentile
from benchmarks.peers.clients import Load


@dataclass
class Rounds:
    """Loads of one kind (e.g. 16 clients), one per round per side, in round order."""

    loads: dict[str, list[Load[Any]]] = field(default_factory=dict)

    def add(self, side: str, load: Load[Any]) -> None:
        self.loads.setdefault(side, []).append(load)

    def per_s(self, side: str) -> list[float]:
        return [ld.per_s for ld in self.loads[side]]

    def p50s(self, side: str) -> list[float]:
        return [statistics.median(ld.latencies) for ld in self.loads[side]]

    def latencies(self, side: str) -> list[float]:
        return [x for ld in self.loads[side] for x in ld.latencies]


def _spread(xs: list[float], fmt: str) -> str:
    return f"{statistics.median(xs):{fmt}} (rounds {min(xs):{fmt}}-{max(xs):{fmt}})"


def ratio_result(name: str, target: float, better: str, ours: list[float], peer: list[float], peer_name: str,
                 baseline: str, unit: str, fmt: str = ".2f") -> Result:
    """Median of per-round ratios ours/peer (each round ran both back to back), with the raw figures."""
    ratios = [a / b for a, b in zip(ours, peer)]
    notes = (f"unfragile {_spread(ours, fmt)} {unit}, {peer_name} {_spread(peer, fmt)} {unit}; "
             f"per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}")
    return Result(name, statistics.median(ratios), target, better, "ratio", baseline, notes)


def latency_summary(rounds: Rounds, sides: list[str]) -> str:
    parts = []
    for side in sides:
        xs = rounds.latencies(side)
        parts.append(f"{side} p50 {statistics.median(xs) * 1000:.0f} ms p90 {percentile(xs, 90) * 1000:.0f} ms")
    return ", ".join(parts)


def token_mismatches(answers: dict[str, dict[Any, list[int]]], peer: str) -> tuple[int, list[str]]:
    """(requests compared, descriptions of those whose tokens differ from unfragile's)."""
    ours, theirs = answers["unfragile"], answers.get(peer, {})
    keys = [k for k in ours if k in theirs]
    bad = [f"{k}: unfragile {ours[k][:8]}... vs {peer} {theirs[k][:8]}..." for k in keys if ours[k] != theirs[k]]
    return len(keys), bad


def pixels(png: bytes) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def pixel_gap(answers: dict[str, dict[Any, bytes]], peer: str) -> tuple[int, int]:
    """(images compared, largest absolute difference in 0-255 levels between unfragile's and the peer's)."""
    ours, theirs = answers["unfragile"], answers.get(peer, {})
    keys = [k for k in ours if k in theirs]
    worst = 0
    for k in keys:
        a, b = pixels(ours[k]), pixels(theirs[k])
        worst = max(worst, 256 if a.shape != b.shape else int(abs(a - b).max()))
    return len(keys), worst


def distinct(answers: dict[Any, list[int]]) -> int:
    return len({tuple(v) for v in answers.values()})


def add_notes(results: list[Result], note: Callable[[Result], str]) -> None:
    for r in results:
        r.notes = f"{r.notes}; {note(r)}"
