"""End to end in headless Chromium (Debian's chromium, driven by Playwright's Python API):
type a query, open a result, open a comparison, and check that the verdict and every
number on the page equal what gRPC ``Compare`` returns. JavaScript is OFF in the
browser: the pages must work as plain HTML. Also checks accessibility basics
(labels, headings, chart text alternatives, text contrast) and phone/desktop layouts,
and saves the screenshots the README shows (docs/screenshots/).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.charts import fmt
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

from .conftest import CHROMIUM, CHROMIUM_ARGS, chromium_missing_reason

_reason = chromium_missing_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

# Runs in the page: problems with labels, headings, chart alternatives and contrast.
A11Y_JS = r"""
() => {
  const problems = [];
  if (!document.documentElement.lang) problems.push("html has no lang");
  const h1s = document.querySelectorAll("h1");
  if (h1s.length !== 1) problems.push(`expected one h1, found ${h1s.length}`);
  let last = 0;
  for (const h of document.querySelectorAll("h1,h2,h3,h4,h5,h6")) {
    const level = +h.tagName[1];
    if (last && level > last + 1) problems.push(`heading jumps h${last} -> h${level}: ${h.textContent.trim()}`);
    last = level;
  }
  for (const el of document.querySelectorAll("input:not([type=hidden]),select,textarea")) {
    if (!(el.labels && el.labels.length) && !el.getAttribute("aria-label")) problems.push(`unlabelled ${el.outerHTML}`);
  }
  for (const svg of document.querySelectorAll("svg")) {
    const t = svg.querySelector("title"), d = svg.querySelector("desc");
    if (svg.getAttribute("role") !== "img" || !t || !t.textContent.trim() || !d || !d.textContent.trim())
      problems.push(`chart without role=img/title/desc: ${svg.id}`);
  }
  const ids = new Set();
  for (const el of document.querySelectorAll("[id]")) {
    if (ids.has(el.id)) problems.push(`duplicate id ${el.id}`);
    ids.add(el.id);
  }
  const rgb = s => (s.match(/[\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const bgOf = el => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const texts = "p,li,td,th,a,label,button,figcaption,h1,h2,h3,summary,caption,span,mark";
  for (const el of document.querySelectorAll(texts)) {
    if (!el.textContent.trim() || el.closest(".sr-only,.skip") || !el.getClientRects().length) continue;
    const st = getComputedStyle(el);
    const ratio = (a, b) => (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const r = ratio(lum(rgb(st.color).slice(0, 3)), lum(bgOf(el)));
    const large = parseFloat(st.fontSize) >= 24 || (parseFloat(st.fontSize) >= 18.66 && +st.fontWeight >= 700);
    if (r < (large ? 3 : 4.5)) problems.push(`contrast ${r.toFixed(2)} for "${el.textContent.trim().slice(0, 40)}"`);
  }
  // Text inside the SVG charts: its colour is the fill; the chart sits on the page background.
  for (const t of document.querySelectorAll("svg text")) {
    if (!t.textContent.trim()) continue;
    const ratio = (a, b) => (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const r = ratio(lum(rgb(getComputedStyle(t).fill).slice(0, 3)), lum(bgOf(t.closest("svg"))));
    if (r < 4.5) problems.push(`chart text contrast ${r.toFixed(2)} for "${t.textContent.trim().slice(0, 40)}"`);
  }
  return problems;
}
"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    pg = ctx.new_page()
    yield pg
    ctx.close()


def test_dark_colour_scheme_keeps_contrast(browser, base_url, stub):
    """With prefers-color-scheme: dark every text, chart text included, still reads at 4.5:1."""
    ranked = stub.Rank(pb.RankRequest(limit=2)).models
    ctx = browser.new_context(viewport=DESKTOP, color_scheme="dark")
    pg = ctx.new_page()
    for path in (f"/compare/{ranked[0].id}-vs-{ranked[1].id}", f"/models/{ranked[0].id}",
                 "/search?q=image+captioning", "/rank", "/models/nope"):
        pg.goto(base_url + path)
        assert pg.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(15, 23, 42)"
        problems = pg.evaluate(A11Y_JS)
        assert problems == [], f"{path} (dark): {problems}"
    ctx.close()


def _check_a11y(pg) -> None:
    # The checker itself is JavaScript: run it in a JS-enabled twin of the same page.
    html = pg.content()
    ctx = pg.context.browser.new_context(viewport=pg.viewport_size)
    twin = ctx.new_page()
    twin.goto(pg.url)
    assert twin.content().count("<h1") == html.count("<h1")
    problems = twin.evaluate(A11Y_JS)
    ctx.close()
    assert problems == [], f"{pg.url}: {problems}"


def _check_score(cell, s: pb.Score, digits: int) -> None:
    """A measured score shows its number; one that is not measured says so, with its reason, and no number."""
    if s.measured:
        assert cell.locator(".num").inner_text() == fmt(s.value, digits)
    else:
        assert cell.locator(".num").count() == 0 and "not measured" in cell.inner_text()
        assert s.not_measured_reason in cell.inner_text()


def test_search_open_result_then_compare_matches_grpc(page, base_url, stub):
    page.goto(base_url + "/")
    page.get_by_label("Search models and capabilities").fill("image captioning")
    page.keyboard.press("Enter")
    page.wait_for_url("**/search?q=image+captioning")

    hits = stub.Search(pb.SearchRequest(query="image captioning", limit=20)).hits
    names = page.locator("ol.results li.hit h3 a").all_inner_texts()
    assert names == [h.name for h in hits] and names
    _check_a11y(page)

    page.locator("ol.results li.hit h3 a").first.click()
    first = hits[0].model_id
    page.wait_for_url(f"**/models/{first}")
    detail = stub.GetModel(pb.GetModelRequest(model=first, explain=True))
    assert page.locator("h1").inner_text() == detail.model.name
    assert page.locator("#model-rank .num").inner_text() == fmt(detail.scores.rank.value, 1)
    for dim in ("adoption", "quality", "ecosystem", "match_graph", "freshness"):
        _check_score(page.locator(f'#subscores tr[data-dimension="{dim}"]'), getattr(detail.scores, dim), 2)
    assert page.locator("article.capability").count() == len(detail.model.capabilities)
    _check_a11y(page)

    # Open a comparison with the form on the model page (GET form, no JS).
    other = page.locator("select#b option").first.get_attribute("value")
    page.get_by_role("button", name="Compare").click()
    page.wait_for_url(f"**/compare/{first}-vs-{other}")
    want = stub.Compare(pb.CompareRequest(a=first, b=other))

    assert page.locator("h1").inner_text() == f"{want.a.name} vs {want.b.name}"
    assert page.locator("#headline").inner_text() == want.headline
    assert page.locator("#verdict p").all_inner_texts() == list(want.verdict)
    rows = page.locator("#features tbody tr")
    assert rows.count() == len(want.rows)
    for i, row in enumerate(want.rows):
        assert rows.nth(i).locator("th, td").all_inner_texts() == [row.feature, row.a, row.b]
    missing = {pb.OUTCOME_NOT_MEASURED: "Not measured for both", pb.OUTCOME_NOT_COMPARABLE: "Not comparable"}
    for d in want.dimensions:
        digits = 1 if d.dimension == "rank" else 2
        tr = page.locator(f'#dimensions tr[data-dimension="{d.dimension}"]')
        _check_score(tr.locator("td.a"), d.a, digits)
        _check_score(tr.locator("td.b"), d.b, digits)
        outcome = {pb.OUTCOME_A_LEADS: f"{want.a.name} leads", pb.OUTCOME_B_LEADS: f"{want.b.name} leads", **missing}
        assert tr.locator("td.outcome").inner_text() == outcome.get(d.outcome, "Tied")
        if d.outcome in missing:  # no difference of numbers that are not there
            assert tr.locator("td.diff .num").count() == 0 and missing[d.outcome].lower() in \
                tr.locator("td.diff").inner_text()
            continue
        assert tr.locator("td.diff .num").inner_text() == fmt(d.diff, digits)
        assert tr.locator("td.diff .ci").inner_text() == f"({fmt(d.diff_low, digits)}–{fmt(d.diff_high, digits)})"
        flip = tr.locator("td.flip").inner_text()
        if d.records_to_flip > 0:
            assert flip.startswith(str(d.records_to_flip)) and ("fragile" in flip) == d.fragile
    # The charts state the same numbers in their text alternatives.
    desc = page.locator("#compare-diffs desc").text_content() or ""
    for d in want.dimensions:
        if d.dimension != "rank" and d.outcome not in missing:
            assert f"difference {fmt(d.diff)} (95% interval {fmt(d.diff_low)} to {fmt(d.diff_high)})" in desc
    assert page.locator("#compare-fragility").count() == 1
    assert page.locator("article.capability").count() == len(want.a.capabilities) + len(want.b.capabilities)
    _check_a11y(page)


@pytest.mark.parametrize("viewport,tag", [(PHONE, "phone"), (DESKTOP, "desktop")])
def test_layouts_fit_and_screenshots(browser, base_url, stub, viewport, tag):
    """No sideways scrolling at phone width; screenshots for the README at both widths."""
    ranked = stub.Rank(pb.RankRequest(limit=2)).models
    a, b = ranked[0].id, ranked[1].id
    ctx = browser.new_context(viewport=viewport, device_scale_factor=1, java_script_enabled=True)
    pg = ctx.new_page()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, path in (("compare", f"/compare/{a}-vs-{b}"), ("search", "/search?q=image+captioning"),
                       ("model", f"/models/{a}"), ("home", "/"), ("rank", "/rank"), ("error", "/models/nope")):
        pg.goto(base_url + path)
        problems = pg.evaluate(A11Y_JS)
        assert problems == [], f"{path}: {problems}"
        width = pg.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"{path} scrolls sideways at {viewport['width']}px ({width}px wide)"
        for svg in pg.locator("svg.chart").all():
            box = svg.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"] + 0.5
        if name in ("home", "rank", "error"):
            continue
        height = min(pg.evaluate("document.documentElement.scrollHeight"), 2400 if tag == "phone" else 1800)
        pg.screenshot(path=str(SCREENSHOTS / f"{name}-{tag}.png"),
                      clip={"x": 0, "y": 0, "width": viewport["width"], "height": height}, full_page=True)
        assert (SCREENSHOTS / f"{name}-{tag}.png").stat().st_size > 10_000
    ctx.close()
