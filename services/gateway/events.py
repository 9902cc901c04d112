"""Search events from the frontend into the match graph (opt-in: ``record_searches``).

The match graph is built from what people search, open and compare; this frontend is
where that happens. Each results page gets a search id (``sid``) carried in its links.
Opening a result or a comparison from it marks those models clicked/compared. An
event is sent to ``RecordMatches`` once it has been quiet for ``record_flush_s``, so
one search becomes ONE event with everything the user did (the event id is the
``sid``: replays after a failed send are ignored by the MatchGraph, never double
counted). Pending events are bounded in memory and flushed on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from services.gateway import metrics
from services.gateway.upstream import MatchGraphAPI, UpstreamError
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

log = logging.getLogger(__name__)
SID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class PendingSearch:
    query: str
    matched: list[str]
    started_ms: int
    last_activity: float
    clicked: list[str] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)

    def to_pb(self, sid: str) -> pb.MatchEvent:
        return pb.MatchEvent(event_id=f"gateway-{sid}", query=self.query, matched=self.matched,
                             compared=self.compared, clicked=self.clicked, timestamp_ms=self.started_ms)


class SearchRecorder:
    """Collects one event per search and sends quiet ones in batches."""

    def __init__(self, upstream: MatchGraphAPI, flush_after_s: float, max_pending: int) -> None:
        self.upstream = upstream
        self.flush_after_s = flush_after_s
        self.max_pending = max_pending
        self.pending: dict[str, PendingSearch] = {}
        self.sent = 0
        self._lock = asyncio.Lock()

    def start_search(self, query: str, matched: list[str]) -> str | None:
        """Register a results page; returns its sid (None when nothing matched)."""
        if not matched:
            return None
        sid = uuid.uuid4().hex
        self.pending[sid] = PendingSearch(query, list(dict.fromkeys(matched))[:100], int(time.time() * 1000),
                                          time.monotonic())
        return sid

    def _get(self, sid: str | None) -> PendingSearch | None:
        return self.pending.get(sid) if sid and SID_RE.match(sid) else None

    def clicked(self, sid: str | None, model_id: str) -> None:
        s = self._get(sid)
        if s is not None and model_id in s.matched and model_id not in s.clicked:
            s.clicked.append(model_id)
            s.last_activity = time.monotonic()

    def compared(self, sid: str | None, *model_ids: str) -> None:
        s = self._get(sid)
        if s is None:
            return
        for m in model_ids:
            if m in s.matched and m not in s.compared:
                s.compared.append(m)
        s.last_activity = time.monotonic()

    async def flush(self, force: bool = False) -> int:
        """Send quiet events (all with ``force``, or the oldest when over ``max_pending``)."""
        async with self._lock:
            now = time.monotonic()
            over = max(0, len(self.pending) - self.max_pending)
            ready = [sid for i, (sid, s) in enumerate(self.pending.items())
                     if force or i < over or now - s.last_activity >= self.flush_after_s]
            if not ready:
                return 0
            events = [self.pending[sid].to_pb(sid) for sid in ready]
            try:
                await self.upstream.record_matches(events)
            except UpstreamError as err:
                log.warning("could not record %d search events (%s); will retry", len(events), err)
                # Keep memory bounded even while the MatchGraph is down.
                dropped = list(self.pending)[: max(0, len(self.pending) - self.max_pending)]
                for sid in dropped:
                    del self.pending[sid]
                metrics.SEARCH_EVENTS.labels("dropped").inc(len(dropped))
                return 0
            for sid in ready:
                self.pending.pop(sid, None)
            self.sent += len(events)
            metrics.SEARCH_EVENTS.labels("sent").inc(len(events))
            return len(events)

    async def run(self, interval_s: float) -> None:
        """Flush loop for the app's lifespan."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush()
            except Exception:
                log.exception("search event flush failed")
