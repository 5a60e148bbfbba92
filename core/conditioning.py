"""Text conditionings of different token lengths in one batch. Nothing here knows ComfyUI."""

from __future__ import annotations

import math

import torch


def tile_tokens(conds: list[torch.Tensor], max_growth: int | None = None) -> torch.Tensor | None:
    """(B_i, T_i, D) conditionings as one (ΣB_i, T, D) batch, each repeated along its tokens to T = lcm(T_i), as
    ComfyUI does when it batches prompts of different lengths (attention over a sequence repeated k times gives the
    same result). None when T would be more than `max_growth` times the longest T_i."""
    length = math.lcm(*[c.shape[1] for c in conds])
    if max_growth is not None and length > max_growth * max(c.shape[1] for c in conds):
        return None
    return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in conds])  # (ΣB_i, T, D)
