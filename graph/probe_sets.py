"""The fixed probe sets, one per task, and their identities.

- text-to-image: ``PROBE_PROMPTS``; every served generator draws one image per prompt
  (seed ``seed + i`` for prompt i) and the judge scores each image against its prompt.
- image-to-text: the images in ``graph/data/probe_images`` (provenance and licences in
  the README and ``manifest.json`` there); every served captioner captions each image
  and the judge scores each caption against its image.

A probe set's identity (``probe_set_id``) is its task, its size and a hash of its items:
absolute judged scores are compared only between runs on the same identity, under the
same judge.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from common.errors import FailedPrecondition

PROBE_PROMPTS: tuple[str, ...] = (
    "a red apple on a wooden table",
    "a snowman in a field at sunset",
    "two dogs running on a beach",
    "a city street at night with neon signs",
    "a bowl of soup with a spoon",
    "a lighthouse on a rocky coast",
    "a cat sleeping on a blue sofa",
    "a mountain lake reflecting pine trees",
)
PROBE_IMAGES_DIR = Path(__file__).resolve().parent / "data" / "probe_images"


@dataclass(frozen=True)
class ProbeImage:
    """One image of the image-to-text probe set."""

    name: str  # its file name: the probe item stored with every result on it
    data: bytes  # PNG bytes, as shipped
    subject: str  # what it shows, for people (no score uses it)
    licence: str


@cache
def probe_images(folder: Path = PROBE_IMAGES_DIR) -> tuple[ProbeImage, ...]:
    """The image-to-text probe set in manifest order, each file checked against its recorded SHA-256."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        out = []
        for entry in manifest:
            data = (folder / entry["file"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise FailedPrecondition(f"probe image {entry['file']} in {folder} does not match the SHA-256 in its "
                                         f"manifest: restore the shipped file")
            out.append(ProbeImage(entry["file"], data, entry["subject"], entry["licence"]))
    except (OSError, ValueError, KeyError) as exc:
        raise FailedPrecondition(f"the probe image set in {folder} cannot be read ({exc}); reinstall the package") \
            from None
    return tuple(out)


def probe_set_id(task: str, items: Sequence[tuple[str, bytes]]) -> str:
    """'<task>:<n>:<12 hex of SHA-256 over the items' names and contents>' of an ordered probe set."""
    h = hashlib.sha256()
    for name, data in items:
        h.update(len(name).to_bytes(4, "big") + name.encode() + len(data).to_bytes(8, "big") + data)
    return f"{task}:{len(items)}:{h.hexdigest()[:12]}"
