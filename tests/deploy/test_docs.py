"""docs/deploy.md stays true: its one metrics table matches the metrics the code defines
(names, types, labels), and it describes every dashboard and every alert."""

from __future__ import annotations

import json
import re

from deploy_support import ROOT, alert_rules, dashboard_files, registered_metrics

DOC = ROOT / "docs" / "deploy.md"
ROW = re.compile(r"^\| `(unfragile_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \| ([^|]*) \| ([^|]*) \|$")


def _table() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        if m := ROW.match(line.strip()):
            assert m[1] not in rows, f"{m[1]} is listed twice"
            rows[m[1]] = (m[2], tuple(re.findall(r"`([a-z_]+)`", m[3])))
    return rows


def test_metrics_table_lists_every_metric_with_its_type_and_labels() -> None:
    table = _table()
    code = registered_metrics()
    missing = sorted(set(code) - set(table))
    assert not missing, f"add these to the table in docs/deploy.md: {missing}"
    stale = sorted(set(table) - set(code))
    assert not stale, f"no code defines these rows of docs/deploy.md: {stale}"
    for name, metric in code.items():
        assert table[name] == (metric.kind, metric.labels), f"{name}: doc says {table[name]}"


def test_there_is_one_metrics_table() -> None:
    headers = [line for line in DOC.read_text().splitlines() if line.startswith("| metric |")]
    assert len(headers) == 1


def test_every_dashboard_and_alert_is_described() -> None:
    text = DOC.read_text()
    for path in dashboard_files():
        assert f"**{json.loads(path.read_text())['title']}**" in text
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in text


def test_deploy_section_covers_compose_kustomize_and_gpus() -> None:
    text = DOC.read_text()
    for heading in ("## Deploy", "### One box: docker compose", "### A cluster: kustomize", "### GPU notes",
                    "## Dashboards", "## Metrics"):
        assert f"\n{heading}\n" in text
