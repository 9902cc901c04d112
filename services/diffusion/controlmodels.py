"""The control models on disk (what each is, read from its config or header) and the loaded ones in memory.

``controlnet_dir`` holds ControlNets and T2I-Adapters: diffusers folders (``config.json`` names
the class: ``ControlNetModel``, ``SD3ControlNetModel``, ``FluxControlNetModel``, ``T2IAdapter``) and
single ``.safetensors`` ControlNet files in the original layout (``control_model.input_hint_block…``;
SD 1.x/2.x) or the diffusers one (``controlnet_cond_embedding…``), which
``ControlNetModel.from_single_file`` reads, with a config derived from the served UNet.
``ip_adapter_dir`` holds IP-Adapters: ``NAME/`` with its weights file and ``image_encoder/``,
or ``NAME.safetensors`` beside a shared ``image_encoder/`` (h94/IP-Adapter's layout). Each model is
named by its folder or file stem.

The family each was made for comes from its config (an SDXL ControlNet has ``text_time`` added
conditioning; the transformer ControlNets name their family) or, for files, from tensor names and
the width of the cross-attention keys (768 SD 1.x, 1024 SD 2.x, 2048 SDXL), as for LoRA files;
what does not tell is matched against the served model's own widths.

Loaded models live in ``ModelCache``: least recently used first out once the loaded ones exceed
the memory budget, never one that the running batch uses.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from services.diffusion.adapters import KNOWN_WIDTHS, file_adapter_name

log = logging.getLogger(__name__)

CONTROLNET, T2I_ADAPTER, IP_ADAPTER = "controlnet", "t2i_adapter", "ip_adapter"
FOLDER, FILE = "diffusers folder", "single file"
# diffusers classes of control folders -> (kind, family; "" = decided from the config / served model)
_CLASSES = {"ControlNetModel": (CONTROLNET, ""), "SD3ControlNetModel": (CONTROLNET, "sd3"),
            "FluxControlNetModel": (CONTROLNET, "flux"), "T2IAdapter": (T2I_ADAPTER, "")}
# the released T2I-Adapters' feature channels (one per UNet down block)
_ADAPTER_CHANNELS = {(320, 640, 1280, 1280): "sd", (320, 640, 1280): "sdxl"}
_CROSS_K = re.compile(r"attn2\.to_k\.weight$")


@dataclass(frozen=True)
class ControlFile:
    """One control model on disk and what it was made for."""

    name: str
    kind: str
    family: str  # "sd", "sdxl", "sd3", "flux", or "" (decided against the served model)
    format: str
    path: Path  # the folder, or the .safetensors file
    class_name: str
    size_bytes: int
    cross_width: int = 0  # UNet cross-attention width it was made for
    channels: tuple[int, ...] = ()  # T2I-Adapter feature channels
    weights: str = ""  # IP-Adapter: the weights file name inside ``path``'s folder
    encoder: Path | None = None  # IP-Adapter: its image encoder folder
    embed_dim: int = 0  # IP-Adapter: the image-embedding width its projection takes


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin"))


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _cross_width(shapes: dict[str, tuple[int, ...]]) -> int:
    return next((s[1] for k, s in shapes.items() if _CROSS_K.search(k) and len(s) == 2), 0)


def inspect_control_folder(path: Path) -> ControlFile | None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cls = str(config.get("_class_name", ""))
    if cls not in _CLASSES:
        log.warning("%s: %s is not a control model this server runs; skipped", path, cls or "an unknown class")
        return None
    kind, family = _CLASSES[cls]
    cross, channels = 0, tuple[int, ...]()
    if cls == "ControlNetModel":
        family = "sdxl" if config.get("addition_embed_type") == "text_time" else "sd"
        cross = int(config.get("cross_attention_dim") or 0)
    elif cls == "T2IAdapter":
        channels = tuple(int(c) for c in config.get("channels", ()))
        family = _ADAPTER_CHANNELS.get(channels, "")
    return ControlFile(file_adapter_name(path.name), kind, family, FOLDER, path, cls, _size(path), cross, channels)


def inspect_control_file(path: Path) -> ControlFile | None:
    shapes = _header(path)
    keys = list(shapes)
    ldm = any(k.endswith("input_hint_block.0.weight") for k in keys)
    diffusers = "controlnet_cond_embedding.conv_in.weight" in shapes and "time_embedding.linear_1.weight" in shapes
    if not (ldm or diffusers):
        log.warning("%s is not a ControlNet file this server reads (SD 3 and FLUX.1 ControlNets, T2I-Adapters: use "
                    "their diffusers folder); skipped", path)
        return None
    xl = any(k.endswith(("label_emb.0.0.weight", "add_embedding.linear_1.weight")) for k in keys)
    if xl and ldm:
        log.warning("%s is an SDXL ControlNet in the original layout, whose label_emb diffusers' converter does not "
                    "read; use its diffusers folder or diffusers-layout file; skipped", path)
        return None
    return ControlFile(file_adapter_name(path.stem), CONTROLNET, "sdxl" if xl else "sd", FILE, path,
                       "ControlNetModel", path.stat().st_size, _cross_width(shapes))


def inspect_ip_adapter(path: Path, shared_encoder: Path) -> ControlFile | None:
    """An IP-Adapter folder (weights + image_encoder/) or file (beside a shared image_encoder/)."""
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            return None
        weights, encoder = files[0], path / "image_encoder"
        if not encoder.is_dir():
            encoder = shared_encoder
    else:
        weights, encoder = path, shared_encoder
    shapes = _header(weights)
    if any(k.startswith(("double_blocks.", "ip_adapter_proj_model.")) for k in shapes):
        family, cross = "flux", 0
        proj = shapes.get("ip_adapter_proj_model.proj.weight", (0, 0))
    elif any(k.startswith("ip_adapter.") for k in shapes):
        cross = next((s[1] for k, s in shapes.items() if k.endswith("to_k_ip.weight") and len(s) == 2), 0)
        family = KNOWN_WIDTHS.get(cross, ("", ""))[0]
        proj = shapes.get("image_proj.proj.weight") or shapes.get("image_proj.proj_in.weight") or (0, 0)
    else:
        log.warning("%s is not an IP-Adapter (no image_proj / ip_adapter tensors); skipped", weights)
        return None
    name = file_adapter_name(path.name if path.is_dir() else path.stem)
    return ControlFile(name, IP_ADAPTER, family, FOLDER if path.is_dir() else FILE, weights.parent,
                       "IPAdapter", weights.stat().st_size, cross, (), weights.name,
                       encoder if encoder.is_dir() else None, int(proj[1]) if len(proj) == 2 else 0)


class ControlFiles:
    """Every control model of the two folders, read once per file version."""

    def __init__(self, controlnet_dir: Path | None, ip_adapter_dir: Path | None) -> None:
        self.controlnet_dir, self.ip_adapter_dir = controlnet_dir, ip_adapter_dir
        self._seen: dict[tuple[str, int], ControlFile | None] = {}

    def _cached(self, path: Path, inspect: Callable[[], ControlFile | None]) -> ControlFile | None:
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError:
            return None
        if key not in self._seen:
            try:
                self._seen[key] = inspect()
            except (OSError, ValueError, RuntimeError) as exc:  # unreadable / not safetensors: say so once
                log.warning("%s could not be read as a control model (%s); skipped", path, exc)
                self._seen[key] = None
        return self._seen[key]

    def controls(self) -> dict[str, ControlFile]:
        """ControlNets and T2I-Adapters by name."""
        found: dict[str, ControlFile] = {}
        root = self.controlnet_dir
        if root is None or not root.is_dir():
            return found
        for path in sorted(root.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                info = self._cached(path / "config.json", partial(inspect_control_folder, path))
            elif path.suffix == ".safetensors":
                info = self._cached(path, partial(inspect_control_file, path))
            else:
                continue
            if info is not None and info.name not in found:
                found[info.name] = info
        return found

    def ip_adapters(self) -> dict[str, ControlFile]:
        found: dict[str, ControlFile] = {}
        root = self.ip_adapter_dir
        if root is None or not root.is_dir():
            return found
        shared = root / "image_encoder"
        for path in sorted(root.iterdir()):
            if path.name.startswith(".") or path == shared or not (path.is_dir() or path.suffix == ".safetensors"):
                continue
            info = self._cached(path, partial(inspect_ip_adapter, path, shared))
            if info is not None and info.name not in found:
                found[info.name] = info
        return found


def module_bytes(*modules: Any) -> int:
    """Bytes of the parameters of ``modules`` (objects without parameters, e.g. image processors, count 0)."""
    return sum(p.numel() * p.element_size() for m in modules if hasattr(m, "parameters") for p in m.parameters())


class ModelCache:
    """Loaded control models by key, least recently used first out beyond ``budget`` bytes."""

    def __init__(self, budget: int, on_evict: Callable[[str], None] | None = None) -> None:
        self.budget = budget
        self.on_evict = on_evict
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def used(self) -> int:
        return sum(size for _, size in self._entries.values())

    def get(self, key: str, load: Callable[[], Any], keep: frozenset[str] = frozenset()) -> Any:
        """The model under ``key``, loaded now if needed; ``keep``: keys the caller also uses (never evicted)."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][0]
        value = load()
        size = module_bytes(*(value if isinstance(value, tuple) else (value,)))
        self._make_room(size, keep)
        self._entries[key] = (value, size)
        return value

    def _make_room(self, size: int, keep: frozenset[str]) -> None:
        for key in list(self._entries):
            if self.used + size <= self.budget:
                return
            if key not in keep:
                self.drop(key)
        if self.used + size > self.budget:
            log.warning("control models in use need %.0f MiB, over control_cache_mb (%.0f MiB)",
                        (self.used + size) / 2**20, self.budget / 2**20)

    def drop(self, key: str) -> None:
        if self._entries.pop(key, None) is not None and self.on_evict is not None:
            self.on_evict(key)

    def clear(self) -> None:
        for key in list(self._entries):
            self.drop(key)
