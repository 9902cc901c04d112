"""The diffusion families the service runs, and how a checkpoint tells which one it is.

A ``Family`` says everything that differs between SD 1.x/2.x, SDXL, SD 3 and FLUX.1 as far
as serving is concerned: its diffusers pipeline classes, the denoiser attribute (a UNet or
an MMDiT transformer), the schedulers it can run (DDPM-style samplers, or flow matching for
SD 3 and FLUX), latent -> RGB factors for cheap previews, the LoRA file formats diffusers can
load for it, whether StartFineTune trains it, and whether it takes a negative prompt (FLUX.1 is
guidance-distilled). Which control models run with it: ``controlargs.py``.

Detection reads a diffusers folder's ``model_index.json`` (its components, then its class
name), or the tensor names of a single-file checkpoint (the original layouts: LDM for
SD 1.x/2.x, SGM for SDXL, MMDiT for SD 3, Black Forest Labs' ``double_blocks`` for FLUX.1).
A checkpoint of any other family fails at start-up with a message that names it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from common.errors import FailedPrecondition, InvalidArgument, ModelUnavailable

# Canonical scheduler names and the spellings clients may use for them.
SCHEDULER_ALIASES: dict[str, str] = {
    "ddim": "ddim",
    "euler": "euler",
    "euler-a": "euler-a",
    "euler_a": "euler-a",
    "euler-ancestral": "euler-a",
    "dpm++": "dpm++",
    "dpmpp": "dpm++",
    "dpm++2m": "dpm++",
    "dpm++ 2m": "dpm++",
    "flow-euler": "euler",
}
SCHEDULER_NAMES = ("ddim", "euler", "euler-a", "dpm++")

# Latent -> RGB linear maps for "approx" previews (as A1111 / ComfyUI use them): one row per
# latent channel, plus a bias. SD 1.x: A1111's factors; SDXL and SD 3: ComfyUI's.
_SD_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
_SDXL_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
             (-0.3165, -0.2492, -0.2188))
_SD3_RGB = (
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
    (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
    (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189),
)
# FLUX.1 (ComfyUI's factors for its 16-channel VAE)
_FLUX_RGB = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
)


@dataclass(frozen=True)
class Family:
    """What serving needs to know about one Stable Diffusion family."""

    key: str  # "sd", "sdxl", "sd3": ModelInfo details["family"], ListAdapters' family
    title: str
    txt2img: str  # diffusers pipeline class names
    img2img: str
    inpaint: str
    denoiser: str  # pipeline attribute of the denoising network
    text_encoders: tuple[str, ...]  # pipeline attributes, in prompt order
    schedulers: tuple[str, ...]  # canonical names it can run; the first is the default
    rgb_factors: tuple[tuple[float, float, float], ...]
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lora_formats: tuple[str, ...] = ("diffusers", "kohya")
    finetune: bool = True
    negative_prompt: bool = True  # False: guidance-distilled (FLUX.1), no unconditional branch
    default_guidance: float = 7.5  # when a request leaves guidance_scale unset

    @property
    def default_scheduler(self) -> str:
        return self.schedulers[0]

    def scheduler(self, name: str) -> str:
        """The canonical scheduler for ``name`` ("" = the family default), checked against the family."""
        if not name:
            return self.default_scheduler
        canonical = SCHEDULER_ALIASES.get(name.strip().lower())
        if canonical is None:
            raise InvalidArgument(f"unknown scheduler {name!r}; {self.title} runs {', '.join(self.schedulers)}")
        if canonical not in self.schedulers:
            raise FailedPrecondition(
                f"scheduler {name!r} is not available for {self.title} (a "
                f"{'flow-matching' if self.flow_matching else 'noise-prediction'} model); use "
                f"{' or '.join(self.schedulers)}")
        return canonical

    @property
    def flow_matching(self) -> bool:
        return self.key in ("sd3", "flux")

    @property
    def packed_latents(self) -> bool:
        """FLUX.1 denoises 2x2 patches of the latents packed into a sequence (unpacked for previews)."""
        return self.key == "flux"


SD = Family("sd", "Stable Diffusion 1.x/2.x", "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
            "StableDiffusionInpaintPipeline", "unet", ("text_encoder",), ("ddim", "euler", "euler-a", "dpm++"),
            _SD_RGB)
SDXL = Family("sdxl", "Stable Diffusion XL", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
              "StableDiffusionXLInpaintPipeline", "unet", ("text_encoder", "text_encoder_2"),
              ("euler", "ddim", "euler-a", "dpm++"), _SDXL_RGB, (0.1084, -0.0175, -0.0011))
SD3 = Family("sd3", "Stable Diffusion 3", "StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
             "StableDiffusion3InpaintPipeline", "transformer", ("text_encoder", "text_encoder_2", "text_encoder_3"),
             ("euler",), _SD3_RGB, (0.2394, 0.2135, 0.1925), lora_formats=("diffusers",), finetune=False)
FLUX = Family("flux", "FLUX.1", "FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "transformer",
              ("text_encoder", "text_encoder_2"), ("euler",), _FLUX_RGB, (-0.0329, -0.0718, -0.0851),
              lora_formats=("diffusers",), finetune=False, negative_prompt=False, default_guidance=3.5)
FAMILIES = {f.key: f for f in (SD, SDXL, SD3, FLUX)}

_BY_CLASS = {cls: f for f in FAMILIES.values() for cls in (f.txt2img, f.img2img, f.inpaint)}

# Families people point the server at that it does not run, by pipeline class or tensor name.
_UNSUPPORTED_CLASSES = {
    "FluxFillPipeline": "FLUX.1 Fill", "FluxControlPipeline": "FLUX.1 Canny/Depth", "Flux2Pipeline": "FLUX.2",
    "StableCascadeDecoderPipeline": "Stable Cascade",
    "StableCascadePriorPipeline": "Stable Cascade", "StableCascadeCombinedPipeline": "Stable Cascade",
    "PixArtAlphaPipeline": "PixArt-α", "PixArtSigmaPipeline": "PixArt-Σ", "KandinskyV22Pipeline": "Kandinsky 2.2",
    "AuraFlowPipeline": "AuraFlow", "HunyuanDiTPipeline": "Hunyuan-DiT", "SanaPipeline": "Sana",
    "StableDiffusionUpscalePipeline": "the SD x4 upscaler", "StableDiffusionXLInstructPix2PixPipeline":
    "InstructPix2Pix XL", "StableDiffusionInstructPix2PixPipeline": "InstructPix2Pix", "LCMPipeline": "LCM",
}
_UNSUPPORTED_KEYS = (("single_stream_modulation.", "FLUX.2"),
                     ("single_transformer_blocks.", "a FLUX.1 transformer in the diffusers layout (serve its diffusers "
                      "folder, or the original Black Forest Labs file)"),
                     ("down_blocks.1.0.channelwise", "Stable Cascade"), ("clip_txt_mapper.", "Stable Cascade"),
                     ("cap_embedder.", "Lumina"), ("conditioner.embedders.0.model.", "an SDXL refiner"))
SUPPORTED = ("Stable Diffusion 1.x/2.x, Stable Diffusion XL (base), Stable Diffusion 3 / 3.5 and FLUX.1 [dev] / "
             "[schnell]")
# diffusers' own marker of a FLUX.1 transformer in Black Forest Labs' layout (bare, or under ComfyUI's prefix)
_FLUX_KEYS = ("double_blocks.0.img_attn.norm.key_norm.scale",
              "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale")


def unsupported(what: str, source: str) -> ModelUnavailable:
    return ModelUnavailable(f"{source} is {what}, which this server does not run; it serves {SUPPORTED}")


def family_of_index(index: dict[str, object], source: str) -> Family:
    """The family of a diffusers folder from its ``model_index.json`` (components first, then class)."""
    cls = str(index.get("_class_name", ""))
    if cls in _UNSUPPORTED_CLASSES:
        raise unsupported(_UNSUPPORTED_CLASSES[cls], source)

    def component(name: str) -> str:
        value = index.get(name)
        return str(value[1]) if isinstance(value, list) and len(value) == 2 and value[1] else ""

    if component("transformer") == "SD3Transformer2DModel":
        return SD3
    if component("transformer") == "FluxTransformer2DModel" and cls in _BY_CLASS:
        return FLUX
    if component("unet") and component("text_encoder_2"):
        if not component("text_encoder"):
            raise unsupported("an SDXL refiner (it has no first text encoder)", source)
        return SDXL
    if component("unet") and component("text_encoder") and cls in _BY_CLASS:
        return _BY_CLASS[cls]
    raise unsupported(f"a {cls or 'pipeline of unknown class'}", source)


def family_of_keys(keys: Iterable[str], source: str) -> Family:
    """The family of a single-file checkpoint from its tensor names (original layouts)."""
    names = list(keys)
    for marker, name in _UNSUPPORTED_KEYS:
        if any(marker in k for k in names):
            raise unsupported(name, source)
    if any(k in _FLUX_KEYS for k in names):
        return FLUX
    if any(k.startswith(("model.diffusion_model.joint_blocks.", "joint_blocks.")) for k in names):
        return SD3
    if any(k.startswith(("conditioner.embedders.1.", "model.diffusion_model.label_emb.")) for k in names):
        return SDXL
    if any(k.startswith("model.diffusion_model.input_blocks.") for k in names):
        return SD
    raise unsupported("not a checkpoint of a known Stable Diffusion layout (no UNet or MMDiT weights found)",
                      source)
