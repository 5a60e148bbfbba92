"""Training objectives derived from the model's own sampling description. Nothing here knows ComfyUI.

A diffusion family is described by a "model sampling" object with ComfyUI's interface (`noise_scaling`,
`calculate_input`, `calculate_denoised`, `timestep`, `percent_to_sigma`). Every family ComfyUI loads has a
denoised estimate that is affine in the raw network output:  x0̂ = a(σ)·x_t + b(σ)·output.  Probing that map
twice gives a and b, so the raw-output target is (x0 − a·x_t) / b: the noise for ε-prediction (SD1.x), v for
v-prediction (SD2.x 768-v), noise − x0 for rectified flow, x0 for x0-prediction — with no per-family code.
Likewise x_t = α(σ)·x0 + β(σ)·noise gives SNR = (α/β)², which min-SNR weighting needs.

The small classes at the bottom mirror ComfyUI's ε / v / flow samplings so the pure tests use the same maths.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

LOSSES = ("l2", "l1", "huber")


class ModelSampling(Protocol):
    def percent_to_sigma(self, percent: float) -> float: ...
    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor) -> torch.Tensor: ...
    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor: ...
    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor: ...
    def timestep(self, sigma: torch.Tensor) -> torch.Tensor: ...


def _unit(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeros and ones shaped (B, 1, 1, 1) for probing affine maps one scalar per sample."""
    shape = (sigma.shape[0], 1, 1, 1)
    return torch.zeros(shape, dtype=torch.float32), torch.ones(shape, dtype=torch.float32)


def _affine_probe(fn, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For fn(σ, u, v) = c·v + d·u (affine in its two tensor arguments): (c, d), each (B, 1, 1, 1)."""
    zero, one = _unit(sigma)
    with torch.no_grad():
        return fn(sigma, zero, one).float(), fn(sigma, one, zero).float()


def denoise_coefficients(ms: ModelSampling, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), each (B, 1, 1, 1), with calculate_denoised(σ, out, x_t) = a·x_t + b·out."""
    return _affine_probe(ms.calculate_denoised, sigma)


def noise_coefficients(ms: ModelSampling, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, β), each (B, 1, 1, 1), with noise_scaling(σ, noise, x0) = α·x0 + β·noise."""
    return _affine_probe(ms.noise_scaling, sigma)


def prediction_target(ms: ModelSampling, sigma: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The raw network output that would denoise x_t exactly to x0: (x0 − a·x_t) / b."""
    a, b = (_view(c.flatten(), x_t) for c in denoise_coefficients(ms, sigma))  # (B, 1, ...): 4-D or 5-D latents
    return (x0.float() - a * x_t.float()) / b


def snr(ms: ModelSampling, sigma: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio (α/β)² of x_t at σ, shape (B,)."""
    alpha, beta = noise_coefficients(ms, sigma)
    return ((alpha / beta) ** 2).flatten()


def min_snr_weights(ms: ModelSampling, sigma: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weighting (Hang et al., 2023) for a loss on the raw output, shape (B,).

    The paper weights the x0 loss by min(SNR, γ); a raw-output loss equals the x0 loss divided by b², so the weight
    here is min(SNR, γ)·b². That is min(SNR, γ)/SNR for ε-prediction and min(SNR, γ)/(SNR + 1) for v-prediction,
    the forms kohya uses.
    """
    _, b = denoise_coefficients(ms, sigma)
    return torch.clamp(snr(ms, sigma), max=gamma) * (b.flatten() ** 2)


def sample_sigmas(ms: ModelSampling, generators: list[torch.Generator], min_percent: float = 0.0,
                  max_percent: float = 1.0) -> torch.Tensor:
    """One σ per sample, uniform in the model's own timestep range (percent 0 = most noise), shape (B,)."""
    eps = 1e-4  # percent_to_sigma maps exactly 0 / 1 to "infinite" / zero noise
    lo, hi = max(min_percent, eps), min(max_percent, 1 - eps)
    out = []
    for g in generators:
        u = lo + (hi - lo) * torch.rand((), generator=g).item()
        out.append(ms.percent_to_sigma(u))
    return torch.tensor(out, dtype=torch.float32)


def offset_noise(shape, generator: torch.Generator, offset: float) -> torch.Tensor:
    """Gaussian noise plus `offset` × a per-channel constant (noise offset, Guttenberg 2023), for one sample
    (C, H, W), or (C, T, H, W) for video latents."""
    noise = torch.randn(shape, generator=generator)
    if offset:
        noise = noise + offset * torch.randn((shape[0],) + (1,) * (len(shape) - 1), generator=generator)
    return noise


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l2",
                     huber_delta: float = 0.1) -> torch.Tensor:
    """Per-element loss: L2, L1 or Huber (quadratic within `huber_delta`, linear outside)."""
    if kind == "l2":
        return (pred.float() - target.float()) ** 2
    if kind == "l1":
        return (pred.float() - target.float()).abs()
    if kind == "huber":
        return torch.nn.functional.huber_loss(pred.float(), target.float(), reduction="none", delta=huber_delta)
    raise ValueError(f"Unknown loss '{kind}'; expected one of {', '.join(LOSSES)}.")


# ------------------------------------------------------------ the objective unit


@dataclass
class NoisedBatch:
    """One micro-batch as an objective sees it: clean latents, their noise and σ, the noised input, conditioning."""

    x0: torch.Tensor  # (B, C, H, W) clean latents in the model's space
    noise: torch.Tensor  # (B, C, H, W)
    sigma: torch.Tensor  # (B,)
    x_t: torch.Tensor  # (B, C, H, W) = noise_scaling(σ, noise, x0)
    cond: torch.Tensor  # the text encoder's output for the batch's captions
    extra: dict = field(default_factory=dict)  # further conditioning the denoiser takes (SDXL's pooled y, ...)
    mask: torch.Tensor | None = None  # (B, 1, H, W) in 0..1: where the loss counts; None = everywhere
    keys: tuple = ()  # per-sample objective data (TrainSample.key), e.g. a slider's prompt-set index
    partner: torch.Tensor | None = None  # (B, C, H, W) clean "before" latents of image pairs (x0 is "after")


class Objective(Protocol):
    """What a run minimises (k-diffusion's Denoiser.loss shape): a per-sample loss, shape (B,), from the denoiser,
    the model's sampling description and a noised batch. A pair/difference or slider objective is another unit."""

    def __call__(self, denoise: Callable, ms: ModelSampling, batch: NoisedBatch) -> torch.Tensor: ...


@dataclass(frozen=True)
class DenoisingLoss:
    """The standard objective: the family's raw-output target, an L2 / L1 / Huber distance (masked where a mask
    says), min-SNR-γ weighted when gamma > 0."""

    loss: str = "l2"
    huber_delta: float = 0.1
    min_snr_gamma: float = 0.0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown loss '{self.loss}'; expected one of {', '.join(LOSSES)}.")

    def __call__(self, denoise: Callable, ms: ModelSampling, batch: NoisedBatch) -> torch.Tensor:
        out = denoise(batch.x_t, batch.sigma, batch.cond, **batch.extra)
        target = prediction_target(ms, batch.sigma, batch.x_t, batch.x0)
        elementwise = elementwise_loss(out, target, self.loss, self.huber_delta)  # (B, C, H, W) or (B, C, T, H, W)
        dims = tuple(range(1, elementwise.ndim))
        if batch.mask is not None:
            # mean over the masked area only: a half-transparent render counts as much as a full frame
            area = (batch.mask.sum(dim=dims) * out.shape[1]).clamp_min(1e-6)  # masked elements per sample
            per_sample = (elementwise * batch.mask).sum(dim=dims) / area
        else:
            per_sample = elementwise.mean(dim=dims)  # (B,)
        if self.min_snr_gamma > 0:
            per_sample = per_sample * min_snr_weights(ms, batch.sigma, self.min_snr_gamma).to(per_sample.device)
        return per_sample


@contextlib.contextmanager
def strength(network, value: float):
    """The network at multiplier `value` inside the block, and at 1.0 (the trained strength) after it, even on error."""
    network.set_multiplier(value)
    try:
        yield network
    finally:
        network.set_multiplier(1.0)


SLIDER_ACTIONS = ("enhance", "erase")


class TextSliderLoss:
    """Text-slider objective (Concept Sliders, Gandikota et al. 2023, arXiv:2311.12092; LECO, p1atdev/LECO; after
    ESD, Gandikota et al. 2023, arXiv:2303.07345): no images, the LoRA learns the direction positive − negative.

    Per sample: from the loop's noise at the highest σ, an Euler partial denoise (CFG `cfg`, target vs unconditional
    prompt) with the LoRA on and no gradient, down to the loop's σ; there, with the LoRA at multiplier 0 and no
    gradient, the predictions for the positive, unconditional and neutral prompts give the target
    e_neutral ± guidance·(e_pos − e_uncond) (+ enhance, − erase); the LoRA at +1 on the target prompt is pulled to it
    by MSE. `bidirectional` also trains multiplier −1 toward the mirrored target. Everything random comes from the
    batch (noise, σ), so a resumed run equals an uninterrupted one. `sets` are SliderPrompts (trainers/slider.py).
    """

    def __init__(self, sets, denoise_steps: int = 50, cfg: float = 3.0, bidirectional: bool = False):
        if not sets:
            raise ValueError("A text slider needs at least one prompt set; got none.")
        if not 1 <= int(denoise_steps) <= 1000:
            raise ValueError(f"denoise_steps must be between 1 and 1000, got {denoise_steps}; 50 is the papers' value.")
        self.sets, self.denoise_steps = tuple(sets), int(denoise_steps)
        self.cfg, self.bidirectional = cfg, bidirectional
        self.network, self._conditioning = None, None

    def bind(self, conditioning: Callable, network) -> None:
        """Called by the Trainer: its frozen-text cache (each prompt encoded once) and the network whose strength
        the teacher passes switch."""
        self._conditioning, self.network = conditioning, network
        for s in self.sets:  # encode every prompt now: data preparation, not a training step
            conditioning([s.target, s.positive, s.unconditional, s.neutral])

    def _cond(self, prompt: str, device):
        cond, extra = self._conditioning([prompt])
        return cond.to(device), {k: v.to(device) for k, v in extra.items()}

    def schedule(self, ms: ModelSampling, stop: float) -> list[float]:
        """σ of the partial denoise: σ_j = percent_to_sigma(j/K) from the noisiest down to the first below `stop`,
        which replaces it (the path ends exactly at the loop's σ)."""
        out = []
        for j in range(self.denoise_steps + 1):
            sigma = ms.percent_to_sigma(max(j / self.denoise_steps, 1e-4))  # 0 would be "infinite" noise
            if sigma <= stop:
                break
            out.append(sigma)
        return out + [stop]

    def partial_denoise(self, denoise: Callable, ms: ModelSampling, noise: torch.Tensor, stop: float, cond, uncond):
        """x at σ = stop: Euler steps (ComfyUI's `euler`) with CFG from pure noise, the LoRA as it is now."""
        sigmas = self.schedule(ms, stop)
        first = torch.tensor([sigmas[0]], device=noise.device)
        x = ms.noise_scaling(first, noise, torch.zeros_like(noise)).float()  # (1, C, H, W)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            sigma = torch.tensor([s], device=noise.device)
            e_c, e_u = denoise(x, sigma, cond[0], **cond[1]).float(), denoise(x, sigma, uncond[0], **uncond[1]).float()
            out = e_u + self.cfg * (e_c - e_u)  # classifier-free guidance (Ho & Salimans, 2022)
            x0 = ms.calculate_denoised(sigma, out, x)
            x = x + (x - x0) / s * (s_next - s)  # Euler step of dx/dσ = (x − x0̂)/σ
        return x

    def __call__(self, denoise: Callable, ms: ModelSampling, batch: NoisedBatch) -> torch.Tensor:
        if self.network is None:
            raise RuntimeError("TextSliderLoss was not bound to a Trainer; the Trainer calls bind() when it starts.")
        losses = []
        for i, key in enumerate(batch.keys):
            p = self.sets[key]
            device, sigma = batch.noise.device, batch.sigma[i:i + 1]  # (1,)
            c_t, c_p, c_u, c_0 = (self._cond(t, device) for t in (p.target, p.positive, p.unconditional, p.neutral))
            with torch.no_grad():  # the path and the teacher are targets, never differentiated
                x = self.partial_denoise(denoise, ms, batch.noise[i:i + 1], float(sigma.item()), c_t, c_u)
                with strength(self.network, 0.0):  # exactly the base model (LoRAModule returns the base output)
                    e_p, e_u, e_0 = (denoise(x, sigma, c[0], **c[1]).float() for c in (c_p, c_u, c_0))
            direction = (1.0 if p.action == "enhance" else -1.0) * p.guidance_scale * (e_p - e_u)
            loss = ((denoise(x, sigma, c_t[0], **c_t[1]).float() - (e_0 + direction)) ** 2).mean()
            if self.bidirectional:  # the mirror: multiplier −1 moves the other way
                with strength(self.network, -1.0):
                    mirror = ((denoise(x, sigma, c_t[0], **c_t[1]).float() - (e_0 - direction)) ** 2).mean()
                loss = (loss + mirror) / 2
            losses.append(loss)
        return torch.stack(losses)  # (B,)


# ------------------------------------------------------------ reference samplings (mirror ComfyUI's maths)


def _view(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1))


class DiscreteEps:
    """ε-prediction with SD's scaled-linear β schedule over 1000 steps (DDPM, Ho et al., 2020; SD1.x)."""

    def __init__(self, linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000):
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # (T,) increasing
        self.log_sigmas = self.sigmas.log().float()
        self.sigmas = self.sigmas.float()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log().float()[:, None] - self.log_sigmas[None, :]
        return dists.abs().argmin(dim=1).view(sigma.shape).float()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(timestep.float(), 0, len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * (len(self.sigmas) - 1))).item()

    def calculate_input(self, sigma, noise):
        return noise / (_view(sigma, noise) ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * _view(sigma, model_output)

    def noise_scaling(self, sigma, noise, latent_image):
        return latent_image + noise * _view(sigma, noise)


class DiscreteV(DiscreteEps):
    """v-prediction (Salimans & Ho, 2022) on the same schedule (SD2.x 768-v)."""

    sigma_data = 1.0

    def calculate_denoised(self, sigma, model_output, model_input):
        s = _view(sigma, model_output)
        sd = self.sigma_data
        return model_input * sd ** 2 / (s ** 2 + sd ** 2) - model_output * s * sd / (s ** 2 + sd ** 2) ** 0.5


class RectifiedFlow:
    """Rectified flow (Liu et al., 2022; SD3 / Flux): x_t = (1−σ)·x0 + σ·noise, the network predicts noise − x0."""

    def __init__(self, shift: float = 1.0, multiplier: float = 1000.0):
        self.shift, self.multiplier = shift, multiplier

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        t = timestep / self.multiplier
        return self.shift * t / (1 + (self.shift - 1) * t)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor(1.0 - percent) * self.multiplier))

    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * _view(sigma, model_output)

    def noise_scaling(self, sigma, noise, latent_image):
        s = _view(sigma, noise)
        return s * noise + (1.0 - s) * latent_image


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style timestep embedding (Vaswani et al., 2017), (B,) -> (B, dim); used by the test models."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)
