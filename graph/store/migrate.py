"""Copy a match graph from one store to another (``unfragile graph migrate --from ... --to ...``).

Events are copied first, keeping their ids and seqs (the order every derived number
follows), then the catalogue, probe runs and meta counters, and the derived-state
snapshots last, so a copy interrupted at any point never holds a snapshot newer than its
events. Running it again is safe: events already in the target are checked to be the
source's and only the newer ones are appended; every other table is replaced whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from common.errors import FailedPrecondition
from graph.store.base import LOCAL_META, PORTABLE, Row, Store

# Copy order: the derived-state snapshots last (see the module docstring).
TABLE_ORDER = ("models", "aliases", "observations", "tasks", "capabilities", "external_quality", "search_docs",
               "probe_runs", "probe_results", "probe_outcomes", "probe_scores", "feedback", "meta", "graph_state")
assert set(TABLE_ORDER) == set(PORTABLE)


@dataclass
class MigrationReport:
    events_before: int  # events the target already held
    events_copied: int
    rows: dict[str, int] = field(default_factory=dict)  # rows written per table


def _check_prefix(src: Store, dst: Store) -> int:
    """The target's last seq, after checking its events are a prefix of the source's."""
    head = dst.graph_version()
    if head == 0:
        return 0
    for seq in {1, head}:
        if dst.event_id_at(seq) is None or dst.event_id_at(seq) != src.event_id_at(seq):
            raise FailedPrecondition(
                f"the target already holds events that are not a copy of the source's (event seq {seq} differs); "
                f"migrate into an empty database")
    if dst.event_count() != head:
        raise FailedPrecondition(f"the target's events are not numbered 1..{head}; migrate into an empty database")
    return head


def _rows(src: Store, table: str, counted: dict[str, int]) -> Iterator[Row]:
    counted[table] = 0
    for chunk in src.read_rows(table):
        for row in chunk:
            if table == "meta" and row[0] in LOCAL_META:
                continue
            counted[table] += 1
            yield row


def migrate(src: Store, dst: Store, progress: Callable[[str], None] = lambda _m: None) -> MigrationReport:
    """Copy everything in ``src`` into ``dst`` (see the module docstring)."""
    head = _check_prefix(src, dst)
    report = MigrationReport(events_before=head, events_copied=0)
    for rows in src.read_event_rows(head):
        report.events_copied += dst.append_event_rows(rows)
        progress(f"events: {report.events_copied} copied (up to seq {rows[-1][0]})")
    for table in TABLE_ORDER:
        dst.replace_rows(table, _rows(src, table, report.rows))
        progress(f"{table}: {report.rows[table]} rows")
    return report
