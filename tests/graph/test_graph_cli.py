"""The client commands the demo uses, against a real server: `unfragile graph seed|compare|...`."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from services.matchgraph.cli import register


def _app() -> typer.Typer:
    root = typer.Typer()
    register(root)
    return root


@pytest.mark.parametrize("db_backend", ["sqlite"])  # a gRPC client: the server side is tested elsewhere
def test_seed_then_compare_prints_the_page(make_server, tmp_path):
    s = make_server()
    app, runner = _app(), CliRunner()
    target = ["--target", s.running.address]
    r = runner.invoke(app, ["graph", "seed", *target])
    assert r.exit_code == 0, r.output
    assert "created kosmos-2-patch14-224 (8 capabilities)" in r.output
    assert "created stable-diffusion (4 capabilities)" in r.output
    r = runner.invoke(app, ["graph", "compare", "kosmos-2-patch14-224", "Stable Diffusion", *target])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("# kosmos-2-patch14-224 vs Stable Diffusion")
    assert "| Times Matched | 0 | 0 |" in r.output and "## Verdict" in r.output
    r = runner.invoke(app, ["graph", "compare", "kosmos2", "sd", "--format", "json", *target])
    assert json.loads(r.output)["rows"][0] == {"feature": "Type", "a": "Model", "b": "Model"}
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps({"event_id": f"e{i}", "query": "captions",
                                            "matched": ["kosmos2", "sd"]}) for i in range(3)) + "\n")
    r = runner.invoke(app, ["graph", "record", str(events), *target])
    assert "inserted 3, duplicates 0" in r.output
    r = runner.invoke(app, ["graph", "record", str(events), *target])
    assert "inserted 0, duplicates 3" in r.output
    r = runner.invoke(app, ["graph", "compare", "kosmos2", "nope", *target])
    assert r.exit_code == 1 and "NOT_FOUND" in r.output
    r = runner.invoke(app, ["graph", "snapshot", *target])
    assert r.exit_code == 0 and r.output.startswith("role all, snapshot ") and "graph version 3 (store 3), lag 0" \
        in r.output


def test_probes_command_says_what_the_probes_ran_on(make_server, upsert_seed):
    from tests.graph.conftest import FakeProbes

    s = make_server(probe_backend=FakeProbes(0.8, 0.3, test_models=True))
    upsert_seed(s.stub)
    r = CliRunner().invoke(_app(), ["graph", "probes", "--max-prompts", "1", "--target", s.running.address])
    assert r.exit_code == 0, r.output
    assert "stable-diffusion ran on /models/diffusion (diffusion): a random-weight test model" in r.output
    assert "kosmos-2-patch14-224 ran on /models/visionlanguage (visionlanguage)" in r.output
    assert "judged by /models/judge-clip (CLIPModel) version sha256:0123456789abcdef" in r.output
    assert "stable-diffusion" in r.output and "text-to-image: mean judged score 0.800 over 1 probes (not scored: " \
        "probed on /models/diffusion" in r.output


@pytest.mark.parametrize("db_backend", ["postgresql"])
def test_commands_given_several_processes_write_to_the_leader_and_read_from_any(make_server, tmp_path):
    """`--target a,b`: seed and record go to whichever writer leads (a standby refuses writes), reads are spread
    over the processes (round robin over the healthy ones)."""
    leader = make_server("shared", role="writer")
    standby = make_server("unused", role="writer", db_url=leader.settings.db_url)
    targets = ["--target", f"{standby.running.address},{leader.running.address}"]
    app, runner = _app(), CliRunner()
    r = runner.invoke(app, ["graph", "seed", *targets])
    assert r.exit_code == 0 and "created kosmos-2-patch14-224" in r.output, r.output
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps({"event_id": f"e{i}", "query": "captions",
                                            "matched": ["kosmos2", "sd"]}) for i in range(4)) + "\n")
    r = runner.invoke(app, ["graph", "record", str(events), *targets])
    assert "inserted 4, duplicates 0, graph version 4" in r.output, r.output
    r = runner.invoke(app, ["graph", "snapshot", "--target", standby.running.address])
    assert r.output.startswith("role standby") and f"leader {leader.running.address} (term 1)" in r.output
    from tests.graph.test_graph_roles import _snapshot, wait_until

    want = _snapshot(leader).snapshot_version
    wait_until(lambda: _snapshot(standby).snapshot_version == want)
    r = runner.invoke(app, ["graph", "rank", *targets])
    assert r.exit_code == 0 and "kosmos-2-patch14-224" in r.output, r.output
