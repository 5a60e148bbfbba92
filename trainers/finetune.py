"""Full fine-tune (DreamBooth): the model's own weights as a Trainable, on a private copy. Nothing here knows ComfyUI.

The caller hands over plain torch modules under short prefixes ("unet", "te", "te1", "te2"). The trainable copies
every floating-point parameter of those roots into its own float32 parameters (master weights) and, only while
`applied()` is active, puts them into the modules in place of the host's; afterwards the host's own parameter
objects are back, untouched, so a model shared with other nodes computes exactly as before. Block-wise learning
rates are a short list of "regex = multiplier" rules on "<prefix>.<parameter name>"; multiplier 0 freezes.
Not here: writing the checkpoint file (the host knows its key layout), the loop, the optimizer.
"""

from __future__ import annotations

import contextlib
import math
import re

import torch
from torch import nn


def parse_block_lrs(text: str) -> tuple[tuple[str, float], ...]:
    """'regex = multiplier' per line (e.g. 'input_blocks = 0.5', 'time_embed = 0'); '#' lines are comments."""
    out = []
    for n, line in enumerate((text or "").splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        pattern, sep, value = line.rpartition("=")
        try:
            multiplier = float(value)
        except ValueError:
            multiplier = -1.0
        if not sep or not pattern.strip() or not (math.isfinite(multiplier) and 0.0 <= multiplier <= 1000.0):
            raise ValueError(f"block_lrs line {n} ('{line.strip()}') should read 'regex = multiplier' with a "
                             "multiplier from 0 (frozen) to 1000, e.g. 'output_blocks = 0.5'.")
        try:
            re.compile(pattern.strip())
        except re.error as e:
            raise ValueError(f"block_lrs line {n}: invalid regular expression {pattern.strip()!r}: {e}. Escape "
                             "literal characters such as '.' or '[' with a backslash.") from None
        out.append((pattern.strip(), multiplier))
    return tuple(out)


def _set_param(module: nn.Module, name: str, value: nn.Parameter) -> None:
    """Puts `value` in place of module's parameter `name` (dotted), without touching the old one's data."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    owner._parameters[leaf] = value


class FullFineTune(nn.Module):
    """Every floating-point parameter of the roots, copied to float32 and trained in place of the host's."""

    def __init__(self, roots: dict[str, nn.Module], block_lrs: tuple[tuple[str, float], ...] = ()):
        super().__init__()
        if not isinstance(roots, dict) or not roots:
            raise ValueError("FullFineTune needs roots as a non-empty dict of prefix -> module, e.g. {'unet': unet}; "
                             f"got {type(roots).__name__}.")
        self.roots = dict(roots)
        self.rules = [(re.compile(p), float(m)) for p, m in block_lrs]
        self.keys: list[str] = []  # "<prefix>.<parameter name>", sorted: the order of every tensor list here
        self.dtypes: dict[str, torch.dtype] = {}  # the host's dtype of each, so export writes what was loaded
        self._where: dict[str, tuple[nn.Module, str]] = {}
        private = {}
        seen: dict[int, str] = {}
        for prefix in sorted(self.roots):
            for name, p in self.roots[prefix].named_parameters(remove_duplicate=False):
                key = f"{prefix}.{name}"
                if not p.is_floating_point():
                    continue
                if id(p) in seen:
                    raise ValueError(f"Parameter '{key}' is the same tensor as '{seen[id(p)]}' (tied weights); "
                                     "full fine-tune copies each tensor once, so train only one of the roots.")
                seen[id(p)] = key
                self.keys.append(key)
                self.dtypes[key] = p.dtype
                self._where[key] = (self.roots[prefix], name)
                # the private copy: float32 master weights, never the host's tensor
                private[key] = nn.Parameter(p.detach().to(torch.float32, copy=True))
        if not self.keys:
            raise ValueError(f"No floating-point parameters under roots {sorted(self.roots)}; nothing to fine-tune.")
        self.params = nn.ParameterList([private[k] for k in self.keys])
        self.by_key = dict(zip(self.keys, self.params))
        self._saved: dict[str, object] | None = None

    def multiplier(self, key: str) -> float:
        """The learning-rate multiplier of one parameter: the first rule whose regex matches, else 1."""
        for pattern, m in self.rules:
            if pattern.search(key):
                return m
        return 1.0

    @property
    def is_applied(self) -> bool:
        return self._saved is not None

    def apply(self, fn=None):
        """Installs the private parameters in the host modules (a second call does nothing); with a function,
        torch.nn.Module.apply(fn)."""
        if fn is not None:
            return super().apply(fn)
        if self._saved is not None:
            return None
        saved = {}
        for key in self.keys:
            module, name = self._where[key]
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            saved[key] = owner._parameters[leaf]
            _set_param(module, name, self.by_key[key])
        self._saved = saved
        return None

    def remove(self) -> None:
        """Puts the host's own parameter objects back exactly; a second call does nothing."""
        if self._saved is None:
            return
        for key, original in self._saved.items():
            module, name = self._where[key]
            _set_param(module, name, original)
        self._saved = None

    @contextlib.contextmanager
    def applied(self):
        """Installed inside the block, the host's parameters back after it, even when the block raises."""
        was = self.is_applied
        self.apply()
        try:
            yield self
        finally:
            if not was:
                self.remove()

    @contextlib.contextmanager
    def installed(self, tensors: dict[str, torch.Tensor]):
        """The host modules hold `tensors` (e.g. an export) inside the block, frozen; their own parameters after."""
        missing = [k for k in self.keys if k not in tensors]
        if missing:
            raise ValueError(f"installed() needs every trained tensor; {len(missing)} missing, e.g. {missing[:3]}.")
        saved = {}
        for key in self.keys:
            module, name = self._where[key]
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            saved[key] = owner._parameters[leaf]
            _set_param(module, name, nn.Parameter(tensors[key], requires_grad=False))
        try:
            yield
        finally:
            for key, original in saved.items():
                module, name = self._where[key]
                _set_param(module, name, original)

    # ------------------------------------------------------------------ the Trainable protocol (trainable.py)

    def param_groups(self, unet_lr: float, te_lr: float, train_text_encoder: bool) -> list[dict]:
        """One group per (root, multiplier): the UNet at unet_lr × multiplier, text encoders at te_lr × multiplier
        when they train; multiplier 0 and untrained text encoders are frozen (requires_grad off)."""
        groups: dict[tuple[str, float], dict] = {}
        for key in self.keys:
            p = self.by_key[key]
            is_unet = key.startswith("unet.")
            m = self.multiplier(key)
            if m == 0.0 or not (is_unet or train_text_encoder):
                p.requires_grad_(False)
                continue
            p.requires_grad_(True)
            base = unet_lr if is_unet else te_lr
            label = ("unet" if is_unet else "te") + ("" if m == 1.0 else f" ×{m:g}")
            groups.setdefault((label, m), {"params": [], "lr": base * m, "name": label})["params"].append(p)
        return list(groups.values())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The float32 master weights by key (the resume state)."""
        return {k: self.by_key[k].detach().to("cpu", copy=True).contiguous() for k in self.keys}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restores state_tensors(); loads nothing unless every key is there with its shape and nothing else."""
        missing = [k for k in self.keys if k not in tensors]
        unexpected = [k for k in tensors if k not in self.by_key]
        other = [k for k in self.keys if k in tensors and tuple(tensors[k].shape) != tuple(self.by_key[k].shape)]
        if missing or unexpected or other:
            raise ValueError(f"The fine-tune state does not match this model ({len(self.keys)} tensors): "
                             f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. "
                             f"{unexpected[:3]}), {len(other)} with another shape (e.g. {other[:3]}). Resume with "
                             "the model and train_text_encoder setting the state was saved with.")
        with torch.no_grad():
            for k in self.keys:
                self.by_key[k].copy_(tensors[k])

    def export(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The trained weights by key, each in the host's own dtype (or `dtype`), contiguous CPU copies."""
        return {k: self.by_key[k].detach().to("cpu", dtype=dtype or self.dtypes[k], copy=True).contiguous()
                for k in self.keys}

    def trained_keys(self, train_text_encoder: bool) -> list[str]:
        """The keys a run changes: the UNet's, the text encoders' when they train, minus those frozen by a rule."""
        return [k for k in self.keys if (k.startswith("unet.") or train_text_encoder) and self.multiplier(k) != 0.0]
