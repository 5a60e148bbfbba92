"""The before/after pair slider objective. Nothing here knows ComfyUI.

One LoRA learns a direction: at +s it turns a "before" image into its "after" partner, at −s the other way. This is
kohya's per-dataset network multiplier (kohya-ss/sd-scripts README and `train_network.py` at commit fef17296: a
`[[datasets]]` `network_multiplier`, "+1 state A, −1 state B", one multiplier per batch) in the pairwise form of the
Concept Sliders image slider (rohitgandikota/sliders `trainscripts/imagesliders/train_lora-scale.py`: a pair shares
the noise and the timestep, the LoRA is set to +scale for one image and −scale for the other; Gandikota et al.,
"Concept Sliders: LoRA Adaptors for Precise Control in Diffusion Models", arXiv:2311.12092).

The two passes are separate forward passes with a scalar multiplier, so autograd keeps each pass's strength;
gradient checkpointing would recompute both at the strength in force during backward (1.0), so it must stay off.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from . import objectives as ob


@contextlib.contextmanager
def _multiplier(network, value: float):
    """The network at strength `value` inside the block, back at 1.0 (the trained strength) after it, even on error."""
    network.set_multiplier(value)
    try:
        yield network
    finally:
        network.set_multiplier(1.0)


@dataclass
class PairSliderLoss:
    """½·[ℓ(D₊ₛ(x_t^after), T_after) + ℓ(D₋ₛ(x_t^before), T_before)] per pair, with one noise and one σ shared by both
    sides, ℓ and T as in DenoisingLoss (ε / v / flow target, L2 / L1 / Huber, min-SNR-γ)."""

    strength: float = 1.0
    loss: str = "l2"
    huber_delta: float = 0.1
    min_snr_gamma: float = 0.0
    network: object = field(default=None, repr=False)  # set by bind (the Trainer's network)

    def __post_init__(self):
        if not (isinstance(self.strength, (int, float)) and math.isfinite(self.strength) and self.strength > 0):
            raise ValueError(f"pair_strength must be a finite number above 0, got {self.strength!r}; 1.0 trains "
                             "+1 = after and −1 = before.")
        self.base = ob.DenoisingLoss(self.loss, self.huber_delta, self.min_snr_gamma)

    def bind(self, conditioning: Callable, network) -> None:
        """Keeps the network whose strength the two passes switch (Trainer calls this once)."""
        self.network = network

    def __call__(self, denoise: Callable, ms: ob.ModelSampling, batch: ob.NoisedBatch) -> torch.Tensor:
        if self.network is None:
            raise ValueError("PairSliderLoss has no network; pass it to Trainer(objective=...), which binds it.")
        if batch.partner is None:
            raise ValueError("The pair slider needs every sample to be a before/after pair; this batch has single "
                             "images. Load the data with Load Image Pairs and add no other subsets.")
        before = replace(batch, x0=batch.partner, x_t=ms.noise_scaling(batch.sigma, batch.noise, batch.partner),
                         partner=None)  # same noise and σ as the "after" side
        with _multiplier(self.network, self.strength):
            after_loss = self.base(denoise, ms, batch)  # (B,)
        with _multiplier(self.network, -self.strength):
            before_loss = self.base(denoise, ms, before)  # (B,)
        return 0.5 * (after_loss + before_loss)

    def describe(self) -> dict:
        """The settings a file's metadata and the run's identity record."""
        return {"method": "pair_slider", "strength": self.strength, "loss": self.loss,
                "min_snr_gamma": self.min_snr_gamma}
