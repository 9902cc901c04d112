"""LoRA adapters a request can use: the ones StartFineTune trained, and community LoRA files.

Trained adapters live in ``adapters_dir/<name>/`` (``save_lora_weights`` output plus
``meta.json``). Community files are the ``*.safetensors`` of ``lora_dir``, in the kohya
(``lora_unet_…``/``lora_te…``, ``lora_down``/``lora_up``/``alpha``) or diffusers/PEFT
(``unet.…lora_A``) layout that ``load_lora_weights`` reads; each is named by its file stem.

What a file was made for is read from its safetensors header only: the trainer's metadata
(kohya's ``ss_base_model_version``, ``modelspec.architecture``) when present, else its tensor
names and shapes: the denoiser it targets (UNet or SD 3 transformer), the second SDXL text
encoder, and the cross-attention width of its UNet layers (768 SD 1.x, 1024 SD 2.x, 2048
SDXL, or the served model's own width). Using an adapter made for another family, or whose widths do not fit
the served model, is FAILED_PRECONDITION before the request is queued.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import FailedPrecondition, NotFound
from services.diffusion.events import AdapterInfo
from services.diffusion.families import FAMILIES, Family
from services.diffusion.types import check_adapter_name

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_transformer_")
KNOWN_WIDTHS = {768: ("sd", "SD 1.x"), 1024: ("sd", "SD 2.x"), 2048: ("sdxl", "SDXL")}
_CROSS_K = re.compile(r"attn2[._]to_k(?:\.lora_A|\.lora\.down|\.lora_down)\.weight$")


@dataclass(frozen=True)
class LoraFile:
    """One adapter a request can name: where its weights are and what they were made for."""

    name: str
    path: Path  # the .safetensors file
    source: str  # "trained" or "file"
    family: str  # "sd", "sdxl", "sd3" or "" (unknown)
    format: str  # "diffusers" or "kohya"
    rank: int
    cross_width: int = 0  # in-features of the UNet cross-attention keys it adapts (0: none / not a UNet)
    meta: dict[str, Any] = field(default_factory=dict)

    def info(self) -> AdapterInfo:
        m = self.meta
        return AdapterInfo(name=self.name, size_bytes=self.path.stat().st_size, rank=self.rank,
                           steps=int(m.get("steps", 0)), final_loss=float(m.get("final_loss", 0.0)),
                           created_at=str(m.get("created_at", "")), base_model=str(m.get("base_model", "")),
                           family=self.family, source=self.source, format=self.format)


def inspect_lora(path: Path, name: str, source: str, served: Family, served_width: int,
                 meta: dict[str, Any] | None = None) -> LoraFile:
    """Read a LoRA file's layout, family and rank from its safetensors header."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        header = f.metadata() or {}
    fmt = "kohya" if any(k.startswith(KOHYA_PREFIXES) for k in shapes) else "diffusers"
    ranks = [s[0] for k, s in shapes.items() if k.endswith(("lora_A.weight", "lora.down.weight", "lora_down.weight"))]
    width = next((s[1] for k, s in shapes.items() if _CROSS_K.search(k) and len(s) == 2), 0)
    family = str((meta or {}).get("family") or _family_of_metadata(header)
                 or _family_of(shapes, width, served, served_width))
    return LoraFile(name, path, source, family, fmt, min(ranks) if ranks else 0, width, meta or {})


# What trainers write in the safetensors header: kohya's ``ss_base_model_version`` and the
# ``modelspec.architecture`` of the Stability AI model spec (kohya, OneTrainer, diffusers scripts).
_METADATA_FAMILIES = (("sd3", "sd3"), ("stable-diffusion-v3", "sd3"), ("sdxl", "sdxl"), ("stable-diffusion-xl", "sdxl"),
                      ("flux", "flux"), ("sd_v1", "sd"), ("sd_v2", "sd"), ("stable-diffusion-v1", "sd"),
                      ("stable-diffusion-v2", "sd"))


def _family_of_metadata(header: dict[str, str]) -> str:
    for field_name in ("modelspec.architecture", "ss_base_model_version"):
        value = header.get(field_name, "").lower()
        for marker, family in _METADATA_FAMILIES:
            if value.startswith(marker):
                return family
    return ""


def _family_of(shapes: dict[str, tuple[int, ...]], width: int, served: Family, served_width: int) -> str:
    keys = list(shapes)
    if any("single_transformer_blocks" in k or "double_blocks" in k for k in keys):
        return "flux"
    if any(k.startswith(("transformer.", "lora_transformer_")) or "joint_blocks" in k for k in keys):
        return "sd3"
    if any(k.startswith(("text_encoder_2.", "lora_te2_")) for k in keys):
        return "sdxl"
    if width and width == served_width and served.denoiser == "unet":
        return served.key
    return KNOWN_WIDTHS.get(width, ("", ""))[0]


class AdapterStore:
    """Trained adapters on disk: ``<root>/<name>/pytorch_lora_weights.safetensors`` + meta.json."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / check_adapter_name(name)

    def exists(self, name: str) -> bool:
        return (self.path(name) / LORA_WEIGHT_NAME).is_file()

    def entries(self) -> list[tuple[str, Path, dict[str, Any]]]:
        """(name, weights file, meta) of every saved adapter, by name."""
        out = []
        for d in sorted(self.root.iterdir()):
            weights = d / LORA_WEIGHT_NAME
            if d.name.startswith(".") or not weights.is_file():
                continue
            try:
                meta = json.loads((d / "meta.json").read_text())
            except (OSError, ValueError):
                meta = {}
            out.append((d.name, weights, meta if isinstance(meta, dict) else {}))
        return out

    def save(self, name: str, pipeline_cls: Any, unet_lora_layers: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write an adapter atomically: a temporary folder renamed into place."""
        final = self.path(name)
        tmp = self.root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        pipeline_cls.save_lora_weights(save_directory=str(tmp), unet_lora_layers=unet_lora_layers,
                                       weight_name=LORA_WEIGHT_NAME, safe_serialization=True)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        old = None
        if final.exists():
            old = self.root / f".old-{name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final


def file_adapter_name(stem: str) -> str:
    """A usable adapter name for a community file: its stem with other characters turned into '-'."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", stem).strip("-_")[:64]
    return name or "lora"


class AdapterCatalog:
    """Every adapter a request may name, with what it was made for (read once per file version)."""

    def __init__(self, store: AdapterStore, lora_dir: Path | None) -> None:
        self.store, self.lora_dir = store, lora_dir
        self.served: Family = FAMILIES["sd"]
        self.served_width = 0
        self._seen: dict[tuple[str, int], LoraFile] = {}

    def bind(self, served: Family, served_width: int) -> None:
        """The served model's family and UNet cross-attention width (0 for a transformer)."""
        self.served, self.served_width = served, served_width

    def all(self) -> dict[str, LoraFile]:
        found: dict[str, LoraFile] = {}
        for name, path, meta in self.store.entries():
            found[name] = self._inspect(path, name, "trained", meta)
        if self.lora_dir is not None and self.lora_dir.is_dir():
            for path in sorted(self.lora_dir.glob("*.safetensors")):
                name = file_adapter_name(path.stem)
                if name not in found and path.is_file():
                    found[name] = self._inspect(path, name, "file", {})
        return found

    def _inspect(self, path: Path, name: str, source: str, meta: dict[str, Any]) -> LoraFile:
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._seen:
            self._seen[key] = inspect_lora(path, name, source, self.served, self.served_width, meta)
        return self._seen[key]

    def list(self) -> list[AdapterInfo]:
        return [a.info() for _, a in sorted(self.all().items())]

    def get(self, name: str) -> LoraFile:
        found = self.all().get(name)
        if found is None:
            raise NotFound(f"adapter {name!r} does not exist; ListAdapters shows the saved ones and the LoRA files "
                           f"of lora_dir, StartFineTune creates one")
        self.check_fits(found)
        return found

    def check_fits(self, a: LoraFile) -> None:
        """FAILED_PRECONDITION unless ``a`` can load into the served model."""
        served = self.served
        if a.family and a.family != served.key:
            made_for = FAMILIES[a.family].title if a.family in FAMILIES else a.family
            raise FailedPrecondition(
                f"adapter {a.name!r} was made for {made_for} but this server runs {served.title}; use an adapter "
                f"made for {served.title} (ListAdapters shows each adapter's family) or serve a {made_for} model")
        if a.cross_width and self.served_width and a.cross_width != self.served_width:
            made_for = KNOWN_WIDTHS.get(a.cross_width, ("", f"a model with {a.cross_width}-wide text embeddings"))[1]
            raise FailedPrecondition(
                f"adapter {a.name!r} was made for {made_for} (its cross-attention layers take {a.cross_width}-wide "
                f"text embeddings; the served {served.title} model's take {self.served_width}); use an adapter "
                f"made for the served checkpoint")
        if a.format not in served.lora_formats:
            raise FailedPrecondition(
                f"adapter {a.name!r} is a {a.format}-format LoRA file, which diffusers does not load for "
                f"{served.title}; convert it to the diffusers (PEFT) layout")
