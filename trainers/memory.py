"""Memory savers for training. Nothing here knows ComfyUI.

Gradient checkpointing (Chen et al., 2016): chosen blocks keep only their inputs during the forward pass and
recompute their insides during backward, trading about one extra forward for far less activation memory. The
gradients are the same; LoRA dropout masks are reproduced on recomputation by the network itself.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint

MAX_SWAP = 200  # more blocks than any model ComfyUI loads has (Flux.1: 57, Wan 14B: 40, SDXL UNet layers: ~40)


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


class BlockSwap:
    """Block swap (CPU offload of frozen blocks): the frozen weights of the chosen blocks live on `offload_device`
    and are copied to `device` only while their block runs, forward or recomputed in backward, so at most one swapped
    block's weights are on the device at a time. Trainable parameters stay where they are.

    Each swapped block runs under non-reentrant checkpointing when grad is enabled: autograd would otherwise keep
    every weight a forward used until backward, and the checkpoint's recomputation loads the block again. The
    optional `measure` root is summed after every load: `peak_bytes` is the most parameter memory it held at once."""

    def __init__(self, blocks: list[torch.nn.Module], device, offload_device, measure: torch.nn.Module | None = None,
                 root: torch.nn.Module | None = None):
        self.blocks = swappable(blocks)
        self.device, self.offload_device = torch.device(device), torch.device(offload_device)
        self.pin = self.device.type == "cuda" and self.offload_device.type == "cpu"  # pinned: async host->device
        self.stores: dict[int, list] = {}
        self.measure, self.peak_bytes, self.loads = measure, 0, 0
        self.swapped_bytes = 0
        self.kept = outside_parameters(root, self.blocks) if root is not None else set()

    @staticmethod
    def frozen(block: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Parameter]]:
        return [(m, name, p) for m in block.modules() for name, p in m._parameters.items()
                if p is not None and not p.requires_grad]

    def offload(self) -> None:
        """Moves every chosen block's frozen weights to the offload device; the modules keep their own parameters,
        emptied, until a load puts a device copy in their place. A weight also used outside the chosen blocks (the
        `root`'s other layers) stays where it is. Each block's entries are recorded before any is emptied, so
        restore() puts back whatever an interrupted offload had moved."""
        stores: dict[int, torch.Tensor] = {}  # a weight shared by two layers is stored once
        for block, weights in swap_plan(self.blocks, self.kept):
            entries = []
            self.stores[id(block)] = entries
            for module, name, p in weights:
                if id(p) not in stores:
                    store = p.data.to(self.offload_device)
                    stores[id(p)] = store.pin_memory() if self.pin else store
                    self.swapped_bytes += store.nbytes
                entries.append((module, name, p, stores[id(p)], p.device))
            for module, name, p, _, _ in entries:
                p.data = torch.empty(0, dtype=p.dtype, device=self.device)

    def load(self, block: torch.nn.Module) -> None:
        # a new parameter object per load: autograd (and the checkpoint's recomputation) may keep the loaded tensor
        # until backward has used it, so it must never be emptied in place
        for module, name, _, store, _ in self.stores[id(block)]:
            module._parameters[name] = torch.nn.Parameter(store.to(self.device, non_blocking=self.pin),
                                                          requires_grad=False)
        self.loads += 1
        if self.measure is not None:
            self.peak_bytes = max(self.peak_bytes, resident_bytes(self.measure))

    def unload(self, block: torch.nn.Module) -> None:
        for module, name, p, _, _ in self.stores[id(block)]:
            module._parameters[name] = p  # the emptied original

    def restore(self) -> None:
        """Every swapped weight back in its original parameter object on the device it came from, as before
        offload(); one that cannot be restored (out of memory) does not stop the others, and the first error is
        raised after all were tried."""
        failed = None
        for block in self.blocks:
            for module, name, p, store, where in self.stores.pop(id(block), []):
                module._parameters[name] = p
                if p.numel() == 0 and store.numel() != 0:  # a shared weight is restored once
                    try:
                        p.data = store.to(where)
                    except (RuntimeError, MemoryError) as e:  # torch's out-of-memory errors are RuntimeErrors
                        failed = failed or e
        release = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
        if self.pin and callable(release):  # hand the pinned host buffers back (torch keeps them cached otherwise)
            release()
        if failed is not None:
            raise failed

    def make_forward(self, block: torch.nn.Module):
        original = block.forward

        def run(*args, **kwargs):
            self.load(block)
            try:
                return original(*args, **kwargs)
            finally:  # also when checkpointing stops a recomputation early
                self.unload(block)

        def forward(*args, **kwargs):
            if not torch.is_grad_enabled():
                return run(*args, **kwargs)
            return checkpoint(on_copies(run), *args, use_reentrant=False, **kwargs)
        return forward


def swappable(blocks: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """The blocks block swap takes: one already wrapped (an instance forward of its own) is left alone."""
    return [b for b in blocks if "forward" not in b.__dict__]


def swap_plan(blocks: list[torch.nn.Module], kept: set[int]):
    """Yields (block, its frozen weights as (module, name, parameter)) block by block, leaving out the weights whose
    ids are in `kept`; lazy, so an offload that fails halfway has emptied only the blocks before."""
    for block in blocks:
        yield block, [(m, name, p) for m, name, p in BlockSwap.frozen(block) if id(p) not in kept]


def planned_bytes(blocks: list[torch.nn.Module], root: torch.nn.Module | None = None) -> int:
    """Bytes block swap of `blocks` (in the model `root`) would move off the device, each shared weight once."""
    chosen = swappable(blocks)
    kept = outside_parameters(root, chosen) if root is not None else set()
    return sum({id(p): p.nbytes for _, weights in swap_plan(chosen, kept) for _, _, p in weights}.values())


def outside_parameters(root: torch.nn.Module, blocks: list[torch.nn.Module]) -> set[int]:
    """ids of the parameters that a module of `root` outside `blocks` holds (tied weights must stay resident)."""
    inside = {id(m) for b in blocks for m in b.modules()}
    return {id(p) for m in root.modules() if id(m) not in inside for p in m._parameters.values() if p is not None}


def resident_bytes(module: torch.nn.Module) -> int:
    """Bytes of parameter data the module holds right now (a swapped-out weight holds none)."""
    return sum(p.data.nbytes for p in module.parameters())


@contextmanager
def block_swap(blocks: list[torch.nn.Module], device, offload_device, measure: torch.nn.Module | None = None,
               root: torch.nn.Module | None = None):
    """While active, `blocks` are swapped (see BlockSwap) and checkpointed; yields the BlockSwap. Use it before
    gradient_checkpointing, which then leaves these blocks alone. Nothing is swapped for an empty list. `root` (the
    whole model) lets weights tied to layers outside the blocks stay resident."""
    swap = BlockSwap(blocks, device, offload_device, measure, root)
    if not swap.blocks:
        yield swap
        return
    with instance_forwards(swap.blocks, swap.make_forward):
        try:
            swap.offload()  # inside the try: a failure halfway still puts back what was moved
            yield swap
        finally:
            swap.restore()
