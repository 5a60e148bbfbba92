"""LoRAs applied at forward time, each with its own strength per sample: the engine behind batched grid cells.

Nothing here knows ComfyUI. A stock LoRA loader merges W' = W + strength * (alpha / rank) * up @ down into the
weights, so every new strength means re-patching the model and every cell is its own UNet call. Here the weights are
never touched: a forward hook on each targeted Linear / Conv2d adds

    sum over LoRAs i of  strength[i, sample] * (alpha_i / rank_i) * up_i(down_i(x))

to the layer's output, so cells that differ only in LoRA file or strength share one batched UNet call. Linearity
makes this the same function as the merged weight (up to float rounding), and a strength of exactly 0 adds exactly
0, so such samples get the base model's output bit for bit.

Batch layout: strengths are given per *sample* (B of them). A sampler with classifier-free guidance feeds the
model [cond chunk of B | uncond chunk of B] in one call, so a layer sees B * k rows; the strengths are repeated k
times, chunk by chunk. A text encoder sees one prompt at a time: give a single sample's strengths (B = 1) and they
apply to every row.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .lora_format import delta_shape, effective_alpha, pair_problem


@dataclass
class _Term:
    slot: int
    down: torch.Tensor  # (r, in) for Linear, (r, in, kh, kw) for Conv2d
    up: torch.Tensor  # (out, r) for Linear, (out, r, 1, 1) for Conv2d
    scale: float  # alpha / rank
    cast: dict  # (device, dtype) -> (down, up) on that device and dtype


def _describe(module: nn.Module) -> str:
    return f"{type(module).__name__}{tuple(module.weight.shape)}"


def fit_layer(module: nn.Module, down: torch.Tensor, up: torch.Tensor, *, where: str = ""
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """`down` and `up` shaped for `module`'s forward (a 1x1 conv saved as linear and the reverse are reshaped views);
    raises ValueError when the layer cannot take them at forward time (lora_format's fit rule). Copies nothing."""
    label = where or _describe(module)
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise ValueError(f"{label}: forward-time LoRA supports Linear and Conv2d layers; this is a "
                         f"{type(module).__name__}. Apply this LoRA by merging it into the weights instead.")
    conv = isinstance(module, nn.Conv2d)
    if conv and down.ndim == 2 and up.ndim == 2:  # a 1x1 conv saved as linear (fits only a 1x1 kernel, below)
        down, up = down[:, :, None, None], up[:, :, None, None]
    elif not conv and down.ndim == 4 and tuple(down.shape[2:]) == (1, 1):  # saved from a 1x1 conv view
        down, up = down.flatten(1), up.flatten(1)
    if (conv and module.groups != 1) or pair_problem(down.shape, up.shape) \
            or delta_shape(up.shape, down.shape) != tuple(module.weight.shape):
        raise ValueError(f"{label}: LoRA down {tuple(down.shape)} / up {tuple(up.shape)} does not fit the layer "
                         f"{_describe(module)}; the LoRA was made for another model.")
    return down, up


class ForwardLoRA:
    """Several LoRAs ("slots") added to a model's layers at forward time, each with a per-sample strength."""

    def __init__(self):
        self._layers: dict[nn.Module, list[_Term]] = {}
        self._names: list[str] = []
        self._strengths = torch.zeros(1, 0)  # (samples, slots)

    @property
    def slots(self) -> int:
        return len(self._names)

    def slot_names(self) -> list[str]:
        return list(self._names)

    def add_slot(self, name: str) -> int:
        """A new LoRA slot (strength 0 for every sample until set_strengths) and its index."""
        self._names.append(str(name))
        self._strengths = torch.cat([self._strengths, torch.zeros(self._strengths.shape[0], 1)], dim=1)
        return len(self._names) - 1

    def add(self, slot: int, module: nn.Module, down: torch.Tensor, up: torch.Tensor, alpha: float | None,
            *, where: str = "") -> None:
        """Adds one layer of LoRA `slot` to `module` (an nn.Linear or nn.Conv2d); alpha None means alpha = rank."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"ForwardLoRA has slots 0..{self.slots - 1}; got slot {slot}. Call add_slot first.")
        down, up = fit_layer(module, down, up, where=where)
        rank = down.shape[0]
        scale = effective_alpha(alpha, rank) / rank
        term = _Term(slot, down.detach().float().contiguous(), up.detach().float().contiguous(), scale, {})
        self._layers.setdefault(module, []).append(term)

    def layer_count(self, slot: int | None = None) -> int:
        """How many layers carry a LoRA (of `slot`, or of any slot)."""
        if slot is None:
            return len(self._layers)
        return sum(any(t.slot == slot for t in terms) for terms in self._layers.values())

    def set_strengths(self, strengths) -> None:
        """Strengths per sample and slot: a (samples, slots) table; one row applies to every row the layer sees."""
        table = torch.as_tensor(strengths, dtype=torch.float32)
        if table.ndim == 1:
            table = table[None]
        if table.ndim != 2 or table.shape[1] != self.slots or table.shape[0] < 1:
            raise ValueError(f"set_strengths expects a (samples, {self.slots}) table of strengths, one column per "
                             f"LoRA slot; got shape {tuple(table.shape)}.")
        if not torch.isfinite(table).all():
            raise ValueError(f"LoRA strengths must be finite numbers; got {table.tolist()}.")
        self._strengths = table

    def _rows(self, n: int, module: nn.Module) -> torch.Tensor:
        table = self._strengths
        if n == table.shape[0]:
            return table
        if n % table.shape[0]:
            raise RuntimeError(f"{_describe(module)} received a batch of {n} rows, which is not a whole number of "
                               f"copies of the {table.shape[0]} samples the LoRA strengths were set for.")
        return table.repeat(n // table.shape[0], 1)

    def _delta(self, module: nn.Module, x: torch.Tensor, term: _Term) -> torch.Tensor:
        key = (x.device, x.dtype)
        if key not in term.cast:
            term.cast[key] = (term.down.to(device=x.device, dtype=x.dtype), term.up.to(device=x.device, dtype=x.dtype))
        down, up = term.cast[key]
        if isinstance(module, nn.Conv2d):
            h = F.conv2d(x, down, None, module.stride, module.padding, module.dilation)
            return F.conv2d(h, up)
        return F.linear(F.linear(x, down), up)

    def _hook(self, module: nn.Module, args, output):
        x = args[0]
        rows = self._rows(x.shape[0], module)
        result = output
        for term in self._layers[module]:
            column = rows[:, term.slot]
            active = torch.nonzero(column).flatten()
            if active.numel() == 0:
                continue
            factor = (column[active] * term.scale).to(device=output.device, dtype=output.dtype)
            factor = factor.reshape(-1, *([1] * (output.ndim - 1)))
            if active.numel() == x.shape[0]:
                result = result + factor * self._delta(module, x, term)
            else:  # only the samples that use this LoRA pay for it
                index = active.to(x.device)
                delta = factor * self._delta(module, x.index_select(0, index), term)
                result = result.index_add(0, index, delta.to(result.dtype))
        return result

    @contextlib.contextmanager
    def attached(self):
        """Installs the forward hooks for the duration of the block and always removes them."""
        handles = [module.register_forward_hook(self._hook) for module in self._layers]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
