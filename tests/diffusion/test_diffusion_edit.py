"""Image-to-image, style transfer and inpainting over gRPC."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from services.diffusion.runner import adain_blend
from tests.diffusion.conftest import decode, params, png, result_of
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb


def _gradient(w: int = 64, h: int = 64) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)
    y = np.linspace(0, 255, h, dtype=np.uint8)
    arr = np.stack([np.tile(x, (h, 1)), np.tile(y[:, None], (1, w)), np.full((h, w), 90, np.uint8)], -1)
    return Image.fromarray(arr, "RGB")


def _progress(events) -> list[pb.StepProgress]:
    return [e.progress for e in events if e.WhichOneof("event") == "progress"]


def test_image_to_image_steps_follow_strength(stub) -> None:
    req = pb.ImageToImageRequest(params=params(steps=4), image=cpb.Image(data=png(_gradient())), strength=0.5)
    events = list(stub.ImageToImage(req, timeout=60))
    assert [p.step for p in _progress(events)] == [1, 2]
    assert all(p.total_steps == 2 for p in _progress(events))
    res = result_of(events)
    assert res.steps == 2
    assert decode(res.images[0].image.data).size == (64, 64)
    again = result_of(list(stub.ImageToImage(req, timeout=60)))
    assert again.images[0].image.data == res.images[0].image.data


def test_image_to_image_resizes_to_requested_size(stub) -> None:
    req = pb.ImageToImageRequest(params=params(steps=2, width=32, height=48),
                                 image=cpb.Image(data=png(_gradient(50, 70))))
    res = result_of(list(stub.ImageToImage(req, timeout=60)))
    assert decode(res.images[0].image.data).size == (32, 48)


def test_style_transfer_runs_and_weight_matters(stub) -> None:
    content = png(_gradient())
    style = png(Image.new("RGB", (40, 40), (10, 200, 60)))

    def run(weight: float) -> bytes:
        req = pb.StyleTransferRequest(params=params(prompt="", steps=4), content_image=cpb.Image(data=content),
                                      style_image=cpb.Image(data=style), style_weight=weight, strength=0.5)
        events = list(stub.StyleTransfer(req, timeout=60))
        assert len(_progress(events)) == 2
        return result_of(events).images[0].image.data

    assert run(0.0) != run(1.0)
    assert run(0.7) == run(0.7)


def test_adain_blend_is_documented_formula() -> None:
    g = torch.Generator().manual_seed(0)
    c, s = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g) * 3 + 2
    assert torch.equal(adain_blend(c, s, 0.0), c)
    full = adain_blend(c, s, 1.0)
    assert torch.allclose(full.mean((-2, -1)), s.mean((-2, -1)), atol=1e-5)
    assert torch.allclose(full.std((-2, -1)), s.std((-2, -1)), atol=1e-3)
    assert torch.allclose(adain_blend(c, s, 0.25), 0.75 * c + 0.25 * full, atol=1e-6)


def test_inpaint_keeps_unmasked_pixels_exactly(stub) -> None:
    original = _gradient()
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255
    req = pb.InpaintRequest(params=params(steps=3, num_images=2), image=cpb.Image(data=png(original)),
                            mask=cpb.Image(data=png(Image.fromarray(mask, "L"))))
    events = list(stub.Inpaint(req, timeout=60))
    assert len(_progress(events)) == 3
    orig = np.asarray(original)
    for img in result_of(events).images:
        out = np.asarray(decode(img.image.data).convert("RGB"))
        keep = mask < 128
        assert np.array_equal(out[keep], orig[keep])  # byte-exact outside the mask
        assert not np.array_equal(out[~keep], orig[~keep])  # repainted inside


def test_inpaint_with_jpeg_and_grey_mask(stub) -> None:
    import io

    buf = io.BytesIO()
    _gradient().save(buf, format="JPEG", quality=90)
    original = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    mask = np.full((64, 64), 100, np.uint8)  # < 128 everywhere: nothing to repaint
    mask[0:8, 0:8] = 200
    req = pb.InpaintRequest(params=params(steps=2), image=cpb.Image(data=buf.getvalue()),
                            mask=cpb.Image(data=png(Image.fromarray(mask, "L"))))
    out = np.asarray(decode(result_of(list(stub.Inpaint(req, timeout=60))).images[0].image.data).convert("RGB"))
    assert np.array_equal(out[8:, :], original[8:, :]) and np.array_equal(out[:, 8:], original[:, 8:])
