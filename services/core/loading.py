"""Where a model comes from: a local folder, or a hub id already in the local HF cache.

This environment (and many production clusters) has no route to the Hub. A hub id
that is not cached must fail fast, with a message that names the model and tells the
operator how to provide it, instead of hanging on a download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.errors import ModelUnavailable

# Written into every folder ``unfragile models build-tiny`` builds: random weights, real architecture.
TEST_MODEL_MARKER = "unfragile_tiny.json"
TEST_MODEL_DETAIL, TEST_PRESET_DETAIL = "test_model", "test_preset"  # their ModelInfo details


def mark_test_model(folder: Path, preset: str, builder: str) -> None:
    """Mark ``folder`` as a random-weight test model (ModelInfo then says so; see ``test_model_details``)."""
    (folder / TEST_MODEL_MARKER).write_text(
        json.dumps({"preset": preset, "builder": builder, "weights": "random"}, indent=2) + "\n")


def is_marked_test_model(folder: Path) -> bool:
    return (Path(folder) / TEST_MODEL_MARKER).is_file()


def test_model_details(model: str | Path) -> dict[str, str]:
    """ModelInfo details of a folder built as a test model ({} for anything else, e.g. a real checkpoint).

    The marker's presence decides; its content only adds the preset.
    """
    path = Path(model).expanduser()
    # A folder carries the marker inside; a single-file checkpoint beside it ("<file>.<marker>").
    marker = path.with_name(f"{path.name}.{TEST_MODEL_MARKER}") if path.is_file() else path / TEST_MODEL_MARKER
    if not marker.is_file():
        return {}
    try:
        preset = str(json.loads(marker.read_text()).get("preset", ""))
    except (OSError, ValueError, AttributeError):
        preset = ""
    return {TEST_MODEL_DETAIL: "true", TEST_PRESET_DETAIL: preset}


def pretrained_source(model: str | Path) -> tuple[str, dict[str, Any]]:
    """Return (path_or_id, extra from_pretrained kwargs) for ``model``.

    A folder is used as is. A hub id is loaded with ``local_files_only=True`` when it is
    not reachable; we check the cache first to give a precise error.
    """
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelUnavailable(f"model path {path} is a file; point at the model folder (with config.json)")
        return str(path), {}
    name = str(model)
    if name.startswith((".", "/", "~")):
        raise ModelUnavailable(
            f"model folder {name} does not exist; build the tiny models with "
            f"`unfragile models build-tiny --out DIR` or point --model at a checkpoint folder"
        )
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(name, local_files_only=True)
    except Exception:
        raise ModelUnavailable(
            f"model {name!r} is not in the local Hugging Face cache and cannot be downloaded here. "
            f"Provide it with `huggingface-cli download {name}` on a machine with network access "
            f"(then copy ~/.cache/huggingface), or pass --model /path/to/a/checkpoint/folder"
        ) from None
    return name, {"local_files_only": True}


FP16_VARIANT = "fp16"


def _local_folder(source: str | Path) -> Path | None:
    """The folder of a local path, or of a hub id in the local cache; None when neither."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), local_files_only=True))
    except Exception:
        return None


def weight_variant(source: str | Path, dtype: Any) -> str | None:
    """``"fp16"`` when serving in float16 and the checkpoint ships fp16 weight files, else None.

    Checkpoints often carry ``*.fp16.safetensors`` beside the full-precision files
    (``model.fp16.safetensors``, ``unet/diffusion_pytorch_model.fp16.safetensors``, sharded
    ``*.fp16-00001-of-00002.safetensors``): reading them halves the disk read of a float16
    load. Pass the result as ``variant=`` to ``from_pretrained``.
    """
    if str(dtype).removeprefix("torch.") != "float16":
        return None
    folder = _local_folder(source)
    if folder is None:
        return None
    marks = (f".{FP16_VARIANT}.safetensors", f".{FP16_VARIANT}-")
    for path in (*folder.glob("*.safetensors"), *folder.glob("*/*.safetensors")):
        if any(m in path.name for m in marks):
            return FP16_VARIANT
    return None
