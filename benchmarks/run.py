"""``make bench``: run every benchmarks/bench_*.py and write RESULTS.md + results.json.

Entries from a module that is not run this time (``--only``) are kept from the previous
results.json, so one area can be re-measured without losing the others.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

from benchmarks.common import Result

HERE = Path(__file__).resolve().parent


def write(results: list[dict[str, object]], path: Path = HERE / "results.json") -> None:
    """Write ``path`` (JSON) and RESULTS.md next to it."""
    results = sorted(results, key=lambda r: str(r["name"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (benchmarks/run.py). Every target is a ratio against a baseline",
        "measured in the same run, unless the unit says otherwise.",
        "",
        "| name | value | target | better | met | unit | baseline | device | date | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        met = f"**void**: {r['void']}" if r.get("void") else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| {r['name']} | {float(str(r['value'])):.4g} | {float(str(r['target'])):.4g} | {r['better']} | "
            f"{met} | {r['unit']} | {r['baseline']} | {r['device']} | {r['date']} | "
            f"{r.get('notes', '')} |"
        )
    (path.parent / "RESULTS.md").write_text("\n".join(lines) + "\n")


def merge(fresh: list[Result], ran_prefixes: set[str], path: Path = HERE / "results.json") -> None:
    """Write ``fresh`` over the entries in ``path``: entries of the prefixes that ran are replaced."""
    # Read the previous results only now, so a run of another module that finished
    # meanwhile is kept rather than overwritten.
    previous = json.loads(path.read_text()) if path.exists() else []
    fresh_names = {r.name for r in fresh}
    kept = [r for r in previous if r["name"] not in fresh_names
            and not any(p and str(r["name"]).startswith(p) for p in ran_prefixes)]
    write(kept + [r.as_dict() for r in fresh], path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", help="module names, e.g. bench_core bench_vl")
    args = parser.parse_args(argv)
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if args.only:
        modules = [m for m in modules if m in args.only]
    fresh: list[Result] = []
    ran_prefixes: set[str] = set()
    failed: list[str] = []
    for name in modules:
        mod = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            got = mod.run()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        for r in got:
            state = f"VOID: {r.void}" if r.void else ("met" if r.met else "NOT met")
            print(f"  {r.name} = {r.value:.4g} (target {r.target}, {state})", file=sys.stderr, flush=True)
        fresh.extend(got)
        ran_prefixes.add(getattr(mod, "PREFIX", ""))
    merge(fresh, ran_prefixes)
    if failed:
        sys.exit(f"benchmark modules failed (their previous entries are kept): {', '.join(failed)}")


if __name__ == "__main__":
    main()
