"""Real gRPC traffic for the live Prometheus test: per service, the calls that make every
dashboard panel and alert have data, good ones and bad ones.

Each phase makes the same kinds of calls: Prometheus' rate() needs a counter or histogram
to *change* between two scrapes, and a series born in phase 1 only changes in phase 2.
Bad calls assert the exact status code, so the test also checks the error mapping the
"Errors by status code" panels show.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import grpc

from services.core.client import channel

Traffic = Callable[[str, int], None]


def _png(seed: int, size: int = 32) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (size, size), ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    for i in range(size):
        img.putpixel((i, (i * seed) % size), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def expect_code(code: grpc.StatusCode, call: Callable[[], object]) -> None:
    """Run a call that must fail with ``code`` (streams are drained so the error surfaces)."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            for _ in result:  # type: ignore[attr-defined]
                pass
    except grpc.RpcError as exc:
        assert exc.code() == code, f"expected {code.name}, got {exc.code().name}: {exc.details()}"
        return
    raise AssertionError(f"expected {code.name}, the call succeeded")


def visionlanguage(target: str, phase: int) -> None:
    from unfragile.common.v1 import common_pb2 as cpb
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
    from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

    bad = grpc.StatusCode.INVALID_ARGUMENT
    with channel(target) as ch:
        stub = pb_grpc.VisionLanguageStub(ch)
        image = cpb.Image(data=_png(phase), mime_type="image/png")
        req = pb.CaptionRequest(image=image, sampling=pb.SamplingParams(max_new_tokens=4, seed=phase))
        first = stub.Caption(req, timeout=60)
        assert first.usage.completion_tokens >= 1 or first.token_ids
        stub.Caption(req, timeout=60)  # same image: an image-feature cache hit
        chunks = list(stub.StreamCaption(req, timeout=60))
        assert chunks[-1].final.token_ids == first.token_ids  # same seed: same tokens, streamed or not
        stub.Embed(pb.EmbedRequest(images=[image], texts=["a small square"]), timeout=60)
        stub.ModelInfo(cpb.ModelInfoRequest(), timeout=30)
        expect_code(bad, lambda: stub.Caption(pb.CaptionRequest(), timeout=30))  # no image
        expect_code(bad, lambda: stub.Caption(pb.CaptionRequest(image=cpb.Image(data=b"not an image")), timeout=30))
        expect_code(grpc.StatusCode.NOT_FOUND,
                    lambda: stub.Caption(pb.CaptionRequest(image=image, model="no-such-model"), timeout=30))


def diffusion(target: str, phase: int) -> None:
    from unfragile.common.v1 import common_pb2 as cpb
    from unfragile.diffusion.v1 import diffusion_pb2 as pb
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

    bad = grpc.StatusCode.INVALID_ARGUMENT
    with channel(target) as ch:
        stub = pb_grpc.DiffusionStub(ch)
        params = pb.GenerationParams(prompt="a red cube", width=64, height=64, steps=2, seed=phase, preview_every=1)
        events = list(stub.TextToImage(pb.TextToImageRequest(params=params), timeout=120))
        assert events[-1].HasField("result") and events[-1].result.images
        image = cpb.Image(data=_png(phase, 64), mime_type="image/png")
        i2i = pb.GenerationParams(prompt="a blue cube", steps=2, seed=phase)
        list(stub.ImageToImage(pb.ImageToImageRequest(params=i2i, image=image), timeout=120))
        # A tiny LoRA fine-tune, watched to its end: step time, loss and the job-state gauge.
        examples = [pb.TrainingExample(image=cpb.Image(data=_png(phase + k, 64)), caption=f"square {k}")
                    for k in range(2)]
        job = stub.StartFineTune(pb.StartFineTuneRequest(adapter_name=f"live-{phase}", examples=examples, steps=2,
                                                         resolution=64, overwrite=True), timeout=60)
        updates = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=120))
        assert updates
        stub.ListAdapters(pb.ListAdaptersRequest(), timeout=30)
        stub.ModelInfo(cpb.ModelInfoRequest(), timeout=30)
        expect_code(bad, lambda: stub.TextToImage(pb.TextToImageRequest(params=pb.GenerationParams(prompt=" ")),
                                                  timeout=30))
        expect_code(bad, lambda: stub.TextToImage(
            pb.TextToImageRequest(params=pb.GenerationParams(prompt="x", width=7, height=64)), timeout=30))


def matchgraph(target: str, phase: int) -> None:
    from graph.seed_data import KOSMOS2_ID, SD_ID, SEED_MODELS
    from services.matchgraph.types import record_to_pb
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    with channel(target) as ch:
        stub = pb_grpc.MatchGraphStub(ch)
        for record in SEED_MODELS:
            stub.UpsertModel(pb.UpsertModelRequest(model=record_to_pb(record)), timeout=30)
        events = [pb.MatchEvent(event_id=f"live-{phase}-{i}", query="caption and draw images",
                                matched=[KOSMOS2_ID, SD_ID], compared=[KOSMOS2_ID, SD_ID][: 1 + i % 2])
                  for i in range(5)]
        reply = stub.RecordMatches(iter([pb.RecordMatchesRequest(events=events),
                                         pb.RecordMatchesRequest(events=events[:2])]), timeout=60)
        assert (reply.inserted, reply.duplicates) == (5, 2)
        stub.Compare(pb.CompareRequest(a=KOSMOS2_ID, b=SD_ID), timeout=60)
        stub.GetModel(pb.GetModelRequest(model=KOSMOS2_ID, explain=True), timeout=30)
        stub.Rank(pb.RankRequest(limit=5), timeout=30)
        stub.Search(pb.SearchRequest(query="image captioning", limit=5), timeout=60)
        stub.RunProbes(pb.RunProbesRequest(max_prompts=1, seed=phase), timeout=120)
        expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                    lambda: stub.Compare(pb.CompareRequest(a=KOSMOS2_ID, b=KOSMOS2_ID), timeout=30))
        expect_code(grpc.StatusCode.NOT_FOUND,
                    lambda: stub.GetModel(pb.GetModelRequest(model="no-such-model"), timeout=30))


def wait_for_reader(writer: str, reader: str, timeout: float = 60.0) -> None:
    """Until the MatchGraph reader serves the writer's snapshot (the gateway's ETags must then hold still)."""
    import time

    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    with channel(writer) as wch, channel(reader) as rch:
        want = pb_grpc.MatchGraphStub(wch).GetSnapshot(pb.GetSnapshotRequest(), timeout=30).snapshot_version
        deadline = time.monotonic() + timeout
        while pb_grpc.MatchGraphStub(rch).GetSnapshot(pb.GetSnapshotRequest(), timeout=30).snapshot_version != want:
            assert time.monotonic() < deadline, "the MatchGraph reader did not catch up with the writer"
            time.sleep(0.05)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:  # 3xx/4xx/5xx arrive as exceptions
        return exc.code, dict(exc.headers), exc.read()


def gateway(base_url: str, phase: int) -> None:
    """JSON API and pages over real HTTP (after matchgraph traffic has seeded the graph)."""
    from graph.seed_data import KOSMOS2_ID, SD_ID

    compare = f"{base_url}/api/v1/compare?a={KOSMOS2_ID}&b={SD_ID}"
    status, headers, _ = _get(compare)
    assert status == 200, status
    again, _, _ = _get(compare, {"If-None-Match": headers["etag"]})
    assert again == 304  # same snapshot: the client's copy is current
    assert _get(f"{base_url}/api/v1/search?q=image+captioning")[0] == 200
    assert _get(f"{base_url}/api/v1/models/{SD_ID}")[0] == 200
    assert _get(f"{base_url}/search?q=draw+pictures+{phase}")[0] == 200  # a page search: recorded as an event
    assert _get(f"{base_url}/compare/{KOSMOS2_ID}-vs-{SD_ID}")[0] == 200
    assert _get(f"{base_url}/api/v1/models/no-such-model")[0] == 404
    assert _get(f"{base_url}/api/v1/search")[0] in (400, 422)  # q is required


def openai(base_url: str, phase: int) -> None:
    """The OpenAI-compatible API over real HTTP: chat (unary and streamed), embeddings, images (unary,
    streamed with partial images, an inpainting edit), and bad calls with their exact statuses."""
    import base64
    import json
    import urllib.error
    import urllib.request

    def post(path: str, body: dict[str, object]) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{base_url}/v1{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    status, _, models = _get(f"{base_url}/v1/models")
    assert status == 200
    vl, sd = (m["id"] for m in json.loads(models)["data"])
    url = "data:image/png;base64," + base64.b64encode(_png(phase)).decode()
    image = {"type": "image_url", "image_url": {"url": url}}
    chat = {"model": vl, "messages": [{"role": "user", "content": [image]}], "max_tokens": 4, "seed": phase}
    assert post("/chat/completions", chat)[0] == 200
    status, body = post("/chat/completions", {**chat, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200 and body.rstrip().endswith(b"data: [DONE]")
    assert post("/embeddings", {"model": vl, "input": ["a small square", image]})[0] == 200
    gen = {"prompt": "a red cube", "size": "64x64", "seed": phase, "num_inference_steps": 2}
    assert post("/images/generations", gen)[0] == 200
    status, body = post("/images/generations", {**gen, "stream": True, "partial_images": 1})
    assert status == 200 and b"image_generation.completed" in body
    boundary = "livetraffic"
    parts = [(name, f"{name}.png", data) for name, data in (("image", _png(phase, 64)), ("mask", _mask()))]
    form = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{n}\"; filename=\"{f}\"\r\n"
                    f"Content-Type: image/png\r\n\r\n".encode() + d + b"\r\n" for n, f, d in parts)
    form += f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na hole\r\n" \
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"num_inference_steps\"\r\n\r\n2\r\n" \
            f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{base_url}/v1/images/edits", data=form,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200
    assert post("/chat/completions", {**chat, "messages": [{"role": "user", "content": "no image"}]})[0] == 400
    assert post("/chat/completions", {**chat, "model": "no-such-model"})[0] == 404
    assert post("/images/generations", {**gen, "model": sd, "size": "60x64"})[0] == 400  # the service's own check


def _mask(size: int = 64) -> bytes:
    from PIL import Image

    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (16, 16, 48, 48))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


TRAFFIC: dict[str, Traffic] = {"visionlanguage": visionlanguage, "diffusion": diffusion, "matchgraph": matchgraph,
                               "gateway": gateway, "openai": openai}
