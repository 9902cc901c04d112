"""Image decoding limits, cancellation tokens, model sources and settings."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from common.errors import Cancelled, DeadlineExceeded, InvalidArgument, ModelUnavailable
from services.core.cancel import CancelToken
from services.core.images import decode_image, encode_png
from services.core.loading import pretrained_source
from services.core.settings import GrpcServerSettings, ModelSettings


def _png(w: int = 8, h: int = 6, color=(10, 20, 30)) -> bytes:
    return encode_png(Image.new("RGB", (w, h), color))


def _noisy_png() -> bytes:
    return encode_png(Image.frombytes("RGB", (64, 64), bytes((i * 7919) % 251 for i in range(64 * 64 * 3))))


def test_decode_round_trip_and_deterministic_png():
    data = _png()
    img = decode_image(data)
    assert img.size == (8, 6) and img.mode == "RGB" and img.getpixel((0, 0)) == (10, 20, 30)
    assert encode_png(img) == data


def test_decode_converts_other_modes_to_rgb():
    buf = io.BytesIO()
    Image.new("L", (4, 4), 7).save(buf, format="JPEG")
    assert decode_image(buf.getvalue()).mode == "RGB"


@pytest.mark.parametrize(
    "data,text",
    [
        (b"", "is empty"),
        (b"definitely not an image", "not a decodable image"),
        (_png()[:40], "not a decodable image"),  # header itself cut off
        (_noisy_png()[: len(_noisy_png()) // 2], "truncated or corrupt"),  # pixel data cut off
    ],
)
def test_decode_rejects_bad_bytes_with_actionable_message(data, text):
    with pytest.raises(InvalidArgument, match=text):
        decode_image(data)


def test_decode_refuses_oversized_before_decoding():
    big = _png(300, 300)
    with pytest.raises(InvalidArgument, match="over the limit of 10000"):
        decode_image(big, max_pixels=10_000)


def test_cancel_token_callbacks_and_deadline():
    token = CancelToken()
    fired = []
    token.on_cancel(lambda: fired.append(1))
    assert not token.cancelled
    token.cancel("client went away")
    token.cancel("twice")
    assert token.cancelled and fired == [1]
    with pytest.raises(Cancelled, match="client went away"):
        token.raise_if_cancelled()
    late = CancelToken(deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded):
        late.raise_if_cancelled()


def test_pretrained_source_folder_and_missing(tmp_path):
    assert pretrained_source(tmp_path) == (str(tmp_path), {})
    with pytest.raises(ModelUnavailable, match="build-tiny"):
        pretrained_source("./no/such/folder")


def test_uncached_hub_id_fails_fast_naming_the_model(tmp_path, monkeypatch):
    # huggingface_hub reads these at its first import: patch its constants too (restored afterwards), so a
    # first import here does not leave the whole process offline
    import huggingface_hub.constants as hf_constants

    for name, value in (("HF_HUB_CACHE", str(tmp_path)), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    t = time.monotonic()
    with pytest.raises(ModelUnavailable, match="microsoft/kosmos-2-patch14-224"):
        pretrained_source("microsoft/kosmos-2-patch14-224")
    assert time.monotonic() - t < 30  # fails fast rather than hanging on a download


def test_settings_from_env_and_device_resolution(monkeypatch):
    monkeypatch.setenv("UNFRAGILE_PORT", "1234")
    s = GrpcServerSettings()
    assert s.port == 1234
    import torch

    device, dtype = ModelSettings(device="cpu").resolve_device_dtype()
    assert device.type == "cpu" and dtype == torch.float32
    with pytest.raises(InvalidArgument, match="unknown dtype"):
        ModelSettings(device="cpu", dtype="float7").resolve_device_dtype()


@pytest.mark.parametrize("service", ["visionlanguage", "diffusion", "matchgraph", "gateway"])
def test_each_setting_declared_once_with_a_description(service, monkeypatch):
    """Flat names from env and --set reach the domain configs built from the one Settings class."""
    from services.core.settings import describe, section
    from services.stack import settings_class

    cls = settings_class(service)
    rows = describe(cls)
    assert all(doc for _name, _kind, _default, doc in rows), [r[0] for r in rows if not r[3]]
    prefix = cls.model_config["env_prefix"]
    monkeypatch.setenv(f"{prefix}LOG_LEVEL", "DEBUG")
    assert cls().log_level == "DEBUG"
    if service == "visionlanguage":
        from services.visionlanguage.settings import EngineConfig

        monkeypatch.setenv(f"{prefix}MAX_BATCH_SIZE", "3")
        assert section(cls(max_queue_size=7), EngineConfig).model_dump()["max_batch_size"] == 3
        assert section(cls(max_queue_size=7), EngineConfig).max_queue_size == 7


def test_test_model_marker_is_what_model_info_reports(tmp_path):
    from services.core.loading import is_marked_test_model, mark_test_model, test_model_details

    assert test_model_details(tmp_path) == {} and not is_marked_test_model(tmp_path)  # e.g. a real checkpoint
    assert test_model_details("microsoft/kosmos-2-patch14-224") == {}
    mark_test_model(tmp_path, "tiny", "builder")
    assert is_marked_test_model(tmp_path)
    assert test_model_details(str(tmp_path)) == {"test_model": "true", "test_preset": "tiny"}
    (tmp_path / "unfragile_tiny.json").write_text("{not json")  # still a test model, preset unknown
    assert test_model_details(tmp_path) == {"test_model": "true", "test_preset": ""}
