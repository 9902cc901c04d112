"""Malformed and hostile input, table-driven per RPC, against real servers.

Guarantee: every bad request gets the precise status code and a message that says what
to change (never INTERNAL, never a dropped stream); the server keeps serving, and a good
request running at the same time is not affected (same result as when run alone).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import grpc
import pytest

from services.core.client import health_status
from tests.reliability.relhelpers import (
    SERVICE_NAMES,
    code_of,
    png,
    png_with_header_size,
    raw_method,
    truncated_png,
    zlib_bomb_png,
)
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as dpb
from unfragile.diffusion.v1 import diffusion_pb2_grpc as dgrpc
from unfragile.matchgraph.v1 import matchgraph_pb2 as mpb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as mgrpc
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as vpb
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as vgrpc

C = grpc.StatusCode
INVALID, NOT_FOUND, DENIED = C.INVALID_ARGUMENT, C.NOT_FOUND, C.PERMISSION_DENIED
BIG = "x" * 100_000
NAN, INF = float("nan"), float("inf")
MAX_MESSAGE = 1024 * 1024  # the servers below accept at most 1 MiB per message


def img(data: bytes) -> cpb.Image:
    return cpb.Image(data=data, mime_type="image/png")


GOOD = img(png())


@pytest.fixture(scope="module")
def env(servers, models_dir, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("data-root")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(png())
    (root / "ok").mkdir()
    (root / "ok" / "a.png").write_bytes(png())
    os.symlink(outside, root / "escape")  # a folder link leaving the data root
    (root / "sneaky").mkdir()
    os.symlink(outside / "secret.png", root / "sneaky" / "b.png")  # a file link leaving it
    (root / "empty").mkdir()
    vl = servers.vl(models_dir, max_image_pixels=1_000_000, max_message_bytes=MAX_MESSAGE)
    diff = servers.diffusion(models_dir, tmp_path_factory.mktemp("adapters"), data_root=root, max_side=256,
                             max_image_pixels=1_000_000, max_message_bytes=MAX_MESSAGE)
    graph = servers.graph(tmp_path_factory.mktemp("graph") / "g.db", max_message_bytes=MAX_MESSAGE,
                          max_batch_events=100)
    gstub = mgrpc.MatchGraphStub(servers.channel(graph))
    from graph.seed_data import SEED_MODELS
    from services.matchgraph.types import record_to_pb

    for m in SEED_MODELS:
        gstub.UpsertModel(mpb.UpsertModelRequest(model=record_to_pb(m)), timeout=30)
    return {"vl": vl, "diffusion": diff, "graph": graph,
            "v": vgrpc.VisionLanguageStub(servers.channel(vl)), "d": dgrpc.DiffusionStub(servers.channel(diff)),
            "g": gstub}


def cap(**kw: Any) -> vpb.CaptionRequest:
    kw.setdefault("image", GOOD)
    return vpb.CaptionRequest(**kw)


def samp(**kw: Any) -> vpb.SamplingParams:
    return vpb.SamplingParams(**kw)


VL_CASES: list[tuple[str, str, Any, C, str]] = [
    ("no image", "Caption", vpb.CaptionRequest(), INVALID, "image is missing"),
    ("empty image", "Caption", cap(image=img(b"")), INVALID, "image is missing"),
    ("not an image", "Caption", cap(image=img(b"GIF89a garbage")), INVALID, "not a decodable image"),
    ("truncated png", "Caption", cap(image=img(truncated_png())), INVALID, "truncated or corrupt"),
    ("pixel bomb by header", "Caption", cap(image=img(png_with_header_size(2000, 2000))), INVALID,
     "over the limit of 1000000"),
    ("giant header", "Caption", cap(image=img(png_with_header_size(60000, 60000))), INVALID, "decompression bomb"),
    ("zlib bomb", "Caption", cap(image=img(zlib_bomb_png())), INVALID, "over the limit"),
    ("unknown enum mode", "Caption", cap(mode=99), INVALID, "unknown mode"),
    ("100k prompt", "Caption", cap(mode=vpb.CAPTION_MODE_PROMPT, prompt=BIG), INVALID, "limit is 4000"),
    ("prompt in brief mode", "Caption", cap(prompt="hi"), INVALID, "use CAPTION_MODE_PROMPT"),
    ("100k language", "Caption", cap(language=BIG), INVALID, "use one of"),
    ("unknown model", "Caption", cap(model="../../etc/passwd"), NOT_FOUND, "is not served here"),
    ("nan temperature", "Caption", cap(sampling=samp(temperature=NAN)), INVALID, "temperature"),
    ("inf temperature", "Caption", cap(sampling=samp(temperature=INF)), INVALID, "temperature"),
    ("negative temperature", "Caption", cap(sampling=samp(temperature=-1)), INVALID, "temperature"),
    ("denormal temperature", "Caption", cap(sampling=samp(temperature=1e-45)), INVALID, "use 0 for greedy"),
    ("nan top_p", "Caption", cap(sampling=samp(temperature=1, top_p=NAN)), INVALID, "top_p"),
    ("huge max_new_tokens", "Caption", cap(sampling=samp(max_new_tokens=2**32 - 1)), INVALID, "lower it"),
    ("huge num_beams", "Caption", cap(sampling=samp(num_beams=2**32 - 1)), INVALID, "num_beams"),
    ("top_k without sampling", "Caption", cap(sampling=samp(top_k=2**32 - 1)), INVALID, "set temperature > 0"),
    ("too many stops", "Caption", cap(sampling=samp(stop=list("abcde"))), INVALID, "at most 4"),
    ("100k stop", "Caption", cap(sampling=samp(stop=[BIG])), INVALID, "1-64 characters"),
    ("17 phrases", "Caption", cap(mode=vpb.CAPTION_MODE_PHRASES, phrases=["a"] * 17), INVALID, "1-16 phrases"),
    ("tag in phrase", "Caption", cap(mode=vpb.CAPTION_MODE_PHRASES, phrases=["<object>"]), INVALID, "without '<'"),
    ("prompt over context", "StreamCaption", cap(mode=vpb.CAPTION_MODE_PROMPT, prompt="word " * 790), INVALID,
     "over the model context"),
    ("nothing to embed", "Embed", vpb.EmbedRequest(), INVALID, "nothing to embed"),
    ("33 texts", "Embed", vpb.EmbedRequest(texts=["a"] * 33), INVALID, "at most 32"),
    ("blank text", "Embed", vpb.EmbedRequest(texts=["  "]), INVALID, "non-empty"),
    ("100k text", "Embed", vpb.EmbedRequest(texts=[BIG]), INVALID, "limit is 4000"),
    ("bomb image embed", "Embed", vpb.EmbedRequest(images=[img(zlib_bomb_png())]), INVALID, "over the limit"),
    ("no images", "Similarity", vpb.SimilarityRequest(texts=["a"]), INVALID, "images is empty"),
    ("no texts", "Similarity", vpb.SimilarityRequest(images=[GOOD]), INVALID, "texts is empty"),
    ("nothing to tokenize", "Tokenize", vpb.TokenizeRequest(), INVALID, "nothing to tokenize"),
    ("nan box", "Tokenize", vpb.TokenizeRequest(boxes=[cpb.Box(x_min=NAN, x_max=1, y_max=1)]), INVALID, "[0, 1]"),
    ("inverted box", "Tokenize", vpb.TokenizeRequest(boxes=[cpb.Box(x_min=0.9, x_max=0.1, y_max=1)]), INVALID,
     "x_max > x_min"),
    ("location cell 9999", "Tokenize", vpb.TokenizeRequest(location_tokens=["<patch_index_9999><patch_index_0000>"]),
     INVALID, "0..1023"),
    ("100k location token", "Tokenize", vpb.TokenizeRequest(location_tokens=[BIG]), INVALID, "must look like"),
    ("100k text", "Tokenize", vpb.TokenizeRequest(text=BIG), INVALID, "limit is 4000"),
    ("no caption", "AttentionMap", vpb.AttentionMapRequest(), INVALID, "caption is missing"),
    ("beams", "AttentionMap", vpb.AttentionMapRequest(caption=cap(sampling=samp(num_beams=2))), INVALID,
     "num_beams"),
]


def gp(**kw: Any) -> dpb.GenerationParams:
    kw.setdefault("prompt", "a cat")
    kw.setdefault("width", 64)
    kw.setdefault("height", 64)
    kw.setdefault("steps", 1)
    return dpb.GenerationParams(**kw)


def t2i(**kw: Any) -> dpb.TextToImageRequest:
    return dpb.TextToImageRequest(params=gp(**kw))


def ft(**kw: Any) -> dpb.StartFineTuneRequest:
    kw.setdefault("adapter_name", "bad-input")
    return dpb.StartFineTuneRequest(**kw)


EX = [dpb.TrainingExample(image=GOOD, caption="a")]

DIFFUSION_CASES: list[tuple[str, str, Any, C, str]] = [
    ("empty prompt", "TextToImage", t2i(prompt=" "), INVALID, "prompt is empty"),
    ("100k prompt", "TextToImage", t2i(prompt=BIG), INVALID, "limit is 2000"),
    ("100k negative prompt", "TextToImage", t2i(negative_prompt=BIG), INVALID, "limit is 2000"),
    ("width not multiple of 8", "TextToImage", t2i(width=65), INVALID, "multiple of 8"),
    ("huge width", "TextToImage", t2i(width=2**32 - 8), INVALID, "between 8 and 256"),
    ("huge steps", "TextToImage", t2i(steps=2**32 - 1), INVALID, "steps"),
    ("nan guidance", "TextToImage", t2i(guidance_scale=NAN), INVALID, "guidance_scale"),
    ("inf guidance", "TextToImage", t2i(guidance_scale=INF), INVALID, "guidance_scale"),
    ("negative guidance", "TextToImage", t2i(guidance_scale=-1), INVALID, "guidance_scale"),
    ("unknown scheduler", "TextToImage", t2i(scheduler="plms; rm -rf /"), INVALID, "use one of"),
    ("100k scheduler", "TextToImage", t2i(scheduler=BIG), INVALID, "use one of"),
    ("huge num_images", "TextToImage", t2i(num_images=2**32 - 1), INVALID, "num_images"),
    ("priority", "TextToImage", t2i(priority=-(2**31)), INVALID, "priority"),
    ("unknown preview mode", "TextToImage", t2i(preview_mode=99), INVALID, "PreviewMode"),
    ("adapter traversal", "TextToImage", t2i(adapters=[dpb.AdapterWeight(name="../../etc/passwd")]), INVALID,
     "no paths"),
    ("adapter absolute", "TextToImage", t2i(adapters=[dpb.AdapterWeight(name="/abs")]), INVALID, "no paths"),
    ("adapter hidden", "TextToImage", t2i(adapters=[dpb.AdapterWeight(name=".jobs")]), INVALID, "no paths"),
    ("adapter missing", "TextToImage", t2i(adapters=[dpb.AdapterWeight(name="nope")]), NOT_FOUND, "ListAdapters"),
    ("adapter nan weight", "TextToImage", t2i(adapters=[dpb.AdapterWeight(name="a", weight=NAN)]), INVALID,
     "weight"),
    ("adapter twice", "TextToImage", t2i(adapters=[dpb.AdapterWeight(name="a")] * 2), INVALID, "twice"),
    ("truncated image", "ImageToImage", dpb.ImageToImageRequest(params=gp(), image=img(truncated_png())), INVALID,
     "truncated or corrupt"),
    ("bomb image", "ImageToImage", dpb.ImageToImageRequest(params=gp(), image=img(zlib_bomb_png())), INVALID,
     "over the limit"),
    ("nan strength", "ImageToImage", dpb.ImageToImageRequest(params=gp(), image=GOOD, strength=NAN), INVALID,
     "strength"),
    ("zero strength", "ImageToImage", dpb.ImageToImageRequest(params=gp(), image=GOOD, strength=0), INVALID,
     "strength"),
    ("odd image size", "ImageToImage", dpb.ImageToImageRequest(params=gp(width=0, height=0),
                                                               image=img(png((61, 64)))), INVALID, "multiple of 8"),
    ("mask mismatch", "Inpaint", dpb.InpaintRequest(params=gp(width=0, height=0), image=GOOD,
                                                    mask=img(png((32, 32)))), INVALID, "same size"),
    ("no mask", "Inpaint", dpb.InpaintRequest(params=gp(width=0, height=0), image=GOOD), INVALID, "mask is empty"),
    ("style weight", "StyleTransfer", dpb.StyleTransferRequest(params=gp(), content_image=GOOD, style_image=GOOD,
                                                              style_weight=1.5), INVALID, "style_weight"),
    ("no style image", "StyleTransfer", dpb.StyleTransferRequest(params=gp(), content_image=GOOD), INVALID,
     "style_image is empty"),
    ("name traversal", "StartFineTune", ft(adapter_name="../evil", examples=EX), INVALID, "no paths"),
    ("name absolute", "StartFineTune", ft(adapter_name="/tmp/evil", examples=EX), INVALID, "no paths"),
    ("name 100k", "StartFineTune", ft(adapter_name=BIG, examples=EX), INVALID, "no paths"),
    ("empty set", "StartFineTune", ft(), INVALID, "training set is empty"),
    ("both sources", "StartFineTune", ft(examples=EX, data_folder="ok"), INVALID, "not both"),
    ("folder dotdot", "StartFineTune", ft(data_folder="../outside"), DENIED, "without '..'"),
    ("folder absolute", "StartFineTune", ft(data_folder="/etc"), DENIED, "relative path"),
    ("folder symlink out", "StartFineTune", ft(data_folder="escape"), DENIED, "leaves the data root"),
    ("file symlink out", "StartFineTune", ft(data_folder="sneaky"), DENIED, "outside the data root"),
    ("folder missing", "StartFineTune", ft(data_folder="nope"), NOT_FOUND, "does not exist"),
    ("folder empty", "StartFineTune", ft(data_folder="empty"), INVALID, "training set is empty"),
    ("huge steps", "StartFineTune", ft(examples=EX, steps=2**32 - 1), INVALID, "steps"),
    ("nan lr", "StartFineTune", ft(examples=EX, learning_rate=NAN), INVALID, "learning_rate"),
    ("huge rank", "StartFineTune", ft(examples=EX, rank=10**6), INVALID, "rank"),
    ("bad resolution", "StartFineTune", ft(examples=EX, resolution=12), INVALID, "multiple of 8"),
    ("truncated example", "StartFineTune", ft(examples=[dpb.TrainingExample(image=img(truncated_png()))]),
     INVALID, "truncated or corrupt"),
    ("empty job id", "WatchJob", dpb.WatchJobRequest(job_id=" "), INVALID, "job_id is empty"),
    ("unknown job", "WatchJob", dpb.WatchJobRequest(job_id="gen-nope"), NOT_FOUND, "no job"),
    ("100k job id", "CancelJob", dpb.CancelJobRequest(job_id=BIG), NOT_FOUND, "no job"),
]


def ev(**kw: Any) -> mpb.MatchEvent:
    kw.setdefault("event_id", "e1")
    kw.setdefault("query", "caption images")
    kw.setdefault("matched", ["kosmos-2-patch14-224"])
    return mpb.MatchEvent(**kw)


def rm(*events: mpb.MatchEvent) -> Any:
    return iter([mpb.RecordMatchesRequest(events=list(events))])


def rec(**kw: Any) -> mpb.UpsertModelRequest:
    base: dict[str, Any] = dict(id="m1", name="M1", type=mpb.MODEL_TYPE_MODEL)
    base.update(kw)
    return mpb.UpsertModelRequest(model=mpb.ModelRecord(**base))


def sig(value: float, **kw: Any) -> mpb.Signal:
    base: dict[str, Any] = dict(kind="stars", value=value, source="https://example.org", observed_at="2026-11-01")
    base.update(kw)
    return mpb.Signal(**base)


GRAPH_CASES: list[tuple[str, str, Any, C, str]] = [
    ("empty event id", "RecordMatches", rm(ev(event_id="")), INVALID, "idempotency key"),
    ("100k query", "RecordMatches", rm(ev(query=BIG)), INVALID, "1..1000 characters"),
    ("no matched", "RecordMatches", rm(ev(matched=[])), INVALID, "at least one matched"),
    ("unknown model", "RecordMatches", rm(ev(matched=["../../etc"])), INVALID, "not in the match graph"),
    ("100k model name", "RecordMatches", rm(ev(matched=[BIG])), INVALID, "not in the match graph"),
    ("clicked not matched", "RecordMatches", rm(ev(clicked=["stable-diffusion"])), INVALID, "not in matched"),
    ("negative timestamp", "RecordMatches", rm(ev(timestamp_ms=-1)), INVALID, "timestamp_ms"),
    ("batch over limit", "RecordMatches", rm(*[ev(event_id=f"b{i}") for i in range(101)]), INVALID,
     "at most 100"),
    ("no model", "UpsertModel", mpb.UpsertModelRequest(), INVALID, "model is missing"),
    ("id traversal", "UpsertModel", rec(id="../x"), INVALID, "lowercase slug"),
    ("unknown type", "UpsertModel", rec(type=99), INVALID, "MODEL_TYPE_MODEL"),
    ("unspecified type", "UpsertModel", rec(type=0), INVALID, "MODEL_TYPE_MODEL"),
    ("unknown tier", "UpsertModel", rec(pricing=mpb.Pricing(tier=99)), INVALID, "PricingTier"),
    ("nan signal", "UpsertModel", rec(adoption=[sig(NAN)]), INVALID, "finite number"),
    ("inf signal", "UpsertModel", rec(adoption=[sig(INF)]), INVALID, "finite number"),
    ("negative signal", "UpsertModel", rec(adoption=[sig(-1)]), INVALID, "finite number"),
    ("bad date", "UpsertModel", rec(adoption=[sig(1, observed_at="yesterday")]), INVALID, "ISO date"),
    ("nan quality", "UpsertModel", rec(external_quality=[mpb.QualityEvidence(
        benchmark="b", score=NAN, source="s", observed_at="2026-11-01")]), INVALID, "0..1"),
    ("nan price", "UpsertModel", rec(pricing=mpb.Pricing(tier=1, plans=[mpb.PricingPlan(
        name="p", usd_per_month=NAN)])), INVALID, "usd_per_month"),
    ("100k name", "UpsertModel", rec(name=BIG), INVALID, "limit is 200"),
    ("bad endpoint", "UpsertModel", rec(serving_endpoint="http://evil"), INVALID, "serving_endpoint"),
    ("alias theft", "UpsertModel", rec(aliases=["Kosmos-2"]), INVALID, "already belongs"),
    ("empty model", "GetModel", mpb.GetModelRequest(model=" "), INVALID, "model is empty"),
    ("unknown model", "GetModel", mpb.GetModelRequest(model="gpt-17"), NOT_FOUND, "UpsertModel"),
    ("100k model", "GetModel", mpb.GetModelRequest(model=BIG), NOT_FOUND, "UpsertModel"),
    ("limit", "Rank", mpb.RankRequest(limit=1001), INVALID, "over 1000"),
    ("100k capability", "Rank", mpb.RankRequest(capability=BIG), INVALID, "512 characters"),
    ("same model", "Compare", mpb.CompareRequest(a="kosmos2", b="kosmos-2-patch14-224"), INVALID, "same model"),
    ("missing b", "Compare", mpb.CompareRequest(a="kosmos2"), INVALID, "both a and b"),
    ("unknown a", "Compare", mpb.CompareRequest(a=BIG, b="kosmos2"), NOT_FOUND, "UpsertModel"),
    ("empty query", "Search", mpb.SearchRequest(query=" "), INVALID, "query is empty"),
    ("long query", "Search", mpb.SearchRequest(query="a" * 513), INVALID, "limit is 512"),
    ("limit", "Search", mpb.SearchRequest(query="a", limit=101), INVALID, "over 100"),
    ("max prompts", "RunProbes", mpb.RunProbesRequest(max_prompts=65), INVALID, "over 64"),
    ("seed", "RunProbes", mpb.RunProbesRequest(seed=2**63), INVALID, "31 bits"),
    ("no model services", "RunProbes", mpb.RunProbesRequest(), C.FAILED_PRECONDITION, "visionlanguage_target"),
]


def _call(stub: Any, method: str, request: Any) -> tuple[C, str, Any]:
    return code_of(lambda: getattr(stub, method)(request, timeout=60))


def _check(stub: Any, method: str, request: Any, code: C, text: str) -> None:
    got, details, _ = _call(stub, method, request)
    assert (got, text in details) == (code, True), (got, details[:300])
    assert len(details) <= 2100  # bounded, whatever the input size


@pytest.mark.parametrize("name,method,request_,code,text", VL_CASES, ids=[c[0] + "-" + c[1] for c in VL_CASES])
def test_visionlanguage_bad_input(env, name, method, request_, code, text) -> None:
    _check(env["v"], method, request_, code, text)


@pytest.mark.parametrize("name,method,request_,code,text", DIFFUSION_CASES,
                         ids=[c[0] + "-" + c[1] for c in DIFFUSION_CASES])
def test_diffusion_bad_input(env, name, method, request_, code, text) -> None:
    _check(env["d"], method, request_, code, text)


@pytest.mark.parametrize("name,method,request_,code,text", GRAPH_CASES, ids=[c[0] + "-" + c[1] for c in GRAPH_CASES])
def test_matchgraph_bad_input(env, name, method, request_, code, text) -> None:
    _check(env["g"], method, request_, code, text)


@pytest.mark.parametrize("service,path", [
    ("vl", "/unfragile.visionlanguage.v1.VisionLanguage/Caption"),
    ("diffusion", "/unfragile.diffusion.v1.Diffusion/StartFineTune"),
    ("graph", "/unfragile.matchgraph.v1.MatchGraph/UpsertModel"),
])
def test_oversize_message_refused_by_the_server(env, service, path) -> None:
    """A 2 MiB request against a 1 MiB server limit: RESOURCE_EXHAUSTED, server unharmed."""
    with grpc.insecure_channel(env[service].address, options=[("grpc.max_send_message_length", -1)]) as ch:
        code, details, _ = code_of(lambda: raw_method(ch, path, "uu")(b"\x0a" + b"\xff" * (2 * MAX_MESSAGE),
                                                                      timeout=30))
    assert code == C.RESOURCE_EXHAUSTED and "larger than max" in details


INVALID_UTF8 = [  # (path, kind, bytes): a string field whose bytes are not UTF-8
    ("/unfragile.visionlanguage.v1.VisionLanguage/Caption", "uu", b"\x1a\x02\xff\xfe"),  # prompt
    ("/unfragile.visionlanguage.v1.VisionLanguage/Embed", "uu", b"\x12\x03a\xc3\x28"),  # texts[0]
    ("/unfragile.diffusion.v1.Diffusion/TextToImage", "us", b"\x0a\x04\x0a\x02\xc0\xaf"),  # params.prompt
    ("/unfragile.diffusion.v1.Diffusion/WatchJob", "us", b"\x0a\x01\x80"),  # job_id
    ("/unfragile.matchgraph.v1.MatchGraph/Search", "uu", b"\x0a\x02\xed\xa0"),  # query (a lone surrogate)
    ("/unfragile.matchgraph.v1.MatchGraph/RecordMatches", "su", b"\x0a\x05\x0a\x03\xf8\x88\x80"),  # event_id
]


@pytest.mark.parametrize("path,kind,data", INVALID_UTF8, ids=[p.rsplit("/", 1)[1] for p, _, _ in INVALID_UTF8])
def test_invalid_utf8_in_string_fields_is_invalid_argument(env, path, kind, data) -> None:
    target = {"visionlanguage": "vl", "diffusion": "diffusion", "matchgraph": "graph"}[path.split(".")[1]]
    with grpc.insecure_channel(env[target].address) as ch:
        fn = raw_method(ch, path, kind)
        code, details, _ = code_of(lambda: fn(iter([data]) if kind[0] == "s" else data, timeout=30))
    assert code == C.INVALID_ARGUMENT, (code, details)
    assert "not a valid protobuf message" in details and "UTF-8" in details


def test_duplicate_and_replayed_event_ids_count_once(env) -> None:
    g = env["g"]
    first = g.RecordMatches(rm(ev(event_id="dup-1"), ev(event_id="dup-1"), ev(event_id="dup-2")), timeout=30)
    assert (first.received, first.inserted, first.duplicates) == (3, 2, 1)
    replay = g.RecordMatches(rm(ev(event_id="dup-1"), ev(event_id="dup-2")), timeout=30)
    assert (replay.inserted, replay.duplicates) == (0, 2)
    # Two clients replaying the same batch at the same moment: still stored once.
    batch = [ev(event_id=f"race-{i}") for i in range(100)]
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(g.RecordMatches(rm(*batch), timeout=60)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.inserted for r in results) == [0, 100] and sum(r.duplicates for r in results) == 100
    card = g.GetModel(mpb.GetModelRequest(model="kosmos2"), timeout=30).scores
    assert card.times_matched == 102


def test_bad_input_does_not_leak_into_concurrent_good_requests(env) -> None:
    """A good caption computed alone equals the same caption computed while the whole bad
    table is thrown at the same server; and every server is still SERVING afterwards."""
    v = env["v"]
    good = cap(mode=vpb.CAPTION_MODE_PROMPT, prompt="a photo of", grounding=False,
               sampling=samp(max_new_tokens=24, seed=5))
    alone = v.Caption(good, timeout=60)
    stop = threading.Event()
    seen: list[Any] = []

    def keep_asking() -> None:
        while not stop.is_set():
            seen.append(v.Caption(good, timeout=60))

    t = threading.Thread(target=keep_asking)
    t.start()
    try:
        for _, method, request, code, text in VL_CASES:
            _check(v, method, request, code, text)
    finally:
        stop.set()
        t.join(60)
    assert seen and all(r.text == alone.text and r.token_ids == alone.token_ids for r in seen)
    for key, name in (("vl", "visionlanguage"), ("diffusion", "diffusion"), ("graph", "matchgraph")):
        assert health_status(env[key].address, SERVICE_NAMES[name]) == "SERVING"


WRONG_TYPES = [  # a well-formed message of another type, sent as the request of an RPC
    ("vl", "/unfragile.visionlanguage.v1.VisionLanguage/Caption", "uu",
     mpb.ModelRecord(id="x", name="y", aliases=["z"] * 3).SerializeToString()),
    ("vl", "/unfragile.visionlanguage.v1.VisionLanguage/Tokenize", "uu",
     dpb.GenerationParams(prompt="a", width=64, steps=3, guidance_scale=2.0).SerializeToString()),
    ("diffusion", "/unfragile.diffusion.v1.Diffusion/TextToImage", "us",
     vpb.CaptionRequest(image=GOOD, prompt="p", phrases=["a"]).SerializeToString()),
    ("diffusion", "/unfragile.diffusion.v1.Diffusion/StartFineTune", "uu",
     mpb.RankRequest(capability="c", limit=5, offset=2).SerializeToString()),
    ("graph", "/unfragile.matchgraph.v1.MatchGraph/UpsertModel", "uu",
     vpb.CaptionRequest(image=GOOD, mode=3, prompt="p").SerializeToString()),
    ("graph", "/unfragile.matchgraph.v1.MatchGraph/RecordMatches", "su",
     dpb.StartFineTuneRequest(adapter_name="a", steps=3).SerializeToString()),
]


@pytest.mark.parametrize("target,path,kind,data", WRONG_TYPES, ids=[w[1].rsplit("/", 1)[1] for w in WRONG_TYPES])
def test_wrong_message_type_is_a_client_error(env, target, path, kind, data) -> None:
    with grpc.insecure_channel(env[target].address) as ch:
        fn = raw_method(ch, path, kind)
        code, details, _ = code_of(lambda: fn(iter([data]) if kind[0] == "s" else data, timeout=30))
    assert code == C.INVALID_ARGUMENT, (code, details)
    assert details
