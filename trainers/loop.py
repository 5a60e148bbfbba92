"""The training loop: batches, objective, optimisation, checkpoints, resume. Nothing here knows ComfyUI.

The model is reached only through the denoiser contract `denoise(x_t, sigma, cond, **extra) -> raw output` and a
model-sampling object (see objectives.py); text goes through `encode(captions) -> (cond, extra)`. Progress leaves
through callbacks. Every sample's randomness (flip, caption shuffle/dropout, noise, σ) comes from its own
generator seeded by (seed, epoch, position in the epoch), so a batch's composition never changes a sample's draws:
gradient accumulation of k×b equals one batch of k·b, and a run stopped at step n and resumed equals a run that
never stopped, without saving any RNG state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from ..core.captions import join_tags, split_tags
from ..core.conditioning import tile_tokens
from . import objectives as ob
from .optim import EMA, OPTIMIZERS, SCHEDULERS, lr_multiplier, make_optimizer
from .trainable import Trainable

PRECISIONS = ("fp32", "bf16", "fp16")
# The real range of every numeric setting: the Advanced node's widgets and a pasted config_json share these bounds.
CONFIG_RANGES = {
    "epochs": (0, 100_000), "max_steps": (0, 10_000_000), "batch_size": (1, 1024), "grad_accum": (1, 1024),
    "unet_lr": (0.0, 1.0), "te_lr": (0.0, 1.0), "weight_decay": (0.0, 10.0), "warmup_steps": (0, 10_000_000),
    "num_cycles": (1, 1000), "power": (0.01, 100.0), "huber_delta": (0.0001, 100.0), "min_snr_gamma": (0.0, 100.0),
    "noise_offset": (0.0, 1.0), "min_timestep_percent": (0.0, 1.0), "max_timestep_percent": (0.0, 1.0),
    "max_grad_norm": (0.0, 10_000.0), "seed": (0, 2**31 - 1), "ema_decay": (0.0, 0.99999), "keep_tokens": (0, 1000),
    "caption_dropout": (0.0, 0.99), "tag_dropout": (0.0, 0.99), "save_every_steps": (0, 10_000_000),
    "save_every_epochs": (0, 100_000), "sample_every_steps": (0, 10_000_000), "sample_every_epochs": (0, 100_000),
}


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a run; the widget names of the Advanced node are these field names."""

    epochs: int = 10
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 1
    grad_accum: int = 1
    unet_lr: float = 1e-4
    te_lr: float = 2e-5
    train_text_encoder: bool = False
    train_t5: bool = False  # also the T5-XXL (SD3.5, Flux.1 beside the CLIPs; Chroma's lone T5); kohya's train_t5xxl
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    scheduler: str = "constant"
    warmup_steps: int = 0
    num_cycles: int = 1
    power: float = 1.0
    loss: str = "l2"
    huber_delta: float = 0.1
    min_snr_gamma: float = 0.0  # 0 = off; 5 is the paper's value
    noise_offset: float = 0.0
    min_timestep_percent: float = 0.0
    max_timestep_percent: float = 1.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    precision: str = "fp32"
    seed: int = 0
    ema_decay: float = 0.0  # 0 = off
    caption_shuffle: bool = False
    keep_tokens: int = 0
    caption_dropout: float = 0.0
    tag_dropout: float = 0.0
    masked_loss: bool = False  # weight the loss by each image's alpha (transparent background does not count)
    save_every_steps: int = 0
    save_every_epochs: int = 1
    sample_every_steps: int = 0  # draw preview samples every N steps (0 = off)
    sample_every_epochs: int = 0  # ... or every N epochs

    def validate(self) -> None:
        """Refuses settings that cannot train, naming the field and what to use instead."""
        if self.unet_lr <= 0:
            raise ValueError(f"unet_lr must be > 0, got {self.unet_lr}; 1e-4 is a usual LoRA value.")
        if self.train_text_encoder and self.te_lr <= 0:
            raise ValueError(f"te_lr must be > 0 when training the text encoder, got {self.te_lr}; try 2e-5, or "
                             "turn train_text_encoder off.")
        if self.train_t5 and not self.train_text_encoder:
            raise ValueError("train_t5 trains the T5-XXL together with the CLIP text encoders, but "
                             "train_text_encoder is off; turn train_text_encoder on, or train_t5 off.")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"batch_size and grad_accum must be at least 1, got {self.batch_size} and "
                             f"{self.grad_accum}.")
        if self.epochs < 1 and self.max_steps < 1:
            raise ValueError("Set epochs or max_steps to at least 1.")
        for value, allowed, name in ((self.optimizer, OPTIMIZERS, "optimizer"),
                                     (self.scheduler, SCHEDULERS, "scheduler"),
                                     (self.loss, ob.LOSSES, "loss"), (self.precision, PRECISIONS, "precision")):
            if value not in allowed:
                raise ValueError(f"Unknown {name} '{value}'; expected one of {', '.join(allowed)}.")
        for name in ("caption_dropout", "tag_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if not 0.0 <= self.min_timestep_percent < self.max_timestep_percent <= 1.0:
            raise ValueError(f"min_timestep_percent ({self.min_timestep_percent}) must be below max_timestep_percent "
                             f"({self.max_timestep_percent}), both in [0, 1]; 0 and 1 train on every noise level.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """A config from JSON-like data, each value checked for its type and range (naming the setting)."""
        if not isinstance(data, dict):
            raise ValueError(f"A training config must be a JSON object such as {{\"epochs\": 10, \"unet_lr\": 1e-4}}, "
                             f"got {_json_type(data)}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown training setting(s) {', '.join(map(str, unknown))[:300]}; known: "
                             f"{', '.join(sorted(known))}.")
        for f in dataclasses.fields(cls):
            if f.name in data:
                _check_setting(f.name, data[f.name], f.default)
        return cls(**data)

    # Settings that may change between an interrupted run and its resumption without changing the maths.
    RESUMABLE_CHANGES = ("epochs", "max_steps", "save_every_steps", "save_every_epochs", "sample_every_steps",
                         "sample_every_epochs")


def _json_type(value) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "text", list: "a list", dict: "an object",
             type(None): "null"}
    return f"{names.get(type(value), type(value).__name__)} ({json.dumps(value, default=str)[:60]})"


def _check_setting(name: str, value, default) -> None:
    """Refuses a setting of the wrong type (true/false, integer, number, text) or outside CONFIG_RANGES."""
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        expected = "a finite number"
    else:
        ok, expected = isinstance(value, str), "text"
    if not ok:
        raise ValueError(f"Training setting '{name}' must be {expected}, got {_json_type(value)}.")
    if name in CONFIG_RANGES:
        low, high = CONFIG_RANGES[name]
        if not low <= value <= high:
            raise ValueError(f"Training setting '{name}' must be between {low} and {high}, got {value}.")


@dataclass(frozen=True)
class TrainSample:
    """One training image as the loop sees it: its cached latent (model space), caption and loss weight."""

    latent: torch.Tensor  # (C, H, W), already in the model's latent space (process_in applied)
    caption: str
    loss_weight: float = 1.0  # prior-preservation weight for regularization images
    repeats: int = 1
    random_flip: bool = False
    flipped_latent: torch.Tensor | None = None  # the mirrored image's own latent; else the latent is flipped
    regularization: bool = False  # a class image for prior preservation (balanced against the training images)
    mask: torch.Tensor | None = None  # (1, H, W) in 0..1 at latent resolution: where the loss counts (alpha)
    key: int | None = None  # per-sample data for the objective (NoisedBatch.keys), e.g. a slider's prompt set
    partner_latent: torch.Tensor | None = None  # (C, H, W) an image pair's "before" latent (the latent is "after")
    partner_flipped: torch.Tensor | None = None  # the mirrored "before" image's own latent


class Denoise(Protocol):
    def __call__(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, **extra) -> torch.Tensor: ...


@dataclass
class StepInfo:
    step: int  # optimizer steps done
    total_steps: int
    epoch: int
    loss: float
    smoothed_loss: float
    lr: float
    samples_per_second: float
    skipped: bool = False  # fp16: the loss scaler found inf/nan gradients and did not apply this step
    skipped_steps: int = 0  # how many steps of the run so far were skipped that way


@dataclass
class Callbacks:
    on_step: Callable[[StepInfo], None] | None = None
    on_checkpoint: Callable[[int, int, str], None] | None = None  # (step, epoch, by: "step" or "epoch")
    on_sample: Callable[[int, int], None] | None = None  # (step, epoch): draw previews with the current weights
    should_stop: Callable[[], bool] | None = None


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # next micro-batch of `epoch` to run
    losses: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)  # fp16 steps the loss scaler did not apply (inf/nan grads)


class TrainingDiverged(RuntimeError):
    """Loss became NaN or infinite."""


class TrainingStopped(RuntimeError):
    """A run stopped on request before its last step, after saving; the message says what was kept and how to
    resume (a RuntimeError, not the host's interrupt type, so hosts that hide an interrupt's text still show it)."""


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for one sample of one epoch (SplitMix-style mixing of the three numbers)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + position * 0x94D049BB133111EB) & (2 ** 64 - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & (2 ** 64 - 1)
    return (x ^ (x >> 32)) & (2 ** 63 - 1)


def epoch_batches(samples: list[TrainSample], batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """Micro-batches of one epoch as [(position, sample index)]: repeats expanded, shuffled, grouped by latent size."""
    order = [i for i, s in enumerate(samples) for _ in range(s.repeats)]
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    order = [order[j] for j in torch.randperm(len(order), generator=g).tolist()]
    buckets: dict[tuple, list[tuple[int, int]]] = {}
    for position, index in enumerate(order):
        buckets.setdefault(tuple(samples[index].latent.shape), []).append((position, index))
    batches = [items[i:i + batch_size] for items in buckets.values() for i in range(0, len(items), batch_size)]
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[j] for j in perm]


def process_caption(caption: str, g: torch.Generator, cfg: TrainConfig) -> str:
    """Caption dropout, tag dropout and tag shuffling after the first keep_tokens tags (kohya's caption options)."""
    if cfg.caption_dropout and torch.rand((), generator=g).item() < cfg.caption_dropout:
        return ""
    if not (cfg.caption_shuffle or cfg.tag_dropout):
        return caption
    tags = split_tags(caption)  # escaped commas ('\,') stay inside a tag, as in every caption tool
    head, tail = tags[:cfg.keep_tokens], tags[cfg.keep_tokens:]
    if cfg.tag_dropout:
        tail = [t for t in tail if torch.rand((), generator=g).item() >= cfg.tag_dropout]
    if cfg.caption_shuffle:
        tail = [tail[j] for j in torch.randperm(len(tail), generator=g).tolist()]
    return join_tags(head + tail)


class Trainer:
    """Trains a Trainable (a LoRA network first) on an Objective through the denoiser contract; see the module
    docstring for the guarantees."""

    def __init__(self, config: TrainConfig, network: Trainable, denoise: Denoise, model_sampling: ob.ModelSampling,
                 samples: list[TrainSample], encode: Callable[[list[str]], tuple[torch.Tensor, dict]],
                 callbacks: Callbacks | None = None, device: torch.device | str = "cpu",
                 objective: ob.Objective | None = None, distributed=None):
        config.validate()
        if not samples:
            raise ValueError("No training samples: the dataset is empty.")
        self.cfg, self.network, self.denoise, self.ms = config, network, denoise, model_sampling
        self.samples, self.encode = samples, encode
        self.callbacks = callbacks or Callbacks()
        self.device = torch.device(device)
        self.distributed = distributed  # a trainers.distributed.Distributed under torchrun: shards and sums grads
        # the objective: what each sample's loss is (the standard one unless a pair / slider objective is given)
        self.objective = objective or ob.DenoisingLoss(config.loss, config.huber_delta, config.min_snr_gamma)
        groups = network.param_groups(config.unet_lr, config.te_lr, config.train_text_encoder)
        self.optimizer = make_optimizer(config.optimizer, groups, weight_decay=config.weight_decay)
        for g in self.optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.ema = EMA(self.params, config.ema_decay) if config.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == "fp16" else None
        self.steps_per_epoch = math.ceil(len(epoch_batches(samples, config.batch_size, config.seed, 0))
                                         / config.grad_accum)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self._text_cache: dict[str, tuple[torch.Tensor, dict]] = {}
        self.last_saved: int | None = None  # the step of the newest checkpoint, for error messages
        if hasattr(self.objective, "bind"):  # slider / pair objectives: own prompts through the text cache, strengths
            self.objective.bind(self._conditioning, network)

    # ------------------------------------------------------------------ one micro-batch

    def precompute_text(self) -> int:
        """Encodes every distinct caption once when the text encoder is frozen (data preparation, before training).

        Captions that change per step (shuffle, dropout) are encoded when they occur; returns how many were cached.
        """
        if self.cfg.train_text_encoder:
            return 0
        captions = list(dict.fromkeys(s.caption for s in self.samples))
        for i in range(0, len(captions), 16):
            self._conditioning(captions[i:i + 16])
        return len(captions)

    def _conditioning(self, captions: list[str]):
        if self.cfg.train_text_encoder:
            return self.encode(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:  # frozen text encoder: each distinct caption is encoded once
            with torch.no_grad():
                cond, extra = self.encode(missing)
            for i, c in enumerate(missing):
                self._text_cache[c] = (cond[i:i + 1], {k: v[i:i + 1] for k, v in extra.items()})
        conds = [self._text_cache[c] for c in captions]
        extra = {k: torch.cat([e[k] for _, e in conds]) for k in conds[0][1]}  # pooled etc.: (1, D) each
        return tile_tokens([c for c, _ in conds]), extra  # cached in groups of 16, so token lengths may differ

    def _autocast(self):
        if self.cfg.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _denoise_in_precision(self, x_t, sigma, cond, **extra):
        """The denoiser under the run's autocast (bf16 / fp16), so objectives need not know the precision."""
        with self._autocast():
            return self.denoise(x_t, sigma, cond, **extra)

    def micro_batch_loss(self, batch: list[tuple[int, int]], epoch: int, divisor: int) -> torch.Tensor:
        """Sum of the objective's per-sample losses, weighted for prior preservation, / `divisor` (the samples in
        the whole optimizer step)."""
        cfg = self.cfg
        x0, noise, captions, weights, gens, masks, partners = [], [], [], [], [], [], []
        for position, index in batch:
            s = self.samples[index]
            g = torch.Generator().manual_seed(sample_seed(cfg.seed, epoch, position))
            flip = s.random_flip and torch.rand((), generator=g).item() < 0.5
            latent = s.latent if not flip else (s.flipped_latent if s.flipped_latent is not None
                                                else s.latent.flip(-1))
            if cfg.masked_loss:
                mask = s.mask if s.mask is not None else torch.ones((1,) + tuple(s.latent.shape[1:]))
                masks.append(mask.flip(-1) if flip else mask)
            captions.append(process_caption(s.caption, g, cfg))
            noise.append(ob.offset_noise(tuple(s.latent.shape), g, cfg.noise_offset))
            x0.append(latent.float())
            if s.partner_latent is not None:  # an image pair: the "before" side flips with the same coin
                partners.append((s.partner_flipped if s.partner_flipped is not None else s.partner_latent.flip(-1))
                                if flip else s.partner_latent)
            weights.append(s.loss_weight)
            gens.append(g)
        x0 = torch.stack(x0).to(self.device)  # (B, C, H, W)
        noise = torch.stack(noise).to(self.device)
        sigma = ob.sample_sigmas(self.ms, gens, cfg.min_timestep_percent, cfg.max_timestep_percent).to(self.device)
        x_t = self.ms.noise_scaling(sigma, noise, x0)
        cond, extra = self._conditioning(captions)
        noised = ob.NoisedBatch(x0, noise, sigma, x_t, cond.to(self.device),
                                {k: v.to(self.device) for k, v in extra.items()},
                                torch.stack(masks).to(self.device) if cfg.masked_loss else None,
                                tuple(self.samples[index].key for _, index in batch))
        if len(partners) == len(batch):  # every sample a pair (a pair objective refuses anything else)
            noised.partner = torch.stack(partners).float().to(self.device)  # (B, C, H, W)
        per_sample = self.objective(self._denoise_in_precision, self.ms, noised)  # (B,)
        w = torch.tensor(weights, dtype=torch.float32, device=self.device)  # prior-preservation weights
        return (per_sample * w).sum() / divisor

    # ------------------------------------------------------------------ the loop

    def _set_lr(self, step: int) -> float:
        m = lr_multiplier(self.cfg.scheduler, step, self.total_steps, self.cfg.warmup_steps, self.cfg.num_cycles,
                          self.cfg.power)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * m
        return self.optimizer.param_groups[0]["lr"]

    def run(self, state: TrainState | None = None) -> TrainState:
        """Trains until total_steps (or a stop request); returns the state to save or resume from."""
        cfg, state = self.cfg, state or TrainState()
        if state.step > 0:
            self.last_saved = state.step  # resumed: the state it came from is a saved checkpoint
        self.network.train()
        smoothed, started, seen = None, time.perf_counter(), 0
        with self.network.applied():
            while state.step < self.total_steps:
                batches = epoch_batches(self.samples, cfg.batch_size, cfg.seed, state.epoch)
                while state.batch_in_epoch < len(batches) and state.step < self.total_steps:
                    if self.callbacks.should_stop and self.callbacks.should_stop():
                        return state
                    group = batches[state.batch_in_epoch:state.batch_in_epoch + cfg.grad_accum]
                    divisor = sum(len(b) for b in group)
                    lr = self._set_lr(state.step)
                    total, bad_loss = 0.0, None
                    for batch in group:
                        batch = self.distributed.shard(batch) if self.distributed else batch
                        if not batch:  # fewer samples than ranks: this rank only adds zero gradients
                            continue
                        loss = self.micro_batch_loss(batch, state.epoch, divisor)  # divisor: the global count
                        if not torch.isfinite(loss):
                            bad_loss = f"{loss.item()}"
                            break  # under torchrun the other ranks learn it from the gradient sum below
                        (self.scaler.scale(loss) if self.scaler else loss).backward()
                        total += loss.item()
                    if self.distributed:  # the one-process gradient and loss: sums over the ranks' shards
                        total, finite = self.distributed.sum_gradients(self.params, total, bad_loss is None)
                        if not finite and bad_loss is None:
                            bad_loss = "non-finite on another rank"  # that rank's own message names the value
                    if bad_loss is not None:
                        raise TrainingDiverged(
                            f"Loss became {bad_loss} at step {state.step + 1} (epoch {state.epoch + 1}); "
                            f"nothing from this step was applied; {self._saved_sentence()} Lower the learning "
                            "rate, use bf16 instead of fp16, or set max_grad_norm.")
                    applied = self._optimizer_step()
                    state.step += 1
                    if not applied:
                        state.skipped_steps.append(state.step)
                    state.batch_in_epoch += len(group)
                    state.losses.append(total)
                    seen += divisor
                    smoothed = total if smoothed is None else 0.9 * smoothed + 0.1 * total
                    if self.callbacks.on_step:
                        rate = seen / max(time.perf_counter() - started, 1e-9)
                        self.callbacks.on_step(StepInfo(state.step, self.total_steps, state.epoch + 1, total, smoothed,
                                                        lr, rate, not applied, len(state.skipped_steps)))
                    if (cfg.save_every_steps and state.step % cfg.save_every_steps == 0
                            and state.step < self.total_steps and self.callbacks.on_checkpoint):
                        self._checkpoint(state, "step")
                    if cfg.sample_every_steps and state.step % cfg.sample_every_steps == 0:
                        self._sample(state)
                if state.batch_in_epoch >= len(batches):
                    state.epoch += 1
                    state.batch_in_epoch = 0
                    if (cfg.save_every_epochs and state.epoch % cfg.save_every_epochs == 0
                            and state.step < self.total_steps and self.callbacks.on_checkpoint):
                        self._checkpoint(state, "epoch")
                    if cfg.sample_every_epochs and state.epoch % cfg.sample_every_epochs == 0:
                        self._sample(state)
        return state

    def _checkpoint(self, state: TrainState, by: str) -> None:
        """An intermediate save; the last step is saved by the run itself as the final file."""
        self.callbacks.on_checkpoint(state.step, state.epoch, by)
        self.last_saved = state.step

    def _saved_sentence(self) -> str:
        """What a failure leaves on disk: the newest checkpoint of this run, or that there is none yet."""
        if self.last_saved is None:
            return ("no checkpoint of this run was saved before it (set save_every_steps or save_every_epochs to keep "
                    "intermediate ones).")
        return f"the last checkpoint, saved after step {self.last_saved}, is intact."

    def _sample(self, state: TrainState) -> None:
        """Preview samples with the current weights: dropout off, no gradients, training mode restored after."""
        if not self.callbacks.on_sample:
            return
        self.network.eval()
        try:
            with torch.no_grad():
                self.callbacks.on_sample(state.step, state.epoch)
        finally:
            self.network.train()

    def _optimizer_step(self) -> bool:
        """One optimizer step; False when the fp16 loss scaler skipped it (inf/nan gradients, nothing applied)."""
        applied = True
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        if self.scaler:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            applied = self.scaler.get_scale() >= scale  # the scaler backs off exactly when it skipped the step
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema and applied:  # a skipped step changed no weight, so the average must not move either
            self.ema.update(self.params)
        return applied


def config_diff(saved: dict, current: dict) -> list[str]:
    """Settings that differ between a saved run and this one, ignoring those resumption may change."""
    keys = sorted(set(saved) | set(current))
    defaults = TrainConfig().to_dict()  # a state saved before a setting existed had its default
    saved = {k: saved.get(k, defaults.get(k)) for k in keys}
    return [f"{k}: saved {saved[k]!r}, now {current.get(k)!r}" for k in keys
            if k not in TrainConfig.RESUMABLE_CHANGES and saved[k] != current.get(k)]


def state_json(state: TrainState, config: TrainConfig, extra: dict | None = None) -> str:
    return json.dumps({"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                       "losses": state.losses, "skipped_steps": state.skipped_steps, "config": config.to_dict(),
                       **(extra or {})}, indent=1)
