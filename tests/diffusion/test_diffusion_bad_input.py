"""Bad input gets INVALID_ARGUMENT / NOT_FOUND with an actionable message; the server keeps serving."""

from __future__ import annotations

import grpc
import pytest
from PIL import Image

from tests.diffusion.conftest import params, png, result_of
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb

IMG = png(Image.new("RGB", (64, 64), (200, 30, 30)))
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def _err(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)
    return info.value


@pytest.mark.parametrize("kw, code, words", [
    (dict(prompt="   "), INVALID, "prompt is empty"),
    (dict(width=65), INVALID, "multiple of 8"),
    (dict(height=4096), INVALID, "between 8 and 1024"),
    (dict(steps=1000), INVALID, "steps 1000"),
    (dict(guidance_scale=99.0), INVALID, "guidance_scale"),
    (dict(scheduler="k_lms_magic"), INVALID, "ddim, euler, euler-a, dpm++"),
    (dict(num_images=99), INVALID, "num_images"),
    (dict(adapters=[pb.AdapterWeight(name="../../etc/passwd")]), INVALID, "no paths"),
    (dict(adapters=[pb.AdapterWeight(name="does-not-exist")]), NOT_FOUND, "ListAdapters"),
    (dict(priority=99), INVALID, "priority"),
])
def test_text_to_image_rejects(stub, kw, code, words) -> None:
    err = _err(lambda: stub.TextToImage(pb.TextToImageRequest(params=params(**kw)), timeout=30))
    assert err.code() == code
    assert words in err.details()


def test_image_rpcs_reject_bad_images(stub) -> None:
    p = params()
    cases = [
        (lambda: stub.ImageToImage(pb.ImageToImageRequest(params=p), timeout=30), "image is empty"),
        (lambda: stub.ImageToImage(pb.ImageToImageRequest(params=p, image=cpb.Image(data=b"not an image")),
                                   timeout=30), "not a decodable image"),
        (lambda: stub.ImageToImage(pb.ImageToImageRequest(params=pb.GenerationParams(prompt="x", steps=2),
                                                          image=cpb.Image(data=png(Image.new("RGB", (60, 64))))),
                                   timeout=30), "multiple of 8"),
        (lambda: stub.ImageToImage(pb.ImageToImageRequest(params=p, image=cpb.Image(data=IMG), strength=1.5),
                                   timeout=30), "strength"),
        (lambda: stub.Inpaint(pb.InpaintRequest(params=p, image=cpb.Image(data=IMG),
                                                mask=cpb.Image(data=png(Image.new("L", (32, 32))))), timeout=30),
         "mask is 32x32 but image is 64x64"),
        (lambda: stub.Inpaint(pb.InpaintRequest(params=p, image=cpb.Image(data=IMG)), timeout=30), "mask is empty"),
        (lambda: stub.StyleTransfer(pb.StyleTransferRequest(params=p, content_image=cpb.Image(data=IMG),
                                                            style_image=cpb.Image(data=b"\x89PNG broken")),
                                    timeout=30), "style_image"),
        (lambda: stub.StyleTransfer(pb.StyleTransferRequest(params=p, content_image=cpb.Image(data=IMG),
                                                            style_image=cpb.Image(data=IMG), style_weight=2),
                                    timeout=30), "style_weight"),
    ]
    for call, words in cases:
        err = _err(call)
        assert err.code() == INVALID, (words, err.details())
        assert words in err.details()


def test_finetune_and_jobs_reject(stub) -> None:
    example = pb.TrainingExample(image=cpb.Image(data=IMG), caption="a red square")
    cases = [
        (pb.StartFineTuneRequest(adapter_name="ok"), INVALID, "training set is empty"),
        (pb.StartFineTuneRequest(adapter_name="a/b", examples=[example]), INVALID, "no paths"),
        (pb.StartFineTuneRequest(adapter_name="ok", examples=[example], steps=10**6), INVALID, "steps"),
        (pb.StartFineTuneRequest(adapter_name="ok", examples=[pb.TrainingExample(image=cpb.Image(data=b"x"))]),
         INVALID, "examples[0].image"),
        (pb.StartFineTuneRequest(adapter_name="ok", data_folder="../outside"), grpc.StatusCode.PERMISSION_DENIED,
         "without '..'"),
        (pb.StartFineTuneRequest(adapter_name="ok", data_folder="missing"), NOT_FOUND, "does not exist"),
    ]
    for req, code, words in cases:
        err = _err(lambda req=req: stub.StartFineTune(req, timeout=30))
        assert err.code() == code, (words, err.details())
        assert words in err.details()
    assert _err(lambda: stub.CancelJob(pb.CancelJobRequest(job_id="nope"), timeout=10)).code() == NOT_FOUND
    assert _err(lambda: stub.WatchJob(pb.WatchJobRequest(job_id=""), timeout=10)).code() == INVALID


def test_server_keeps_serving_after_errors(stub) -> None:
    _err(lambda: stub.TextToImage(pb.TextToImageRequest(params=params(prompt="")), timeout=30))
    res = result_of(list(stub.TextToImage(pb.TextToImageRequest(params=params(steps=1)), timeout=60)))
    assert len(res.images) == 1
