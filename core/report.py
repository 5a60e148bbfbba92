"""Plain-text descriptions of the environment and of image batches, for report nodes and logs."""

import torch


def listing(items: list[str], limit: int = 8) -> str:
    """The first `limit` items joined with '; ', then '; and N more': how error messages list offending names."""
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def describe_environment(atelier_version: str, torch_version: str, comfy_version: str) -> str:
    """One line naming the versions that matter when a user reports a problem."""
    return f"Atelier {atelier_version} · torch {torch_version} · ComfyUI {comfy_version}"


def describe_images(images: torch.Tensor) -> str:
    """Describes a ComfyUI IMAGE batch (B, H, W, C floats in 0..1): count, size, channels and value range."""
    if images.ndim != 4:
        raise ValueError(f"Expected an IMAGE batch of shape (B, H, W, C); got shape {tuple(images.shape)}.")
    b, h, w, c = images.shape
    if images.numel() == 0:
        return f"images: {b} × {w}×{h}, {c} channels (empty)"
    lo, hi = float(images.min()), float(images.max())
    return f"images: {b} × {w}×{h}, {c} channels, values {lo:.3f}..{hi:.3f}"
