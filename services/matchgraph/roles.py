"""What runs beside the servicer in each role (``--set role=all|writer|reader``).

- ``all`` (default): one process loads the store, takes every RPC, runs the scheduled probes.
- ``writer``: the same, plus a ``Publisher`` that publishes a versioned snapshot after every
  write (one NOTIFY per publication) and replays anything committed but never applied. On
  PostgreSQL any number of writers may run: each is a ``Candidate`` (``graph/election.py``);
  the holder of the leadership lock writes, the others stand by, serve reads from the
  leader's publications and take over when it goes.
- ``reader``: a read-only engine kept at the leader's newest publication by a ``Follower``;
  write RPCs answer FAILED_PRECONDITION naming the leader; no probes, no checkpoints.

The health name ``LEADER_HEALTH`` is SERVING exactly while the process takes writes (the
leader, a lone writer on SQLite, ``all``): a Kubernetes readiness probe on it puts only the
leader behind the write Service.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from graph.election import Candidate
from graph.engine import Engine
from graph.follower import Follower
from graph.publisher import Publication, Publisher
from graph.store import Leader
from graph.sync import Lag
from services.core.names import full_name
from services.core.settings import section
from services.matchgraph import metrics
from services.matchgraph.refresh import LeaderJob, hub_refresh
from services.matchgraph.settings import Settings

if TYPE_CHECKING:
    from services.core.server import RunningServer

WRITE_RPCS = ("RecordMatches", "UpsertModel", "ImportModels", "RunProbes", "RecordFeedback", "ImportManifest")
LEADER_HEALTH = full_name("matchgraph") + ".Leader"  # SERVING while this process takes writes


@dataclass(frozen=True)
class RoleInfo:
    """What GetSnapshot says about this process besides the engine's state."""

    role: str = "all"  # all | writer (taking writes) | standby (a writer that does not lead) | reader
    writer_address: str = ""  # where write RPCs go (readers and standbys: the leader)
    max_staleness_s: float = 0.0
    term: int = 0  # leadership term of the leader this process serves (0: no election)
    leader_address: str = ""


def writes_refused(settings: Settings) -> str:
    """The FAILED_PRECONDITION message a reader answers write RPCs with ("" for the other roles)."""
    return reader_refusal(settings.writer_address) if settings.role == "reader" else ""


def reader_refusal(writer_address: str) -> str:
    """What a reader answers write RPCs with, naming the writer (configured, or the leader it follows)."""
    where = f"at {writer_address}" if writer_address else \
        "(this reader does not know its address yet: set writer_address)"
    return (f"this MatchGraph is a reader (role=reader): it serves GetModel, Rank, Compare, Search, GetSnapshot, "
            f"GetPassport, GetMatch, Resolve and ValidateManifest only; send {', '.join(WRITE_RPCS)} to the "
            f"writer {where}")


def standby_refusal(leader: Leader) -> str:
    """What a standby writer answers write RPCs with: where the leader is, or that none is elected yet."""
    if not leader.address:
        return ("this MatchGraph is a standby writer and no leader is elected right now (one takes over within "
                "leader_retry_s of the leadership lock being free); retry shortly")
    return (f"this MatchGraph is a standby writer, not the leader: send {', '.join(WRITE_RPCS)} to the leader at "
            f"{leader.address} (term {leader.term})")


def advertised(settings: Settings, port: int) -> str:
    """host:port this process is reached at (``advertise_address``, else its bind host and bound port)."""
    if settings.advertise_address:
        return settings.advertise_address
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else socket.gethostname()
    return f"{host}:{port}"


def probe_schedule(engine: Engine, interval: float) -> LeaderJob:
    """A probe run of every probe set every ``interval`` seconds on the leader."""

    def work(_stop: threading.Event) -> None:
        with metrics.probe_run("schedule"):
            engine.run_probes([], 0, 0)

    return LeaderJob(engine, interval, "probe-schedule", work)


class Role:
    """Loads the engine the way the role needs and runs its background work until ``stop``."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        from graph.config import FollowConfig

        self.settings = settings
        self.engine = engine
        self.follow = section(settings, FollowConfig)
        self.address = settings.advertise_address
        self.follower = self._follower() if settings.role == "reader" else None
        self.publisher: Publisher | None = None
        self.candidate: Candidate | None = None
        self.schedule = probe_schedule(engine, settings.probe_interval_s) \
            if settings.probe_interval_s > 0 and settings.role != "reader" else None
        self.hub_refresh = hub_refresh(engine, settings.hub_refresh_interval_s, settings.hub_endpoint) \
            if settings.hub_refresh_interval_s > 0 and settings.role != "reader" else None
        self._set_leader_health: Callable[[bool], None] = lambda _leading: None

    def _follower(self) -> Follower:
        follower = Follower(self.engine, self.follow)
        self._watch(follower)
        if not self.settings.writer_address:  # name the leader of the publication served in write refusals
            follower.on_step = self._reader_step
        return follower

    def _reader_step(self, lag: Lag) -> None:
        metrics.observe_lag(lag)
        if self.follower is not None and self.follower.leader:
            self.engine.writes_refused = reader_refusal(self.follower.leader)

    @staticmethod
    def _watch(follower: Follower) -> None:
        follower.on_visible = metrics.NOTIFY_TO_VISIBLE.observe
        follower.on_step = metrics.observe_lag

    def _writer_lag(self) -> Lag:
        """A writer is never behind; it reports the publication it made last."""
        published = self.publisher.published if self.publisher is not None else None
        return Lag(store_seq=self.engine.graph_version(), publication=published.snapshot if published else 0)

    @staticmethod
    def _published(pub: Publication) -> None:
        metrics.SNAPSHOT_VERSION.set(pub.snapshot)

    def listening(self, server: RunningServer) -> None:
        """The port is bound: learn the address to advertise and add the leader health name (NOT_SERVING)."""
        from grpc_health.v1 import health_pb2

        self.address = advertised(self.settings, server.port)
        server.health.set(LEADER_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)

        def set_leader(leading: bool) -> None:
            server.health.set(LEADER_HEALTH, health_pb2.HealthCheckResponse.SERVING if leading
                              else health_pb2.HealthCheckResponse.NOT_SERVING)
        self._set_leader_health = set_leader

    def _leadership_changed(self, leading: bool, term: int) -> None:
        self._set_leader_health(leading)
        metrics.LEADER_TERM.set(term if leading else 0)

    def load(self) -> None:
        """Build the in-memory state (a reader or standby: from the newest publication) and publish it (the
        writer that leads)."""
        lock = self.engine.store.leader_lock(self.address) if self.settings.role == "writer" else None
        if lock is not None:
            self.candidate = Candidate(self.engine, self.follow, lock, self.address, standby_refusal)
            self.candidate.on_change = self._leadership_changed
            self.candidate.on_publish = self._published
            self.candidate.on_follow = self._watch
            self.candidate.load()
            self._leadership_changed(self.candidate.leading, self.candidate.term)
            return
        if self.follower is not None:
            self.follower.load()
            return
        self.engine.load()
        metrics.observe_lag(Lag(store_seq=self.engine.graph_version()))
        if self.settings.role == "writer":
            self.publisher = Publisher(self.engine, self.follow)
            self.publisher.on_publish = self._published
            self.engine.lag_source = self._writer_lag
            self.publisher.start()
        self._leadership_changed(True, 0)

    def start(self) -> None:
        """Start following / electing / probing once the service is SERVING."""
        if self.follower is not None:
            self.follower.start()
        if self.candidate is not None:
            self.candidate.start()
        if self.schedule is not None and self.engine.can_probe:
            self.schedule.thread.start()
        if self.hub_refresh is not None:
            self.hub_refresh.thread.start()
        metrics.watch_pool(self.engine.store)

    def stop(self) -> None:
        if self.schedule is not None:
            self.schedule.stop(self.settings.probe_timeout_s)
        if self.hub_refresh is not None:
            self.hub_refresh.stop(self.settings.probe_timeout_s)
        if self.follower is not None:
            self.follower.stop()
        if self.publisher is not None:
            self.publisher.stop()
        if self.candidate is not None:
            self.candidate.stop()

    def release(self) -> None:
        """After the final checkpoint: give the leadership up at once (a standby takes over without waiting)."""
        if self.candidate is not None:
            self.candidate.release()

    def info(self) -> RoleInfo:
        """GetSnapshot's view of this process now."""
        s = self.settings
        if self.candidate is not None:
            leader = self.candidate.leader
            role = "writer" if self.candidate.leading else "standby"
            return RoleInfo(role, leader.address, s.max_staleness_s, leader.term, leader.address)
        follower = self.follower
        if follower is not None:
            return RoleInfo(s.role, s.writer_address or follower.leader, s.max_staleness_s, follower.term,
                            follower.leader)
        return RoleInfo(s.role, s.writer_address if s.role == "reader" else "", s.max_staleness_s)
