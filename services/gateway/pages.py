"""Server-rendered HTML pages: search, rankings, model, comparison.

Plain HTML and one stylesheet: every page works without JavaScript, and nothing needs
building. Pages make the same MatchGraph calls as the JSON API and print the
service's own sentences (headline, verdict, feature rows) verbatim, so the page can
never disagree with gRPC ``Compare``.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote

import grpc
from fastapi import APIRouter, Path, Query, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from services.gateway import caching, charts, schemas
from services.gateway.api import TEXT_PATTERN, upstream
from services.gateway.errors import TITLES
from services.gateway.events import SearchRecorder
from services.gateway.upstream import UpstreamError

TEMPLATES = FilePath(__file__).with_name("templates")
PAIR_SEPARATOR = "-vs-"
EVIDENCE_ROWS_SHOWN = 50  # per dimension; a popular model has thousands of co-match rows

env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                  trim_blocks=True, lstrip_blocks=True)
env.filters["fmt"] = charts.fmt
env.globals["DIMENSION_LABELS"] = charts.DIMENSION_LABELS
env.globals["SUB_SCORES"] = charts.SUB_SCORES
env.globals["TYPE_LABEL"] = schemas.TYPE_LABEL


def highlight(snippet: str) -> Markup:
    """'[captioning] of images' -> '<mark>captioning</mark> of images' (escaped first)."""
    return Markup(re.sub(r"\[([^\[\]]+)\]", r"<mark>\1</mark>", escape(snippet)))


env.filters["highlight"] = highlight


def compare_path(a: str, b: str) -> str:
    return f"/compare/{quote(a, safe='')}{PAIR_SEPARATOR}{quote(b, safe='')}"


def with_sid(url: str, sid: str | None) -> str:
    """Carry the search id of a results page along its links (see events.py)."""
    return f"{url}{'&' if '?' in url else '?'}sid={sid}" if sid else url


env.globals["compare_path"] = compare_path
env.filters["sid"] = with_sid
env.tests["web_url"] = lambda url: str(url).startswith(("https://", "http://"))  # only these become links


def render(request: Request, template: str, status: int = 200, headers: dict[str, str] | None = None,
           answer: object = None, **context: Any) -> Response:
    """The page; with ``answer`` (the MatchGraph response it shows) an ETag of its snapshot."""
    settings = request.app.state.settings
    html = env.get_template(template).render(request=request, site_name=settings.site_name, **context)
    if status == 200:
        return caching.conditional(request, html.encode(), "text/html; charset=utf-8",
                                   schemas.snapshot_version(answer), headers, schemas.stale_seconds(answer))
    return Response(html, status_code=status, media_type="text/html; charset=utf-8", headers=headers)


def render_error_page(request: Request, status: int, detail: str, headers: dict[str, str] | None) -> Response:
    return render(request, "error.html", status=status, headers=headers, title=TITLES.get(status, "Error"),
                  status_code=status, detail=detail)


router = APIRouter(include_in_schema=False)

QueryText = Annotated[str, Query(max_length=512, pattern=TEXT_PATTERN)]
ModelPath = Annotated[str, Path(min_length=1, max_length=200, pattern=TEXT_PATTERN)]
PairPath = Annotated[str, Path(min_length=1, max_length=420, pattern=TEXT_PATTERN)]
Sid = Annotated[str, Query(max_length=64, pattern=r"^[0-9a-f]*$", description="search id (events.py)")]


def recorder(request: Request) -> SearchRecorder | None:
    return getattr(request.app.state, "recorder", None)


async def revalidate(request: Request, sid: str = "") -> Response | None:
    """``caching.revalidate`` for pages, except visits that record a search event (they need the answer)."""
    if sid and recorder(request) is not None:
        return None
    return await caching.revalidate(request, upstream(request))


@router.get("/")
async def home(request: Request) -> Response:
    if (cached := await revalidate(request)) is not None:
        return cached
    ranked = await upstream(request).rank("", 10, 0)
    top = schemas.RankList.from_pb(ranked, 10, 0)
    return render(request, "home.html", title="Search the match graph", top=top,
                  answer=ranked)


@router.get("/search")
async def search_page(request: Request, q: QueryText = "",
                      limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:
    if not q.strip():
        return render(request, "search.html", title="Search", q=q, results=None)
    resp = await upstream(request).search(q, limit)
    results = schemas.SearchResults.from_pb(q, resp)
    # Distinct models in hit order, for "compare the top two".
    seen: dict[str, str] = {}
    for h in results.hits:
        seen.setdefault(h.model_id, h.name)
    rec = recorder(request)
    sid = rec.start_search(q, list(seen)) if rec is not None else None
    return render(request, "search.html", title=f"Search: {q}", q=q, results=results, sid=sid,
                  models=list(seen.items()), answer=resp)


@router.get("/rank")
async def rank_page(request: Request, capability: QueryText = "",
                    limit: Annotated[int, Query(ge=1, le=200)] = 50,
                    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> Response:
    if (cached := await revalidate(request)) is not None:
        return cached
    resp = await upstream(request).rank(capability, limit, offset)
    ranked = schemas.RankList.from_pb(resp, limit, offset)
    chart = None
    if ranked.models:
        rows = [(m.name, [(charts.Series("UnfragileRank", charts.COLOR_A, "circle"), m.scores.rank)])
                for m in ranked.models[:20]]
        chart = charts.score_intervals("rank-chart", rows, "UnfragileRank with 95% intervals", 100.0, 1)
    return render(request, "rank.html", title="Rankings", capability=capability, ranked=ranked, chart=chart,
                  answer=resp)


@router.get("/models/{model}")
async def model_page(request: Request, model: ModelPath, sid: Sid = "") -> Response:
    if (cached := await revalidate(request, sid)) is not None:
        return cached
    resp = await upstream(request).get_model(model, True)
    if resp.model.id and resp.model.id != model:
        return RedirectResponse(with_sid(f"/models/{quote(resp.model.id, safe='')}", sid), status_code=308)
    if (rec := recorder(request)) is not None:
        rec.clicked(sid, resp.model.id)
    detail = schemas.ModelDetail.from_pb(resp)
    others = schemas.RankList.from_pb(await upstream(request).rank("", 100, 0), 100, 0)
    series = charts.Series(detail.model.name, charts.COLOR_A, "circle")
    chart = charts.score_intervals(
        "model-scores",
        [(charts.DIMENSION_LABELS[d], [(series, getattr(detail.scores, d))]) for d in charts.SUB_SCORES],
        f"Sub-scores of {detail.model.name} with 95% intervals")
    evidence: dict[str, list[schemas.Evidence]] = {}
    for e in detail.evidence:
        evidence.setdefault(e.dimension, []).append(e)
    return render(request, "model.html", title=detail.model.name, d=detail, chart=chart, evidence=evidence, sid=sid,
                  evidence_limit=EVIDENCE_ROWS_SHOWN,
                  others=[m for m in others.models if m.id != detail.model.id],
                  answer=resp)


@router.get("/compare")
async def compare_form(request: Request, a: QueryText = "", b: QueryText = "", sid: Sid = "") -> Response:
    """The compare form (GET, works without JS) redirects to the canonical page."""
    if not a.strip() or not b.strip():
        return render_error_page(request, 400, "choose two models to compare (parameters a and b)", None)
    return RedirectResponse(with_sid(compare_path(a.strip(), b.strip()), sid), status_code=303)


def split_pair(pair: str) -> list[tuple[str, str]]:
    """Every way to read "<a>-vs-<b>" (ids may themselves contain "-vs-"), leftmost first."""
    out = []
    start = 0
    while (i := pair.find(PAIR_SEPARATOR, start)) != -1:
        a, b = pair[:i], pair[i + len(PAIR_SEPARATOR):]
        if a and b:
            out.append((a, b))
        start = i + 1
    return out


async def _compare_any(request: Request, pair: str) -> Any:
    candidates = split_pair(pair)
    if not candidates:
        raise UpstreamError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"a comparison address looks like /compare/<a>-vs-<b>, got /compare/{pair}")
    last: UpstreamError | None = None
    for a, b in candidates:
        try:
            return await upstream(request).compare(a, b)
        except UpstreamError as err:
            if err.code != grpc.StatusCode.NOT_FOUND:
                raise
            last = err
    assert last is not None
    raise last


@router.get("/compare/{pair}")
async def compare_page(request: Request, pair: PairPath, sid: Sid = "") -> Response:
    markdown = pair.endswith(".md")
    if (cached := await revalidate(request, sid)) is not None:
        return cached
    resp = await _compare_any(request, pair[:-3] if markdown else pair)
    canonical = compare_path(resp.a.id, resp.b.id)
    if markdown:
        return caching.conditional(request, resp.markdown.encode(), "text/markdown; charset=utf-8",
                                   schemas.snapshot_version(resp), stale_seconds=schemas.stale_seconds(resp))
    if request.url.path != canonical:
        return RedirectResponse(with_sid(canonical, sid), status_code=308)
    if (rec := recorder(request)) is not None:
        rec.compared(sid, resp.a.id, resp.b.id)
    c = schemas.Comparison.from_pb(resp)
    sa = charts.Series(c.a.name, charts.COLOR_A, "circle")
    sb = charts.Series(c.b.name, charts.COLOR_B, "diamond")
    subs = charts.score_intervals(
        "compare-scores",
        [(charts.DIMENSION_LABELS[d], [(sa, getattr(c.a_scores, d)), (sb, getattr(c.b_scores, d))])
         for d in charts.SUB_SCORES],
        f"Sub-scores of {c.a.name} and {c.b.name} with 95% intervals")
    rank_chart = charts.score_intervals(
        "compare-rank", [("UnfragileRank", [(sa, c.a_scores.rank), (sb, c.b_scores.rank)])],
        f"UnfragileRank of {c.a.name} and {c.b.name} with 95% intervals", 100.0, 1)
    diff_chart = charts.differences("compare-diffs", c.dimensions, c.a.name, c.b.name)
    frag_chart = charts.fragility("compare-fragility", c.dimensions)
    return render(request, "compare.html", title=f"{c.a.name} vs {c.b.name}", c=c, subs=subs, rank_chart=rank_chart,
                  diff_chart=diff_chart, frag_chart=frag_chart, answer=resp,
                  md_path=canonical + ".md")


@router.get("/robots.txt")
async def robots() -> PlainTextResponse:
    return PlainTextResponse("User-agent: *\nAllow: /\nDisallow: /api/\n")
