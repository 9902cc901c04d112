"""Find, recognise and load a checkpoint: a diffusers folder, a cached hub id, or one .safetensors file.

The family (SD 1.x/2.x, SDXL, SD 3, FLUX.1) is detected first (``families``), then the checkpoint
is loaded through that family's own diffusers pipeline class: ``from_pretrained`` for a
folder, ``from_single_file`` for a file, always with ``dtype=`` (no cast afterwards),
safetensors only and without any network access. A single file's component configs and
tokenizers come from ``single_file_config`` or from the configs shipped for its family.
Img2img and inpaint pipelines are built on the loaded modules themselves (``Class(**components)``:
``from_pipe`` would cast them all to one dtype, T5's float32 ``wo`` layers included, which then
overflow in float16); a folder may add a separate 9-channel inpaint UNet in ``unet_inpaint/``.
Serving in float16, a folder's ``*.fp16.safetensors`` weight files are read where it ships them.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ModelUnavailable
from services.core.loading import pretrained_source, weight_variant
from services.diffusion.families import SD, SD3, SDXL, Family, family_of_index, family_of_keys
from services.diffusion.settings import LoadConfig

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
# diffusers' own model types per family (what from_single_file would fetch configs for), and the
# type used when a file's shapes match none of the released models (tiny or custom checkpoints).
_REFERENCE_TYPES = {"sd": ("v1", "v2", "inpainting", "inpainting_v2"), "sdxl": ("xl_base", "xl_inpaint"),
                    "sd3": ("sd35_medium", "sd3", "sd35_large"), "flux": ("flux-dev", "flux-schnell")}
T5_KEY = "text_encoders.t5xxl.transformer.shared.weight"


@dataclass
class Pipelines:
    """The loaded pipelines of one checkpoint (all sharing the same modules)."""

    family: Family
    checkpoint_format: str  # "diffusers folder" or "single file"
    txt2img: Any
    img2img: Any
    inpaint: Any
    inpaint_unet: bool
    refiner: Any = None

    @property
    def denoiser(self) -> Any:
        return getattr(self.txt2img, self.family.denoiser)

    def text_encoders(self) -> list[Any]:
        return [m for m in (getattr(self.txt2img, n, None) for n in self.family.text_encoders) if m is not None]


# Image processors diffusers' pipeline modules import by name (for their optional feature extractors).
_IMAGE_PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor")


def prepare_libraries() -> None:
    """Call before importing diffusers pipelines: PIL image processors, no progress bars.

    transformers 5's ``CLIPImageProcessor`` / ``SiglipImageProcessor`` need torchvision (no build
    of it imports beside the CPU torch used here); without it transformers binds the PIL
    classes under those names itself, with a warning on every start. Binding the PIL classes
    explicitly first does the same without the warning. No progress bars either: the
    service reports progress itself.
    """
    import importlib
    import sys

    from transformers.utils import is_torchvision_available
    from transformers.utils import logging as tlogging

    if not is_torchvision_available():
        for name in _IMAGE_PROCESSORS:
            pil = getattr(importlib.import_module("transformers"), f"{name}Pil")
            module = sys.modules["transformers"]  # the first lazy access may have replaced the module object
            if name not in vars(module):
                setattr(module, name, pil)
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    # FluxControlNetModel builds its rotary embedding through the old import path diffusers itself deprecates
    warnings.filterwarnings("ignore", message=".*FluxPosEmbed.* is deprecated", category=FutureWarning)
    noisy = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _SpuriousCastWarning) for f in noisy.filters):
        noisy.addFilter(_SpuriousCastWarning())


def load_pipelines(model: str, cfg: LoadConfig, device: Any, dtype: Any) -> Pipelines:
    """Load ``model`` (folder, file or cached hub id) for serving on ``device``; ModelUnavailable if it can't."""
    prepare_libraries()
    path = Path(model).expanduser()
    if path.is_file():
        family, pipe = _load_single_file(path, cfg, dtype)
        fmt, inpaint_unet = "single file", None
    else:
        folder = local_folder(model)
        family = family_of_index(_read_index(folder, model), model)
        pipe = _wrap(family, model, lambda: _class(family.txt2img).from_pretrained(
            folder, dtype=dtype, use_safetensors=True, variant=weight_variant(folder, dtype),
            **_family_kwargs(family, cfg)))
        fmt, inpaint_unet = "diffusers folder", _inpaint_unet(family, folder, dtype)
    return _assemble(family, fmt, pipe, inpaint_unet, cfg, device, dtype)


def local_folder(model: str) -> str:
    """A local diffusers folder for ``model`` (a folder, or a hub id already in the local cache)."""
    source, kwargs = pretrained_source(model)
    if not kwargs:
        return source
    from huggingface_hub import snapshot_download

    return str(snapshot_download(source, local_files_only=True))


def _read_index(folder: str | Path, name: str) -> dict[str, Any]:
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise ModelUnavailable(f"{name} has no model_index.json: point --model at a diffusers pipeline folder or a "
                               f"single .safetensors checkpoint file")
    try:
        data = json.loads(index.read_text())
    except ValueError as exc:
        raise ModelUnavailable(f"{index} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelUnavailable(f"{index} is not a diffusers model index")
    return data


def _class(name: str) -> Any:
    import diffusers

    return getattr(diffusers, name)


def _family_kwargs(family: Family, cfg: LoadConfig) -> dict[str, Any]:
    if family is SD:
        return {"safety_checker": None, "requires_safety_checker": False}
    if family is SDXL:
        return {"add_watermarker": False}
    if family is SD3 and not cfg.t5:
        return {"text_encoder_3": None, "tokenizer_3": None}
    return {}


class _SpuriousCastWarning(logging.Filter):
    """diffusers casts with ``.to(dtype)`` inside ``from_single_file``, ``from_pipe`` and SDXL's VAE
    upcast (even to the dtype the modules already have) and then warns that modules "should be
    kept in float32: []": an empty list, nothing is affected. Only that exact message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


def _wrap(family: Family, source: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(f"could not load {family.title} from {source!r}: {type(exc).__name__}: {exc}") from exc


def _load_single_file(path: Path, cfg: LoadConfig, dtype: Any) -> tuple[Family, Any]:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelUnavailable(
            f"{path} is a pickle checkpoint ({path.suffix}); the server loads only .safetensors files, which cannot "
            f"run code when loaded. Convert it once on a trusted machine (load it and save it with "
            f"safetensors.torch.save_file) and pass the .safetensors file")
    if path.suffix.lower() != ".safetensors":
        raise ModelUnavailable(f"{path} is not a checkpoint the server loads: pass a diffusers folder or a "
                               f".safetensors file")
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:  # reads the header only
            shapes = {k: _Shape(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise ModelUnavailable(f"{path} is not a readable safetensors file: {exc}") from None
    keys = list(shapes)
    family = family_of_keys(keys, str(path))
    config = _single_file_config(family, cfg, shapes)
    kwargs = _family_kwargs(family, cfg)
    if family is SD3 and T5_KEY not in keys and "text_encoder_3" not in kwargs:
        log.info("%s holds no T5 weights: prompts are encoded by the two CLIP encoders only", path.name)
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    pipe = _wrap(family, str(path), lambda: _class(family.txt2img).from_single_file(
        str(path), config=str(config), dtype=dtype, local_files_only=True, **kwargs))
    return family, pipe


class _Shape:
    """A tensor's shape from the safetensors header, as diffusers' model-type inference reads it."""

    def __init__(self, shape: list[int]) -> None:
        self.shape = tuple(shape)


def _reference_config(family: Family, shapes: dict[str, _Shape]) -> Path:
    """The released model's configs the file was made from, from the local Hugging Face cache only."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS, infer_diffusers_model_type
    from huggingface_hub import snapshot_download

    inferred = infer_diffusers_model_type(shapes)
    model_type = inferred if inferred in _REFERENCE_TYPES[family.key] else _REFERENCE_TYPES[family.key][0]
    repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS[model_type]["pretrained_model_name_or_path"]
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:
        raise ModelUnavailable(
            f"the file is a {family.title} checkpoint; its component configs and tokenizers ({repo}) are not in the "
            f"local Hugging Face cache and are never downloaded here. Set single_file_config to a diffusers folder "
            f"of that family (weights not needed), or run `huggingface-cli download {repo} --include '*.json' "
            f"'*.txt' '*.model'` on a machine with network access and copy ~/.cache/huggingface") from None


def _single_file_config(family: Family, cfg: LoadConfig, shapes: dict[str, _Shape]) -> Path:
    """The diffusers config folder for a single file of ``family``; its family must match."""
    if cfg.single_file_config is not None:
        config = Path(cfg.single_file_config).expanduser()
        if not config.is_dir():
            raise ModelUnavailable(f"single_file_config {config} is not a folder; point it at a diffusers folder of "
                                   f"a {family.title} model (its weights are not needed)")
    else:
        config = _reference_config(family, shapes)
    described = family_of_index(_read_index(config, str(config)), str(config))
    if described is not family:
        raise ModelUnavailable(f"the checkpoint is {family.title} but single_file_config {config} describes "
                               f"{described.title}; point single_file_config at a {family.title} diffusers folder")
    return config


def _inpaint_unet(family: Family, folder: str, dtype: Any) -> Any:
    """The folder's separate 9-channel inpaint UNet (``unet_inpaint/``), if it has one."""
    if family.denoiser != "unet" or not (Path(folder) / "unet_inpaint" / "config.json").is_file():
        return None
    from diffusers import UNet2DConditionModel

    return _wrap(family, f"{folder}/unet_inpaint", lambda: UNet2DConditionModel.from_pretrained(
        folder, subfolder="unet_inpaint", dtype=dtype, use_safetensors=True))


def _assemble(family: Family, fmt: str, pipe: Any, inpaint_unet: Any, cfg: LoadConfig, device: Any,
              dtype: Any) -> Pipelines:
    denoiser = getattr(pipe, family.denoiser)
    if family.denoiser == "unet" and denoiser.config.in_channels == 9:
        inpaint_unet = denoiser  # an inpainting checkpoint: no txt2img UNet
    has_inpaint = inpaint_unet is not None and inpaint_unet.config.in_channels == 9
    for module in pipe.components.values():  # from_single_file leaves the T5 encoder in training mode (dropout)
        if hasattr(module, "eval") and hasattr(module, "parameters"):
            module.eval()
    pipe.to(device)
    extra = {"unet": inpaint_unet.to(device)} if has_inpaint else {}
    img2img = sharing(_class(family.img2img), pipe)
    inpaint = sharing(_class(family.inpaint), pipe, **extra)
    loaded = Pipelines(family, fmt, pipe, img2img, inpaint, has_inpaint)
    if cfg.refiner:
        loaded.refiner = _load_refiner(family, pipe, cfg.refiner, device, dtype)
    for p in (loaded.txt2img, loaded.img2img, loaded.inpaint, loaded.refiner):
        if p is not None:
            p.set_progress_bar_config(disable=True)
    return loaded


def sharing(cls: Any, pipe: Any, **components: Any) -> Any:
    """A ``cls`` pipeline on ``pipe``'s own modules and options, cast to nothing.

    What ``from_pipe`` does (same modules, the options both classes take) without its final
    ``.to(dtype)``, which would cast modules loaded partly in float32 on purpose: T5's ``wo``
    layers (``_keep_in_fp32_modules``) overflow in float16.
    """
    modules, options = cls._get_signature_keys(cls)
    kwargs = {k: v for k, v in pipe.components.items() if k in modules}
    kwargs |= {k: v for k, v in pipe.config.items() if k in options and not k.startswith("_")}
    return cls(**(kwargs | components))


def _load_refiner(family: Family, base: Any, refiner: str, device: Any, dtype: Any) -> Any:
    """An SDXL refiner sharing the base's VAE and second text encoder."""
    if family is not SDXL:
        raise ModelUnavailable(f"refiner {refiner!r} is set but the served model is {family.title}; a refiner "
                               f"works with Stable Diffusion XL only: unset refiner")
    folder = local_folder(refiner)
    index = _read_index(folder, refiner)
    unet = index.get("unet")
    if not (isinstance(unet, list) and index.get("text_encoder_2") and index.get("requires_aesthetics_score")):
        raise ModelUnavailable(f"refiner {refiner!r} is not an SDXL refiner folder (a UNet, the second text encoder "
                               f"and requires_aesthetics_score in model_index.json)")
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = _wrap(family, refiner, lambda: StableDiffusionXLImg2ImgPipeline.from_pretrained(
        folder, text_encoder_2=base.text_encoder_2, vae=base.vae, dtype=dtype, use_safetensors=True,
        add_watermarker=False))
    return pipe.to(device)
