"""Client-side routing to a scaled-out MatchGraph: reads over every replica, writes to the leader.

- ``read_stub(targets)``: one channel over every replica in ``targets`` (``a:1,b:2`` or a
  DNS name with several addresses), round robin over the ones whose gRPC health says
  SERVING, an idempotent read retried once on another replica on UNAVAILABLE.
- ``LeaderClient(targets)``: writes go to whichever writer-capable process leads. It asks
  ``GetSnapshot`` (role "writer" with the highest term), and when a write fails with
  UNAVAILABLE (the leader died or drains) or FAILED_PRECONDITION from a process that does not
  lead (a standby, a deposed leader), it finds the leader again and retries there until
  ``retry_for_s`` runs out. Safe for RecordMatches because events carry their own ids (a
  retried message that was committed counts as duplicates, never twice) and for UpsertModel
  (the same record again changes nothing), RecordFeedback (one outcome per match record: a
  retry gets the stored one back) and ImportManifest (an import again is an update to the same).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from services.core.client import channel, replicas_target, retry_unavailable
from services.core.names import full_name
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")
READ_METHODS = ["GetModel", "Rank", "Compare", "Search", "GetSnapshot", "GetPassport", "Resolve", "GetMatch",
                "ValidateManifest"]
READS = retry_unavailable(full_name("matchgraph"), READ_METHODS, attempts=2, health_check=True)
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)


def read_stub(targets: str) -> pb_grpc.MatchGraphStub:
    """A stub whose calls spread over every healthy replica of ``targets`` (see the module docstring)."""
    return pb_grpc.MatchGraphStub(channel(replicas_target(targets), balance=True, service_config=READS))


class LeaderClient:
    """Sends writes to the leader among ``targets`` (comma-separated host:port), following takeovers."""

    def __init__(self, targets: str, retry_for_s: float = 30.0, snapshot_timeout_s: float = 2.0) -> None:
        self.targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not self.targets:
            raise ValueError("LeaderClient needs at least one writer target")
        self.retry_for_s = retry_for_s
        self.snapshot_timeout_s = snapshot_timeout_s
        self._channels = {t: channel(t) for t in self.targets}
        self.stubs = {t: pb_grpc.MatchGraphStub(ch) for t, ch in self._channels.items()}
        self.leader: str | None = None
        self._last: str | None = None
        self.switches = 0  # how many times writes moved to another process

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()

    def find_leader(self) -> str | None:
        """The target whose GetSnapshot says it takes writes (the highest term if several claim it), or None."""
        best: tuple[int, str] | None = None
        for target, stub in self.stubs.items():
            try:
                snap = stub.GetSnapshot(pb.GetSnapshotRequest(), timeout=self.snapshot_timeout_s)
            except grpc.RpcError:
                continue
            if snap.role in ("writer", "all") and (best is None or snap.term > best[0]):
                best = (snap.term, target)
        return best[1] if best else None

    def call(self, write: Callable[[pb_grpc.MatchGraphStub], T]) -> T:
        """``write(stub)`` on the leader, retried on the leader found again while the leadership moves."""
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.05
        while True:
            if self.leader is None:
                self.leader = self.find_leader()
                if self.leader is not None and self._last not in (None, self.leader):
                    self.switches += 1
            target = self.leader
            if target is not None:
                self._last = target
                try:
                    return write(self.stubs[target])
                except grpc.RpcError as err:
                    code = err.code()  # type: ignore[attr-defined]
                    if code not in RETRY_CODES or time.monotonic() > deadline:
                        raise
                    self.leader = None
                    if code == grpc.StatusCode.FAILED_PRECONDITION and self.find_leader() == target:
                        raise  # the leader itself refused: not a leadership question
                    log.info("write to %s failed (%s); looking for the leader", target, code.name)
            elif time.monotonic() > deadline:
                raise TimeoutError(f"no MatchGraph among {', '.join(self.targets)} took writes within "
                                   f"{self.retry_for_s:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def record(self, messages: list[pb.RecordMatchesRequest], timeout_s: float = 60.0) -> pb.RecordMatchesResponse:
        """One RecordMatches stream of ``messages`` to the leader (the whole stream again after a failure)."""
        return self.call(lambda stub: stub.RecordMatches(iter(messages), timeout=timeout_s))
