"""Controlled generation on the served model: ControlNets, T2I-Adapters and IP-Adapters.

``check`` runs when the engine accepts a request (any RPC thread): every named model exists
(NOT_FOUND listing the available ones), was made for the served family (FAILED_PRECONDITION naming
both), and diffusers runs that combination in that mode. Everything else runs on the engine's
worker thread, like every model call:

- ``pipeline``: the family's controlled pipeline built from the served pipeline's own modules and
  the control models (``Class(**pipe.components, controlnet=…)``: no second copy of the base
  weights), kept per (mode, control models) until one of those models leaves the cache.
- ``batch``: the control maps of every image (preprocessed once per request, at the output
  size) and the per-control scales and guidance windows; and the IP-Adapter loaded into the
  shared denoiser (``load_ip_adapter``, its image encoder from the cache) or unloaded when a
  batch has none, like LoRA adapters; each image gets the embeddings of its own request's
  reference images, so requests with different references batch together.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import tempfile
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.diffusion.controlargs import PIPELINES, TITLES, check_supported, check_windows, control_kwargs, modes
from services.diffusion.controlmodels import FILE, IP_ADAPTER, T2I_ADAPTER, ControlFile, ControlFiles, ModelCache
from services.diffusion.controltypes import ImagePrompt
from services.diffusion.engine import BatchItem
from services.diffusion.events import ControlModelInfo
from services.diffusion.families import FAMILIES, Family
from services.diffusion.preprocess import DepthModel, Preprocessors
from services.diffusion.settings import ControlConfig
from services.diffusion.types import GenerateRequest

if TYPE_CHECKING:
    from services.diffusion.runner import DiffusersRunner

_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


class Controls:
    """The control models of one served checkpoint."""

    def __init__(self, cfg: ControlConfig, device: Any, dtype: Any) -> None:
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.files = ControlFiles(cfg.controlnet_dir, cfg.ip_adapter_dir)
        self.cache = ModelCache(cfg.control_cache_mb * 2**20, on_evict=self._forget)
        self.preprocessors = Preprocessors(self._depth if cfg.depth_model else None)
        self.family: Family = FAMILIES["sd"]
        self.width, self.channels = 0, ()
        self._runner: DiffusersRunner | None = None
        self._pipelines: dict[tuple[str, str, tuple[str, ...]], Any] = {}
        self._active_ip: dict[int, tuple[str, int]] = {}  # id(plain pipeline) -> IP-Adapter file version in it
        self._config_dir: tempfile.TemporaryDirectory[str] | None = None
        self._keep: frozenset[str] = frozenset()  # cache keys the running batch uses

    def bind(self, runner: DiffusersRunner) -> None:
        """The served model (its family and UNet widths decide what fits)."""
        self.close()
        self._runner, self.family = runner, runner.family
        self.width = runner.cross_attention_width()
        unet = runner.denoiser if self.family.denoiser == "unet" else None
        self.channels = tuple(unet.config.block_out_channels) if unet is not None else ()

    def close(self) -> None:
        self.cache.clear()
        self._pipelines.clear()
        self._active_ip = {}
        if self._config_dir is not None:
            self._config_dir.cleanup()
            self._config_dir = None

    # ----------------------------------------------------------------- catalogue
    def family_of(self, f: ControlFile) -> str:
        """What ``f`` was made for; files that do not tell are matched against the served UNet."""
        if f.family:
            return f.family
        served_unet = self.family.denoiser == "unet"
        if served_unet and f.kind == T2I_ADAPTER and f.channels and f.channels == self.channels:
            return self.family.key
        if served_unet and f.kind == IP_ADAPTER and f.cross_width and f.cross_width == self.width:
            return self.family.key
        return ""

    def list(self) -> list[ControlModelInfo]:
        out = []
        for key, found in (("c", self.files.controls()), ("ip", self.files.ip_adapters())):
            for f in found.values():
                family = self.family_of(f)
                fits = family == self.family.key and self._width_fits(f)
                out.append(ControlModelInfo(f.name, f.kind, family, f.format, f.class_name, f.size_bytes,
                                            f"{key}:{f.name}" in self.cache,
                                            modes(family, f.kind) if fits else ()))
        return sorted(out, key=lambda m: (m.name, m.kind))

    def _find(self, name: str, ip: bool) -> ControlFile:
        found = self.files.ip_adapters() if ip else self.files.controls()
        if name not in found:
            what = "ip_adapter" if ip else "controlnet"
            have = ", ".join(sorted(found)) or f"none (set {'ip_adapter_dir' if ip else 'controlnet_dir'})"
            raise NotFound(f"{what} {name!r} does not exist; available: {have} (ListControlNets)")
        return found[name]

    def _width_fits(self, f: ControlFile) -> bool:
        return not (f.cross_width and self.width and f.cross_width != self.width)

    def _fits(self, f: ControlFile) -> None:
        family, title = self.family_of(f), TITLES[f.kind]
        if family and family != self.family.key:
            made = FAMILIES[family].title if family in FAMILIES else family
            raise FailedPrecondition(
                f"{title} {f.name!r} was made for {made} but this server runs {self.family.title}; use a {title} "
                f"made for {self.family.title} (ListControlNets shows each one's family) or serve a {made} model")
        if not family:
            raise FailedPrecondition(f"{title} {f.name!r} does not fit the served {self.family.title} model (its "
                                     f"layers do not match the served checkpoint's)")
        if not self._width_fits(f):
            made = _WIDTHS.get(f.cross_width, f"a model with {f.cross_width}-wide text embeddings")
            raise FailedPrecondition(
                f"{title} {f.name!r} was made for {made} ({f.cross_width}-wide text embeddings); the served "
                f"{self.family.title} model's are {self.width} wide: use one made for the served checkpoint")

    # ----------------------------------------------------------------- requests (any thread)
    def check(self, request: GenerateRequest) -> None:
        rc = request.controls
        if rc.empty:
            return
        kinds = []
        for i, c in enumerate(rc.controls):
            f = self._find(c.model, ip=False)
            if c.kind and c.kind != f.kind:
                raise InvalidArgument(f"controls[{i}] says kind {c.kind} but {c.model!r} is a {TITLES[f.kind]}; "
                                      f"leave kind unspecified or name a {TITLES[c.kind]}")
            self._fits(f)
            self.preprocessors.check(c.preprocess)
            kinds.append(f.kind)
        if len(set(kinds)) > 1:
            raise InvalidArgument("a request's controls must all be ControlNets or all T2I-Adapters: diffusers has "
                                  "no pipeline that runs both")
        kind = kinds[0] if kinds else None
        prompt = rc.image_prompt
        if prompt is not None:
            f = self._find(prompt.adapter, ip=True)
            self._fits(f)
            self._check_encoder(f)
        check_supported(self.family, kind, request.mode, prompt is not None)
        if kind is not None:
            check_windows(self.family, kind, rc.controls)

    def _check_encoder(self, f: ControlFile) -> None:
        if f.encoder is None:
            raise FailedPrecondition(f"IP-Adapter {f.name!r} has no image encoder: put its CLIP image encoder "
                                     f"(CLIPVisionModelWithProjection folder) in image_encoder/ beside it")
        try:
            config = json.loads((f.encoder / "config.json").read_text())
        except (OSError, ValueError):
            raise FailedPrecondition(f"IP-Adapter {f.name!r}: {f.encoder} has no readable config.json") from None
        width = {int(config.get("projection_dim") or 0), int(config.get("hidden_size") or 0)}
        if f.embed_dim and f.embed_dim not in width:
            raise FailedPrecondition(f"IP-Adapter {f.name!r} takes {f.embed_dim}-wide image embeddings but its image "
                                     f"encoder {f.encoder} gives {max(width)}: pair it with the encoder it was "
                                     f"trained with")

    # ----------------------------------------------------------------- loading (worker thread)
    def _load(self, f: ControlFile) -> Any:
        import diffusers

        try:
            if f.kind == IP_ADAPTER:
                from transformers import CLIPVisionModelWithProjection

                assert f.encoder is not None, "checked when the request was accepted"
                model = CLIPVisionModelWithProjection.from_pretrained(f.encoder, dtype=self.dtype)
            elif f.format == FILE:
                model = diffusers.ControlNetModel.from_single_file(
                    str(f.path), config=self._derived_config(), dtype=self.dtype, local_files_only=True)
            else:
                model = getattr(diffusers, f.class_name).from_pretrained(f.path, dtype=self.dtype,
                                                                         use_safetensors=True)
        except Exception as exc:
            raise FailedPrecondition(f"{TITLES[f.kind]} {f.name!r} could not be loaded from {f.path}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        return model.to(self.device).eval()

    def _derived_config(self) -> str:
        """A ControlNet config derived from the served UNet (what a ControlNet of this base model has)."""
        if self._config_dir is None:
            from accelerate import init_empty_weights  # type: ignore[import-untyped]
            from diffusers import ControlNetModel

            assert self._runner is not None
            with init_empty_weights():
                config = ControlNetModel.from_unet(self._runner.denoiser, load_weights_from_unet=False).config
            self._config_dir = tempfile.TemporaryDirectory(prefix="controlnet-config-")
            Path(self._config_dir.name, "config.json").write_text(json.dumps(dict(config), default=list))
        return self._config_dir.name

    def _depth(self) -> DepthModel:
        def load() -> DepthModel:
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            from services.core.loading import pretrained_source

            source, kwargs = pretrained_source(self.cfg.depth_model)
            try:
                model = AutoModelForDepthEstimation.from_pretrained(source, dtype=self.dtype, **kwargs)
                processor = AutoImageProcessor.from_pretrained(source, **kwargs)
            except Exception as exc:
                raise FailedPrecondition(f"depth_model {self.cfg.depth_model!r} could not be loaded: "
                                         f"{type(exc).__name__}: {exc}") from exc
            return model.to(self.device).eval(), processor

        return self.cache.get("depth", load, self._keep)  # type: ignore[no-any-return]

    def _forget(self, key: str) -> None:
        kind, _, name = key.partition(":")
        if kind == "c":
            self._pipelines = {k: p for k, p in self._pipelines.items() if name not in k[2]}

    # ----------------------------------------------------------------- batches (worker thread)
    def pipeline(self, base: Any, request: GenerateRequest) -> Any:
        """``base`` itself, or the controlled pipeline over its modules for ``request``'s controls."""
        rc = request.controls
        names = tuple(c.model for c in rc.controls)
        self._keep = frozenset([f"c:{n}" for n in names] + ([f"ip:{rc.image_prompt.adapter}"]
                                                             if rc.image_prompt else []))
        if not names:
            return base
        found = self.files.controls()
        models = [self.cache.get(f"c:{n}", partial(self._load, found[n]), self._keep) for n in names]
        kind = found[names[0]].kind
        key = (request.mode, kind, names)
        if key not in self._pipelines:
            import diffusers

            cls = getattr(diffusers, PIPELINES[(self.family.key, kind, request.mode)])
            accepted = inspect.signature(cls.__init__).parameters
            parts = {k: v for k, v in base.components.items() if k in accepted}
            if "requires_safety_checker" in accepted:
                parts["requires_safety_checker"] = False
            slot = "adapter" if kind == T2I_ADAPTER else "controlnet"
            pipe = cls(**parts, **{slot: models[0] if len(models) == 1 else models})
            pipe.set_progress_bar_config(disable=True)
            self._pipelines[key] = pipe
        return self._pipelines[key]

    @contextlib.contextmanager
    def batch(self, pipe: Any, items: Sequence[BatchItem]) -> Iterator[dict[str, Any]]:
        """Set the served model up for the batch; yields the controlled pipeline's extra arguments."""
        with self._image_prompt(pipe, items) as ip_args, self._control_latents(pipe):
            yield self._control_args(items) | ip_args

    def _control_args(self, items: Sequence[BatchItem]) -> dict[str, Any]:
        """Control maps (made now, once per request, at the output size), scales and windows."""
        first = items[0].request
        controls = first.controls.controls
        if not controls:
            return {}
        w, h = first.params.width, first.params.height
        maps = [[self.preprocessors.control_map(it.request.controls.controls[j], w, h)
                 for it in items for _ in it.seeds] for j in range(len(controls))]
        kind = self.files.controls()[controls[0].model].kind
        return control_kwargs(self.family, kind, first.mode, controls, maps)

    @contextlib.contextmanager
    def _control_latents(self, pipe: Any) -> Iterator[None]:
        """SD 3 ControlNets get the control image's VAE posterior mean, as ComfyUI does.

        diffusers' StableDiffusion3ControlNetPipeline draws a posterior *sample* from torch's global
        random state (no generator), so the same seed would not give the same bytes. FLUX.1's
        ControlNet pipelines draw it from the request's generators: deterministic, kept as they are.
        """
        if self.family.key != "sd3" or not hasattr(pipe, "controlnet"):
            yield
            return
        vae, encode = pipe.vae, pipe.vae.encode

        def encode_mean(x: Any, return_dict: bool = True) -> Any:
            out = encode(x, return_dict=return_dict)
            dist = out.latent_dist if return_dict else out[0]
            dist.sample = lambda generator=None: dist.mode()
            return out

        vae.encode = encode_mean
        try:
            yield
        finally:
            del vae.encode

    @contextlib.contextmanager
    def _image_prompt(self, pipe: Any, items: Sequence[BatchItem]) -> Iterator[dict[str, Any]]:
        """The IP-Adapter state for the batch; yields the pipeline arguments that carry it."""
        prompt = items[0].request.controls.image_prompt
        owner = self._owner(pipe)
        self._activate(owner, prompt)
        if prompt is None:
            yield {}
            return
        pos, neg = self._embeds(owner, items)

        def prepare(ip_adapter_image: Any, ip_adapter_image_embeds: Any, device: Any, num_images_per_prompt: int,
                    do_classifier_free_guidance: bool = False) -> list[Any]:
            import torch

            return [torch.cat([neg, pos]) if do_classifier_free_guidance else pos]

        # each image its own references: diffusers would give every image the same ones
        pipe.prepare_ip_adapter_image_embeds = prepare
        try:
            yield {"ip_adapter_image_embeds": [pos]}
        finally:
            del pipe.prepare_ip_adapter_image_embeds

    def unload_image_prompts(self) -> None:
        """Take every IP-Adapter out of the denoisers (before a LoRA training step, which runs the UNet
        without image embeddings)."""
        if self._active_ip and self._runner is not None:
            for owner in {id(p): p for p in (self._runner.pipes.txt2img, self._runner.pipes.inpaint)}.values():
                self._activate(owner, None)

    def _owner(self, pipe: Any) -> Any:
        """The served pipeline owning ``pipe``'s denoiser (the inpaint one for a separate inpaint UNet)."""
        assert self._runner is not None
        pipes, attr = self._runner.pipes, self.family.denoiser
        denoiser = getattr(pipe, attr)
        return pipes.inpaint if denoiser is not pipes.denoiser and denoiser is getattr(pipes.inpaint, attr) \
            else pipes.txt2img

    def _activate(self, owner: Any, prompt: ImagePrompt | None) -> None:
        """Load, swap or unload the IP-Adapter of ``owner``'s denoiser, as LoRA adapters are switched."""
        active = self._active_ip.get(id(owner))
        if prompt is None:
            if active is not None:
                owner.unload_ip_adapter()
                del self._active_ip[id(owner)]
            return
        f = self.files.ip_adapters()[prompt.adapter]
        encoder = self.cache.get(f"ip:{f.name}", lambda: self._load(f), self._keep)
        version = (str(f.path / f.weights), (f.path / f.weights).stat().st_mtime_ns)
        if active != version:
            if active is not None:
                owner.unload_ip_adapter()
            owner.register_modules(image_encoder=encoder)  # first: load_ip_adapter then loads no encoder itself
            owner.load_ip_adapter(str(f.path), subfolder="", weight_name=f.weights, image_encoder_folder=None,
                                  local_files_only=True, low_cpu_mem_usage=False)
            self._active_ip[id(owner)] = version
        elif owner.image_encoder is not encoder:
            owner.register_modules(image_encoder=encoder)
        owner.set_ip_adapter_scale(prompt.scale)

    def _embeds(self, base: Any, items: Sequence[BatchItem]) -> tuple[Any, Any]:
        """(image, negative) embeddings of every image's references, shaped (batch, references, …)."""
        import torch

        assert self._runner is not None
        device = self._runner.device
        pos, neg = [], []
        with torch.no_grad():
            for it in items:
                prompt = it.request.controls.image_prompt
                assert prompt is not None, "one batch, one IP-Adapter key"
                if self.family.key == "flux":
                    embeds = base.encode_image(prompt.images, device, 1)
                    negative = torch.zeros_like(embeds)  # never used: FLUX.1 runs no negative branch
                else:
                    layer = base.unet.encoder_hid_proj.image_projection_layers[0]
                    hidden = type(layer).__name__ != "ImageProjection"
                    embeds, negative = base.encode_image(prompt.images, device, 1, hidden)
                pos += [embeds] * len(it.seeds)
                neg += [negative] * len(it.seeds)
        return torch.stack(pos), torch.stack(neg)
