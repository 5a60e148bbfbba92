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
def instance_forwards(modules, make_forward):
    """While active, each module without an instance-level forward of its own runs `make_forward(module)` instead of
    its class forward (a module someone already wrapped, e.g. by LoRA on a leaf, is left alone); yields how many."""
    patched = []
    for module in modules:
        if "forward" in module.__dict__:
            continue
        module.forward = make_forward(module)
        patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


def on_copies(fn):
    """fn run on copies of its floating-point tensor arguments: a block that adds its residual in place onto its own
    input (ComfyUI's Flux / Chroma blocks) would otherwise change the input its recomputation starts from."""
    def copy(v):
        return v.clone() if isinstance(v, torch.Tensor) and torch.is_floating_point(v) else v

    def run(*args, **kwargs):
        return fn(*(copy(a) for a in args), **{k: copy(v) for k, v in kwargs.items()})
    return run


def gradient_checkpointing(blocks: list[torch.nn.Module]):
    """While active, each block's forward runs under torch.utils.checkpoint (non-reentrant) when grad is enabled."""
    def make_forward(block):
        original = block.forward

        def forward(*args, **kwargs):
            if not torch.is_grad_enabled():
                return original(*args, **kwargs)
            return checkpoint(on_copies(original), *args, use_reentrant=False, **kwargs)
        return forward

    return instance_forwards(blocks, make_forward)
