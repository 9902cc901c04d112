"""Small SVG charts drawn on the server: no JavaScript, no build step, no chart library.

Every chart is an ``<svg role="img">`` with a <title> and a <desc> that states the same
numbers in words, so screen readers get them; the numbers are also in the page's
tables. Series differ by shape (circle vs diamond) as well as colour, so the charts
read in greyscale and for colour-blind readers. Colours pass WCAG 3:1 for graphics
on white (they are the page's 4.5:1 text colours).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

from services.gateway import schemas

COLOR_A = "#1d4ed8"
COLOR_B = "#b45309"
COLOR_NEUTRAL = "#4b5563"
COLOR_FRAGILE = "#b91c1c"
COLOR_GRID = "#d1d5db"
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'

DIMENSION_LABELS = {"rank": "UnfragileRank", "adoption": "Adoption", "ecosystem": "Ecosystem",
                    "match_graph": "Match Graph", "quality": "Quality", "freshness": "Freshness"}
SUB_SCORES = ("adoption", "quality", "ecosystem", "match_graph", "freshness")
NOT_MEASURED = "not measured"


def fmt(x: float | None, digits: int = 2) -> str:
    """Numbers as pages print them: fixed decimals, '-0.00' shown as '0.00'; None (not measured) as words."""
    if x is None:
        return NOT_MEASURED
    s = f"{x:.{digits}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


@dataclass(frozen=True)
class Series:
    label: str
    color: str
    marker: str  # "circle" | "diamond"


def _marker(kind: str, x: float, y: float, color: str, r: float = 5.5) -> str:
    if kind == "diamond":
        pts = f"{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y:.1f} {x:.1f},{y + r + 1:.1f} {x - r - 1:.1f},{y:.1f}"
        return f'<polygon points="{pts}" fill="{color}" stroke="#fff" stroke-width="1"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{color}" stroke="#fff" stroke-width="1"/>'


# Each colour also becomes a class (f-<name> for fills, s-<name> for strokes), so the
# stylesheet can recolour the charts for a dark colour scheme; in the light scheme the
# attributes alone draw them.
COLOR_CLASSES = {COLOR_A: "a", COLOR_B: "b", COLOR_NEUTRAL: "n", COLOR_FRAGILE: "bad", COLOR_GRID: "grid",
                 "#111827": "fg", "#374151": "muted", "#fff": "bg"}
_PAINT = re.compile(r'\b(fill|stroke)="(#[0-9a-fA-F]{3,6})"')


def _with_color_classes(element: str) -> str:
    classes = [f"{attr[0]}-{COLOR_CLASSES[color]}" for attr, color in _PAINT.findall(element) if color in COLOR_CLASSES]
    if not classes:
        return element
    return re.sub(r"^<(\w+)", lambda m: f'<{m.group(1)} class="{" ".join(classes)}"', element, count=1)


def _svg(chart_id: str, width: int, height: int, title: str, desc: str, body: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" id="{chart_id}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg" {FONT}>'
        f'<title id="{chart_id}-t">{escape(title)}</title><desc id="{chart_id}-d">{escape(desc)}</desc>'
        + "".join(_with_color_classes(e) for e in body) + "</svg>"
    )


def _axis(x0: float, x1: float, y_top: float, y_bottom: float, lo: float, hi: float,
          ticks: list[float], digits: int) -> list[str]:
    out = []
    for t in ticks:
        x = x0 + (t - lo) / (hi - lo) * (x1 - x0)
        out.append(f'<line x1="{x:.1f}" y1="{y_top}" x2="{x:.1f}" y2="{y_bottom}" stroke="{COLOR_GRID}" '
                   f'stroke-width="1"/>')
        out.append(f'<text x="{x:.1f}" y="{y_bottom + 14}" font-size="11" text-anchor="middle" '
                   f'fill="#374151">{fmt(t, digits)}</text>')
    return out


# Charts are 360 units wide with labels ABOVE their bars: at phone width they draw at
# about 1:1 (readable 11-13px text), on desktop CSS caps them at ~30rem.
WIDTH = 360


def score_intervals(chart_id: str, rows: list[tuple[str, list[tuple[Series, schemas.Score]]]],
                    title: str, scale_max: float = 1.0, digits: int = 2) -> Markup:
    """Dot = point estimate, bar = 95% interval, one line per series, one group per row;
    the numbers are printed at the right of each line."""
    x0, x1, label_h, line_h, gap, top = 18.0, 236.0, 16, 17, 8, 4
    n_lines = sum(len(series) for _, series in rows)
    plot_bottom = top + len(rows) * (label_h + gap) + n_lines * line_h
    height = int(plot_bottom + 20)

    def xpos(v: float) -> float:
        return x0 + max(0.0, min(scale_max, v)) / scale_max * (x1 - x0)

    body = _axis(x0, x1, top + label_h, plot_bottom, 0.0, scale_max, [scale_max * k / 4 for k in range(5)],
                 0 if scale_max >= 10 else 2)
    y = float(top)
    descs = []
    for label, series in rows:
        body.append(f'<text x="4" y="{y + 12:.1f}" font-size="13" font-weight="600" '
                    f'fill="#111827">{escape(label)}</text>')
        y += label_h
        for s, score in series:
            cy = y + line_h / 2
            if not score.measured or score.value is None or score.low is None or score.high is None:
                body.append(f'<text x="{x0}" y="{cy + 4:.1f}" font-size="11.5" fill="{s.color}">'
                            f'{NOT_MEASURED}</text>')
                descs.append(f"{label}, {s.label}: {NOT_MEASURED} ({score.not_measured_reason})")
                y += line_h
                continue
            body.append(f'<line x1="{xpos(score.low):.1f}" y1="{cy:.1f}" x2="{xpos(score.high):.1f}" y2="{cy:.1f}" '
                        f'stroke="{s.color}" stroke-width="3" stroke-linecap="round"/>')
            body.append(_marker(s.marker, xpos(score.value), cy, s.color))
            text = f"{fmt(score.value, digits)} ({fmt(score.low, digits)}–{fmt(score.high, digits)})"
            body.append(f'<text x="{x1 + 12}" y="{cy + 4:.1f}" font-size="11.5" fill="{s.color}">{text}</text>')
            descs.append(f"{label}, {s.label}: {fmt(score.value, digits)} "
                         f"(95% interval {fmt(score.low, digits)} to {fmt(score.high, digits)})")
            y += line_h
        y += gap
    return _svg(chart_id, WIDTH, height, title, "; ".join(descs) + ".", body)


def _short(name: str, limit: int = 22) -> str:
    """Model names inside a 360-unit chart: long ones are cut with an ellipsis (full name in <desc>)."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _nice_extent(values: list[float]) -> float:
    m = max([abs(v) for v in values] + [0.05])
    for step in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 25.0, 50.0, 100.0):
        if m <= step:
            return step
    return math.ceil(m / 100.0) * 100.0


def differences(chart_id: str, dims: list[schemas.Dimension], a_name: str, b_name: str) -> Markup:
    """Difference a - b per sub-score with its 95% interval around a zero line.

    This is the verdict made visible: a dimension is "led" only where the whole
    interval is on one side of zero.
    """
    dims = [d for d in dims if d.dimension in SUB_SCORES]
    x0, x1, top, row_h = 20.0, WIDTH - 20.0, 4, 36
    plot_bottom = top + max(1, len(dims)) * row_h
    height = plot_bottom + 36
    ext = _nice_extent([v for d in dims for v in (d.diff_low, d.diff_high, d.diff) if v is not None])

    def xpos(v: float) -> float:
        return x0 + (max(-ext, min(ext, v)) + ext) / (2 * ext) * (x1 - x0)

    body = _axis(x0, x1, top + 16, plot_bottom, -ext, ext, [-ext, -ext / 2, 0.0, ext / 2, ext], 2)
    zx = xpos(0.0)
    body.append(f'<line x1="{zx:.1f}" y1="{top + 16}" x2="{zx:.1f}" y2="{plot_bottom}" stroke="#111827" '
                f'stroke-width="1.5"/>')
    body.append(f'<text x="4" y="{height - 4}" font-size="11.5" fill="{COLOR_B}">'
                f'&#8592; {escape(_short(b_name))} ahead</text>')
    body.append(f'<text x="{WIDTH - 4}" y="{height - 4}" font-size="11.5" text-anchor="end" fill="{COLOR_A}">'
                f'{escape(_short(a_name))} ahead &#8594;</text>')
    descs = []
    for i, d in enumerate(dims):
        ty = top + i * row_h
        cy = ty + 16 + (row_h - 16) / 2
        color, marker, word = {"a_leads": (COLOR_A, "circle", f"{a_name} leads"),
                               "b_leads": (COLOR_B, "diamond", f"{b_name} leads")}.get(
            d.outcome, (COLOR_NEUTRAL, "circle", "tied"))
        label = DIMENSION_LABELS.get(d.dimension, d.dimension)
        body.append(f'<text x="4" y="{ty + 12:.1f}" font-size="13" font-weight="600" '
                    f'fill="#111827">{escape(label)}</text>')
        if d.diff is None or d.diff_low is None or d.diff_high is None:  # not measured for both / not comparable
            word = "not comparable" if d.outcome == "not_comparable" else "not measured for both"
            body.append(f'<text x="{WIDTH - 4}" y="{ty + 12:.1f}" font-size="11.5" text-anchor="end" '
                        f'fill="{COLOR_NEUTRAL}">{word}</text>')
            descs.append(f"{label}: {word}")
            continue
        body.append(f'<text x="{WIDTH - 4}" y="{ty + 12:.1f}" font-size="11.5" text-anchor="end" fill="{color}">'
                    f'{fmt(d.diff)} ({fmt(d.diff_low)} to {fmt(d.diff_high)})</text>')
        body.append(f'<line x1="{xpos(d.diff_low):.1f}" y1="{cy:.1f}" x2="{xpos(d.diff_high):.1f}" y2="{cy:.1f}" '
                    f'stroke="{color}" stroke-width="3" stroke-linecap="round"/>')
        body.append(_marker(marker, xpos(d.diff), cy, color))
        descs.append(f"{label}: difference {fmt(d.diff)} (95% interval {fmt(d.diff_low)} to {fmt(d.diff_high)}), "
                     f"{word}")
    title = f"Difference {a_name} minus {b_name} per sub-score, with 95% intervals"
    return _svg(chart_id, WIDTH, height, title, "; ".join(descs) + ".", body)


def fragility(chart_id: str, dims: list[schemas.Dimension]) -> Markup:
    """How many evidence rows would have to go to flip each order: short red bars are fragile."""
    left, top, row_h = 100, 4, 24
    height = top + max(1, len(dims)) * row_h + 6
    x0, x1 = left, WIDTH - 130
    biggest = max([d.records_to_flip for d in dims] + [1])
    scale = math.log1p(biggest)
    body, descs = [], []
    for i, d in enumerate(dims):
        cy = top + i * row_h + row_h / 2
        label = DIMENSION_LABELS.get(d.dimension, d.dimension)
        body.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" font-size="13" text-anchor="end" '
                    f'fill="#111827">{escape(label)}</text>')
        n = d.records_to_flip
        if n > 0:
            w = max(4.0, math.log1p(n) / scale * (x1 - x0))
            color = COLOR_FRAGILE if d.fragile else COLOR_NEUTRAL
            body.append(f'<rect x="{x0}" y="{cy - 7:.1f}" width="{w:.1f}" height="14" rx="2" fill="{color}"/>')
            text = f"{n} record{'s' if n != 1 else ''}" + (" — fragile" if d.fragile else "")
            tx = x0 + w + 6
        else:
            text = ("not compared" if d.outcome in ("not_measured", "not_comparable") else "tied: nothing to flip") \
                if n == 0 else "no removal flips it"
            tx = x0
        body.append(f'<text x="{tx:.1f}" y="{cy + 4:.1f}" font-size="12" '
                    f'fill="{COLOR_FRAGILE if d.fragile else "#111827"}">{escape(text)}</text>')
        descs.append(f"{label}: {text}")
    title = "Records that would have to be removed to flip each order (log scale)"
    return _svg(chart_id, WIDTH, height, title, "; ".join(descs) + ".", body)
