"""What a training run optimises, as one small protocol. Nothing here knows ComfyUI.

The loop (`trainers/loop.py`) and the run (`trainers/run.py`) reach the thing being trained only through these
methods, so a LoRA network, a hypernetwork or a full fine-tune's parameters are each one implementation
(LyCORIS-registry style: every algorithm has the same few methods): `LoRANetwork` (trainers/network.py) and
`Hypernetwork` (trainers/hypernetwork.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

import torch


class Trainable(Protocol):
    """A set of trainable parameters attached to a host model."""

    def applied(self) -> AbstractContextManager:
        """The host model computes with this trainable inside the block, and exactly as before after it."""

    def param_groups(self, unet_lr: float, te_lr: float, train_text_encoder: bool) -> list[dict]:
        """Optimizer groups ({"params", "lr", "name"}); parameters left out are frozen (requires_grad off)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue training exactly, as float32 CPU tensors (saved in the resume state)."""

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restores state_tensors(); refuses (ValueError naming the keys) tensors that do not fit."""

    def set_multiplier(self, value: float) -> None:
        """Strength of the trainable's effect (1.0 = as trained, 0.0 = the host model exactly); slider objectives use it
        for teacher passes (objectives.strength restores 1.0)."""

    def export(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The tensors of the shipped file, in the format its readers expect (kohya keys for a LoRA)."""

    def train(self, mode: bool = True): ...

    def eval(self): ...

    def parameters(self): ...
