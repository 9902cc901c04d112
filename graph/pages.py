"""The comparison page as Markdown and HTML, with the seed page's sections.

Sections, in the seed's order: title, headline, feature table (Type, UnfragileRank,
Adoption, Quality, Ecosystem, Match Graph, Freshness, Pricing, Capabilities, Times Matched),
each model's capabilities with "Unique" and "vs alternatives", the Verdict, and the search
link. We add what the seed lacks: the evidence table (difference, its 95% interval,
outcome and how many records would flip it), so every verdict word can be checked against
a number on the same page; the readings every score rests on, each with its source and the
date it was read ("no reading" where there is none); what the quality probes ran on (so
scores measured on a random-weight test model are never taken for the real model's); and
each pricing plan with the licence or price page it was read from. A score that is not
measured says so, with the reason, and is never shown as 0.
"""

from __future__ import annotations

import html as _html
from dataclasses import dataclass

from graph.page_sources import NO_READING, SourceCell, SourceRow, cell_markdown, web_url
from graph.probes import ProbeBasis
from graph.rank import DIMENSION_LABELS, Score, ScoreCard
from graph.records import ModelRecord, PricingPlan
from graph.verdict import A_LEADS, B_LEADS, NOT_COMPARABLE, NOT_MEASURED, DimensionResult, fmt, fmt_signed

TYPE_LABELS = {"model": "Model", "tool": "Tool", "api": "API"}
TABLE_DIMENSIONS = ("rank", "adoption", "quality", "ecosystem", "match_graph", "freshness")
NOT_ON_REAL_MODEL = "not measured on the real model (its probes ran on a random-weight test model)"


@dataclass(frozen=True)
class Comparison:
    """Everything on one comparison page; the markdown/html are rendered from these fields."""

    a: ModelRecord
    b: ModelRecord
    a_scores: ScoreCard
    b_scores: ScoreCard
    rank: DimensionResult
    dimensions: tuple[DimensionResult, ...]
    rows: tuple[tuple[str, str, str], ...]
    headline: str
    verdict: tuple[str, ...]
    events_total: int
    freshness: str = ""  # how current the quality evidence is (stale when the last probe attempt failed)
    probe_basis: tuple[ProbeBasis, ...] = ()  # what the quality probes of a and b ran on
    sources: tuple[SourceRow, ...] = ()  # every reading behind the scores, with its source and date


def freshness_note(last_ok_ms: int, failed_ms: int, reason: str) -> str:
    """One sentence on the age of the quality evidence, so a page never hides that probes failed."""
    import datetime as _dt

    def when(ms: int) -> str:
        return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    since = f"the last successful probe run ({when(last_ok_ms)})" if last_ok_ms else \
        "published results (no live probe has measured a real model yet)"
    if failed_ms and failed_ms >= last_ok_ms:
        return (f"Quality evidence is stale: the latest live probe attempt ({when(failed_ms)}) failed ({reason}); "
                f"quality is shown from {since}.")
    if last_ok_ms:
        return f"Quality evidence is from live probes run {when(last_ok_ms)} and published results."
    return "Quality is from published results (no live probe has measured a real model yet)."


def rests_on_text(card: ScoreCard) -> str:
    """'adoption, freshness and match graph (prior only)': what a rank rests on."""
    parts = [DIMENSION_LABELS[d].lower() + (" (prior only)" if card.get(d).evidence_count == 0 else "")
             for d in card.rests_on]
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "".join(parts)


def score_cell(dimension: str, s: Score, rests_on: str = "") -> str:
    """'0.73 (0.61–0.80)', '50/100 (38–62), rests on adoption', or 'not measured (no adoption reading recorded)'."""
    if not s.measured:
        return f"not measured ({s.reason})" if s.reason else "not measured"
    core = f"{fmt(dimension, s.value)}/100" if dimension == "rank" else fmt(dimension, s.value)
    cell = f"{core} ({fmt(dimension, s.low)}–{fmt(dimension, s.high)})"
    if rests_on:
        cell += f", rests on {rests_on}"
    if s.reason and s.evidence_count == 0:
        cell += f", {s.reason}"
    return cell


def feature_rows(a: ModelRecord, b: ModelRecord, sa: ScoreCard, sb: ScoreCard,
                 compared: dict[str, DimensionResult] | None = None,
                 tested: list[tuple[str, str]] | None = None) -> tuple[tuple[str, str, str], ...]:
    """The feature table; quality shows the comparison's (within the shared tasks) when ``compared`` has it."""
    rows = [("Type", TYPE_LABELS[a.type], TYPE_LABELS[b.type])]
    on_test = {name for name, _what in tested or []}
    for d in TABLE_DIMENSIONS:
        cells = []
        for rec, card in ((a, sa), (b, sb)):
            s = card.get(d)
            if d == "quality" and compared and "quality" in compared:
                q = compared["quality"]
                s = q.a if rec is a else q.b
                if q.outcome == NOT_COMPARABLE:
                    cells.append(f"not comparable ({', '.join(rec.tasks) or 'no task recorded'})")
                    continue
                if not s.measured and rec.name in on_test:
                    cells.append(NOT_ON_REAL_MODEL)
                    continue
            cells.append(score_cell(d, s, rests_on_text(card) if d == "rank" else ""))
        rows.append((DIMENSION_LABELS[d], cells[0], cells[1]))
    rows.append(("Pricing", a.pricing.label, b.pricing.label))
    rows.append(("Capabilities", f"{len(a.capabilities)} decomposed", f"{len(b.capabilities)} decomposed"))
    rows.append(("Times Matched", f"{sa.times_matched:,}", f"{sb.times_matched:,}"))
    return tuple(rows)


def _outcome_text(c: Comparison, d: DimensionResult) -> str:
    if d.outcome == A_LEADS:
        return f"{c.a.name} leads"
    if d.outcome == B_LEADS:
        return f"{c.b.name} leads"
    if d.outcome == NOT_COMPARABLE:
        return "not comparable"
    if d.outcome == NOT_MEASURED:
        return "not measured for both"
    return "tied"


def _flip_text(d: DimensionResult) -> str:
    if d.outcome not in (A_LEADS, B_LEADS) and d.records_to_flip == 0:
        return "–"
    if d.records_to_flip == -1:
        return "no removal flips it"
    if d.records_to_flip == -2:
        return "not computed (graph too large)"
    return f"{d.records_to_flip}{' (fragile)' if d.fragile else ''}"


def evidence_rows(c: Comparison) -> list[tuple[str, str, str, str, str]]:
    out = []
    for d in (c.rank, *c.dimensions):
        if d.outcome in (NOT_MEASURED, NOT_COMPARABLE):
            out.append((DIMENSION_LABELS[d.dimension], "–", "–", _outcome_text(c, d), "–"))
            continue
        ci = f"{fmt_signed(d.dimension, d.diff.low)} to {fmt_signed(d.dimension, d.diff.high)}"
        out.append((DIMENSION_LABELS[d.dimension], fmt_signed(d.dimension, d.diff.diff), ci,
                    _outcome_text(c, d), _flip_text(d)))
    return out


EVIDENCE_HEADER = ("Dimension", "Difference (A − B)", "95% interval", "Outcome", "Records to flip")
TEST_MODEL_NOTE = ("Probes of a random-weight test model exercise the serving path only: its quality score "
                   "says nothing about the real model.")


def plan_text(p: PricingPlan) -> str:
    """'Open weights (free): MIT-licensed checkpoint'."""
    price = "free" if p.usd_per_month == 0 else f"${p.usd_per_month:,.2f}/month"
    return f"{p.name} ({price})" + (f": {p.description}" if p.description else "")


def source_note(p: PricingPlan) -> str:
    """'(read 2026-11-01), which says: ...' after the source link; '' without a source."""
    if not p.source:
        return ""
    read = f" (read {p.observed_at})" if p.observed_at else ""
    return read + (f", which says: {p.source_says}" if p.source_says else "")


def basis_text(c: Comparison, b: ProbeBasis) -> str:
    """'Stable Diffusion: 2 probe runs on <model> (...), a tiny random-weight test model, served by diffusion'."""
    name = c.a.name if b.model == c.a.id else c.b.name
    runs = f"{b.runs} probe run{'s' if b.runs != 1 else ''}"
    judged = f", judged by {b.judge.describe()}" if b.judge is not None else ""
    if b.served is None:
        return f"{name}: {runs} on a served model that was not recorded{judged}"
    return f"{name}: {runs} on {b.served.describe()}, served by {b.served.endpoint}{judged}"


def _tested(c: Comparison) -> bool:
    return any((b.served is not None and b.served.test_model) or (b.judge is not None and b.judge.test_model)
               for b in c.probe_basis)


SOURCES_NOTE = ("Every figure the scores rest on, with the page it was read from and the date it was read; "
                "a figure nobody read says so and is not counted.")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(c: Comparison) -> str:
    lines = [f"# {c.a.name} vs {c.b.name}", "", c.headline + " Capability-level comparison backed by match "
             f"graph evidence from {c.events_total:,} recorded search event{'s' if c.events_total != 1 else ''}.",
             "", f"| Feature | {_md_cell(c.a.name)} | {_md_cell(c.b.name)} |", "|---|---|---|"]
    lines += [f"| {f} | {_md_cell(x)} | {_md_cell(y)} |" for f, x, y in c.rows]
    lines += ["", "Scores are on 0–1 (UnfragileRank on 0–100) with 95% bootstrap intervals in brackets; "
              "a score that is not measured says why." + (f" {c.freshness}" if c.freshness else ""), "",
              "## Evidence", "", "| " + " | ".join(EVIDENCE_HEADER) + " |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_md_cell(x) for x in row) + " |" for row in evidence_rows(c)]
    lines += _md_sources(c) + _md_probe_basis(c) + _md_pricing(c)
    for m in (c.a, c.b):
        lines += ["", f"## {m.name} Capabilities"]
        for cap in m.capabilities:
            lines += ["", f"### {cap.title}", "", cap.description]
            if cap.unique:
                lines += ["", f"**Unique:** {cap.unique}"]
            if cap.vs_alternatives:
                lines += ["", f"**vs alternatives:** {cap.vs_alternatives}"]
    lines += ["", "## Verdict", "", " ".join(c.verdict), "", "## Need something different?", "",
              "[Search the match graph →](/search)", ""]
    return "\n".join(lines)


def _md_sources(c: Comparison) -> list[str]:
    if not c.sources:
        return []
    lines = ["", "## Readings and their sources", "", SOURCES_NOTE, "",
             f"| Reading | {_md_cell(c.a.name)} | {_md_cell(c.b.name)} |", "|---|---|---|"]
    return lines + [f"| {_md_cell(r.label)} | {cell_markdown(r.a)} | {cell_markdown(r.b)} |" for r in c.sources]


def _md_probe_basis(c: Comparison) -> list[str]:
    if not c.probe_basis:
        return []
    lines = ["", "## What the quality probes ran on", ""] + [f"- {basis_text(c, b)}" for b in c.probe_basis]
    return lines + (["", TEST_MODEL_NOTE] if _tested(c) else [])


def _md_pricing(c: Comparison) -> list[str]:
    lines = ["", "## Pricing"]
    for m in (c.a, c.b):
        lines += ["", f"**{m.name}: {m.pricing.label}.**", ""]
        for p in m.pricing.plans:
            src = f" Source: <{p.source}>{source_note(p)}." if p.source else " No source recorded."
            lines.append(f"- {plan_text(p)}.{src}")
        if not m.pricing.plans:
            lines.append("- No plans recorded.")
    return lines


def _e(text: str) -> str:
    return _html.escape(text, quote=True)


def html(c: Comparison) -> str:
    title = f"{c.a.name} vs {c.b.name}"
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{_e(title)}</title>",
           "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
           "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}"
           "</style></head><body>", f"<h1>{_e(title)}</h1>",
           f'<p class="headline">{_e(c.headline)} Capability-level comparison backed by match graph evidence '
           f"from {c.events_total:,} recorded search event{'s' if c.events_total != 1 else ''}.</p>",
           '<table class="features"><thead><tr><th>Feature</th>'
           f"<th>{_e(c.a.name)}</th><th>{_e(c.b.name)}</th></tr></thead><tbody>"]
    out += [f"<tr><td>{_e(f)}</td><td>{_e(x)}</td><td>{_e(y)}</td></tr>" for f, x, y in c.rows]
    out += ["</tbody></table>",
            "<p>Scores are on 0–1 (UnfragileRank on 0–100) with 95% bootstrap intervals in brackets.</p>",
            f'<p class="freshness">{_e(c.freshness)}</p>' if c.freshness else "",
            '<h2>Evidence</h2><table class="evidence"><thead><tr>'
            + "".join(f"<th>{_e(h)}</th>" for h in EVIDENCE_HEADER) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{_e(x)}</td>" for x in row) + "</tr>" for row in evidence_rows(c)]
    out.append("</tbody></table>")
    out += _html_sources(c) + _html_probe_basis(c) + _html_pricing(c)
    for m in (c.a, c.b):
        out.append(f'<section class="capabilities"><h2>{_e(m.name)} Capabilities</h2>')
        for cap in m.capabilities:
            out += [f"<h3>{_e(cap.title)}</h3>", f"<p>{_e(cap.description)}</p>"]
            if cap.unique:
                out.append(f"<p><strong>Unique:</strong> {_e(cap.unique)}</p>")
            if cap.vs_alternatives:
                out.append(f"<p><strong>vs alternatives:</strong> {_e(cap.vs_alternatives)}</p>")
        out.append("</section>")
    out += ['<section class="verdict"><h2>Verdict</h2>', f"<p>{_e(' '.join(c.verdict))}</p></section>",
            '<h2>Need something different?</h2><p><a href="/search">Search the match graph →</a></p>',
            "</body></html>"]
    return "\n".join(out)


def _html_probe_basis(c: Comparison) -> list[str]:
    if not c.probe_basis:
        return []
    out = ['<section class="probe-basis"><h2>What the quality probes ran on</h2><ul>']
    out += [f"<li>{_e(basis_text(c, b))}</li>" for b in c.probe_basis]
    out.append("</ul>" + (f"<p>{_e(TEST_MODEL_NOTE)}</p>" if _tested(c) else "") + "</section>")
    return out


def _link(url: str, text: str) -> str:
    return f'<a href="{_e(url)}" rel="nofollow noopener">{_e(text)}</a>' if web_url(url) else _e(text)


def _html_cells(cells: tuple[SourceCell, ...]) -> str:
    if not cells:
        return f'<span class="no-reading">{NO_READING}</span>'
    out = []
    for c in cells:
        fig = _link(c.source, c.text) if web_url(c.source) else f"{_e(c.text)} ({_e(c.source)})"
        out.append(f"{fig}, read {_e(c.observed_at)}" + (f" (“{_e(c.says)}”)" if c.says else ""))
    return "; ".join(out)


def _html_sources(c: Comparison) -> list[str]:
    if not c.sources:
        return []
    out = ['<section class="sources"><h2>Readings and their sources</h2>', f"<p>{_e(SOURCES_NOTE)}</p>",
           f"<table><thead><tr><th>Reading</th><th>{_e(c.a.name)}</th><th>{_e(c.b.name)}</th></tr></thead><tbody>"]
    out += [f"<tr><td>{_e(r.label)}</td><td>{_html_cells(r.a)}</td><td>{_html_cells(r.b)}</td></tr>"
            for r in c.sources]
    out.append("</tbody></table></section>")
    return out


def _html_source(p: PricingPlan) -> str:
    if not p.source:
        return " No source recorded."
    link = _link(p.source, p.source)
    return f" Source: {link}{_e(source_note(p))}."


def _html_pricing(c: Comparison) -> list[str]:
    out = ['<section class="pricing"><h2>Pricing</h2>']
    for m in (c.a, c.b):
        out.append(f"<p><strong>{_e(m.name)}: {_e(m.pricing.label)}.</strong></p><ul>")
        out += [f"<li>{_e(plan_text(p))}.{_html_source(p)}</li>" for p in m.pricing.plans]
        out.append("</ul>" if m.pricing.plans else "<li>No plans recorded.</li></ul>")
    out.append("</section>")
    return out
