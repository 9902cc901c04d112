"""Property-based fuzzing (hypothesis, bounded) of request validation and decoding.

1. Validators: random protobuf requests (every field, including huge/negative numbers,
   NaN/inf, unknown enum values, long and non-ASCII strings, random image bytes) go
   through each service's ``from_pb``: the only exceptions allowed are the typed domain
   errors the interceptor maps to precise codes (never a bare ValueError/TypeError/...).
2. Decoding: random bytes, and random mutations of valid requests, sent over gRPC as the
   raw body of every RPC of every service: never INTERNAL/UNKNOWN, and the server stays
   SERVING. No handler may log an unexpected error while this runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import UnfragileError
from services.core.client import health_status
from tests.reliability.relhelpers import SERVICE_NAMES, code_of, png, raw_method, rpc_kinds, truncated_png

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
WIRE = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

IMAGES = [png((16, 16)), png((64, 64)), truncated_png(), b"", b"\x89PNG\r\n\x1a\n", b"GIF89a"]
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, -0.0, 1.0, 1e-45, 7.5, 1e30]))
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "../../etc/passwd", "/abs", "a" * 5000,
                                                        "<grounding>", "kosmos2", "ddim", "\u2603" * 10]))


def scalar(field: Any) -> st.SearchStrategy[Any]:
    t = field.type
    if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return FLOATS
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t == FD.TYPE_STRING:
        return TEXT
    if t == FD.TYPE_BYTES:
        return st.one_of(st.sampled_from(IMAGES), st.binary(max_size=64))
    if t == FD.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 1000))
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 4, 8, 64]))
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 5]))
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return st.integers(-(2**63), 2**63 - 1)
    return st.integers(-(2**31), 2**31 - 1)


def message(cls: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """A random instance of a protobuf message class: any subset of fields, any values."""

    @st.composite
    def build(draw: Callable[..., Any]) -> Any:
        msg = cls()
        for field in cls.DESCRIPTOR.fields:
            if not draw(st.booleans()):
                continue
            if field.type == FD.TYPE_MESSAGE:
                if depth >= 3 or field.message_type.GetOptions().map_entry:
                    continue
                sub = message(GetMessageClass(field.message_type), depth + 1)
                if field.is_repeated:
                    for item in draw(st.lists(sub, max_size=3)):
                        getattr(msg, field.name).add().CopyFrom(item)
                else:
                    getattr(msg, field.name).CopyFrom(draw(sub))
            elif field.is_repeated:
                getattr(msg, field.name).extend(draw(st.lists(scalar(field), max_size=4)))
            else:
                setattr(msg, field.name, draw(scalar(field)))
        return msg

    return build()


def _only_domain_errors(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except UnfragileError:
        pass  # typed: maps to a precise status code with a message


# ----------------------------------------------------------------------------- validators
def _vl_validators() -> list[tuple[Any, Callable[[Any], Any]]]:
    from services.visionlanguage import types as t
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb

    limits = t.Limits(model_id="tiny", max_image_pixels=1_000_000, default_max_new_tokens=8, max_new_tokens_limit=16)
    return [(pb.CaptionRequest, lambda r: t.CaptionRequest.from_pb(r, limits)),
            (pb.EmbedRequest, lambda r: t.EmbedRequest.from_pb(r, limits)),
            (pb.SimilarityRequest, lambda r: t.SimilarityRequest.from_pb(r, limits)),
            (pb.TokenizeRequest, lambda r: t.TokenizeRequest.from_pb(r, limits)),
            (pb.AttentionMapRequest, lambda r: t.AttentionMapRequest.from_pb(r, limits)),
            (pb.JudgeRequest, lambda r: t.JudgeRequest.from_pb(r, limits))]


def _diffusion_validators() -> list[tuple[Any, Callable[[Any], Any]]]:
    from services.diffusion import types as t
    from unfragile.diffusion.v1 import diffusion_pb2 as pb

    limits = t.Limits(max_side=128, max_steps=8, max_image_pixels=1_000_000)
    return [(pb.TextToImageRequest, lambda r: t.GenerateRequest.from_txt2img(r, limits)),
            (pb.ImageToImageRequest, lambda r: t.GenerateRequest.from_img2img(r, limits)),
            (pb.InpaintRequest, lambda r: t.GenerateRequest.from_inpaint(r, limits)),
            (pb.StyleTransferRequest, lambda r: t.GenerateRequest.from_style(r, limits)),
            (pb.StartFineTuneRequest, lambda r: t.FineTuneRequest.from_pb(r, limits)),
            (pb.WatchJobRequest, lambda r: t.job_id_from_pb(r.job_id)),
            (pb.CancelJobRequest, lambda r: t.job_id_from_pb(r.job_id))]


def _graph_validators() -> list[tuple[Any, Callable[[Any], Any]]]:
    from services.matchgraph import types as t
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    def events(r: Any) -> None:
        for i, e in enumerate(r.events):
            t.event_from_pb(e).validate(f"events[{i}]")

    return [(pb.UpsertModelRequest, t.UpsertModel.from_pb), (pb.GetModelRequest, t.GetModel.from_pb),
            (pb.RankRequest, t.RankQuery.from_pb), (pb.CompareRequest, t.CompareQuery.from_pb),
            (pb.SearchRequest, t.SearchQuery.from_pb), (pb.RunProbesRequest, t.ProbeQuery.from_pb),
            (pb.RecordMatchesRequest, events)]


VALIDATORS = {"visionlanguage": _vl_validators, "diffusion": _diffusion_validators, "matchgraph": _graph_validators}


@pytest.mark.parametrize("service", list(VALIDATORS))
def test_validators_raise_only_typed_domain_errors(service) -> None:
    pairs = VALIDATORS[service]()
    strategy = st.one_of(*[st.tuples(st.just(fn), message(cls)) for cls, fn in pairs])

    @FUZZ
    @given(case=strategy)
    def run(case: tuple[Callable[[Any], Any], Any]) -> None:
        fn, request = case
        _only_domain_errors(lambda: fn(request))

    run()


# ----------------------------------------------------------------------------- wire decoding
@pytest.fixture(scope="module")
def live(servers, models_dir, tmp_path_factory) -> dict[str, Any]:
    from unfragile.diffusion.v1 import diffusion_pb2 as dpb
    from unfragile.matchgraph.v1 import matchgraph_pb2 as mpb
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as vpb

    vl = servers.vl(models_dir, default_max_new_tokens=2, max_new_tokens_limit=4, max_image_pixels=100_000,
                    judge_model=str(models_dir / "tiny-clip"))
    diff = servers.diffusion(models_dir, tmp_path_factory.mktemp("adapters"), max_side=64, max_steps=2,
                             max_images_per_request=1, max_finetune_steps=1, max_image_pixels=100_000)
    graph = servers.graph(tmp_path_factory.mktemp("graph") / "g.db")
    return {
        "visionlanguage": (vl, vpb.DESCRIPTOR.services_by_name["VisionLanguage"], vpb),
        "diffusion": (diff, dpb.DESCRIPTOR.services_by_name["Diffusion"], dpb),
        "matchgraph": (graph, mpb.DESCRIPTOR.services_by_name["MatchGraph"], mpb),
    }


class _ErrorLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("service", ["visionlanguage", "diffusion", "matchgraph"])
def test_random_bytes_on_every_rpc_never_internal(live, service) -> None:
    srv, desc, _pb = live[service]
    kinds = rpc_kinds(desc)
    methods = sorted(kinds)
    valid = {m.name: message(GetMessageClass(m.input_type)).map(lambda x: x.SerializeToString())
             for m in desc.methods}
    errors = _ErrorLogs()
    logging.getLogger().addHandler(errors)
    seen: dict[str, int] = {}
    ch = grpc.insecure_channel(srv.address)

    def body(method: str) -> st.SearchStrategy[bytes]:
        return st.one_of(st.binary(max_size=128), valid[method],
                         st.tuples(valid[method], st.binary(max_size=8)).map(lambda t: t[0] + t[1]),
                         valid[method].map(lambda b: b[: len(b) // 2]))

    @WIRE
    @given(data=st.data())
    def run(data: Any) -> None:
        method = data.draw(st.sampled_from(methods))
        payload = data.draw(body(method))
        kind = kinds[method]
        fn = raw_method(ch, f"/{desc.full_name}/{method}", kind)
        arg = iter([payload]) if kind[0] == "s" else payload
        code, details, _ = code_of(lambda: fn(arg, timeout=20))
        seen[code.name] = seen.get(code.name, 0) + 1
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (method, payload[:64], details)

    try:
        run()
    finally:
        logging.getLogger().removeHandler(errors)
        ch.close()
    unexpected = [r.getMessage() for r in errors.records if "unexpected error" in r.getMessage()]
    assert not unexpected, unexpected
    assert health_status(srv.address, SERVICE_NAMES[service]) == "SERVING"
    print(f"RELIABILITY fuzz wire {service}: {sorted(seen.items())}")
