"""Data-parallel training under torchrun with PyTorch's own process group. Nothing here knows ComfyUI.

Semantics: a job's batch_size is the global batch. Each optimizer step the loop forms exactly the micro-batches one
process would (trainers/loop.py epoch_batches); rank r takes positions r, r+N, r+2N, ... of each micro-batch, so N
ranks each drawing B samples train the job whose batch_size is N·B, step for step. Every sample's noise, σ, flip and
caption come from its own generator seeded by its position in the epoch, so which rank draws it changes nothing.
Each rank's loss is already divided by the global sample count, so summing the gradients over ranks (one all_reduce
of a flat buffer after backward) gives the one-process gradient; every rank then takes the same optimizer step and
the weights stay identical without broadcasting them. An explicit all_reduce rather than DistributedDataParallel:
DDP averages (divides by N) where our loss is already normalised, and it needs every rank to run a forward each
micro-batch, which a short last batch (fewer samples than ranks) does not give. The state is global (step, epoch,
batch cursor, one copy of the weights), so a run saved with N ranks resumes with any other number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun group: shards micro-batches and sums gradients over the group."""

    rank: int
    world_size: int

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone saves files and reports progress."""
        return self.rank == 0

    def shard(self, batch: list) -> list:
        """This rank's part of a micro-batch: every world_size-th sample from position `rank` (may be empty)."""
        return batch[self.rank::self.world_size]

    def sum_gradients(self, params: list[torch.Tensor], loss_total: float, finite: bool = True) -> tuple[float, bool]:
        """Sums every parameter's gradient and the step's loss over the ranks in one all_reduce; returns the summed
        loss and whether every rank's loss was finite (so all ranks stop together rather than one leaving the rest
        blocked in the next all_reduce). A parameter no rank has a gradient for keeps None, as in one process."""
        device = params[0].device
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]  # an idle rank adds zeros
        has_grad = [float(p.grad is not None) for p in params]  # summed: how many ranks hold each gradient
        tail = torch.tensor(has_grad + [loss_total if finite else 0.0, 0.0 if finite else 1.0], device=device)
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [tail])  # (Σ numel + params + 2,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()
        for p, count in zip(params, flat[offset:offset + len(params)].tolist()):
            if count == 0:  # no rank touched it: None keeps AdamW from decaying or stepping it
                p.grad = None
        return float(flat[-2].item()), flat[-1].item() == 0

    def barrier(self) -> None:
        dist.barrier()


def from_environment(device: torch.device | str = "cpu", environ=os.environ) -> Distributed | None:
    """Joins the torchrun group named by RANK / WORLD_SIZE (gloo on CPU, NCCL on CUDA); None in a single process."""
    world = int(environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Distributed(dist.get_rank(), dist.get_world_size())


def local_device(requested: str, environ=os.environ) -> torch.device:
    """The device of this rank: cuda:<LOCAL_RANK> when CUDA is asked for under torchrun, else the requested one."""
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def leave() -> None:
    """Leaves the process group (at the end of a run), so torchrun's workers exit cleanly."""
    if dist.is_initialized():
        dist.destroy_process_group()
