"""The MatchGraph domain stays free of gRPC (API ⟂ domain), checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_graph_domain_imports_no_grpc():
    modules = sorted(p.stem for p in (ROOT / "graph").glob("*.py") if p.stem != "__init__")
    code = ("import sys\n" + "".join(f"import graph.{m}\n" for m in modules)
            + "bad = sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.'))\n"
            + "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"graph/ pulled in gRPC modules: {out.stdout.strip()}"
    assert len(modules) >= 10
