"""LitServe's own ``OpenAISpec`` beside unfragile's OpenAI-compatible frontend, the same chat request to both.

unfragile runs as deployed: ``unfragile serve openai`` in front of ``unfragile serve
visionlanguage`` (two processes, gRPC between them). LitServe runs
``benchmarks/peers/litserve_server.py openai``: its ``OpenAISpec`` on a LitAPI that decodes
the ``image_url`` data URL and captions with the shared ``Kosmos2Captioner`` (greedy).
Both load the bench Kosmos-2 with the same torch threads and batching knobs. One official
``openai`` SDK client per server sends identical requests (one data-URL PNG and no text,
``max_tokens``, the model id unfragile lists), one call at a time, alternating between the
servers (which goes first flips every pair), with the other side's processes frozen while
one is measured; warm-up calls first. Every answer's text is compared with unfragile's for
the same request, and so are the usage's token counts (the same length of work); since the
bench model's greedy captions hardly depend on the image, both sides also serve the tiny
Kosmos-2 (whose captions do, if only a little), checked with 8 concurrent clients so
LitServe batches: one difference voids the entry.

``peer.vl.litserve_openai.chat_p50_1``: unfragile's chat completion p50 / LitServe's, one
client, the same images as ``openai.chat.p50_over_grpc_caption``. Target <= 1.0 (the target
of ``peer.vl.litserve.p50_1``, which compares the same two servers without the OpenAI layer).

What LitServe 0.2.19's spec could not do (``LITSERVE_CANNOT``, read from its
``litserve/specs/openai.py``, ``specs/openai_embedding.py`` and ``server.py``):

- No ``GET /v1/models`` (its routes are ``/``, ``/health``, ``/info`` and the specs'); the
  request's ``model`` is echoed back, never checked.
- Fields outside its request schema are dropped by pydantic before the LitAPI sees the
  request: ``seed`` (so no reproducible sampling can be asked for), ``stream_options``,
  ``logprobs``, ``top_k`` and every ``extra_body`` extension (Kosmos-2's modes, grounding).
- A stream's last chunk (``finish_reason`` set) always carries ``usage``, holding what the
  LitAPI's last message reported; there is no usage-only chunk with empty ``choices`` as
  OpenAI sends for ``stream_options.include_usage``.
- ``finish_reason`` is always ``"stop"``, also when ``max_tokens`` cut the answer.
- ``image_url`` parts arrive as the client's string: decoding a data URL, or fetching and
  guarding a remote URL, is the LitAPI's code. No images API (generations, edits); the
  embeddings spec takes text or token ids only, no images.
- Errors raised in the LitAPI reach a non-streaming client as FastAPI's ``{"detail": ...}``
  (validation errors as FastAPI's 422), not OpenAI's ``{"error": {...}}``; only errors
  inside a stream use OpenAI's shape, after a 200 and with code ``internal_error`` even for
  a request the LitAPI refused.
- Batching works (``max_batch_size`` > 1) only with a LitAPI that yields one message per
  request per step and overrides ``encode_response``; one request refused while decoding
  fails its whole batch; ``enable_async`` cannot batch.
- Streaming is only as fine as the LitAPI yields: ``Kosmos2Captioner`` calls ``generate``,
  so the whole caption is one chunk and time to first token is not compared.
"""

from __future__ import annotations

import base64
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import Result, percentile
from benchmarks.peers import clients as cl
from benchmarks.peers import servers as sv

NAME = "peer.vl.litserve_openai.chat_p50_1"
TARGET = 1.0
WARM, PAIRS = 3, 16
VL_SERVICE = "unfragile.visionlanguage.v1.VisionLanguage"
LITSERVE_CANNOT = (
    "LitServe 0.2.19's OpenAISpec could not: list models (no /v1/models); take seed, stream_options, logprobs or "
    "extra_body fields (dropped before the LitAPI); send a usage-only stream chunk (usage rides on the last chunk, "
    "always); report finish_reason length; decode or fetch image_url (the LitAPI's code); serve images or image "
    "embeddings; answer errors in OpenAI's shape outside streams; batch without a LitAPI yielding per-request lists "
    "(one refused request fails its batch); stream finer than the LitAPI yields (one chunk here, so no TTFT entry)")


Answer = tuple[str, int, int]  # the message's text, usage.prompt_tokens, usage.completion_tokens


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class Chat:
    """One server's side: an ``openai`` SDK client asking for a caption of one data-URL image."""

    def __init__(self, name: str, base_url: str, model: str | None = None) -> None:
        import openai

        self.name = name
        self.client: Any = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
        self.model = model or str(self.client.models.list().data[0].id)

    def __call__(self, png: bytes, max_tokens: int) -> Answer:
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png)}}]}]
        resp = self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_tokens)
        return str(resp.choices[0].message.content), resp.usage.prompt_tokens, resp.usage.completion_tokens

    def close(self) -> None:
        self.client.close()


Groups = dict[str, list[sv.Server]]  # side name -> its server processes


def _start(stack: contextlib.ExitStack, model: Path, check_model: Path, threads: int, batch: int, delay_ms: float,
           vl_settings: dict[str, object]) -> tuple[list[Chat], list[Chat], Groups]:
    """Both sides, each serving ``model`` and ``check_model``; (bench clients, check clients, process groups)."""
    vl, address = sv.start_unfragile("unfragile-vl-openai", "visionlanguage", model, vl_settings)
    stack.callback(vl.stop)
    vl_check, check_address = sv.start_unfragile("unfragile-vl-openai-check", "visionlanguage", check_model,
                                                 vl_settings)
    stack.callback(vl_check.stop)
    front, url = sv.start_unfragile_openai("unfragile-openai", address)
    stack.callback(front.stop)
    front_check, check_url = sv.start_unfragile_openai("unfragile-openai-check", check_address)
    stack.callback(front_check.stop)
    lit, port = sv.start_litserve("litserve-openai", "openai", model, threads, batch, delay_ms, check_model)
    stack.callback(lit.stop)
    deadline = time.monotonic() + sv.START_TIMEOUT_S
    for server, addr in ((vl, address), (vl_check, check_address)):
        sv.wait_grpc(server, addr, VL_SERVICE, deadline)
    for server, base in ((front, url), (front_check, check_url)):
        sv.wait_http(server, f"{base}/readyz", deadline)
    sv.wait_http(lit, f"http://127.0.0.1:{port}/health", deadline)
    sides = []
    for ours_url, lit_url in ((f"{url}/v1", f"http://127.0.0.1:{port}/v1"),
                              (f"{check_url}/v1", f"http://127.0.0.1:{port}/check/v1")):
        ours = Chat("unfragile", ours_url)
        theirs = Chat("litserve", lit_url, ours.model)  # LitServe has no /v1/models to ask
        stack.callback(ours.close)
        stack.callback(theirs.close)
        sides.append([ours, theirs])
    return sides[0], sides[1], {"unfragile": [vl, vl_check, front, front_check], "litserve": [lit]}


def alternate(sides: list[Chat], groups: Groups, images: list[bytes], max_tokens: int,
              ) -> tuple[dict[str, list[float]], dict[str, dict[int, Answer]]]:
    """One call per side per image, the first side flipping every image; seconds and answers per side."""
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    answers: dict[str, dict[int, Answer]] = {s.name: {} for s in sides}
    for i, png in enumerate(images):
        for side in (sides if i % 2 == 0 else sides[::-1]):
            with sv.alone(groups, side.name):
                t = time.perf_counter()
                answers[side.name][i] = side(png, max_tokens)
                times[side.name].append(time.perf_counter() - t)
    return times, answers


def check(sides: list[Chat], groups: Groups, images: list[bytes], max_tokens: int) -> dict[str, dict[Any, Answer]]:
    """Answers of the tiny Kosmos-2 (image-dependent), 8 concurrent clients so LitServe batches them."""
    plan = [[(i, 64), (8 + i, max_tokens)] for i in range(8)]
    out = {}
    for side in sides:
        def call(key: tuple[int, int], side: Chat = side) -> Answer:
            return side(images[key[0]], key[1])

        with sv.alone(groups, side.name):
            out[side.name] = cl.run_load(call, plan).answers
    return out


def _differ(answers: dict[str, dict[Any, Answer]]) -> list[str]:
    ours, theirs = answers["unfragile"], answers["litserve"]
    return [f"{k}: unfragile {ours[k]!r} vs litserve {theirs.get(k)!r}" for k in ours if theirs.get(k) != ours[k]]


def _result(times: dict[str, list[float]], answers: dict[str, dict[int, Answer]],
            checked: dict[str, dict[Any, Answer]], max_tokens: int) -> Result:
    ours, lit = times["unfragile"], times["litserve"]
    pairs = statistics.median(a / b for a, b in zip(ours, lit))
    ms = lambda xs: f"p50 {statistics.median(xs) * 1000:.0f} ms p90 {percentile(xs, 90) * 1000:.0f} ms"  # noqa: E731
    distinct = lambda a: len({text for text, _, _ in a["unfragile"].values()})  # noqa: E731
    bad = _differ(answers) + _differ(checked)
    n = len(answers["unfragile"]) + len(checked["unfragile"])
    notes = (f"{len(ours)} chat completions each through the openai SDK, alternating, 1 client, {max_tokens} greedy "
             f"tokens: unfragile frontend + VisionLanguage {ms(ours)}, LitServe OpenAISpec {ms(lit)}; median of "
             f"per-pair ratios {pairs:.2f}; same work: {n} identical requests ({len(answers['unfragile'])} bench-model "
             f"answers with the warm-up, {distinct(answers)} distinct text(s); {len(checked['unfragile'])} tiny-model "
             f"check answers from 8 concurrent clients, {distinct(checked)} distinct), "
             + (f"{len(bad)} differ" if bad else "all the same text and token counts") + f"; {LITSERVE_CANNOT}")
    r = Result(NAME, statistics.median(ours) / statistics.median(lit), TARGET, "lower", "ratio",
               "LitServe OpenAISpec chat completion p50, the same SDK request (one data-URL image)", notes)
    if bad:
        r.void = f"{len(bad)} of {n} answers differ from unfragile's, e.g. {bad[0]}"
    return r


def phase(model: Path, check_model: Path, threads: int, batch: int, delay_ms: float, vl_settings: dict[str, object],
          max_tokens: int, log: Callable[[str], None]) -> list[Result]:
    """Start both sides, check their answers, warm them, measure ``PAIRS`` alternating calls each, stop them."""
    from benchmarks.bench_vl import noise_images

    images = noise_images(WARM + PAIRS)  # those of openai.chat.p50_over_grpc_caption (the first 3: warm-up)
    with contextlib.ExitStack() as stack:
        t = time.perf_counter()
        sides, check_sides, groups = _start(stack, model, check_model, threads, batch, delay_ms, vl_settings)
        log(f"OpenAI-compatible servers up in {time.perf_counter() - t:.0f} s")
        checked = check(check_sides, groups, images[:16], max_tokens)  # another model: the same images do
        _, warm = alternate(sides, groups, images[:WARM], max_tokens)
        times, answers = alternate(sides, groups, images[WARM:WARM + PAIRS], max_tokens)
    for side, got in warm.items():
        answers[side].update({i - WARM: text for i, text in got.items()})  # keys -WARM..-1
    log(f"chat p50 unfragile {statistics.median(times['unfragile']) * 1000:.0f} ms, "
        f"LitServe {statistics.median(times['litserve']) * 1000:.0f} ms")
    return [_result(times, answers, checked, max_tokens)]
