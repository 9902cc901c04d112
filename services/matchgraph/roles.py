"""What runs beside the servicer in each role (``--set role=all|writer|reader``).

- ``all`` (default): one process loads the store, takes every RPC, runs the scheduled probes.
- ``writer``: the same, plus a ``Publisher`` that publishes a versioned snapshot after every
  write (one NOTIFY per publication) and replays anything committed but never applied.
- ``reader``: a read-only engine kept at the writer's newest publication by a ``Follower``;
  write RPCs answer FAILED_PRECONDITION naming ``writer_address``; no probes, no checkpoints.
"""

from __future__ import annotations

import logging
import threading

from graph.engine import Engine
from graph.follower import Follower
from graph.publisher import Publication, Publisher
from graph.sync import Lag
from services.core.settings import section
from services.matchgraph import metrics
from services.matchgraph.settings import Settings

log = logging.getLogger(__name__)
WRITE_RPCS = ("RecordMatches", "UpsertModel", "RunProbes", "RecordFeedback", "ImportManifest")


def writes_refused(settings: Settings) -> str:
    """The FAILED_PRECONDITION message a reader answers write RPCs with ("" for the other roles)."""
    if settings.role != "reader":
        return ""
    where = f"at {settings.writer_address}" if settings.writer_address else \
        "(this reader does not know its address: set writer_address)"
    return (f"this MatchGraph is a reader (role=reader): it serves GetModel, Rank, Compare, Search, GetSnapshot, "
            f"GetPassport, GetMatch, Resolve and ValidateManifest only; send {', '.join(WRITE_RPCS)} to the writer "
            f"{where}")


class ProbeSchedule:
    """Runs probes every ``interval`` seconds in a daemon thread until stopped."""

    def __init__(self, engine: Engine, interval: float) -> None:
        self.engine, self.interval = engine, interval
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="probe-schedule", daemon=True)

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                with metrics.probe_run("schedule"):
                    self.engine.run_probes([], 0, 0)
            except Exception:
                log.exception("scheduled probe run failed")

    def stop(self, timeout: float) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout=timeout)


class Role:
    """Loads the engine the way the role needs and runs its background work until ``stop``."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        from graph.config import FollowConfig

        self.settings = settings
        self.engine = engine
        follow = section(settings, FollowConfig)
        self.follower = Follower(engine, follow) if settings.role == "reader" else None
        self.publisher = Publisher(engine, follow) if settings.role == "writer" else None
        self.schedule = ProbeSchedule(engine, settings.probe_interval_s) \
            if settings.probe_interval_s > 0 and settings.role != "reader" else None
        if self.follower is not None:
            self.follower.on_visible = metrics.NOTIFY_TO_VISIBLE.observe
            self.follower.on_step = metrics.observe_lag
        if self.publisher is not None:
            self.publisher.on_publish = self._published
            engine.lag_source = self._writer_lag

    def _writer_lag(self) -> Lag:
        """A writer is never behind; it reports the publication it made last."""
        published = self.publisher.published if self.publisher is not None else None
        return Lag(store_seq=self.engine.graph_version(), publication=published.snapshot if published else 0)

    @staticmethod
    def _published(pub: Publication) -> None:
        metrics.SNAPSHOT_VERSION.set(pub.snapshot)

    def load(self) -> None:
        """Build the in-memory state (a reader: from the newest publication) and publish it (a writer)."""
        if self.follower is not None:
            self.follower.load()
        else:
            self.engine.load()
            metrics.observe_lag(Lag(store_seq=self.engine.graph_version()))
        if self.publisher is not None:
            self.publisher.start()

    def start(self) -> None:
        """Start following / probing once the service is SERVING."""
        if self.follower is not None:
            self.follower.start()
        if self.schedule is not None and self.engine.can_probe:
            self.schedule.thread.start()
        metrics.watch_pool(self.engine.store)

    def stop(self) -> None:
        if self.schedule is not None:
            self.schedule.stop(self.settings.probe_timeout_s)
        if self.follower is not None:
            self.follower.stop()
        if self.publisher is not None:
            self.publisher.stop()
