"""Nothing stops when one process dies: the supervisor of ``unfragile up`` and the gateway's reader routing.

- The supervisor alone, on tiny real processes: a child killed with SIGKILL is restarted (new pid) and the
  exit is logged; a child that keeps crashing is restarted with a doubling delay, then reported with its
  last output and left down, while its neighbour keeps running untouched.
- The stack as ``unfragile up --graph-db-url postgresql://... --graph-readers 2`` runs it (VisionLanguage, a
  MatchGraph writer and two readers on a real PostgreSQL, the gateway), under read load through the gateway:
  kill -9 of a reader costs the clients nothing (an in-flight read is retried on the other reader) and the
  reader comes back by itself and takes reads again; kill -9 of VisionLanguage, of the gateway and of the
  OpenAI-compatible API: the others keep answering and each comes back by itself.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import urllib.error
import urllib.request

from graph.seed_data import SEED_MODELS
from services.core.client import channel
from services.matchgraph.types import record_to_pb
from services.stack import GATEWAY, OPENAI, READER, Stack
from services.supervisor import RestartPolicy, Supervisor
from tests.reliability.relhelpers import wait_until
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

QUICK = RestartPolicy(backoff_s=0.2, max_backoff_s=2.0, max_restarts=3, window_s=60.0)


def test_supervisor_restarts_a_killed_child_and_leaves_a_crash_loop_down():
    log: list[str] = []
    sup = Supervisor(QUICK, echo=log.append, check_every_s=0.05)
    sup.add("steady", [sys.executable, "-c", "import time; print('steady up', flush=True); time.sleep(120)"],
            lambda: True)
    sup.add("crasher", [sys.executable, "-c", "print('cannot open the frobnicator', flush=True); raise SystemExit(3)"],
            lambda: False)
    try:
        for name in sup.children:
            sup.start(name)
        steady, crasher = sup.children["steady"], sup.children["crasher"]
        assert wait_until(lambda: (sup.poll(), crasher.state == "failed")[1], 30, 0.02)
        first = steady.proc.pid
        assert crasher.starts == QUICK.max_restarts + 1 and steady.starts == 1 and steady.proc.poll() is None
        text = "\n".join(log)
        delays = [float(d) for d in re.findall(r"crasher exited \(exit code 3\); restarting in ([\d.]+) s", text)]
        assert delays == [0.2, 0.4, 0.8], text
        assert "crasher keeps crashing (exit code 3; 4 exits within 60 s): leaving it down" in text
        assert "    cannot open the frobnicator" in text.split("leaving it down", 1)[1]  # its last output
        steady.proc.kill()
        assert wait_until(lambda: (sup.poll(), steady.state == "serving" and steady.starts == 2)[1], 30, 0.02)
        assert steady.proc.pid != first and "steady exited (killed by SIGKILL); restarting in 0.2 s" in "\n".join(log)
    finally:
        codes = sup.stop(10)
    assert codes["steady"] == -15  # SIGTERM: python's default handler


def _compare_count(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(float(v) for v in re.findall(
        r'^unfragile_grpc_requests_total{[^}]*method="Compare"[^}]*} (\S+)$', text, re.M))


class HttpLoad:
    """Client threads reading the comparison JSON through the gateway; every outcome is kept."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.url, self.outcomes = url, []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=30) as r:
                    self.outcomes.append((time.monotonic(), r.status))
            except urllib.error.HTTPError as err:
                self.outcomes.append((time.monotonic(), err.code))
            except OSError as err:
                self.outcomes.append((time.monotonic(), str(err)))

    def finish(self) -> list[tuple[float, object]]:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return [(t, s) for t, s in self.outcomes if s != 200]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _comes_back(stack: Stack, name: str, old_pid: int, timeout: float = 120) -> None:
    child = stack.supervisor.children[name]
    assert wait_until(lambda: child.proc.pid != old_pid and child.state == "serving", timeout, 0.1), \
        f"{name} did not come back: {child.state}, {child.last_exit}"


def test_stack_keeps_serving_while_a_reader_the_vl_service_the_gateway_and_openai_are_killed(
        pg_server, tiny_models_dir, tmp_path):
    url = pg_server.create_database("supervised", template="matchgraph_template")
    names = ["visionlanguage", "matchgraph", f"{READER}1", f"{READER}2", GATEWAY, OPENAI]
    lines: list[str] = []
    stack = Stack(models_dir=tiny_models_dir, data_dir=tmp_path / "var", ports=Stack.free_ports(names),
                  graph_db_url=url, graph_readers=2, restart=QUICK, echo=lines.append)
    supervising, stop = None, threading.Event()
    try:
        stack.start(["visionlanguage", "matchgraph", GATEWAY, OPENAI], timeout=300)
        supervising = threading.Thread(target=stack.supervise, args=(stop,), daemon=True)
        supervising.start()
        with channel(stack.target("matchgraph")) as ch:
            writer = pb_grpc.MatchGraphStub(ch)
            for m in SEED_MODELS:
                writer.UpsertModel(pb.UpsertModelRequest(model=record_to_pb(m)), timeout=30)
            want = writer.GetSnapshot(pb.GetSnapshotRequest(), timeout=10).snapshot_version
        for r in stack.readers:  # both readers serve the seed models
            with channel(stack.target(r)) as ch:
                stub = pb_grpc.MatchGraphStub(ch)
                assert wait_until(lambda stub=stub: stub.GetSnapshot(pb.GetSnapshotRequest(), timeout=10)
                                  .snapshot_version == want, 60, 0.05)
        compare = f"{stack.gateway_url}/api/v1/compare?a=kosmos2&b=sd"
        assert _status(compare) == 200
        procs = {p.name: p for p in stack.procs}
        reader = procs[f"{READER}1"]

        # -- a reader, under read load through the gateway
        load = HttpLoad(compare)
        assert wait_until(lambda: len(load.outcomes) >= 30, 60)
        pid = reader.proc.pid
        reader.proc.kill()
        _comes_back(stack, reader.name, pid)
        before = _compare_count(reader.metrics_url)
        served_again = wait_until(lambda: _compare_count(reader.metrics_url) >= before + 10, 60)
        failed = load.finish()
        assert failed == [], f"{len(failed)} reads failed while a reader was killed: {failed[:5]}"
        assert served_again, "the restarted reader takes no reads"

        # -- VisionLanguage: the match graph and the gateway keep answering while it is down
        vl = procs["visionlanguage"]
        pid = vl.proc.pid
        vl.proc.kill()
        assert _status(compare) == 200
        _comes_back(stack, "visionlanguage", pid, timeout=240)

        # -- the gateway: the readers keep answering gRPC while it is down; it comes back
        gw = procs[GATEWAY]
        pid = gw.proc.pid
        gw.proc.kill()
        with channel(stack.target(f"{READER}2")) as ch:
            assert pb_grpc.MatchGraphStub(ch).Compare(pb.CompareRequest(a="kosmos2", b="sd"), timeout=30).markdown
        _comes_back(stack, GATEWAY, pid)
        assert _status(compare) == 200

        # -- the OpenAI-compatible API: the gateway keeps answering while it is down; it comes back
        models = f"{stack.openai_url}/v1/models"
        assert _status(models) == 200
        oa = procs[OPENAI]
        pid = oa.proc.pid
        oa.proc.kill()
        assert _status(compare) == 200
        _comes_back(stack, OPENAI, pid)
        assert _status(models) == 200
        text = "\n".join(lines)
        for name in (f"{READER}1", "visionlanguage", GATEWAY, OPENAI):
            assert f"[supervisor] {name} exited (killed by SIGKILL); restarting in 0.2 s" in text
            assert f"[supervisor] {name} is serving again" in text
        print(f"RELIABILITY supervised stack: reader kill -9 under {len(load.outcomes)} gateway reads -> "
              f"{len(failed)} failed; reader, visionlanguage, gateway and openai each restarted and serving again:")
        print("\n".join(line for line in lines if line.startswith("[supervisor]")))
    finally:
        stop.set()
        if supervising is not None:
            supervising.join(10)
        codes = stack.stop()
    assert codes == dict.fromkeys(names, 0), codes
