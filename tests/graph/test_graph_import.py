"""Importers: the catalogue file through ImportModels and the CLI, and the Hugging Face importer through
huggingface_hub.HfApi against a local HTTP server that replays Hub-shaped answers recorded in
tests/graph/data/hf/ (hand-written in the Hub's response shape; their figures are test values)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from common.errors import InvalidArgument, NotFound
from graph import catalogue_file
from graph.importers import hf
from services.matchgraph.cli import register
from tests.graph.conftest import SAMPLE_CATALOGUE, seed_with_readings
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

DATA = Path(__file__).resolve().parent / "data"


class HubReplay(BaseHTTPRequestHandler):
    """GET /api/models/<owner>/<name> (the Hub) and /repos/<owner>/<name> (GitHub's REST API) -> the recorded
    JSON; anything else 404 as each answers it (the Hub with X-Error-Code RepoNotFound)."""

    requests: list[str] = []

    def do_GET(self) -> None:
        HubReplay.requests.append(self.path)
        path = self.path.split("?", 1)[0]
        kind, prefix = ("hf", "/api/models/") if path.startswith("/api/models/") else ("github", "/repos/")
        f = DATA / kind / (path.removeprefix(prefix).replace("/", "--") + ".json")
        if path.startswith(prefix) and f.exists():
            body, status, headers = f.read_bytes(), 200, {}
        elif kind == "hf":
            body, status = json.dumps({"error": "Repository not found"}).encode(), 404
            headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
        else:
            body, status, headers = json.dumps({"message": "Not Found"}).encode(), 404, {}
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubReplay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    HubReplay.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _app() -> typer.Typer:
    root = typer.Typer()
    register(root)
    return root


# ---------------------------------------------------------------- the catalogue file
def test_catalogue_lines_become_records_with_their_readings():
    recs = {r.id: r for r in catalogue_file.load(SAMPLE_CATALOGUE)}
    blip = recs["blip-image-captioning-base"]
    assert blip.tasks == ("image-to-text",) and blip.hub_id == "Salesforce/blip-image-captioning-base"
    assert [(s.kind, s.value, s.window) for s in blip.adoption] == [("downloads", 400000.0, "last 30 days"),
                                                                   ("likes", 500.0, "")]
    assert {f.name: f.value for f in blip.facts} == {"licence": "bsd-3-clause", "released": "2022-12-12"}
    assert blip.pricing.tier == "free" and blip.pricing.model == "open_source" and blip.pricing.plans[0].source
    cap = blip.capabilities[0]
    assert cap.title == "Image captioning" and cap.intents == ("caption an image",) and cap.output_types == ("text",)
    assert blip.external_quality[0].scale == "CIDEr" and blip.external_quality[0].score == 120.0


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.pop("name"), "line.name is missing"),
    (lambda d: d["adoption"][0].update(value="161K"), "adoption[0].value must be a number"),
    (lambda d: d["facts"]["released"].update(value="Dec 2022"), "ISO date"),
    (lambda d: d["pricing"].update(starting_price="$8 per token"), "starting_price must be a number or null"),
    (lambda d: d.update(tasks=["Image to Text"]), "task name"),
])
def test_a_bad_line_is_named_with_its_field(edit, words):
    lines = SAMPLE_CATALOGUE.read_text().splitlines()
    d = json.loads(lines[1])
    edit(d)
    with pytest.raises(InvalidArgument) as err:
        list(catalogue_file.parse_lines([lines[0], json.dumps(d)], "cat.jsonl"))
    assert err.value.message.startswith("cat.jsonl:2 ('sdxl-base-1.0'): ") and words in err.value.message


def test_the_shipped_catalogue_loads():
    recs = catalogue_file.load()
    assert len(recs) >= 40
    ids = {r.id for r in recs}
    assert {"kosmos-2-patch14-224", "stable-diffusion"} <= ids
    for r in recs:  # every figure carries where and when it was read
        for s in (*r.adoption, *r.ecosystem):
            assert s.source and s.observed_at
        for f in r.facts:
            assert f.source and f.observed_at


@pytest.mark.parametrize("db_backend", ["sqlite"])  # a gRPC client: the server side is tested elsewhere
def test_import_catalogue_command_checks_the_whole_file_first(make_server, tmp_path):
    s = make_server()
    target = ["--target", s.running.address]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(SAMPLE_CATALOGUE.read_text() + '{"id": "x", "name": "X", "tasks": ["Bad Task"]}\n')
    r = CliRunner().invoke(_app(), ["graph", "import", "catalogue", str(bad), *target])
    assert r.exit_code == 2 and "bad.jsonl:3 ('x'): tasks[0]" in r.output
    assert s.engine.store.model_nodes() == []  # nothing was written
    r = CliRunner().invoke(_app(), ["graph", "import", "catalogue", str(SAMPLE_CATALOGUE), *target])
    assert r.exit_code == 0, r.output
    assert "imported 2 models" in r.output and "(2 created, 0 updated, 1 batches)" in r.output
    r = CliRunner().invoke(_app(), ["graph", "import", "catalogue", str(SAMPLE_CATALOGUE), "--batch", "1", *target])
    assert "(0 created, 2 updated, 2 batches)" in r.output
    got = s.stub.GetModel(pb.GetModelRequest(model="blip-base"))
    assert got.model.tasks == ["image-to-text"] and got.scores.adoption.measured


def test_import_models_is_one_transaction_per_message(make_server):
    s = make_server()
    good = catalogue_file.load(SAMPLE_CATALOGUE)
    from services.matchgraph.types import record_to_pb

    bad = record_to_pb(good[1])
    bad.adoption[0].observed_at = "yesterday"
    import grpc

    with pytest.raises(grpc.RpcError) as err:
        s.stub.ImportModels(iter([pb.ImportModelsRequest(models=[record_to_pb(good[0])]),
                                  pb.ImportModelsRequest(models=[record_to_pb(good[0]), bad])]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "models[2] ('sdxl-base-1.0'): adoption[0]: observed_at 'yesterday'" in err.value.details()
    assert [m for _n, m in s.engine.store.model_nodes()] == ["blip-image-captioning-base"]  # the first batch only


# ---------------------------------------------------------------- the Hugging Face importer
def test_hub_readings_are_read_through_hfapi_with_their_source_and_date(hub):
    r = hf.read("microsoft/kosmos-2-patch14-224", hub, today="2026-12-01")
    assert r.source == f"{hub}/api/models/microsoft/kosmos-2-patch14-224"
    assert (r.downloads, r.likes, r.licence, r.created, r.last_modified) == (158000, 171, "mit", "2023-08-08",
                                                                              "2024-01-15")
    assert r.pipeline_tag == "image-text-to-text" and "image-captioning" in r.tags
    assert [(s.kind, s.value, s.observed_at, s.source) for s in r.signals()] == [
        ("downloads", 158000.0, "2026-12-01", r.source), ("likes", 171.0, "2026-12-01", r.source)]
    assert {f.name: f.value for f in r.facts()} == {"licence": "mit", "released": "2023-08-08",
                                                    "last_modified": "2024-01-15"}
    assert HubReplay.requests[0].startswith("/api/models/microsoft/kosmos-2-patch14-224?")
    with pytest.raises(NotFound) as err:
        hf.read("nobody/nothing", hub)
    assert "has no model 'nobody/nothing'" in err.value.message


def test_hf_endpoint_is_honoured(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub)
    assert hf.read("microsoft/kosmos-2-patch14-224").source.startswith(hub)


def test_import_hf_command_adds_dated_readings_and_keeps_history(make_server, hub):
    s = make_server()
    seed_with_readings(s.stub)
    before = s.stub.GetModel(pb.GetModelRequest(model="kosmos2")).model
    r = CliRunner().invoke(_app(), ["graph", "import", "hf", "microsoft/kosmos-2-patch14-224",
                                    "stabilityai/new-test-model", "--endpoint", hub, "--target", s.running.address])
    assert r.exit_code == 0, r.output
    assert "kosmos-2-patch14-224: downloads 158,000, likes 171; licence mit" in r.output
    assert "stored the readings of 2 models (1 created, 1 updated)" in r.output
    after = s.stub.GetModel(pb.GetModelRequest(model="kosmos2", explain=True))
    sources = {(x.kind, x.source) for x in after.model.adoption}
    hub_src = f"{hub}/api/models/microsoft/kosmos-2-patch14-224"
    assert ("downloads", hub_src) in sources and {(x.kind, x.source) for x in before.adoption} <= sources
    assert after.model.pipeline_tag == "image-text-to-text"
    new = s.stub.GetModel(pb.GetModelRequest(model="stabilityai/new-test-model")).model
    assert new.id == "new-test-model" and list(new.tasks) == ["text-to-image"] and new.hub_id
    # a second reading on another day adds a row: the history is kept, the score uses the newest
    store = s.engine.store
    n = len(store.observation_history("kosmos-2-patch14-224"))
    s.engine.import_models([hf.merge(s.engine.catalogue.stored("kosmos-2-patch14-224"),
                                     hf.read("microsoft/kosmos-2-patch14-224", hub, today="2030-01-01"))])
    hist = store.observation_history("kosmos-2-patch14-224")
    assert len(hist) == n + 5  # downloads, likes, licence and the two dates, read again on a new day
    dates = [h[5] for h in hist if h[1] == "downloads" and h[4] == hub_src]
    assert len(dates) == 2 and dates[-1] == "2030-01-01"
    assert store.signal_rows_for("kosmos-2-patch14-224", "adoption")[-2][4] == "2030-01-01" or \
        any(r[4] == "2030-01-01" and r[3] == hub_src for r in store.signal_rows_for("kosmos-2-patch14-224", "adoption"))


@pytest.mark.parametrize("db_backend", ["sqlite"])  # the schedule, not storage
def test_the_writer_refreshes_hub_readings_on_a_schedule(make_server, hub):
    import time

    s = make_server(hub_refresh_interval_s=0.2, hub_endpoint=hub)
    seed_with_readings(s.stub)  # kosmos-2 has a Hub id the replay knows; the others are answered "not found"
    source = f"{hub}/api/models/microsoft/kosmos-2-patch14-224"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(h[4] == source for h in s.engine.store.observation_history("kosmos-2-patch14-224")):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the refresh never stored a Hub reading")
    got = s.stub.GetModel(pb.GetModelRequest(model="kosmos2")).model
    assert ("downloads", 158000.0) in {(x.kind, x.value) for x in got.adoption if x.source == source}
    assert s.stub.GetModel(pb.GetModelRequest(model="sd")).model.id == "stable-diffusion"  # a miss is skipped


def test_github_stars_are_read_through_the_rest_shape(make_server, hub):
    from graph.importers import github

    stars = github.read_stars("microsoft/unilm", hub, today="2026-12-01")
    assert (stars.kind, stars.value, stars.source, stars.observed_at) == (
        "stars", 21500.0, f"{hub}/repos/microsoft/unilm", "2026-12-01")
    with pytest.raises(NotFound):
        github.read_stars("nobody/nothing", hub)
    with pytest.raises(InvalidArgument):
        github.read_stars("not-a-repo", hub)
    s = make_server()
    seed_with_readings(s.stub)
    r = CliRunner().invoke(_app(), ["graph", "import", "github", "kosmos2=microsoft/unilm", "--endpoint", hub,
                                    "--target", s.running.address])
    assert r.exit_code == 0, r.output
    assert "kosmos-2-patch14-224: 21,500 stars" in r.output
    got = s.stub.GetModel(pb.GetModelRequest(model="kosmos2")).model
    assert ("stars", 21500.0) in {(x.kind, x.value) for x in got.adoption}
