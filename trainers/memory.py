"""Memory savers for training. Nothing here knows ComfyUI.

Gradient checkpointing (Chen et al., 2016): chosen blocks keep only their inputs during the forward pass and
recompute their insides during backward, trading about one extra forward for far less activation memory. The
gradients are the same; LoRA dropout masks are reproduced on recomputation by the network itself.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint


@contextmanager
def gradient_checkpointing(blocks: list[torch.nn.Module]):
    """While active, each block's forward runs under torch.utils.checkpoint (non-reentrant) when grad is enabled."""
    wrapped = []
    for block in blocks:
        if "forward" in block.__dict__:
            continue  # already wrapped (e.g. by LoRA on a leaf): leave it alone
        original = block.forward

        def forward(*args, _original=original, **kwargs):
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        wrapped.append(block)
    try:
        yield len(wrapped)
    finally:
        for block in wrapped:
            del block.forward
