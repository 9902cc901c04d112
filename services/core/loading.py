"""Where a model comes from: a local folder, or a hub id already in the local HF cache.

This environment (and many production clusters) has no route to the Hub. A hub id
that is not cached must fail fast, with a message that names the model and tells the
operator how to provide it, instead of hanging on a download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.errors import ModelUnavailable


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
