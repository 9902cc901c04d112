"""The shipped catalogue file (JSON Lines, one artifact a line) read into validated model records.

The format is documented in docs/catalogue.md: every figure is a reading with the page it was
read from and the date (``observed_at``); a figure nobody could read is absent. This module turns
each line into a ``ModelRecord`` (readings become ``Signal``/``Fact``/``QualityEvidence``, the
pricing block a ``Pricing`` with its source as a plan, capabilities keep their intents, best-for,
limitations and input/output types) and names the line and field of anything wrong, so a bad
file fails before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from common.errors import InvalidArgument
from common.gc_pause import cyclic_gc_paused
from graph.records import Capability, Fact, ModelRecord, Pricing, PricingPlan, QualityEvidence, Signal

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "catalogue.jsonl"
# Models per ImportModels message when a file is imported: each message is one transaction, so fewer and larger
# ones commit (fsync, checkpoint) less often; 2,000 records of the shipped file are ~6 MB of protobuf, well
# under the 32 MB message limit, and hold the writer for well under a second each.
IMPORT_BATCH = 2000
# catalogue pricing model -> the tier pages and verdicts use
TIER_OF = {"open_source": "free", "free": "free", "freemium": "freemium", "usage": "paid", "paid": "paid",
           "unknown": "unknown"}
PLAN_NAMES = {"open_source": "Open source", "free": "Free", "freemium": "Free tier and paid plans",
              "usage": "Pay per use", "paid": "Paid", "unknown": "Pricing not known"}


def _strs(d: dict[str, Any], key: str) -> tuple[str, ...]:
    value = d.get(key)
    if not value:
        return ()
    if value.__class__ is not list or not all(x.__class__ is str for x in value):
        raise InvalidArgument(f"{key} must be a list of strings")
    return tuple(value)


def _text(d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{key} must be a string")
    return value


def _need(d: dict[str, Any], key: str, where: str) -> Any:
    value = d.get(key)
    if value is None:
        raise InvalidArgument(f"{where}.{key} is missing")
    return value


def _signal(d: dict[str, Any], where: str) -> Signal:
    value = _need(d, "value", where)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{where}.value must be a number as the page shows it, got {value!r}")
    return Signal(str(_need(d, "kind", where)), float(value), str(_need(d, "source", where)),
                  str(_need(d, "observed_at", where)), _text(d, "says"), _text(d, "window"))


def _pricing(d: dict[str, Any] | None) -> Pricing:
    if not d:
        return Pricing()
    model = str(d.get("model") or "unknown")
    if model not in TIER_OF:
        raise InvalidArgument(f"pricing.model {model!r} must be one of {', '.join(TIER_OF)}")
    start = d.get("starting_price")
    if start is not None and (isinstance(start, bool) or not isinstance(start, (int, float))):
        raise InvalidArgument(f"pricing.starting_price must be a number or null, got {start!r}")
    tier = TIER_OF[model]
    if tier == "paid" and d.get("free"):
        tier = "freemium"
    plans: tuple[PricingPlan, ...] = ()
    if d.get("source"):
        plans = (PricingPlan(PLAN_NAMES[model], float(start or 0.0), "", str(d["source"]), _text(d, "says"),
                             _text(d, "observed_at")),)
    return Pricing(tier, plans, model=model, starting_price=float(start) if start is not None else None)


def _capability(d: dict[str, Any], where: str) -> Capability:
    return Capability(str(_need(d, "name", where)), str(_need(d, "description", where)),
                      intents=_strs(d, "intents"), best_for=_strs(d, "best_for"), limitations=_strs(d, "limitations"),
                      input_types=_strs(d, "input_types"), output_types=_strs(d, "output_types"),
                      requires=_strs(d, "requires"))


def _quality(q: dict[str, Any], where: str) -> QualityEvidence:
    return QualityEvidence(str(_need(q, "benchmark", where)), float(_need(q, "score", where)),
                           str(_need(q, "source", where)), str(_need(q, "observed_at", where)), _text(q, "task"),
                           _text(q, "scale") or "as published", _text(q, "says"))


def _fact(name: str, f: dict[str, Any]) -> Fact:
    where = f"facts.{name}"
    return Fact(name, str(_need(f, "value", where)), str(_need(f, "source", where)),
                str(_need(f, "observed_at", where)), _text(f, "says"))


def record_from_line(d: dict[str, Any]) -> ModelRecord:
    """One catalogue line as a validated ``ModelRecord`` (InvalidArgument names the field)."""
    if not isinstance(d, dict):
        raise InvalidArgument("a line must be a JSON object")
    facts = d.get("facts") or {}
    if not isinstance(facts, dict):
        raise InvalidArgument("facts must be an object of licence / released / last_modified readings")
    rec = ModelRecord(
        id=str(_need(d, "id", "line")), name=str(_need(d, "name", "line")), type=str(d.get("type") or "model"),
        aliases=tuple(dict.fromkeys(a for a in _strs(d, "aliases") if a.lower() not in (d["id"], d["name"].lower()))),
        pricing=_pricing(d.get("pricing")),
        adoption=tuple(_signal(s, f"adoption[{k}]") for k, s in enumerate(d.get("adoption") or [])),
        ecosystem=tuple(_signal(s, f"ecosystem[{k}]") for k, s in enumerate(d.get("ecosystem") or [])),
        serving_endpoint=_text(d, "serving_endpoint"),
        capabilities=tuple(_capability(c, f"capabilities[{k}]") for k, c in enumerate(d.get("capabilities") or [])),
        external_quality=tuple(_quality(q, f"quality[{k}]") for k, q in enumerate(d.get("quality") or [])),
        tasks=_strs(d, "tasks"),
        facts=tuple(_fact(name, f) for name, f in facts.items() if f),
        slug=_text(d, "slug"), hub_id=_text(d, "hub_id"), url=_text(d, "url"), organization=_text(d, "organization"),
        pipeline_tag=_text(d, "pipeline_tag"), tags=_strs(d, "tags"),
    )
    rec.validate()
    return rec


def parse_lines(lines: Iterable[str], where: str = "catalogue") -> Iterator[ModelRecord]:
    """Records of a JSON Lines text; InvalidArgument names the line (1-based) and the id of a bad one."""
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"{where}:{n}: not JSON ({exc.msg} at column {exc.colno})") from None
        ident = d.get("id") if isinstance(d, dict) else None
        try:
            rec = record_from_line(d)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}:{n} ({ident!r}): {exc.message}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument(f"{where}:{n} ({ident!r}): {exc}") from None
        if rec.id in seen:
            raise InvalidArgument(f"{where}:{n}: id {rec.id!r} already appears on line {seen[rec.id]}")
        seen[rec.id] = n
        yield rec


def load(path: Path | str = DEFAULT_PATH) -> list[ModelRecord]:
    """Every record of a catalogue file, validated (the whole file is read before anything is written; the
    cyclic collector is paused meanwhile: records hold no reference cycles, see ``common.gc_pause``)."""
    p = Path(path)
    with cyclic_gc_paused(), p.open(encoding="utf-8") as fh:
        return list(parse_lines(fh, p.name))
