"""Memory options on one family's tiny model, in the host's Python (imported by family_check.py and
dit_family_check.py after they register the Atelier checkout).

One LoRA step of the family's default targets is taken four ways on fresh copies of the same model: plainly, with
per-block gradient checkpointing (nodes.training.checkpoint_blocks), with block swap of every block as Train
LoRA Advanced's blocks_to_swap chooses them (nodes.training.swap_blocks), and with block swap on float8-stored
weights. Measured: the LoRA gradients (equal up to float rounding), the bytes of activations autograd saves, and the
parameter bytes the model holds at its peak (after every block load). On this CPU-only host the offload device is
the compute device, so the peak is the model's own weight residency; on a GPU the same numbers are device memory
(benchmarks/block_swap_memory.py measures torch.cuda.max_memory_allocated there).
"""

from contextlib import contextmanager, nullcontext

import torch

from atelier.nodes.train_adapter import ComfyDenoiser
from atelier.nodes.training import HostModel, checkpoint_blocks, swap_blocks
from atelier.trainers.memory import block_swap, gradient_checkpointing, resident_bytes
from atelier.trainers.network import LoRANetwork, NetworkConfig, family_default_targets


def one_step(patcher, inputs: tuple, saver) -> tuple[torch.Tensor, int, object]:
    """The LoRA's gradients after one step under `saver(host)`, the activation bytes autograd saved, the saver."""
    denoise = ComfyDenoiser(patcher)
    unet = patcher.model.diffusion_model
    for p in unet.parameters():
        p.requires_grad_(False)
    net = LoRANetwork({"lora_unet": unet}, family_default_targets(NetworkConfig(rank=4, alpha=4.0), denoise.family),
                      seed=1)
    with torch.no_grad():
        for i, m in enumerate(net.modules_by_key.values()):  # non-zero ups: every gradient is non-trivial
            m.up.weight.copy_(torch.randn(m.up.weight.shape, generator=torch.Generator().manual_seed(i)) * 0.1)
    host = HostModel(patcher, {"lora_unet": unet}, denoise, next(unet.parameters()).device)
    x_t, sigma, cond, extra = inputs
    saved = []
    with net.applied(), saver(host) as used:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            loss = (denoise(x_t, sigma, cond, **dict(extra)) ** 2).mean()
        loss.backward()  # inside the saver: block swap's recomputation loads its blocks again
    grads = torch.cat([q.grad.flatten() for q in net.parameters() if q.grad is not None])
    return grads, sum(saved), used


@contextmanager
def swapping(host: HostModel, count: int):
    """Train LoRA Advanced's block swap of `count` blocks, measuring the model's resident parameter bytes."""
    chosen, note = swap_blocks(host, count)
    with block_swap(chosen, host.device, note["to"], measure=host.patcher.model.diffusion_model) as swap:
        yield swap


def memory_report(build, inputs: tuple, fp8_build=None) -> dict:
    """The four steps' measurements as JSON-able numbers (build() makes a fresh ModelPatcher each time)."""
    plain, plain_bytes, _ = one_step(build(), inputs, lambda host: nullcontext())
    ckpt, ckpt_bytes, _ = one_step(build(), inputs, lambda host: gradient_checkpointing(
        checkpoint_blocks(host.patcher.model.diffusion_model)))
    patcher = build()
    blocks = checkpoint_blocks(patcher.model.diffusion_model)
    full = resident_bytes(patcher.model.diffusion_model)
    count = len(blocks)  # every block: the peak is the rest of the model plus the largest block
    swapped, swap_bytes, swap = one_step(patcher, inputs, lambda host: swapping(host, count))
    sizes = [sum(p.nbytes for p in b.parameters()) for b in blocks[len(blocks) - count:]]
    result = {"ckpt_blocks": len(blocks), "ckpt_grad_error": float((plain - ckpt).abs().max()),
              "grad_norm": float(plain.norm()), "saved_bytes_plain": plain_bytes, "saved_bytes_ckpt": ckpt_bytes,
              "swap_blocks": count, "swap_grad_error": float((plain - swapped).abs().max()),
              "swap_saved_bytes": swap_bytes, "swap_loads": swap.loads, "resident_bytes_plain": full,
              "resident_peak_swap": swap.peak_bytes, "swapped_bytes": swap.swapped_bytes,
              "swap_largest_block": max(sizes), "swap_restored": resident_bytes(patcher.model.diffusion_model) == full}
    if fp8_build is not None:
        fp8, _, fp8_swap = one_step(fp8_build(), inputs, lambda host: swapping(host, count))
        result.update(swap_fp8_finite=bool(torch.isfinite(fp8).all()) and float(fp8.abs().sum()) > 0,
                      swap_fp8_bytes=fp8_swap.swapped_bytes)
    return result
