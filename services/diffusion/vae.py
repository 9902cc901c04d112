"""Every VAE call of the service: the dtype it runs in, its memory settings, and leaving it as found.

- ``force_upcast``: a VAE whose config sets it (SDXL's, SD 1.x's) overflows to NaN in float16
  at real sizes, so a float16 VAE runs such calls in float32 (``decode``, ``encode``: the
  service's previews, style/img2img latents and LoRA-training latents) and is cast back in a
  ``finally`` block.
- ``for_call`` wraps a diffusers pipeline call: the SDXL pipelines upcast the VAE for their own
  decode/encode and cast it back only when that succeeds, so an exception there (running out
  of memory at 1024x1024 is the usual one) would leave it in float32 and every later request
  would fail on mismatched dtypes. It also sets slicing (decode a batch one image at a time)
  and tiling (images over ``vae_tiling_pixels`` in overlapping tiles) for the call's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def run_dtype(vae: Any) -> Any:
    """The dtype the VAE's calls run in: float32 for a float16 VAE whose config says ``force_upcast``."""
    import torch

    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return torch.float32
    return vae.dtype


@contextmanager
def kept_dtype(vae: Any) -> Iterator[None]:
    """Whatever happens inside, the VAE leaves in the dtype it came in."""
    dtype = vae.dtype
    try:
        yield
    finally:
        if vae.dtype != dtype:
            vae.to(dtype=dtype)


@contextmanager
def upcast(vae: Any) -> Iterator[Any]:
    """The VAE in ``run_dtype`` inside (yielded), in its own dtype again afterwards."""
    with kept_dtype(vae):
        dtype = run_dtype(vae)
        if dtype != vae.dtype:
            vae.to(dtype=dtype)
        yield dtype


def decode(vae: Any, latents: Any) -> Any:
    """Pixels in [-1, 1] of latents as the denoiser sees them (scaled and shifted)."""
    import torch

    cfg = vae.config
    unscaled = latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
    with torch.no_grad(), upcast(vae) as dtype:
        return vae.decode(unscaled.to(dtype), return_dict=False)[0]


def encode(vae: Any, pixels: Any) -> Any:
    """Latents (scaled and shifted as the denoiser sees them) of pixels in [-1, 1]; the distribution's mode."""
    import torch

    cfg = vae.config
    with torch.no_grad(), upcast(vae) as dtype:
        mode = vae.encode(pixels.to(dtype)).latent_dist.mode()
    return ((mode - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor).to(vae.dtype)


def set_memory(vae: Any, width: int, height: int, slicing: bool, tiling_pixels: int) -> None:
    """Slicing as configured; tiling for images of more than ``tiling_pixels`` pixels (0 = never)."""
    if slicing:
        vae.enable_slicing()
    else:
        vae.disable_slicing()
    if tiling_pixels and width * height > tiling_pixels:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


@contextmanager
def for_call(vae: Any, width: int, height: int, slicing: bool, tiling_pixels: int) -> Iterator[None]:
    """Around a pipeline call: memory settings for its size, and the VAE's dtype restored afterwards."""
    set_memory(vae, width, height, slicing, tiling_pixels)
    with kept_dtype(vae):
        yield
