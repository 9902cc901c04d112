"""The readings behind a comparison, one row per kind of figure, each cell linking its source and date.

Rows: every adoption and ecosystem kind either model has a reading of, the licence, the
release date, the last update, and each published benchmark result. A cell lists the newest
reading from each source (value, what the page says, the date it was read, the link) or
says "no reading": a figure nobody read is never shown as 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from graph.records import ModelRecord, Signal

NO_READING = "no reading"
FACT_LABELS = {"licence": "Licence", "released": "Released", "last_modified": "Last updated"}


@dataclass(frozen=True)
class SourceCell:
    text: str  # the figure as shown ("161,000 downloads (last 30 days)")
    source: str  # where it was read (a URL, usually)
    observed_at: str  # when
    says: str = ""  # what the page says


@dataclass(frozen=True)
class SourceRow:
    label: str  # "Downloads", "Licence", "GenEval overall (text-to-image)"
    a: tuple[SourceCell, ...]
    b: tuple[SourceCell, ...]


def _signal_text(s: Signal) -> str:
    return f"{s.value:,.0f}" + (f" ({s.window})" if s.window else "")


def _signals(rec: ModelRecord, dim: str, kind: str) -> tuple[SourceCell, ...]:
    sigs = rec.adoption if dim == "adoption" else rec.ecosystem
    return tuple(SourceCell(_signal_text(s), s.source, s.observed_at, s.says) for s in sigs if s.kind == kind)


def source_rows(a: ModelRecord, b: ModelRecord) -> tuple[SourceRow, ...]:
    """The readings table of a comparison (see the module doc)."""
    rows: list[SourceRow] = []
    for dim in ("adoption", "ecosystem"):
        kinds: list[str] = []
        for rec in (a, b):
            for s in (rec.adoption if dim == "adoption" else rec.ecosystem):
                if s.kind not in kinds:
                    kinds.append(s.kind)
        rows += [SourceRow(f"{kind.replace('_', ' ').capitalize()} ({dim})", _signals(a, dim, kind),
                           _signals(b, dim, kind)) for kind in kinds]
    for name, label in FACT_LABELS.items():
        cells = [tuple(SourceCell(f.value, f.source, f.observed_at, f.says) for f in rec.facts if f.name == name)
                 for rec in (a, b)]
        rows.append(SourceRow(label, cells[0], cells[1]))
    benches: list[tuple[str, str]] = []
    for rec in (a, b):
        for q in rec.external_quality:
            if (q.benchmark, q.task) not in benches:
                benches.append((q.benchmark, q.task))
    for bench, task in benches:
        cells = [tuple(SourceCell(f"{q.score:g}" + (f" on {q.scale}" if q.scale else ""), q.source, q.observed_at,
                                  q.says) for q in rec.external_quality if (q.benchmark, q.task) == (bench, task))
                 for rec in (a, b)]
        rows.append(SourceRow(f"{bench}" + (f" ({task})" if task else ""), cells[0], cells[1]))
    return tuple(rows)


def web_url(url: str) -> bool:
    return url.startswith(("https://", "http://"))


def cell_markdown(cells: tuple[SourceCell, ...]) -> str:
    if not cells:
        return NO_READING
    out = []
    for c in cells:
        fig = f"[{c.text}]({c.source})" if web_url(c.source) else f"{c.text} ({c.source})"
        out.append(f"{fig}, read {c.observed_at}" + (f" (“{c.says}”)" if c.says else ""))
    return "; ".join(out).replace("|", "\\|").replace("\n", " ")
