"""The official ``openai`` SDK against the real frontend in front of the real services (tiny models).

Random weights write nonsense: these tests check plumbing exactly (same seed → same text or
bytes, streamed = unary, sizes, order, untouched pixels), never quality.
"""

from __future__ import annotations

import base64
import io
import struct

import httpx
import openai
import pytest
from PIL import Image

from tests.openai.conftest import OpenAIStack, data_url, decode_b64, image_message
from tests.vl.vlhelpers import png

GROUNDED = ("<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> warming himself by"
            "<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>.")


def test_models_lists_the_ids_the_services_report(stack: OpenAIStack) -> None:
    models = stack.client().models.list()
    assert [(m.id, m.object, m.owned_by) for m in models.data] == [
        (stack.vl_model, "model", "unfragile"), (stack.sd_model, "model", "unfragile")]
    assert all(m.created > 0 for m in models.data)
    assert stack.client().models.retrieve(stack.sd_model).id == stack.sd_model


def test_chat_with_a_data_url_image_has_usage_and_a_seeded_answer(stack: OpenAIStack) -> None:
    client = stack.client()
    kw = dict(model=stack.vl_model, messages=image_message(data_url(png())), max_tokens=8, seed=7, temperature=0.8)
    first = client.chat.completions.create(**kw)
    again = client.chat.completions.create(**kw)
    assert first.object == "chat.completion" and first.model == stack.vl_model
    (choice,) = first.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.message.content == again.choices[0].message.content  # same seed, same text
    assert choice.finish_reason in ("length", "stop")
    assert first.usage.completion_tokens >= 1 and first.usage.prompt_tokens > 64  # 64 image slots + prompt
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    # a text prompt is Kosmos-2's free prompt; max_completion_tokens bounds the answer like max_tokens
    prompted = client.chat.completions.create(model=stack.vl_model, messages=image_message(data_url(png()), "A photo"),
                                              max_completion_tokens=3, seed=7)
    assert prompted.usage.completion_tokens <= 3


def test_streamed_deltas_equal_the_unary_answer_and_usage_comes_last(stack: OpenAIStack) -> None:
    client = stack.client()
    kw = dict(model=stack.vl_model, messages=image_message(data_url(png(noise=40))), max_tokens=12, seed=3,
              temperature=0.9, top_p=0.9)
    unary = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == unary.choices[0].finish_reason
    *_, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == unary.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.chat.completions.create(**kw, stream=True))  # without include_usage: no usage chunk
    assert all(c.choices for c in plain) and "".join(c.choices[0].delta.content or "" for c in plain) == text


def test_grounding_extension_returns_phrases_spans_and_boxes(stack: OpenAIStack) -> None:
    stack.runner.set_script(GROUNDED)
    try:
        resp = stack.client().chat.completions.create(
            model=stack.vl_model, messages=image_message(data_url(png((300, 200)))), max_tokens=40,
            extra_body={"grounding": True})
        streamed = list(stack.client().chat.completions.create(
            model=stack.vl_model, messages=image_message(data_url(png((300, 200)))), max_tokens=40, stream=True,
            extra_body={"grounding": True}))
    finally:
        stack.runner.set_script(None)
    message = resp.choices[0].message
    assert message.content == "a snowman warming himself by a fire ."
    grounding = message.model_extra["grounding"]
    assert [(g["phrase"], message.content[g["span"][0]:g["span"][1]]) for g in grounding] == [
        ("a snowman", "a snowman"), ("a fire", "a fire")]
    assert grounding[0]["boxes"] == [[0.390625, 0.046875, 0.984375, 0.828125]]
    assert grounding[0]["boxes_px"][0] == pytest.approx([117.1875, 9.375, 295.3125, 165.625])
    final = [c for c in streamed if c.choices and c.choices[0].finish_reason]
    assert final[0].choices[0].delta.model_extra["grounding"] == grounding


def test_embeddings_of_texts_and_images_float_and_base64(stack: OpenAIStack) -> None:
    client = stack.client()
    image = {"type": "image_url", "image_url": {"url": data_url(png(noise=20))}}
    floats = client.embeddings.create(model=stack.vl_model, input=["a red square", image], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and floats.model == stack.vl_model
    dim = len(floats.data[0].embedding)
    assert dim > 0 and len(floats.data[1].embedding) == dim
    for d in floats.data:  # L2-normalised, as the service documents
        assert sum(v * v for v in d.embedding) == pytest.approx(1.0, abs=1e-4)
    raw = httpx.post(f"{stack.base_url}/embeddings", headers={"Authorization": "Bearer sk-test-key"},
                     json={"model": stack.vl_model, "input": ["a red square", image], "encoding_format": "base64"})
    assert raw.status_code == 200
    for item, expected in zip(raw.json()["data"], floats.data):
        values = struct.unpack(f"<{dim}f", base64.b64decode(item["embedding"]))
        assert list(values) == pytest.approx(expected.embedding, abs=1e-6)
    # the SDK's default path asks for base64 and decodes it itself
    default = client.embeddings.create(model=stack.vl_model, input="a red square")
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    # vLLM's multimodal form: one user message with one image part
    vllm = client.embeddings.create(model=stack.vl_model, input="unused", encoding_format="float",
                                    extra_body={"input": None, "messages": [{"role": "user", "content": [image]}]})
    assert vllm.data[0].embedding == pytest.approx(floats.data[1].embedding, abs=1e-5)


def test_images_generations_are_pngs_of_the_size_and_reproducible(stack: OpenAIStack) -> None:
    client = stack.client()
    kw = dict(prompt="a red cube", size="64x48", n=2, extra_body={"seed": 11, "num_inference_steps": 2})
    first = client.images.generate(**kw)
    again = client.images.generate(**kw)
    assert len(first.data) == 2
    for item in first.data:
        img = decode_b64(item.b64_json)
        assert img.format == "PNG" and img.size == (64, 48)
    assert [d.b64_json for d in first.data] == [d.b64_json for d in again.data]  # same seed, same bytes
    assert first.data[0].b64_json != first.data[1].b64_json  # image i uses seed + i
    assert first.usage is not None and first.usage.model_extra["images"] == 2
    single = client.images.generate(prompt="a red cube", size="64x48",
                                    extra_body={"seed": first.data[1].model_extra["seed"], "num_inference_steps": 2})
    assert single.data[0].b64_json == first.data[1].b64_json  # any image reproducible alone
    jpeg = client.images.generate(prompt="a red cube", size="64x48", output_format="jpeg",
                                  extra_body={"seed": 11, "num_inference_steps": 2, "negative_prompt": "blue",
                                              "guidance_scale": 5.0})
    assert decode_b64(jpeg.data[0].b64_json).format == "JPEG" and jpeg.output_format == "jpeg"
    webp = client.images.generate(prompt="a red cube", size="64x48", output_format="webp",
                                  extra_body={"seed": 11, "num_inference_steps": 2})
    assert decode_b64(webp.data[0].b64_json).format == "WEBP"


def test_partial_images_arrive_in_order_before_completion(stack: OpenAIStack) -> None:
    events = list(stack.client().images.generate(prompt="a red cube", size="64x64", stream=True, partial_images=2,
                                                 extra_body={"seed": 5, "num_inference_steps": 6}))
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    steps = [e.model_extra["step"] for e in events[:2]]
    assert steps == sorted(steps) and steps[-1] < 6
    assert all(decode_b64(e.b64_json).size == (64, 64) for e in events)
    done = events[-1]
    assert done.usage is not None and done.size == "64x64"
    unary = stack.client().images.generate(prompt="a red cube", size="64x64",
                                           extra_body={"seed": 5, "num_inference_steps": 6})
    assert done.b64_json == unary.data[0].b64_json  # previews do not change the result


def test_edits_with_a_mask_keep_unmasked_pixels_and_without_one_run_image_to_image(stack: OpenAIStack) -> None:
    source = Image.effect_noise((64, 64), 60).convert("RGB")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # white = repaint
    files = {}
    for name, img in (("image", source), ("mask", mask)):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        files[name] = (f"{name}.png", buf.getvalue(), "image/png")
    client = stack.client()
    edited = client.images.edit(image=files["image"], mask=files["mask"], prompt="a blue circle",
                                extra_body={"seed": 2, "num_inference_steps": 2})
    out = decode_b64(edited.data[0].b64_json).convert("RGB")
    assert out.size == (64, 64)
    src, got = source.load(), out.load()
    outside = [(x, y) for x in range(64) for y in range(64) if not (16 <= x < 48 and 16 <= y < 48)]
    assert all(got[p] == src[p] for p in outside)  # byte for byte outside the mask
    assert any(got[x, y] != src[x, y] for x in range(16, 48) for y in range(16, 48))
    i2i = client.images.edit(image=files["image"], prompt="a blue circle",
                             extra_body={"seed": 2, "num_inference_steps": 4, "strength": 0.5})
    assert decode_b64(i2i.data[0].b64_json).size == (64, 64)
    small = io.BytesIO()
    mask.resize((32, 32)).save(small, format="PNG")
    with pytest.raises(openai.BadRequestError) as err:  # never silently dropped
        client.images.edit(image=files["image"], mask=("mask.png", small.getvalue(), "image/png"), prompt="x")
    assert "32x32" in err.value.message and "64x64" in err.value.message
