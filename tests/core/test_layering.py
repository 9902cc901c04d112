"""Layers import only downward, checked on the source (AST) and in fresh interpreters.

common <- graph <- services.core <- services.<service> <- services.cli / stack / demo.
graph/ imports no gRPC and nothing from services/; the gateway imports nothing from graph/; services.mcp
stands on the gateway's JSON shaping and MatchGraph client (no graph/), nothing imports it but the top;
the gateway, the OpenAI frontend and MatchGraph run without torch (their images do not install it).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("visionlanguage", "diffusion", "matchgraph", "gateway", "openai")
TOP = ("services.cli", "services.stack", "services.demo")


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (at any depth: lazy imports count too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _forbidden(module: str) -> tuple[str, ...]:
    """Prefixes ``module`` must not import."""
    top = ("services.cli", "services.stack", "services.demo")
    if module.startswith("common"):
        return ("graph", "services", "unfragile", "grpc", "torch")
    if module.startswith("graph"):
        return ("services", "unfragile", "grpc")
    if module.startswith("services.core"):
        return (*(f"services.{s}" for s in SERVICES), *top, "graph")
    if module.startswith("services.mcp"):  # above the gateway: its JSON shaping and MatchGraph client only
        return (*(f"services.{s}" for s in SERVICES if s != "gateway"), *top, "graph")
    for s in SERVICES:
        if module.startswith(f"services.{s}"):
            others = tuple(f"services.{o}" for o in SERVICES if o != s)
            return (*others, "services.mcp", *top, *(("graph",) if s in ("gateway", "openai") else ()))
    return ()


def _violations() -> list[str]:
    bad = []
    for folder in ("common", "graph", "services"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = _package(path)
            for imported in _imports(path):
                for prefix in _forbidden(module):
                    if imported == prefix or imported.startswith(prefix + "."):
                        bad.append(f"{module} imports {imported}")
    return bad


def test_layers_import_only_downward():
    assert _violations() == []
    assert len(list((ROOT / "graph").glob("*.py"))) >= 10


def _run_blocking(blocked: list[str], code: str) -> str:
    """Run ``code`` in a fresh interpreter where importing any of ``blocked`` fails as if it were not installed
    (ModuleNotFoundError, and absent from sys.modules: libraries that probe sys.modules see what an image
    without it shows them)."""
    prelude = ("import sys\n"
               "class _NotInstalled:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               f"        if name.split('.')[0] in {sorted(blocked)!r}:\n"
               "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
               "        return None\n"
               "sys.meta_path.insert(0, _NotInstalled())\n")
    out = subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_graph_domain_imports_no_grpc():
    modules = sorted(_package(p) for p in (ROOT / "graph").rglob("*.py") if p.stem != "__init__")
    code = ("".join(f"import {m}\n" for m in modules)
            + "bad = sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.'))\n"
            + "print(','.join(bad))\n")
    assert _run_blocking([], code).strip() == ""


MODEL_STACK = ["torch", "transformers", "diffusers", "peft", "accelerate", "PIL"]


@pytest.mark.parametrize("service,extra_blocked", [
    ("gateway", ["graph", "numpy", "scipy", "networkx", "sqlite_utils"]),
    ("matchgraph", ["fastapi", "starlette", "uvicorn", "jinja2"]),
    ("openai", ["graph", "numpy", "scipy", "networkx", "sqlite_utils", "jinja2"]),
])
def test_gateway_and_matchgraph_run_without_torch(service, extra_blocked, tmp_path):
    """What their images install is enough: the server is built, started and stopped."""
    if service == "gateway":
        code = ("from services.gateway.app import create_app\n"
                "from services.gateway.settings import Settings\n"
                "create_app(Settings(port=0))\nprint('ok')\n")
    elif service == "openai":  # every route module imported; serving starts and stops (PIL loads lazily)
        code = ("from services.openai.server import start\n"
                "from services.openai.settings import Settings\n"
                "start(Settings(port=0, log_level='WARNING')).stop()\nprint('ok')\n")
    else:
        db = tmp_path / "g.db"
        code = ("from services.core.server import start_server\n"
                "from services.matchgraph.app import build_service\n"
                "from services.matchgraph.settings import Settings\n"
                f"s = Settings(port=0, metrics_port=-1, db_url='sqlite:///{db}')\n"
                "start_server(s, build_service(s)).stop(0)\nprint('ok')\n")
    code = "import services.cli\n" + code
    assert _run_blocking([*MODEL_STACK, *extra_blocked], code).strip().endswith("ok")


def test_catalogue_json_shapes_import_without_fastapi():
    """The passport, resolve, feedback and search JSON shapes serve other front ends (an MCP server) too."""
    code = ("import services.gateway.passport, services.gateway.matching, services.gateway.catalogue_calls\n"
            "print('ok')\n")
    assert _run_blocking([*MODEL_STACK, "fastapi", "starlette", "uvicorn", "jinja2", "graph"], code).strip() == "ok"


def test_stdio_mcp_server_runs_without_fastapi_or_the_match_graph():
    """`unfragile serve mcp --stdio` needs the mcp extra and the base, not the gateway's web stack."""
    code = ("import asyncio\n"
            "from services.mcp.server import stdio_server\n"
            "from services.mcp.settings import Settings\n"
            "tools = asyncio.run(stdio_server(Settings()).list_tools())\n"
            "print(sorted(t.name for t in tools))\n")
    out = _run_blocking([*MODEL_STACK, "fastapi", "jinja2", "graph", "numpy", "scipy", "networkx"],
                        "import services.cli\n" + code)
    assert out.strip().endswith("['compare', 'feedback', 'resolve_capability', 'search', 'trust_passport']")
