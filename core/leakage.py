"""How much a LoRA changes images it should leave alone: distances between a base render and the same render (same
prompt, seed and settings) with the LoRA, per pair, per prompt and overall.

Nothing here knows ComfyUI. Images are RGB arrays or PIL images (values 0..255 for 8-bit, 0..1 for floats); latents
are any two tensors or arrays of the same shape (the node passes VAE encodings of both renders).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

CHANGED_THRESHOLD = 0.1  # a pixel counts as changed when some channel moved more than this (0..1 scale)
HEATMAP_GAIN = 4.0  # the sheet's difference column shows |A - B| x 4, so small leaks are visible
MEASURES = ("pixel_rmse", "pixel_mae", "changed", "latent_rmse")
MEANINGS = {
    "pixel_rmse": "root mean square of the RGB difference, 0..1 scale (0 = identical); weighs large local "
                  "changes more than small spread ones",
    "pixel_mae": "mean absolute RGB difference, 0..1 scale (0 = identical); the average colour change per pixel",
    "changed": f"share of pixels where some channel moved more than {CHANGED_THRESHOLD:g} (0..1); high with a small "
               "RMSE means a spread change such as a style or colour shift",
    "latent_rmse": "root mean square difference of the VAE encodings of both rendered images (the model's latent "
                   "space, as VAE Encode outputs it); 0 = identical",
}


def as_unit_array(image, what: str = "image") -> np.ndarray:
    """An image as a float64 (H, W, C) array in 0..1: PIL images and uint8 arrays are divided by 255."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]  # greyscale: one channel
    if array.ndim != 3:
        raise ValueError(f"{what} must be an (H, W, C) image; got shape {tuple(array.shape)}.")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or infinite values; render it again (a sampler or VAE produced them).")
    return array


def _pair(a, b, convert) -> tuple[np.ndarray, np.ndarray]:
    a, b = convert(a, "base image"), convert(b, "LoRA image")
    if a.shape != b.shape:
        raise ValueError(f"The two images to compare must have the same shape; got {tuple(a.shape)} (base) and "
                         f"{tuple(b.shape)} (LoRA). Render both with the same width and height.")
    return a, b


def pixel_rmse(a, b) -> float:
    """sqrt(mean((A - B)^2)) over every pixel and channel, 0..1 scale."""
    a, b = _pair(a, b, as_unit_array)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def pixel_mae(a, b) -> float:
    """mean(|A - B|) over every pixel and channel, 0..1 scale."""
    a, b = _pair(a, b, as_unit_array)
    return float(np.mean(np.abs(a - b)))


def changed_share(a, b, threshold: float = CHANGED_THRESHOLD) -> float:
    """Share of pixels whose largest channel difference exceeds `threshold` (0..1 scale)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold is {threshold!r}; expected a number from 0 to below 1.")
    a, b = _pair(a, b, as_unit_array)
    return float(np.mean(np.abs(a - b).max(axis=-1) > threshold))


def _latent_array(latent, what: str) -> np.ndarray:
    if hasattr(latent, "detach"):  # a torch tensor: to the CPU without keeping a graph
        latent = latent.detach().float().cpu().numpy()
    array = np.asarray(latent, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"The {what} latent holds NaN or infinite values; check the VAE.")
    return array


def latent_rmse(a, b) -> float:
    """sqrt(mean((a - b)^2)) of two latents of the same shape (e.g. VAE encodings of the two renders)."""
    a, b = _latent_array(a, "base"), _latent_array(b, "LoRA")
    if a.shape != b.shape:
        raise ValueError(f"The two latents to compare must have the same shape; got {tuple(a.shape)} (base) and "
                         f"{tuple(b.shape)} (LoRA). Encode both images with the same VAE at the same size.")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def pair_distances(a, b, latent_a=None, latent_b=None) -> dict:
    """Every measure of one base / LoRA pair (latent_rmse only when both latents are given)."""
    out = {"pixel_rmse": pixel_rmse(a, b), "pixel_mae": pixel_mae(a, b), "changed": changed_share(a, b)}
    if latent_a is not None and latent_b is not None:
        out["latent_rmse"] = latent_rmse(latent_a, latent_b)
    return out


def _means(rows: list[dict]) -> dict:
    keys = [k for k in MEASURES if rows and all(k in r for r in rows)]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def summarize(pairs: list[dict]) -> dict:
    """Per-prompt means over seeds and overall means, from pairs {"prompt", "seed", "distances"} in any order.

    The overall mean is the mean of the per-prompt means, so a prompt with more seeds does not weigh more."""
    if not pairs:
        raise ValueError("summarize needs at least one compared pair; give at least one prompt and one seed.")
    prompts: dict = {}
    for pair in pairs:
        prompts.setdefault(pair["prompt"], []).append(pair)
    per_prompt = [{"prompt": prompt, "seeds": [p["seed"] for p in rows],
                   "per_seed": [{"seed": p["seed"], **p["distances"]} for p in rows],
                   "mean": _means([p["distances"] for p in rows])} for prompt, rows in prompts.items()]
    mean = _means([p["mean"] for p in per_prompt])
    for value in mean.values():
        if not math.isfinite(value):
            raise ValueError("A leakage distance came out NaN or infinite; the renders hold invalid values.")
    return {"per_prompt": per_prompt, "mean": mean}


def difference_heatmap(a, b, gain: float = HEATMAP_GAIN) -> Image.Image:
    """|A - B| (largest channel) x gain as a black-red-yellow-white heat image of the same size."""
    a, b = _pair(a, b, as_unit_array)
    v = np.clip(np.abs(a - b).max(axis=-1) * gain, 0.0, 1.0)  # (H, W) in 0..1
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")
