"""One image with ComfyUI's own sampler, for training previews (comparison grids render in batches: cells.py)."""

from __future__ import annotations

import torch
from PIL import Image

import comfy.sample

from ..core.draw import image_tensor_to_pil


def render_image(model_patcher, positive, negative, vae, *, seed: int, steps: int, cfg: float, sampler: str,
                 scheduler: str, width: int, height: int, denoise: float = 1.0) -> Image.Image:
    """Samples an empty latent of (width, height) with the given conditioning and decodes it to a PIL image."""
    channels = model_patcher.model.latent_format.latent_channels
    latent = torch.zeros(1, channels, height // 8, width // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(model_patcher, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                                  denoise=denoise, seed=seed, disable_pbar=True)
    pixels = vae.decode(samples)  # (1, H, W, 3) in 0..1
    return image_tensor_to_pil(pixels[:1])[0]  # 8-bit as ComfyUI's SaveImage makes it, as grid cells are
