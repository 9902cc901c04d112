"""Modules small and named for what they do: every module in common/, graph/ and services/
is at most 400 lines and every function at most 60, except the declarative CLI registration
(``register`` in a ``cli.py``, a list of typer commands)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(p for folder in ("common", "graph", "services") for p in (ROOT / folder).rglob("*.py"))


def test_modules_are_at_most_400_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _sources()}
    long = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert long == {}
    assert len(_sources()) > 50


def test_functions_are_at_most_60_lines():
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                declarative = path.name == "cli.py" and node.name == "register"
                if lines > MAX_FUNCTION_LINES and not declarative:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert long == {}
