"""``unfragile.yml`` manifests: parse, check every field, and turn a valid one into a ModelRecord.

The schema (documented in docs/api.md) follows the real catalogue service's manifest: an
``artifact`` block, ``capabilities`` with the intents they serve and their conditions, ``pricing``,
``failure_modes``, ``execution`` and ``links``. Every problem is reported at once, each with the JSON
Pointer of its field (``/capabilities/0/description``), a code and a message saying what to change;
warnings name what a good manifest has that this one lacks. YAML anchors and aliases are refused
(they can make a small document expand without bound).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import yaml

from common.errors import InvalidArgument, NotFound
from graph.catalogue import Catalogue
from graph.records import PRICING_MODELS, Capability, FailureMode, Link, ModelRecord, Pricing, slugify

MAX_BYTES = 256 * 1024
MIN_DESCRIPTION = 100  # characters of a capability description, as the real service asks
VERSIONS = ("1.0",)
# The real service's artifact types this catalogue stores, and as what.
TYPES = {"model": "model", "api": "api", "tool": "tool", "mcp": "tool", "mcp_server": "tool", "extension": "tool",
         "package": "tool", "library": "tool", "repo": "tool", "agent": "tool", "product": "tool", "cli": "tool",
         "app": "tool", "plugin": "tool"}
PROTOCOLS = ("mcp", "http", "https", "stdio", "websocket", "grpc")
FREQUENCIES = ("rare", "occasional", "common", "frequent")
TOP_KEYS = ("unfragile_version", "artifact", "capabilities", "pricing", "failure_modes", "execution", "links")
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_TIER = {"open_source": "free", "free": "free", "freemium": "freemium", "paid": "paid", "usage": "paid",
         "unknown": "unknown"}


@dataclass(frozen=True)
class Issue:
    path: str  # JSON Pointer ("" = the whole document)
    code: str
    message: str


@dataclass(frozen=True)
class ManifestResult:
    errors: tuple[Issue, ...]
    warnings: tuple[Issue, ...]
    record: ModelRecord | None  # set when there is no error


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]  # the stubs leave it untyped
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a manifest",
                                              event.start_mark)
        return super().compose_node(parent, index)


def pointer(*parts: str | int) -> str:
    """RFC 6901 JSON Pointer of a path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class _Checker:
    def __init__(self) -> None:
        self.errors: list[Issue] = []
        self.warnings: list[Issue] = []

    def error(self, path: str, code: str, message: str) -> None:
        self.errors.append(Issue(path, code, message))

    def text(self, obj: dict[str, Any], key: str, path: str, *, required: bool = False, limit: int = 8000,
             minimum: int = 0) -> str:
        where = f"{path}/{key}"
        value = obj.get(key)
        if value is None:
            if required:
                self.error(where, "missing", f"{key} is required")
            return ""
        if not isinstance(value, str):
            self.error(where, "type", f"{key} must be a string, got {type(value).__name__} (quote it)")
            return ""
        if required and not value.strip():
            self.error(where, "missing", f"{key} is empty")
        elif len(value) > limit:
            self.error(where, "too_long", f"{key} is {len(value)} characters; at most {limit}")
        elif len(value.strip()) < minimum:
            self.error(where, "too_short", f"{key} is {len(value.strip())} characters; give at least {minimum}: "
                                           f"say how it works, not only what it claims")
        return value.strip()

    def texts(self, obj: dict[str, Any], keys: tuple[str, ...], path: str, limit: int = 500) -> tuple[str, ...]:
        """A list of strings under the first of ``keys`` present (camelCase or snake_case)."""
        key = next((k for k in keys if k in obj), keys[0])
        value = obj.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(f"{path}/{key}", "type", f"{key} must be a list of strings")
            return ()
        out = []
        for i, v in enumerate(value):
            if not isinstance(v, str) or not v.strip():
                self.error(pointer_join(path, key, i), "type", f"{key}[{i}] must be a non-empty string")
            elif len(v) > limit:
                self.error(pointer_join(path, key, i), "too_long",
                           f"{key}[{i}] is {len(v)} characters; at most {limit}")
            elif v.strip() in out:
                self.error(pointer_join(path, key, i), "duplicate", f"{key}[{i}] repeats {v.strip()!r}")
            else:
                out.append(v.strip())
        return tuple(out)

    def mapping(self, value: Any, path: str, what: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.error(path, "type", f"{what} must be a mapping of fields, got {type(value).__name__}")
            return None
        return value


def pointer_join(path: str, *parts: str | int) -> str:
    return path + pointer(*parts)


def _load(text: str) -> tuple[Any, Issue | None]:
    if len(text.encode()) > MAX_BYTES:
        return None, Issue("", "too_long", f"the manifest is over {MAX_BYTES // 1024} KiB")
    try:
        doc = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader that also refuses aliases
        _utf8(doc)
        return doc, None
    except UnicodeEncodeError:
        return None, Issue("", "encoding", "the manifest holds an escape of an unpaired UTF-16 surrogate "
                                           "(\\ud800-\\udfff): write the character itself")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return None, Issue("", "syntax", f"not valid YAML: {where}{problem}")


def _utf8(doc: Any) -> None:
    """UnicodeEncodeError when a string or key of ``doc`` cannot be UTF-8 (a surrogate escaped into it)."""
    if isinstance(doc, str):
        doc.encode("utf-8")
    elif isinstance(doc, dict):
        for k, v in doc.items():
            _utf8(k)
            _utf8(v)
    elif isinstance(doc, list):
        for v in doc:
            _utf8(v)


def parse(text: str) -> ManifestResult:
    """Check a manifest; the record it describes when there is no error."""
    doc, problem = _load(text)
    if problem is not None:
        return ManifestResult((problem,), (), None)
    c = _Checker()
    top = c.mapping(doc, "", "the manifest") if doc is not None else None
    if doc is None:
        c.error("", "missing", "the manifest is empty: start with unfragile_version: \"1.0\" and an artifact block")
    if top is None:
        return ManifestResult(tuple(c.errors), (), None)
    for key in top:
        if key not in TOP_KEYS:
            c.warnings.append(Issue(pointer(str(key)), "unknown", f"{key!r} is not a manifest field; it is ignored "
                                    f"(fields: {', '.join(TOP_KEYS)})"))
    version = top.get("unfragile_version")
    if version is None:
        c.error("/unfragile_version", "missing", "unfragile_version is required: \"1.0\"")
    elif str(version) not in VERSIONS:
        c.error("/unfragile_version", "enum", f"unfragile_version {version!r} is not supported; use \"1.0\"")
    record = _record(c, top)
    if not c.errors and record is not None:
        try:
            record.validate()
        except InvalidArgument as exc:
            c.error("", "invalid", exc.message)
    ok = not c.errors
    return ManifestResult(tuple(c.errors), tuple(c.warnings), record if ok else None)


def _record(c: _Checker, top: dict[str, Any]) -> ModelRecord | None:
    art = c.mapping(top.get("artifact"), "/artifact", "artifact") if "artifact" in top else None
    if "artifact" not in top:
        c.error("/artifact", "missing", "artifact is required: name, slug, type, ...")
    art = art or {}
    name = c.text(art, "name", "/artifact", required=True, limit=200)
    slug = c.text(art, "slug", "/artifact", limit=200)
    if slug and not _SLUG.match(slug):
        c.error("/artifact/slug", "format", f"slug {slug!r} must be letters, digits, '.', '_' and '-' (owner--name), "
                                            f"e.g. 'my-org--my-model'")
    kind = c.text(art, "type", "/artifact", required=True, limit=40)
    if kind and kind.lower().replace("-", "_") not in TYPES:
        c.error("/artifact/type", "enum", f"type {kind!r} is not one this catalogue stores: use one of "
                                          f"{', '.join(sorted(TYPES))}")
    c.text(art, "description", "/artifact")
    c.text(art, "maintainer", "/artifact", limit=200)
    version = c.text(art, "version", "/artifact", limit=100)
    licence = c.text(art, "license", "/artifact", limit=100)
    links = [Link(rel, u) for rel in ("repository", "homepage") if (u := c.text(art, rel, "/artifact", limit=500))]
    for rel in ("repository", "homepage"):
        if art.get(rel) and not str(art[rel]).startswith(("http://", "https://")):
            c.error(f"/artifact/{rel}", "format", f"{rel} must be an absolute http(s) URL")
    aliases = c.texts(art, ("aliases",), "/artifact", limit=200)
    tags = c.texts(art, ("tags",), "/artifact", limit=100)
    caps = _capabilities(c, top)
    pricing = _pricing(c, top)
    failures = _failures(c, top)
    links += _links(c, top)
    _execution(c, top)
    if len(caps) < 3 and not any(i.path.startswith("/capabilities") for i in c.errors):
        c.warnings.append(Issue("/capabilities", "few", f"{len(caps)} capabilities declared; most artifacts "
                                "decompose into at least 3"))
    if c.errors:
        return None
    ident = slugify(slug or name)
    return ModelRecord(
        id=ident, name=name, type=TYPES[kind.lower().replace("-", "_")], aliases=aliases, pricing=pricing,
        version=version, capabilities=caps, slug=slug,
        url=next((x.url for x in links if x.rel == "homepage"), next((x.url for x in links), "")),
        tags=tuple(dict.fromkeys((*tags, *((f"license:{licence.lower()}",) if licence else ())))),
        failure_modes=failures, links=tuple(links))


def _capabilities(c: _Checker, top: dict[str, Any]) -> tuple[Capability, ...]:
    items = top.get("capabilities")
    if items is None:
        c.error("/capabilities", "missing", "capabilities is required: at least one, each with name, description "
                                            "and intents_served")
        return ()
    if not isinstance(items, list) or not items:
        c.error("/capabilities", "type", "capabilities must be a non-empty list")
        return ()
    out = []
    for i, item in enumerate(items):
        path = pointer("capabilities", i)
        cap = c.mapping(item, path, f"capabilities[{i}]")
        if cap is None:
            continue
        name = c.text(cap, "name", path, required=True, limit=200)
        desc = c.text(cap, "description", path, required=True, minimum=MIN_DESCRIPTION)
        intents = c.texts(cap, ("intents_served", "intents"), path, limit=200)
        if not intents and "intents_served" not in cap and "intents" not in cap:
            c.error(f"{path}/intents_served", "missing", "intents_served is required: the user needs it serves, in "
                                                         "their words")
        cond = c.mapping(cap.get("conditions", {}), f"{path}/conditions", "conditions") or {}
        cpath = f"{path}/conditions"
        kinds = {}
        for key in (("inputTypes", "input_types"), ("outputTypes", "output_types")):
            values = c.texts(cond, key, cpath, limit=40)
            for j, v in enumerate(values):
                if not v.replace("-", "").replace("_", "").isalnum() or v != v.lower():
                    c.error(pointer_join(cpath, next((k for k in key if k in cond), key[0]), j), "format",
                            f"{v!r} must be a lowercase word like 'image', 'text' or 'boxes'")
            kinds[key[1]] = values
        out.append(Capability(
            name, desc, unique=c.text(cap, "unique_aspect", path), intents=intents,
            best_for=c.texts(cond, ("bestFor", "best_for"), cpath), limitations=c.texts(cond, ("limitations",), cpath),
            input_types=kinds["input_types"], output_types=kinds["output_types"],
            requires=c.texts(cond, ("requires",), cpath)))
    return tuple(out)


def _pricing(c: _Checker, top: dict[str, Any]) -> Pricing:
    if "pricing" not in top:
        return Pricing()
    p = c.mapping(top["pricing"], "/pricing", "pricing") or {}
    model = c.text(p, "model", "/pricing", limit=40).lower().replace("-", "_")
    if model and model not in PRICING_MODELS:
        c.error("/pricing/model", "enum", f"model {p['model']!r} must be one of {', '.join(PRICING_MODELS)}")
        model = ""
    free = p.get("free")
    if free is not None and not isinstance(free, bool):
        c.error("/pricing/free", "type", "free must be true or false")
    elif free is not None and model and free != (model in ("open_source", "free", "freemium")):
        c.error("/pricing/free", "conflict", f"free: {str(free).lower()} contradicts model {model!r}")
    price = p.get("starting_price")
    if price is not None and (isinstance(price, bool) or not isinstance(price, int | float) or price < 0):
        c.error("/pricing/starting_price", "type", "starting_price must be a number >= 0 (USD per month)")
        price = None
    return Pricing(_TIER.get(model, "unknown"), model=model, starting_price=float(price) if price is not None else None)


def _failures(c: _Checker, top: dict[str, Any]) -> tuple[FailureMode, ...]:
    items = top.get("failure_modes")
    if items is None:
        c.warnings.append(Issue("/failure_modes", "missing", "no failure modes declared: say how it fails and what "
                                                              "helps"))
        return ()
    if not isinstance(items, list):
        c.error("/failure_modes", "type", "failure_modes must be a list of {mode, frequency, mitigation}")
        return ()
    out = []
    for i, item in enumerate(items):
        path = pointer("failure_modes", i)
        f = c.mapping(item, path, f"failure_modes[{i}]")
        if f is None:
            continue
        freq = c.text(f, "frequency", path, limit=40)
        if freq and freq not in FREQUENCIES:
            c.error(f"{path}/frequency", "enum", f"frequency {freq!r} must be one of {', '.join(FREQUENCIES)}")
        out.append(FailureMode(c.text(f, "mode", path, required=True, limit=500), freq,
                               c.text(f, "mitigation", path, limit=1000)))
    return tuple(out)


def _links(c: _Checker, top: dict[str, Any]) -> list[Link]:
    links = c.mapping(top.get("links", {}), "/links", "links") or {}
    out = []
    for rel, url in links.items():
        path = pointer("links", str(rel))
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 500:
            c.error(path, "format", f"links.{rel} must be an absolute http(s) URL")
        elif not str(rel).replace("_", "").isalnum() or str(rel) != str(rel).lower():
            c.error(path, "format", f"link name {rel!r} must be a lowercase word like 'paper' or 'docs'")
        else:
            out.append(Link(str(rel), url))
    return out


def _execution(c: _Checker, top: dict[str, Any]) -> None:
    if "execution" not in top:
        c.warnings.append(Issue("/execution", "missing", "no execution block: say how to call it (protocol, "
                                                          "auth_method)"))
        return
    ex = c.mapping(top["execution"], "/execution", "execution") or {}
    proto = c.text(ex, "protocol", "/execution", limit=40)
    if proto and proto not in PROTOCOLS:
        c.error("/execution/protocol", "enum", f"protocol {proto!r} must be one of {', '.join(PROTOCOLS)}")
    c.text(ex, "auth_method", "/execution", limit=100)


def merge(existing: ModelRecord, manifest: ModelRecord) -> ModelRecord:
    """``existing`` updated by a manifest of the same artifact: the manifest says what it is and does (name,
    type, capabilities, pricing, failure modes, links); the catalogue's evidence (adoption, ecosystem, quality,
    what serves it here) and its id stay."""
    priced = manifest.pricing.model or manifest.pricing.tier != "unknown"
    links = {x.rel: x for x in (*existing.links, *manifest.links)}
    return replace(
        existing, name=manifest.name, type=manifest.type,
        aliases=tuple(dict.fromkeys((*existing.aliases, *manifest.aliases,
                                     *((existing.name,) if existing.name != manifest.name else ())))),
        pricing=manifest.pricing if priced else existing.pricing, version=manifest.version or existing.version,
        capabilities=manifest.capabilities, slug=manifest.slug or existing.slug, url=manifest.url or existing.url,
        tags=tuple(dict.fromkeys((*existing.tags, *manifest.tags))),
        failure_modes=manifest.failure_modes or existing.failure_modes, links=tuple(links.values()))


def check(text: str, catalogue: Catalogue) -> tuple[ManifestResult, ModelRecord | None, str]:
    """``parse``, then what importing it would store: (result, record, id of the model it updates or "")."""
    result = parse(text)
    if result.record is None:
        return result, None, ""
    new = result.record
    for ref in (new.slug, new.id, new.name):
        try:
            existing = catalogue.resolve(ref) if ref else ""
        except (NotFound, InvalidArgument):
            continue
        record = merge(catalogue.record_of(existing), new)
        note = Issue("", "updates", f"updates model {existing!r}: its adoption, ecosystem and quality evidence stay")
        return ManifestResult(result.errors, (*result.warnings, note), record), record, existing
    return result, new, ""
