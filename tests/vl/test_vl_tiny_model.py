"""The offline tiny Kosmos-2: deterministic bytes, real processor, prompt layout, fail-fast loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from common.errors import ModelUnavailable
from services.visionlanguage.runner import Kosmos2Runner
from services.visionlanguage.tiny import build_tiny_kosmos2
from tests.vl.vlhelpers import start


def test_build_is_byte_identical(tiny_model: Path, tmp_path: Path) -> None:
    again = build_tiny_kosmos2(tmp_path / "again")
    names = sorted(p.name for p in tiny_model.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= set(names)
    for name in names:
        assert (tiny_model / name).read_bytes() == (again / name).read_bytes(), name


def test_loads_back_as_real_kosmos2_processor_and_prompt_layout(tiny_model: Path) -> None:
    runner = Kosmos2Runner(tiny_model, torch.device("cpu"), torch.float32)
    proc = runner.processor
    assert type(proc).__name__ == "Kosmos2Processor"
    assert type(proc.image_processor).__name__ == "CLIPImageProcessorPil"
    tok = proc.tokenizer
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert tok.convert_tokens_to_ids("<patch_index_1023>") != tok.unk_token_id
    image = Image.new("RGB", (300, 200), (10, 120, 30))
    for prompt in ("<grounding>An image of", "Question: what is it? Answer:", "<grounding><phrase> a dog</phrase>"):
        enc = proc(text=prompt, images=image, return_tensors="pt")
        mine = runner.prompt_ids(prompt)
        assert enc["input_ids"][0].tolist() == mine.ids
        assert enc["image_embeds_position_mask"][0].tolist() == mine.image_mask
        assert sum(mine.image_mask) == 64 and mine.ids[mine.tail_start - 1] == tok.convert_tokens_to_ids("</image>")


def test_uncached_hub_id_fails_fast_with_instructions(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="microsoft/kosmos-2-patch14-224"):
        start(Path("microsoft/kosmos-2-patch14-224"))
    with pytest.raises(ModelUnavailable, match="build-tiny"):
        start(tmp_path / "missing-folder")


def test_prefill_on_cached_image_prefix_equals_full_prefill(tiny_model: Path) -> None:
    from services.visionlanguage.batch import PrefillItem
    from services.visionlanguage.types import ImageInput

    runner = Kosmos2Runner(tiny_model, torch.device("cpu"), torch.float32)
    images = [ImageInput.from_pil(Image.effect_noise((64, 64), 30 + i).convert("RGB")) for i in range(2)]
    feats = runner.image_features(images)
    prefixes = runner.image_prefix(feats)
    assert prefixes[0].keys[0].shape[1] == 67  # <s> <image> 64 slots </image>
    prompts = ["<grounding>An image of", "Question: what is the man holding in his hand? Answer:"]
    full = [PrefillItem(runner.prompt_ids(p), f) for p, f in zip(prompts, feats)]
    cached = [PrefillItem(runner.prompt_ids(p), f, pre) for p, f, pre in zip(prompts, feats, prefixes)]

    def greedy(items: list[PrefillItem], steps: int = 6) -> tuple[torch.Tensor, list[list[int]]]:
        batch, out = runner.prefill(items)
        first = out.logits
        toks: list[list[int]] = [[] for _ in items]
        for _ in range(steps):
            nxt = [int(out.logits[i].argmax()) for i in range(len(items))]
            for i, t in enumerate(nxt):
                toks[i].append(t)
            out = runner.decode(batch, nxt)
        return first, toks

    batch, _ = runner.prefill(full)  # the prefix cut out of a padded full prefill equals a prefix-only run
    for cut, alone in zip(runner.prefixes_from(batch, full), prefixes):
        for x, y in zip(cut.keys + cut.values, alone.keys + alone.values):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    la, ta = greedy(full)
    lb, tb = greedy(cached)
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    assert ta == tb
    # and each row alone (no padding) gives the same tokens as in the padded batch
    assert [greedy([c])[1][0] for c in cached] == tb
