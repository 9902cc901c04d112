#!/usr/bin/env python3
"""Make sure a Hugging Face model is in the local cache before the server starts.

The servers load models with ``local_files_only`` and fail fast when a hub id is not
cached (services/core/loading.py): they never download while serving. This runs once,
as a Kubernetes initContainer (deploy/k8s/overlays/gpu), into the shared cache volume
(HF_HOME): it is a no-op when the model is already cached, downloads it when the
cluster can reach the Hub, and otherwise exits 1 with what to do.

Usage: fetch-model [MODEL]   (default: $MODEL; "" or a folder path needs nothing)
"""

from __future__ import annotations

import os
import sys


def needs_fetch(model: str) -> bool:
    """A hub id does; "" (the tiny default) or a path does not."""
    return bool(model) and not model.startswith((".", "/", "~")) and not os.path.isdir(model)


def fetch(model: str) -> str:
    """Return where the snapshot is, downloading it only when it is not cached."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model, local_files_only=True)
    except Exception:
        return snapshot_download(model)


def main(argv: list[str]) -> int:
    model = argv[1] if len(argv) > 1 else os.environ.get("MODEL", "")
    if not needs_fetch(model):
        print(f"fetch-model: nothing to fetch for {model or '<tiny default>'}")
        return 0
    try:
        path = fetch(model)
    except Exception as exc:
        print(f"fetch-model: {model!r} is not cached under HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')} "
              f"and could not be downloaded ({type(exc).__name__}: {exc}). Copy a Hugging Face cache holding it "
              f"into the models volume, or point the model setting at a checkpoint folder.", file=sys.stderr)
        return 1
    print(f"fetch-model: {model} ready at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
