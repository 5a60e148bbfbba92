"""The kohya LoRA format, spelled once: key suffixes and prefixes, the module record, ΔW and the shape-fit rule.

Nothing here knows ComfyUI, reads files (core/lora_io.py), trains (trainers/network.py) or merges
(core/lora_math.py); every reader and writer of LoRA tensors takes these names from here.

Format (kohya-ss sd-scripts networks/lora.py, read by ComfyUI's LoraLoader, A1111 and Forge): the module on layer
`input_blocks.1.1.proj_in` under the prefix "lora_unet" has the base name `lora_unet_input_blocks_1_1_proj_in` and
the tensors `<base>.lora_down.weight` (r, in) or (r, in, kh, kw), `<base>.lora_up.weight` (out, r) or
(out, r, 1, 1), `<base>.alpha` (a scalar; missing means alpha = r, scale 1) and, in LyCORIS' Tucker LoCon,
`<base>.lora_mid.weight` (r, r, kh, kw). At strength s a module adds

    ΔW = s · (alpha / r) · up @ down        (conv: down flattened to (r, in·kh·kw), ΔW reshaped to the weight's shape)

to its base weight, as ComfyUI's LoraLoader does. A linear ΔW fits a 1x1 conv weight and the reverse (the one
reshape loaders make); any other shape difference means the LoRA was made for another model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
MID = ".lora_mid.weight"  # LyCORIS Tucker core between kohya down and up
# (up, down) key suffixes of the LoRA layouts ComfyUI's loader reads: kohya first, then the diffusers / PEFT ones.
PAIR_SUFFIXES = ((UP, DOWN), ("_lora.up.weight", "_lora.down.weight"), (".lora_B.weight", ".lora_A.weight"),
                 (".lora.up.weight", ".lora.down.weight"),
                 (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
                 (".lora_B.default.weight", ".lora_A.default.weight"), (".lora_B", ".lora_A"))
TEXT_PREFIXES = ("lora_te", "text_encoder", "te_", "te1_", "te2_")  # keys meant for the CLIP, not the MODEL
# ComfyUI's generic text-encoder names: model_lora_keys_clip maps "text_encoders.<CLIP state-dict key without
# .weight>" for every encoder weight; the only names it maps for encoders with no kohya lora_te prefix (Qwen-Image's
# Qwen2.5-VL, Wan 2.x's umT5-XXL). A base under this prefix keeps its dots.
GENERIC_TE_PREFIX = "text_encoders."


def kohya_base(prefix: str, module_name: str) -> str:
    """'lora_unet' + 'input_blocks.1.1.proj_in' -> 'lora_unet_input_blocks_1_1_proj_in' (kohya's '.' -> '_');
    a generic prefix keeps the dots: 'text_encoders.qwen25_7b.transformer' + 'model.layers.0.mlp.up_proj' ->
    'text_encoders.qwen25_7b.transformer.model.layers.0.mlp.up_proj'."""
    if not module_name:
        return prefix
    if prefix.startswith(GENERIC_TE_PREFIX):
        return f"{prefix}.{module_name}"
    return f"{prefix}_{module_name.replace('.', '_')}"


def base_prefix(base: str) -> str:
    """'lora_unet_input_blocks_1' -> 'lora_unet', 'lora_te1_text_model' -> 'lora_te1', ComfyUI's
    'diffusion_model.input_blocks.1' -> 'diffusion_model', 'text_encoders.clip_l....' -> 'text_encoders.clip_l'."""
    parts = base.split("_")
    if base.startswith(GENERIC_TE_PREFIX):  # 'text_encoders.qwen25_7b.transformer...' -> 'text_encoders.qwen25_7b'
        return ".".join(base.split(".")[:2])
    return "_".join(parts[:2]) if base.startswith("lora_") and len(parts) > 1 else base.split(".")[0]


def module_bases(tensors: dict) -> list[str]:
    """kohya base names present, from the `<base>.lora_down.weight` keys, sorted."""
    return sorted(k[: -len(DOWN)] for k in tensors if k.endswith(DOWN))


def pair_of(key: str) -> tuple[str, int, str] | None:
    """(base, layout index, 'up' or 'down') for a LoRA factor key in any layout of PAIR_SUFFIXES, else None."""
    for i, (up, down) in enumerate(PAIR_SUFFIXES):
        for side, suffix in (("up", up), ("down", down)):
            if key.endswith(suffix) and len(key) > len(suffix):
                return key[: -len(suffix)], i, side
    return None


def effective_alpha(alpha, rank: int) -> float:
    """The alpha a module works with: the file's `.alpha` (a number or 1-element tensor), or the rank when it has
    none (kohya's and ComfyUI's default: scale 1)."""
    return float(rank) if alpha is None else float(alpha)


def pair_problem(down_shape, up_shape) -> str | None:
    """Why (down, up) is not one kohya module, or None: down (r, in) with up (out, r), or conv down (r, in, kh, kw)
    with up (out, r, 1, 1), r >= 1."""
    d, u = tuple(down_shape), tuple(up_shape)
    if len(d) not in (2, 4) or len(u) != len(d) or u[1] != d[0] or d[0] == 0 or (len(u) == 4 and u[2:] != (1, 1)):
        return (f"down is {d} and up is {u}; expected down (r, in) with up (out, r), or conv down (r, in, kh, kw) "
                "with up (out, r, 1, 1), the same rank r >= 1 in both")
    return None


def delta_shape(up_shape, down_shape, mid_shape=None) -> tuple[int, ...]:
    """The shape of ΔW: (out, in) or (out, in, kh, kw); a Tucker mid core brings its kernel."""
    delta = (int(up_shape[0]), *(int(n) for n in down_shape[1:]))
    if mid_shape is not None:
        delta = (delta[0], delta[1], *(int(n) for n in mid_shape[2:]))
    return delta


def shapes_fit(delta, weight) -> bool:
    """Whether a ΔW of shape `delta` can be added to a weight of shape `weight`: equal, or equal once a 1x1 kernel
    is read as linear (ComfyUI's loader and forward-time LoRA both make that one reshape, and no other)."""
    delta, weight = tuple(int(n) for n in delta), tuple(int(n) for n in weight)
    as_linear = [s[:2] if len(s) == 4 and s[2:] == (1, 1) else s for s in (delta, weight)]
    return delta == weight or as_linear[0] == as_linear[1]


def fit_problem(base: str, up_shape, down_shape, weight_key: str, weight_shape, mid_shape=None) -> str | None:
    """Why a LoRA layer (up, down[, Tucker mid]) cannot be added to a weight of `weight_shape`; None when it fits."""
    delta = delta_shape(up_shape, down_shape, mid_shape)
    if shapes_fit(delta, weight_shape):
        return None
    return (f"'{base}' makes a {delta} change (up {tuple(up_shape)}, down {tuple(down_shape)}) but the layer "
            f"'{weight_key}' is {tuple(int(n) for n in weight_shape)}")


def lora_delta(down: Tensor, up: Tensor, alpha=None, shape=None, strength: float = 1.0) -> Tensor:
    """ΔW = strength · (alpha / rank) · up @ down as float32, in `shape` (default: ΔW's own, see delta_shape).

    kohya-ss networks/lora.py merge_to: a conv kernel is up (out, r, 1, 1) composed with down (r, in, kh, kw), the
    matrix product over the flattened (in·kh·kw) axis. alpha None means a file without `.alpha` (alpha = rank).
    A `shape` that ΔW does not fit (shapes_fit) raises ValueError: the LoRA was made for another model.
    """
    rank = int(down.shape[0])
    if up.ndim < 2 or up.shape[1] != rank or any(s != 1 for s in up.shape[2:]):
        raise ValueError(f"lora_up has shape {tuple(up.shape)} but lora_down has rank {rank} "
                         f"(shape {tuple(down.shape)}); expected lora_up (out, {rank}[, 1, 1]). "
                         "The two tensors belong to different modules or the file is damaged.")
    own = delta_shape(up.shape, down.shape)
    if shape is not None and not shapes_fit(own, shape):
        raise ValueError(f"LoRA with up {tuple(up.shape)} and down {tuple(down.shape)} gives ΔW {own}, which does "
                         f"not fit a base weight of shape {tuple(shape)}; the LoRA was made for another model.")
    up2 = up.detach().reshape(up.shape[0], rank).to(torch.float32)  # (out, r)
    down2 = down.detach().reshape(rank, -1).to(torch.float32)  # (r, in·kh·kw)
    scale = strength * effective_alpha(alpha, rank) / rank
    return (scale * (up2 @ down2)).reshape(own if shape is None else tuple(shape))


@dataclass(frozen=True)
class LoraModule:
    """One kohya LoRA module: ΔW = strength · (alpha / rank) · up @ down."""

    down: Tensor  # (r, in) or conv (r, in, kh, kw)
    up: Tensor  # (out, r) or conv (out, r, 1, 1)
    alpha: float

    def __post_init__(self):
        problem = pair_problem(self.down.shape, self.up.shape)
        if problem:
            raise ValueError(f"A LoRA module needs matching factors: {problem}.")

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def is_conv(self) -> bool:
        return self.down.ndim == 4

    @property
    def scale(self) -> float:
        """alpha / rank: what strength 1 multiplies up @ down by."""
        return self.alpha / self.rank

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the base weight this module changes: (out, in) or (out, in, kh, kw)."""
        return delta_shape(self.up.shape, self.down.shape)

    def delta(self, strength: float = 1.0) -> Tensor:
        """ΔW = strength · (alpha / r) · up @ down as float32, in the base weight's shape."""
        return lora_delta(self.down, self.up, self.alpha, strength=strength)


def _owner(key: str, bases: set[str]) -> str | None:
    """The base in `bases` that `key` is a sub-key of ('B.dora_scale' -> 'B'), or None."""
    for i, ch in enumerate(key):
        if ch == "." and key[:i] in bases:
            return key[:i]
    return None


def split_modules(sd: dict[str, Tensor]) -> tuple[dict[str, LoraModule], list[str]]:
    """Plain kohya LoRA modules by base name, and the keys that are not plain LoRA (LyCORIS, DoRA, .diff ...).

    A base counts as plain LoRA when its keys are exactly lora_down, lora_up and optionally alpha (missing alpha
    means alpha = rank, kohya's default). A base that also holds other keys (e.g. `dora_scale`, `lora_mid.weight`)
    is not applied as plain LoRA by loaders, so all of its keys go to the second list, as do alphas of LyCORIS
    modules. The input is not modified; the modules hold the input's tensors.
    """
    downs = {k[: -len(DOWN)] for k in sd if k.endswith(DOWN)}
    ups = {k[: -len(UP)] for k in sd if k.endswith(UP)}
    bases = downs | ups
    tainted = set()
    for key in sd:
        if not key.endswith((DOWN, UP, ALPHA)):
            owner = _owner(key, bases)
            if owner is not None:
                tainted.add(owner)  # e.g. a DoRA module: its down/up are not applied as plain LoRA
    modules: dict[str, LoraModule] = {}
    others: list[str] = []
    for key in sd:
        base = next((key[: -len(s)] for s in (DOWN, UP, ALPHA) if key.endswith(s)), None)
        if base is None or base not in bases or base in tainted:
            others.append(key)
            continue
        if base in modules:
            continue
        if base not in downs or base not in ups:
            have, missing = (DOWN, UP) if base in downs else (UP, DOWN)
            raise ValueError(f"LoRA module '{base}' has '{base}{have}' {tuple(sd[base + have].shape)} but no "
                             f"'{base}{missing}'; the file is incomplete or damaged: re-save or re-download it.")
        down, up = sd[base + DOWN], sd[base + UP]
        if pair_problem(down.shape, up.shape):
            raise ValueError(f"LoRA module '{base}': '{base}{DOWN}' is {tuple(down.shape)} and '{base}{UP}' is "
                             f"{tuple(up.shape)}; expected down (r, in) with up (out, r), or conv down "
                             "(r, in, kh, kw) with up (out, r, 1, 1), the same rank r in both. The file is not a "
                             "kohya LoRA or is damaged.")
        alpha_t = sd.get(base + ALPHA)
        if alpha_t is not None and alpha_t.numel() != 1:
            raise ValueError(f"'{base}{ALPHA}' should be a single number; it has shape {tuple(alpha_t.shape)}.")
        alpha = effective_alpha(None if alpha_t is None else alpha_t.reshape(()).item(), int(down.shape[0]))
        modules[base] = LoraModule(down=down, up=up, alpha=alpha)
    return modules, others


def module_tensors(base: str, down: Tensor, up: Tensor, alpha: Tensor) -> dict[str, Tensor]:
    """The kohya keys of one module: `<base>.lora_down.weight`, `<base>.lora_up.weight` and `<base>.alpha`."""
    return {base + DOWN: down, base + UP: up, base + ALPHA: alpha}


def join_modules(modules: dict[str, LoraModule], dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
    """Back to kohya keys: down/up in `dtype`, alpha as a 0-d float32 tensor (fp16 would round a fractional alpha)."""
    out = {}
    for base, m in modules.items():
        out.update(module_tensors(base, m.down.detach().to(dtype).contiguous(), m.up.detach().to(dtype).contiguous(),
                                  torch.tensor(float(m.alpha), dtype=torch.float32)))
    return out

