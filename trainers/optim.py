"""Optimizers, learning-rate schedules, EMA and resumable optimizer state for LoRA training.

Nothing here knows ComfyUI. Optimizer and EMA state leave this module as plain tensors (for a safetensors file)
plus a JSON-able dict (for a sidecar .json), never as a pickle, so a resumed run reads no executable data.
Schedules are pure functions of the step, so resuming needs no scheduler internals: the step count is enough.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

OPTIMIZERS = ("adamw", "adafactor", "lion", "sgd")
SCHEDULERS = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial")

ADAMW_BETAS = (0.9, 0.999)  # make_optimizer's default; for Lion it stands for "not chosen", see LION_BETAS
LION_BETAS = (0.9, 0.99)  # the paper's default (Chen et al., 2023, section 3)


class Lion(torch.optim.Optimizer):
    """Lion, EvoLved Sign Momentum (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms")."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = LION_BETAS, weight_decay: float = 0.0):
        if not lr >= 0:
            raise ValueError(f"Lion learning rate must be >= 0, got {lr}.")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Lion beta{i + 1} must be in [0, 1), got {beta}; the paper uses {LION_BETAS}.")
        if not weight_decay >= 0:
            raise ValueError(f"Lion weight decay must be >= 0, got {weight_decay}.")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        """One Lion step: p <- p - lr * (sign(beta1 m + (1 - beta1) g) + wd p), then m <- beta2 m + (1 - beta2) g."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, avgs = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients; use dense parameters.")
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                avgs.append(state["exp_avg"])
            if not params:
                continue
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            if wd != 0:
                # Decoupled decay, scaled by lr as in the paper: p - lr * wd * p.
                torch._foreach_mul_(params, 1.0 - lr * wd)
            update = torch._foreach_mul(avgs, beta1)
            torch._foreach_add_(update, grads, alpha=1.0 - beta1)
            torch._foreach_sign_(update)
            torch._foreach_add_(params, update, alpha=-lr)
            # The momentum tracks the gradient with beta2, after the update used beta1 (the paper's two betas).
            torch._foreach_mul_(avgs, beta2)
            torch._foreach_add_(avgs, grads, alpha=1.0 - beta2)
        return loss


def _all_on_cuda(groups: list[dict]) -> bool:
    params = [p for g in groups for p in g["params"]]
    return all(p.device.type == "cuda" and torch.is_floating_point(p) for p in params)


def make_optimizer(name: str, param_groups: list[dict], *, weight_decay: float = 0.01,
                   betas: tuple[float, float] = ADAMW_BETAS, eps: float = 1e-8,
                   momentum: float = 0.9, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, 2019), Adafactor (Shazeer & Stern, 2018), Lion (Chen et al., 2023) or SGD+momentum.

    Each group is {"params": [...], "lr": float, "name": str}; groups with no parameters are dropped (so a
    text-encoder group that trains nothing may carry any lr). Lion: betas left at the AdamW default
    ADAMW_BETAS mean Lion's own default LION_BETAS; any other betas are used as given. Adafactor ignores
    betas and eps (it uses torch's own schedule of the second-moment decay and eps=(None, 1e-3)); torch's
    Adafactor always scales its step by max(1e-3, RMS(param)) * min(lr, 1/sqrt(t)), so lr caps the step size.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}.")
    groups = []
    for i, group in enumerate(param_groups):
        group = dict(group)
        group["params"] = list(group["params"])
        if not group["params"]:
            continue
        label = group.get("name", f"group {i}")
        lr = group.get("lr")
        if lr is None or not lr > 0:  # `not lr > 0` also rejects NaN
            raise ValueError(f"{label} learning rate must be > 0, got {lr}; set a positive learning rate, "
                             f"or pass no parameters for {label} to leave it untrained.")
        groups.append(group)
    if not groups:
        raise ValueError(f"No parameters to train: all {len(param_groups)} parameter groups are empty; "
                         "give at least one group trainable parameters.")
    lr0 = groups[0]["lr"]  # the optimizers want a default lr; every group sets its own anyway
    if name == "adamw":
        # one fused kernel per step (no per-parameter temporaries) where every parameter is on CUDA; `fused` forces
        # the choice (torch's fused AdamW also runs on CPU, which is how the tests check it gives the same step)
        use_fused = _all_on_cuda(groups) if fused is None else fused
        speed = {"fused": True} if use_fused else {"foreach": True}
        return torch.optim.AdamW(groups, lr=lr0, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **speed)
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr0, weight_decay=weight_decay)
    if name == "lion":
        lion_betas = LION_BETAS if tuple(betas) == ADAMW_BETAS else tuple(betas)
        return Lion(groups, lr=lr0, betas=lion_betas, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr0, momentum=momentum, weight_decay=weight_decay)


def _check_schedule(name: str, total_steps: int, warmup_steps: int, num_cycles: int, power: float,
                    min_lr_ratio: float) -> None:
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}.")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}; check the epochs and batch size.")
    if warmup_steps < 0 or warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps - 1] = [0, {total_steps - 1}], "
                         f"got {warmup_steps}; lower the warmup or train for more steps.")
    if num_cycles < 1:
        raise ValueError(f"num_cycles must be >= 1, got {num_cycles}.")
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power}; 1 gives the linear schedule.")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}.")


def lr_multiplier(name: str, step: int, total_steps: int, warmup_steps: int = 0, num_cycles: int = 1,
                  power: float = 1.0, min_lr_ratio: float = 0.0) -> float:
    """Base-lr multiplier at 0-based `step`: linear warmup (Goyal et al., 2017), then the named schedule.

    Cosine and cosine with restarts follow SGDR (Loshchilov & Hutter, 2017).

    Warmup gives (step + 1) / (warmup_steps + 1) for step < warmup_steps, so no step has lr 0. The decay runs
    over the remaining steps with progress p = (step - warmup_steps) / (total_steps - warmup_steps), clamped to
    [0, 1]; decaying schedules are floored at min_lr_ratio.
    """
    _check_schedule(name, total_steps, warmup_steps, num_cycles, power, min_lr_ratio)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if name == "constant":
        return 1.0
    p = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if name == "linear":
        value = 1.0 - p
    elif name == "cosine":
        value = 0.5 * (1.0 + math.cos(math.pi * p))
    elif name == "cosine_with_restarts":
        # Each of num_cycles equal cycles runs a full cosine from 1 towards 0; past the end it stays at 0.
        value = 0.0 if p >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * p) % 1.0)))
    else:
        value = (1.0 - p) ** power
    return max(min_lr_ratio, value)


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int = 0,
                   num_cycles: int = 1, power: float = 1.0,
                   min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over lr_multiplier: warmup (Goyal et al., 2017), then decay (SGDR, Loshchilov & Hutter, 2017).

    Call scheduler.step() after each optimizer.step(). To resume after n optimizer steps: build the optimizer,
    then this scheduler, then load_optimizer_state (it restores each group's lr), then set
    scheduler.last_epoch = n.
    """
    _check_schedule(name, total_steps, warmup_steps, num_cycles, power, min_lr_ratio)

    def multiplier(step: int) -> float:
        return lr_multiplier(name, step, total_steps, warmup_steps, num_cycles, power, min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


class EMA:
    """Exponential moving average of parameters (Polyak averaging) with optional warmup of the decay.

    Polyak & Juditsky (1992); the warmup is TensorFlow's ExponentialMovingAverage num_updates rule.
    """

    def __init__(self, params: list[torch.nn.Parameter], decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}; 0.999 is usual, 0.9999 for long runs.")
        params = list(params)
        # float32 shadows: a bf16 average stops moving once (1 - decay) * delta is below bf16 resolution.
        self.shadow = [p.detach().to(torch.float32, copy=True) for p in params]
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0

    def _check(self, params) -> list[torch.Tensor]:
        params = list(params)
        if len(params) != len(self.shadow):
            raise ValueError(f"EMA tracks {len(self.shadow)} parameters but got {len(params)}; "
                             "pass the same parameters, in the same order, as when it was built.")
        return params

    def current_decay(self) -> float:
        """The next update's decay: min(decay, (1 + n) / (10 + n)) with warmup, n = updates done so far."""
        if self.warmup:
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self, params) -> None:
        """shadow <- d * shadow + (1 - d) * param (Polyak averaging), d = current_decay()."""
        params = self._check(params)
        d = self.current_decay()
        values = [p.detach().to(torch.float32) for p in params]
        torch._foreach_mul_(self.shadow, d)
        torch._foreach_add_(self.shadow, values, alpha=1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, params) -> None:
        """Write the averaged values into params (cast to each param's dtype)."""
        for p, s in zip(self._check(params), self.shadow):
            p.copy_(s)

    @contextmanager
    def swapped(self, params):
        """Params hold the EMA values inside the block; their own values come back afterwards, also on error."""
        params = self._check(params)
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
        self.copy_to(params)
        try:
            yield params
        finally:
            with torch.no_grad():
                for p, value in zip(params, saved):
                    p.copy_(value)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The shadows as {"ema.<i>": CPU contiguous copy}, ready for safetensors."""
        return {f"ema.{i}": s.detach().to("cpu", copy=True).contiguous() for i, s in enumerate(self.shadow)}

    def state_json(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "warmup": self.warmup}

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Inverse of state_tensors/state_json; keys other than "ema.*" are ignored, so one file may hold more."""
        saved = {k: v for k, v in tensors.items() if k.startswith("ema.")}
        expected = [f"ema.{i}" for i in range(len(self.shadow))]
        if sorted(saved) != sorted(expected):
            raise ValueError(f"EMA state has {len(saved)} tensors but this EMA tracks {len(self.shadow)} "
                             "parameters; the resume state belongs to another configuration (other network "
                             "rank or modules). Resume with the config it was saved with, or start fresh.")
        for key, s in zip(expected, self.shadow):
            if tuple(saved[key].shape) != tuple(s.shape):
                raise ValueError(f"EMA state {key} has shape {tuple(saved[key].shape)}, this EMA expects "
                                 f"{tuple(s.shape)}; the resume state belongs to another configuration. "
                                 "Resume with the config it was saved with, or start fresh.")
        for key, s in zip(expected, self.shadow):
            s.copy_(saved[key])
        self.decay = float(meta["decay"])
        self.updates = int(meta["updates"])
        self.warmup = bool(meta["warmup"])


def _to_json(value, where: str):
    """Tuples become lists; anything JSON cannot hold is refused rather than stringified."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_to_json(v, where) for v in value]
    raise ValueError(f"Cannot serialise optimizer value at {where}: expected a number, bool, string, None, "
                     f"tuple or tensor, got {type(value).__name__}.")


def _like(template, value):
    """Lists read back from JSON become tuples again where the live optimizer holds a tuple (betas, eps)."""
    if isinstance(template, tuple) and isinstance(value, list):
        return tuple(_like(t, v) for t, v in zip(template, value)) if len(template) == len(value) else tuple(value)
    return value


def _param_shapes(optimizer: torch.optim.Optimizer) -> list[list[int]]:
    return [list(p.shape) for group in optimizer.param_groups for p in group["params"]]


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split optimizer.state_dict() into safetensors-ready tensors ("state.<param index>.<name>") plus a JSON dict."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_values: dict[str, dict] = {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                # A copy: the file is written while training may go on mutating the live state in place.
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                state_values.setdefault(str(index), {})[key] = _to_json(value, f"state {index} {key}")
    groups = []
    for i, group in enumerate(sd["param_groups"]):
        saved = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):  # e.g. a tensor lr
                tensors[f"param_groups.{i}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                saved[key] = _to_json(value, f"param group {i} {key}")
        groups.append(saved)
    meta = {"optimizer": type(optimizer).__name__, "param_shapes": _param_shapes(optimizer),
            "param_groups": groups, "state": state_values}
    return tensors, meta


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of optimizer_state_tensors: rebuild the state dict and load it, so training continues bit-identically."""
    kind = type(optimizer).__name__
    if meta.get("optimizer") != kind:
        raise ValueError(f"Resume state is for optimizer {meta.get('optimizer')}, this run uses {kind}; the resume "
                         "state belongs to another config. Pick the optimizer it was saved with, or start fresh.")
    saved_shapes, shapes = meta["param_shapes"], _param_shapes(optimizer)
    if saved_shapes != shapes:
        raise ValueError(f"Resume state is for {len(saved_shapes)} parameters, this optimizer has {len(shapes)}"
                         f"{'' if len(saved_shapes) != len(shapes) else ' of other shapes'}; the resume state belongs "
                         "to another config (network rank, modules or text-encoder training differ). Resume with "
                         "the config it was saved with, or start fresh.")
    if len(meta["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(f"Resume state has {len(meta['param_groups'])} parameter groups, this optimizer has "
                         f"{len(optimizer.param_groups)}; the resume state belongs to another config. Resume with "
                         "the config it was saved with, or start fresh.")
    groups = []
    for saved, live in zip(meta["param_groups"], optimizer.param_groups):
        groups.append({key: _like(live.get(key), value) for key, value in saved.items()})
    state: dict[int, dict] = {}
    for index, values in meta["state"].items():
        state.setdefault(int(index), {}).update(values)
    for name, value in tensors.items():
        section, _, rest = name.partition(".")
        index, _, key = rest.partition(".")
        # Clones: load_state_dict keeps tensors that already match, and the caller's dict must not train along.
        if section == "state":
            state.setdefault(int(index), {})[key] = value.clone()
        elif section == "param_groups":
            groups[int(index)][key] = value.clone()
    optimizer.load_state_dict({"state": state, "param_groups": groups})
