#!/usr/bin/env python3
"""Write the alert rules as a PrometheusRule for the Prometheus operator.

rules/*.yml stays the one source (promtool-checked, unit-tested, loaded by the compose
Prometheus); this copies its groups into deploy/k8s/components/prometheus-operator/
prometheusrule.yaml. The suite fails when the two drift.

    .venv/bin/python deploy/prometheus/build_prometheusrule.py          # rewrite
    .venv/bin/python deploy/prometheus/build_prometheusrule.py --check  # exit 1 if stale
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "k8s" / "components" / "prometheus-operator" / "prometheusrule.yaml"
HEADER = ("# GENERATED from deploy/prometheus/rules/*.yml by deploy/prometheus/build_prometheusrule.py;\n"
          "# edit the rules there. The operator's Prometheus selects rules by label: adjust\n"
          "# `release` to what your Prometheus' ruleSelector matches.\n")


def render() -> str:
    groups = []
    for path in sorted((HERE / "rules").glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "unfragile", "labels": {"release": "kube-prometheus-stack"}},
            "spec": {"groups": groups}}
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
