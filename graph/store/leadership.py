"""Who may write to a store shared by several writer-capable processes: the leader on record and a candidate's
hold on the leadership (PostgreSQL implements them in ``pg_leader.py``)."""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Leader(NamedTuple):
    """The leader on record: the term it won, the address it serves on, since when (ms); term 0: none yet."""

    term: int
    address: str
    since_ms: int


class LeaderLock(Protocol):
    """A candidate writer's hold on the leadership of a store (PostgreSQL: ``pg_leader.PgLeaderLock``)."""

    term: int

    def try_acquire(self) -> int:
        """Take the leadership if it is free: the new term (the store's writes are fenced by it), else 0."""

    def holding(self) -> bool:
        """Whether this candidate still leads (on False it has let go: its writes are refused from now on)."""

    def current(self) -> Leader:
        """The leader on record."""

    def release(self) -> None: ...
