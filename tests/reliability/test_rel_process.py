"""Real server processes: graceful drain on SIGTERM, and crash safety under kill -9.

Each service runs as an operator runs it: ``python -m services.cli serve <svc> --port 0
--metrics-port -1 --set ...``. The three processes are started together once per module
(startup is mostly imports) and replaced when a test kills one.

Drain (Triton/Kubernetes-style): with work in flight we send SIGTERM and check that a
health Watch stream opened before the signal reports NOT_SERVING while the work is still
running; new requests are refused with UNAVAILABLE (on the open connection and on a new
one); every in-flight request finishes with its full, correct result inside the grace
period; the process exits 0.

Crash safety: ``kill -9`` of the MatchGraph in the middle of a RecordMatches ingest, and of
the Diffusion server in the middle of a fine-tune job (see the tests' docstrings).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core.client import bearer, channel
from tests.reliability.conftest import TOKENS
from tests.reliability.relhelpers import SERVICE_NAMES, ServerProcess, png, wait_until

GRACE_S = 60.0  # generous: CI machines are shared; the work below takes a few seconds
GRAPH_SETS = ("bootstrap_rounds=50", "graph_bootstrap_rounds=10")  # same as the in-process replay server


class Procs:
    """The module's three server processes; ``get`` restarts one that a test killed or drained."""

    def __init__(self, models_dir: Path, tokens_file: Path, root: Path) -> None:
        self.adapters = root / "adapters"
        self.db = root / "graph.db"
        self.args = {
            "visionlanguage": (f"models_dir={models_dir}", f"grace_seconds={GRACE_S}", "max_batch_size=1",
                               f"auth_tokens_file={tokens_file}"),
            "diffusion": (f"models_dir={models_dir}", f"adapters_dir={self.adapters}", f"grace_seconds={GRACE_S}",
                          "max_batch_images=1"),
            "matchgraph": (f"db_url=sqlite:///{self.db}", f"grace_seconds={GRACE_S}", *GRAPH_SETS),
        }
        self.current: dict[str, ServerProcess] = {}
        self.all: list[ServerProcess] = []

    def graph_on(self, graph_dbs: Any) -> tuple[str, str]:
        """(process key, db_url) of a MatchGraph on the test's storage backend (SQLite: the module's)."""
        if graph_dbs.backend == "sqlite":
            return "matchgraph", f"sqlite:///{self.db}"
        url = graph_dbs.url()
        self.args["matchgraph@pg"] = (f"db_url={url}", f"grace_seconds={GRACE_S}", *GRAPH_SETS)
        self.current.pop("matchgraph@pg", None)
        return "matchgraph@pg", url

    def spawn(self, name: str) -> ServerProcess:
        proc = ServerProcess(name.split("@")[0], *self.args[name])
        self.current[name] = proc
        self.all.append(proc)
        return proc

    def get(self, name: str) -> ServerProcess:
        proc = self.current.get(name)
        if proc is None or proc.proc.poll() is not None:
            proc = self.spawn(name)
        return proc.wait_serving()

    def close(self) -> None:
        for proc in self.all:
            proc.kill()


@pytest.fixture(scope="module")
def procs(models_dir, tokens_file, tmp_path_factory) -> Iterator[Procs]:
    p = Procs(models_dir, tokens_file, tmp_path_factory.mktemp("procs"))
    for name in ("visionlanguage", "diffusion", "matchgraph"):  # start together: startup is mostly imports
        p.spawn(name)
    yield p
    p.close()


class InFlight:
    """Runs ``n`` calls in threads once started; records each outcome and when it finished."""

    def __init__(self, n: int, call: Callable[[int], Any]) -> None:
        self.results: list[Any] = [None] * n
        self.ends: list[float] = [0.0] * n
        self.started = threading.Event()  # set once every call was admitted by the server
        self._admitted: set[int] = set()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i, call)) for i in range(n)]

    def start(self) -> None:
        """Starts the calls; separate from construction so ``call`` can refer to this object."""
        for t in self.threads:
            t.start()

    def _run(self, i: int, call: Callable[[int], Any]) -> None:
        try:
            self.results[i] = call(i)
        except grpc.RpcError as err:
            self.results[i] = err
        self.ends[i] = time.monotonic()

    def admitted(self, i: int) -> None:
        """Call ``i`` got its first answer from the server (a queue position, a token, a status)."""
        with self._lock:
            self._admitted.add(i)
            if len(self._admitted) == len(self.results):
                self.started.set()

    def done(self) -> int:
        return sum(1 for e in self.ends if e)

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)


def _drain(proc: ServerProcess, inflight: InFlight, new_call: Callable[[grpc.Channel], Any]) -> dict[str, Any]:
    """SIGTERM ``proc`` while ``inflight`` runs; returns what was observed."""
    ch = channel(proc.target)
    watch = health_pb2_grpc.HealthStub(ch).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAMES[proc.service]), timeout=GRACE_S + 30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    assert inflight.started.wait(60), "work did not start"
    t_term = time.monotonic()
    proc.sigterm()
    try:
        status = next(watch).status
    except grpc.RpcError as err:  # no health change after SIGTERM: show what the server did
        raise AssertionError(f"health did not change after SIGTERM ({err.code()}); done={inflight.done()}, "
                             f"server log:\n{proc.log[-4000:]}") from None
    t_not_serving = time.monotonic()
    done_at_not_serving = inflight.done()
    watch.cancel()  # a health watcher must not hold the drain open
    try:
        new_call(ch)
        new_code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        new_code = err.code()
    fresh = channel(proc.target)  # a client connecting only now is refused too
    try:
        new_call(fresh)
        fresh_code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        fresh_code = err.code()
    done_at_refusal = inflight.done()
    inflight.join(GRACE_S + 30)
    code = proc.wait(GRACE_S + 30)
    t_exit = time.monotonic()
    ch.close()
    fresh.close()
    return {"status": status, "done_at_not_serving": done_at_not_serving, "done_at_refusal": done_at_refusal,
            "new_code": new_code, "fresh_code": fresh_code, "exit": code,
            "not_serving_ms": (t_not_serving - t_term) * 1000, "last_inflight_s": max(inflight.ends) - t_term,
            "exit_s": t_exit - t_term}


def _assert_drained(name: str, obs: dict[str, Any], inflight: InFlight) -> None:
    n = len(inflight.results)
    assert obs["status"] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert obs["done_at_not_serving"] < n, "health flipped only after the work was done"
    assert obs["new_code"] == grpc.StatusCode.UNAVAILABLE
    assert obs["fresh_code"] == grpc.StatusCode.UNAVAILABLE
    errors = [r for r in inflight.results if isinstance(r, grpc.RpcError)]
    assert not errors, [(e.code(), e.details()) for e in errors]
    assert obs["last_inflight_s"] < GRACE_S and obs["exit_s"] < GRACE_S + 10
    assert obs["exit"] == 0
    print(f"RELIABILITY drain {name}: in_flight={n} done_at_sigterm+not_serving={obs['done_at_not_serving']} "
          f"done_when_new_refused={obs['done_at_refusal']} not_serving_after_ms={obs['not_serving_ms']:.0f} "
          f"last_in_flight_done_s={obs['last_inflight_s']:.2f} exit_s={obs['exit_s']:.2f} exit_code={obs['exit']}")


def test_visionlanguage_drains_on_sigterm(procs) -> None:
    from unfragile.common.v1 import common_pb2
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
    from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

    proc = procs.get("visionlanguage")
    try:
        ch = channel(proc.target)
        stub = pb_grpc.VisionLanguageStub(ch)
        meta = bearer(TOKENS["ops"])

        def req(i: int) -> Any:
            return pb.CaptionRequest(image=common_pb2.Image(data=png(color=(i * 30, 10, 10))),
                                     sampling=pb.SamplingParams(max_new_tokens=120, seed=i))

        expected = [stub.Caption(req(i), timeout=60, metadata=meta) for i in range(2)]

        def call(i: int) -> Any:
            chunks = []
            for c in stub.StreamCaption(req(i % 2), timeout=120, metadata=meta):
                chunks.append(c)
                inflight.admitted(i)
            return chunks

        inflight = InFlight(6, call)  # batch size 1: six 120-token generations run one after another
        inflight.start()
        obs = _drain(proc, inflight, lambda c: pb_grpc.VisionLanguageStub(c).Caption(req(0), timeout=10))
        _assert_drained("visionlanguage", obs, inflight)
        for i, chunks in enumerate(inflight.results):  # each finished completely and correctly
            final = chunks[-1].final
            assert final.completion == expected[i % 2].completion
            assert list(final.token_ids) == list(expected[i % 2].token_ids)
        ch.close()
    finally:
        proc.kill()
    for token in TOKENS.values():  # the log of an authenticated session never shows a token
        assert token not in proc.log


def test_diffusion_drains_on_sigterm(procs) -> None:
    from unfragile.diffusion.v1 import diffusion_pb2 as pb
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

    proc = procs.get("diffusion")
    try:
        ch = channel(proc.target)
        stub = pb_grpc.DiffusionStub(ch)

        def req(seed: int, steps: int = 12) -> Any:
            return pb.TextToImageRequest(params=pb.GenerationParams(prompt="a cat", width=64, height=64,
                                                                    steps=steps, seed=seed))

        def call(i: int) -> Any:
            events = []
            for ev in stub.TextToImage(req(i), timeout=120):
                events.append(ev)
                inflight.admitted(i)
            return events

        inflight = InFlight(3, call)
        inflight.start()
        obs = _drain(proc, inflight, lambda c: list(pb_grpc.DiffusionStub(c).TextToImage(req(9, 2), timeout=10)))
        _assert_drained("diffusion", obs, inflight)
        for events in inflight.results:
            kinds = [e.WhichOneof("event") for e in events]
            assert kinds[-1] == "result" and kinds.count("progress") == 12
            assert len(events[-1].result.images) == 1
        ch.close()
    finally:
        proc.kill()


def test_matchgraph_drains_on_sigterm(procs, seed_records) -> None:
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    proc = procs.get("matchgraph")
    try:
        ch = channel(proc.target)
        stub = pb_grpc.MatchGraphStub(ch)
        for rec in seed_records():
            stub.UpsertModel(pb.UpsertModelRequest(model=rec), timeout=30)
        before = stub.GetModel(pb.GetModelRequest(model="tool-1"), timeout=10).scores.times_matched
        go_on = threading.Event()

        def batches(i: int) -> Any:
            for b in range(4):  # a client-streaming ingest that is still sending when SIGTERM lands
                yield pb.RecordMatchesRequest(events=[
                    pb.MatchEvent(event_id=f"drain{i}-{b}-{k}", query=f"query {k % 7}",
                                  matched=["tool-1", "tool-2", f"tool-{3 + k % 3}"]) for k in range(200)])
                if b == 0:
                    go_on.wait(60)

        def call(i: int) -> Any:
            return stub.RecordMatches(batches(i), timeout=120)

        inflight = InFlight(2, call)
        inflight.start()

        def first_batches_stored() -> bool:  # both streams are being handled: their batch 0 is in
            card = stub.GetModel(pb.GetModelRequest(model="tool-1"), timeout=10).scores
            return card.times_matched == before + 400

        assert wait_until(first_batches_stored, 30)
        inflight.started.set()

        def new_call(c: grpc.Channel) -> Any:
            go_on.set()  # the in-flight streams send their remaining batches during the drain
            return pb_grpc.MatchGraphStub(c).GetModel(pb.GetModelRequest(model="tool-1"), timeout=10)

        obs = _drain(proc, inflight, new_call)
        _assert_drained("matchgraph", obs, inflight)
        for resp in inflight.results:  # every batch of the in-flight streams was acknowledged
            assert resp.received == 800 and resp.inserted == 800 and resp.batches == 4
        ch.close()
    finally:
        proc.kill()
    restarted = procs.get("matchgraph")
    with channel(restarted.target) as ch:
        card = pb_grpc.MatchGraphStub(ch).GetModel(pb.GetModelRequest(model="tool-1"), timeout=30).scores
    assert card.times_matched == before + 1600  # nothing acknowledged during the drain was lost


# ----------------------------------------------------------------------------- crash safety
def _graph_events(call: int, batch: int, n: int, ids: list[str]) -> Any:
    import random

    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    rng = random.Random(call * 1000 + batch)
    events = []
    for k in range(n):
        matched = rng.sample(ids, 3)
        query = f"find {rng.choice(['cats', 'dogs', 'maps'])}"
        events.append(pb.MatchEvent(event_id=f"crash{call}-{batch}-{k}", query=query,
                                    matched=matched, compared=matched[:2] if k % 3 == 0 else [],
                                    clicked=matched[:1] if k % 2 == 0 else []))
    return pb.RecordMatchesRequest(events=events)


def _ranks(resp: Any) -> tuple[Any, ...]:
    """Positions, ids and full score cards (the response's snapshot id differs per process)."""
    return (resp.total, *(m.SerializeToString(deterministic=True) for m in resp.models))


def test_matchgraph_kill9_mid_ingest_loses_no_acknowledged_event(procs, seed_records, servers, graph_dbs) -> None:
    """kill -9 while RecordMatches streams are in flight, then restart on the same database.

    Every event of an acknowledged RecordMatches is stored exactly once; each message of the
    unacknowledged streams is all-or-nothing (one transaction); the derived tables (co-match
    counts, per-model stats) equal a recount from the events; and the ranks after restart
    are identical to a fresh server fed the same stored events, and to a second restart.
    Runs on SQLite and on PostgreSQL; the fresh server is an SQLite one either way.
    """
    from graph.store import open_store
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    key, db_url = procs.graph_on(graph_dbs)
    proc = procs.get(key)
    records = seed_records()
    ids = [r.id for r in records]
    ch = channel(proc.target)
    stub = pb_grpc.MatchGraphStub(ch)
    for rec in records:
        stub.UpsertModel(pb.UpsertModelRequest(model=rec), timeout=30)
    sent: dict[tuple[int, int], list[str]] = {}
    acked: list[str] = []

    def messages(call: int, n_batches: int, n: int) -> list[Any]:
        out = [_graph_events(call, b, n, ids) for b in range(n_batches)]
        for b, m in enumerate(out):
            sent[(call, b)] = [e.event_id for e in m.events]
        return out

    for call in range(8):  # acknowledged before the crash
        msgs = messages(call, 2, 300)
        resp = stub.RecordMatches(iter(msgs), timeout=60)
        assert resp.inserted == 600
        acked += [e.event_id for m in msgs for e in m.events]
    first_sent, hold, stop = threading.Event(), threading.Event(), threading.Event()
    held = messages(100, 2, 300)

    def held_stream() -> Any:  # sends one message, then is still open when the process dies
        yield held[0]
        first_sent.set()
        hold.wait(30)
        yield held[1]

    def rapid() -> None:  # and a client ingesting small batches as fast as it can
        call = 200
        while not stop.is_set():
            msgs = messages(call, 1, 100)
            try:
                stub.RecordMatches(iter(msgs), timeout=30)
            except grpc.RpcError:
                return
            acked.extend(e.event_id for e in msgs[0].events)
            call += 1

    errors: list[grpc.RpcError] = []

    def held_call() -> None:
        try:
            stub.RecordMatches(held_stream(), timeout=60)
        except grpc.RpcError as err:
            errors.append(err)

    threads = [threading.Thread(target=held_call), threading.Thread(target=rapid)]
    for t in threads:
        t.start()
    assert first_sent.wait(30)
    time.sleep(0.3)
    proc.kill()  # SIGKILL mid-ingest
    hold.set()
    stop.set()
    for t in threads:
        t.join(60)
    ch.close()
    assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE  # the held stream was never acknowledged

    restarted = procs.get(key)
    with channel(restarted.target) as ch2:
        stub2 = pb_grpc.MatchGraphStub(ch2)
        ranks_after_crash = stub2.Rank(pb.RankRequest(limit=100), timeout=60)
        replay = stub2.RecordMatches(iter([_graph_events(0, 0, 300, ids)]), timeout=60)
        assert replay.inserted == 0 and replay.duplicates == 300  # replays after the restart count nothing
    store = open_store(db_url)
    rows = [r[1:] for chunk in store.read_event_rows(0) for r in chunk]  # (event_id, query, ..., ts_ms) by seq
    store.close()
    stored = [r[0] for r in rows if r[0].startswith("crash")]
    assert len(stored) == len(set(stored)), "an event is stored twice"
    stored_set = set(stored)
    missing = [e for e in acked if e not in stored_set]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
    partial = {k: sum(e in stored_set for e in v) for k, v in sent.items()}
    assert all(n in (0, len(sent[k])) for k, n in partial.items()), "a message was half-written"
    unacked_stored = sum(n for k, n in partial.items() if k[0] == 100)

    # A second restart rebuilds the same ranks (nothing derived depends on process history).
    restarted.sigterm()
    assert restarted.wait(60) == 0
    again = procs.get(key)
    with channel(again.target) as ch3:
        assert _ranks(pb_grpc.MatchGraphStub(ch3).Rank(pb.RankRequest(limit=100), timeout=60)) == \
            _ranks(ranks_after_crash)
    again.sigterm()
    assert again.wait(60) == 0

    # Per-model counters served after the restart equal a recount from the stored events alone.
    from collections import Counter

    counts = [Counter(m for r in rows for m in r[col].split()) for col in (2, 3, 4)]
    served = {m.id: (m.scores.times_matched, m.scores.times_compared, m.scores.times_clicked)
              for m in ranks_after_crash.models}
    assert served == {i: tuple(c.get(i, 0) for c in counts) for i in ids}

    # A fresh server fed the stored events in order ranks the models identically.
    fresh = servers.graph(graph_dbs.tmp_path / "replay.db")
    with channel(fresh.address) as ch4:
        stub4 = pb_grpc.MatchGraphStub(ch4)
        for rec in records:
            stub4.UpsertModel(pb.UpsertModelRequest(model=rec), timeout=30)
        batches = [pb.RecordMatchesRequest(events=[
            pb.MatchEvent(event_id=r[0], query=r[1], matched=r[2].split(), compared=r[3].split(),
                          clicked=r[4].split(), timestamp_ms=r[5]) for r in rows[i:i + 2000]])
            for i in range(0, len(rows), 2000)]
        stub4.RecordMatches(iter(batches), timeout=120)
        assert _ranks(stub4.Rank(pb.RankRequest(limit=100), timeout=60)) == _ranks(ranks_after_crash)
    print(f"RELIABILITY crash matchgraph: acknowledged_events={len(acked)} all_present_once=True "
          f"stored_from_unacknowledged_stream={unacked_stored} (of {len(held) * 300}) half_written_messages=0 "
          f"events_recovered={len(stored)} ranks_identical_after_restart=True")


def test_finetune_killed_mid_run_is_marked_failed_not_running(procs) -> None:
    """kill -9 the Diffusion server while a LoRA job trains; after restart the job is FAILED.

    WatchJob still answers for the job id (FAILED, with the step it reached, never RUNNING),
    no adapter (or half an adapter) is published under its name, and the same name can be
    trained again at once; the new adapter is saved as safetensors only.
    """
    from unfragile.common.v1 import common_pb2 as cpb
    from unfragile.diffusion.v1 import diffusion_pb2 as pb
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

    proc = procs.get("diffusion")
    examples = [pb.TrainingExample(image=cpb.Image(data=png(color=(20, 200, 20))), caption="green")]
    with channel(proc.target) as ch:
        stub = pb_grpc.DiffusionStub(ch)
        start = stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="killed", examples=examples, steps=5000,
                                                           seed=1), timeout=30)
        reached = 0
        for ev in stub.WatchJob(pb.WatchJobRequest(job_id=start.job_id), timeout=120):
            reached = ev.step
            if ev.step >= 3:
                break
        assert reached >= 3
        proc.kill()
    restarted = procs.get("diffusion")
    with channel(restarted.target) as ch:
        stub = pb_grpc.DiffusionStub(ch)
        events = list(stub.WatchJob(pb.WatchJobRequest(job_id=start.job_id), timeout=30))
        assert [e.status.state for e in events] == [cpb.JOB_STATE_FAILED]
        assert "server stopped" in events[0].status.message and events[0].step >= reached
        assert events[0].adapter_name == "killed" and events[0].kind == "finetune"
        names = [a.name for a in stub.ListAdapters(pb.ListAdaptersRequest(), timeout=10).adapters]
        assert "killed" not in names and not (procs.adapters / "killed").exists()
        cancel = stub.CancelJob(pb.CancelJobRequest(job_id=start.job_id), timeout=10)
        assert cancel.status.state == cpb.JOB_STATE_FAILED  # cancelling a finished job reports its end state
        again = stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="killed", examples=examples, steps=2,
                                                           seed=1), timeout=30)
        final = list(stub.WatchJob(pb.WatchJobRequest(job_id=again.job_id), timeout=120))[-1]
        assert final.status.state == cpb.JOB_STATE_SUCCEEDED, final.status.message
    files = sorted(p.name for p in (procs.adapters / "killed").iterdir())
    assert files == ["meta.json", "pytorch_lora_weights.safetensors"]
    print(f"RELIABILITY crash finetune: killed_at_step>={reached} state_after_restart=FAILED "
          f"reported_step={events[0].step} adapter_published=False retrain=SUCCEEDED")
