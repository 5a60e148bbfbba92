"""LoRA / LoCon adapters installed on the Linear and Conv2d layers of an already-loaded model, saved in kohya format.

Nothing here knows ComfyUI. The caller hands over plain torch modules (ComfyUI's UNet and text encoders are: their
`comfy.ops` layers subclass torch.nn.Linear / torch.nn.Conv2d) under a kohya prefix ("lora_unet", "lora_te",
"lora_te1", "lora_te2", "lora_te3"); the network wraps each targeted layer's forward and never touches its weight, so
the host keeps owning the model. Not here: optimisers, the training loop, reading or writing files (core/lora_io.py).

The file format (kohya-ss sd-scripts networks/lora.py: key names, alpha = rank when `.alpha` is missing, ΔW) is
spelled in core/lora_format.py; kohya_state_dict writes it and load_kohya_state_dict reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..core.lora_format import ALPHA, DOWN, UP, effective_alpha, kohya_base, lora_delta, module_tensors
# kohya's default targets in ComfyUI's (LDM) module names: the UNet's transformer blocks (networks/lora.py
# UNET_TARGET_REPLACE_MODULE) and every text-encoder layer's attention and MLP (TEXT_ENCODER_TARGET_REPLACE_MODULE).
UNET_INCLUDE = r"(^|\.)(proj_in|proj_out|transformer_blocks)(\.|$)"
TE_INCLUDE = r"\.(self_attn|mlp)\."
# T5-XXL's attention and gated feed-forward (kohya lora_sd3 / lora_flux with train_t5xxl: T5Attention and
# T5DenseGatedActDense, ComfyUI's `SelfAttention` and `DenseReluDense` sublayers), a default target of the families
# that carry a T5 (core.lora_meta names, or ComfyUI's model class name for Chroma, whose lone T5-XXL is its only text
# encoder); it only matches where a T5 root was given (module class names elsewhere).
T5_INCLUDE = r"\.(SelfAttention|DenseReluDense)\."
T5_FAMILIES = frozenset({"SD3", "Flux", "Chroma"})
# With a conv rank, kohya's LoCon adds UNET_TARGET_REPLACE_MODULE_CONV2D_3X3 (ResnetBlock2D, Downsample2D,
# Upsample2D): a ResBlock's in_layers / out_layers convolutions, its emb_layers linear and 1x1 skip_connection, a
# Downsample's `op` and an Upsample's `conv`. conv_in / conv_out and the time embedding stay out, as in kohya.
UNET_CONV_INCLUDE = r"(^|\.)(in_layers|out_layers|emb_layers|skip_connection)(\.|$)|(^|\.)(op|conv)$"
# Default diffusion-model targets of families whose blocks are not UNet transformer blocks, keyed by the family
# names of core.lora_meta.HOST_FAMILIES (one entry per family; UNET_INCLUDE serves SD1.x / SD2.x / SDXL).
# SD3 / SD3.5 (kohya networks/lora_sd3.py SD3_TARGET_REPLACE_MODULE): every linear of each joint block's image and
# context streams: attention qkv / proj (and SD3.5's second attention), MLP and adaLN modulation.
FAMILY_UNET_INCLUDE = {
    "SD3": r"(^|\.)joint_blocks\.\d+\.(x_block|context_block)\.",
}


# DiT families' default targets, keyed by ComfyUI's model class name (model_base.<Name>), as the families' common
# trainers choose them: (include, exclude) regexes on ComfyUI's module names. Flux.1 and Chroma: every linear of the
# double- and single-stream blocks (kohya sd-scripts lora_flux: DoubleStreamBlock / SingleStreamBlock, fused QKV and
# the blocks' modulation included). Qwen-Image: the transformer blocks without their img_mod / txt_mod modulation
# (musubi-tuner lora_qwen_image). Wan 2.x: the attention blocks (musubi-tuner lora_wan: WanAttentionBlock).
DIT_TARGETS: dict[str, tuple[str, str]] = {
    "Flux": (r"^(double_blocks|single_blocks)\.", ""),
    "Chroma": (r"^(double_blocks|single_blocks)\.", ""),
    "QwenImage": (r"^transformer_blocks\.", r"\.(img_mod|txt_mod)\."),
    "WAN21": (r"^blocks\.", ""),
    "WAN22": (r"^blocks\.", ""),
}
# DiT families' default text-encoder targets (TE_INCLUDE's CLIP layers elsewhere), by the same class names: every
# decoder layer's attention q/k/v/o and gated MLP of Qwen-Image's Qwen2.5-VL, not its vision tower (which text
# prompts never run), and every attention / feed-forward of Wan's umT5-XXL (T5_INCLUDE). They match only where the
# encoder's root was given.
QWEN_TE_INCLUDE = r"^model\.layers\.\d+\.(self_attn|mlp)\."
DIT_TE_TARGETS: dict[str, str] = {"QwenImage": QWEN_TE_INCLUDE, "WAN21": T5_INCLUDE, "WAN22": T5_INCLUDE}


@dataclass(frozen=True)
class NetworkConfig:
    """Which layers get an adapter and how big it is; kohya's network_dim / network_alpha / conv_dim / dropouts."""

    rank: int = 32
    alpha: float = 16.0
    conv_rank: int = 0  # 0: no LoCon, k×k Conv2d layers are left alone (1x1 convs are linear: main rank); >0: LoCon
    conv_alpha: float = 1.0
    dropout: float = 0.0  # neuron dropout on the down projection's output (kohya network_dropout)
    rank_dropout: float = 0.0  # drops whole rank channels per sample, rescaled (kohya rank_dropout)
    module_dropout: float = 0.0  # skips the whole adapter for a step with this probability (training only)
    target_patterns: tuple[str, ...] = ()  # regexes (re.search) on the module name or its kohya key; empty = all
    exclude_patterns: tuple[str, ...] = ()  # regexes, same matching; an exclusion wins over a target
    rank_overrides: tuple[tuple[str, int, float], ...] = ()  # (regex, rank, alpha): first match wins; rank 0 skips

    def __post_init__(self):
        # Lists from a UI or JSON become tuples so the config stays hashable; the caller's lists are not touched.
        for name in ("target_patterns", "exclude_patterns"):
            value = getattr(self, name)
            # A lone string is one pattern, not a sequence of one-character patterns.
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "rank_overrides", tuple(tuple(o) for o in self.rank_overrides))
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"NetworkConfig.rank must be an int >= 1, got {self.rank!r}.")
        if not isinstance(self.conv_rank, int) or self.conv_rank < 0:
            raise ValueError(f"NetworkConfig.conv_rank must be an int >= 0 (0 = leave convolutions alone), "
                             f"got {self.conv_rank!r}.")
        for name in ("alpha", "conv_alpha"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"NetworkConfig.{name} must be a finite number, got {getattr(self, name)!r}.")
        for name in ("dropout", "rank_dropout", "module_dropout"):
            p = getattr(self, name)
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"NetworkConfig.{name} must be in [0, 1), got {p!r}; use 0 to turn it off.")
        for pattern in self.target_patterns + self.exclude_patterns:
            _compile(pattern, "target_patterns/exclude_patterns")
        for entry in self.rank_overrides:
            if len(entry) != 3 or not isinstance(entry[1], int) or entry[1] < 0:
                raise ValueError(f"NetworkConfig.rank_overrides entries are (regex, rank >= 0, alpha), got {entry!r}.")
            _compile(entry[0], "rank_overrides")


def with_default_targets(config: NetworkConfig, family: str | None = None) -> NetworkConfig:
    """The config itself when it names targets, else with kohya's default ones: the family's blocks (UNet transformer
    blocks unless FAMILY_UNET_INCLUDE names others) and text-encoder attention / MLP, plus (conv_rank > 0, LoCon)
    the ResNet, down- and up-sample layers."""
    if config.target_patterns:
        return config
    unet = FAMILY_UNET_INCLUDE.get(family or "", UNET_INCLUDE)
    include = (unet, TE_INCLUDE) + ((UNET_CONV_INCLUDE,) if config.conv_rank > 0 else ())
    return dataclasses.replace(config, target_patterns=include)


def family_default_targets(config: NetworkConfig, family: str, config_family: str | None = None) -> NetworkConfig:
    """with_default_targets (for `config_family`, core.lora_meta's name), except that a DiT family in DIT_TARGETS
    (ComfyUI's model class name) gets its own transformer blocks as default targets (UNet block names match nothing
    there, and its text encoder's layers in DIT_TE_TARGETS); families with a T5-XXL (SD3.5, Flux.1, Chroma) also
    target its attention and feed-forward."""
    if config.target_patterns:
        return config
    # the T5 trains only when its root is given
    t5 = (T5_INCLUDE,) if config_family in T5_FAMILIES or family in T5_FAMILIES else ()
    if family not in DIT_TARGETS:
        chosen = with_default_targets(config, config_family)
        return dataclasses.replace(chosen, target_patterns=chosen.target_patterns + t5)
    include, exclude = DIT_TARGETS[family]
    te = DIT_TE_TARGETS.get(family, TE_INCLUDE)
    return dataclasses.replace(config, target_patterns=(include, te) + t5,
                               exclude_patterns=config.exclude_patterns + ((exclude,) if exclude else ()))


def extract_targets(shapes: dict[str, tuple[int, ...]], include: str, convs: bool) -> list[str]:
    """Weight keys ('<module>.weight' -> shape) an extraction adapts: the linears and 1x1 convs that `include`
    matches (kohya's default targets); with convs also every k×k conv and, as kohya's LoCon, the linears of the
    ResNet blocks (emb_layers), so their share of ΔW is not dropped."""
    keep = []
    for key, shape in shapes.items():
        pointwise = len(shape) == 2 or (len(shape) == 4 and tuple(shape[2:]) == (1, 1))
        module = key[: -len(".weight")] if key.endswith(".weight") else key
        locon = convs and (len(shape) == 4 or (len(shape) == 2 and re.search(UNET_CONV_INCLUDE, module)))
        if (pointwise and re.search(include, key)) or locon:
            keep.append(key)
    return keep


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"Invalid regular expression {pattern!r} in {where}: {e}. Escape literal characters such "
                         "as '.', '(' or '[' with a backslash.") from None


def _stable_seed(*parts) -> int:
    """A 63-bit seed from the parts; unlike hash() it is the same in every process (PYTHONHASHSEED does not apply)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _inside_backward() -> bool:
    """True while the autograd engine runs, i.e. when gradient checkpointing recomputes a forward."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)  # private, present since torch 1.13
    return task_id is not None and task_id() != -1


def parse_rank_overrides(text: str) -> tuple[tuple[str, int, float], ...]:
    """'regex = rank' or 'regex = rank/alpha' per line (e.g. 'output_blocks = 64/32'; rank 0 skips the layers)."""
    out = []
    for n, line in enumerate((text or "").splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        pattern, sep, value = line.rpartition("=")
        try:
            rank_text, _, alpha_text = value.strip().partition("/")
            rank = int(rank_text)
            alpha = float(alpha_text) if alpha_text else float(rank)
        except ValueError:
            rank = -1
        if not sep or not pattern.strip() or rank < 0:
            raise ValueError(f"Rank override line {n} ('{line.strip()}') should read 'regex = rank' or "
                             "'regex = rank/alpha', e.g. 'input_blocks_[12] = 8/4'.")
        out.append((pattern.strip(), rank, alpha))
    return tuple(out)


class LoRAModule(nn.Module):
    """LoRA (Hu et al., 2021) on one Linear, or LoCon on one Conv2d; up is zero-initialised so it starts as a no-op.

    `base` is kept as a plain attribute, not a submodule, so state_dict() and parameters() hold only the adapter.
    Parameters are created float32 on the CPU; move the network with .to(). dropout / rank_dropout / module_dropout
    act only in train() mode and draw from local generators (never torch's global RNG).
    """

    def __init__(self, key: str, base: nn.Module, rank: int, alpha: float, *, name: str = "", dropout: float = 0.0,
                 rank_dropout: float = 0.0, module_dropout: float = 0.0, seed: int = 0):
        super().__init__()
        if isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise ValueError(f"Layer '{name or key}' is a grouped Conv2d (groups={base.groups}); LoCon adapts "
                                 "only groups=1 convolutions. Exclude it.")
            # skip_init: build on the meta device, so torch's own init does not consume the global RNG.
            down = nn.utils.skip_init(nn.Conv2d, base.in_channels, rank, base.kernel_size, stride=base.stride,
                                      padding=base.padding, dilation=base.dilation, bias=False,
                                      padding_mode=base.padding_mode)  # weight (r, in, kh, kw)
            up = nn.utils.skip_init(nn.Conv2d, rank, base.out_channels, 1, bias=False)  # weight (out, r, 1, 1)
        elif isinstance(base, nn.Linear):
            down = nn.utils.skip_init(nn.Linear, base.in_features, rank, bias=False)  # weight (r, in)
            up = nn.utils.skip_init(nn.Linear, rank, base.out_features, bias=False)  # weight (out, r)
        else:
            raise TypeError(f"LoRAModule adapts torch.nn.Linear or torch.nn.Conv2d; '{name or key}' is "
                            f"{type(base).__name__}.")
        object.__setattr__(self, "base", base)  # not registered: the host owns the base layer and its weight
        self.key, self.name, self.rank = key, name, int(rank)
        self.is_conv = isinstance(base, nn.Conv2d)
        self.down, self.up = down, up
        # Seeded by the network seed and the key, so a module's init does not depend on which modules came before.
        generator = torch.Generator().manual_seed(_stable_seed(seed, key, "init"))
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)
            self.up.weight.zero_()
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=torch.float32))
        self.multiplier = 1.0
        self.dropout, self.rank_dropout = float(dropout), float(rank_dropout)
        self.module_dropout = float(module_dropout)
        self._seed = seed
        self._draws = 0  # training forwards so far: each one gets its own dropout masks
        self._draw_seed = 0  # the last one's seed, replayed when checkpointing recomputes that forward
        self._installed = False
        self._had_instance_forward = False
        self._original_forward = None

    @property
    def alpha_value(self) -> float:
        return float(self.alpha)

    def set_alpha(self, value: float) -> None:
        """Sets alpha in place (keeps the buffer's device and dtype)."""
        with torch.no_grad():
            self.alpha.fill_(float(value))

    def install(self) -> None:
        """Makes the base layer's forward this module's forward; remembers what was there."""
        if self._installed:
            return
        base = self.base
        self._had_instance_forward = "forward" in base.__dict__  # someone already set an instance forward
        self._original_forward = base.forward  # the bound method (or that instance attribute)
        base.forward = self.forward
        self._installed = True

    def uninstall(self) -> None:
        """Puts the base layer's forward back exactly as install() found it."""
        if not self._installed:
            return
        if self._had_instance_forward:
            self.base.forward = self._original_forward
        else:
            del self.base.__dict__["forward"]  # the class's forward shows through again
        self._original_forward = None
        self._installed = False

    def _next_seed(self) -> int:
        if not _inside_backward():
            # A real forward: new masks. A checkpoint recompute (inside backward) replays the last ones, as
            # torch.utils.checkpoint does for the global RNG, so gradients match the forward that produced the loss.
            self._draws += 1
            self._draw_seed = _stable_seed(self._seed, self.key, "dropout", self._draws)
        return self._draw_seed

    def lora(self, x: torch.Tensor, training: bool, seed: int) -> torch.Tensor:
        """The adapter's output at strength 1 (scale included), in the LoRA dtype."""
        lx = self.down(x.to(self.down.weight.dtype))  # (..., r) or (B, r, H', W')
        scale = self.alpha / self.rank
        if training and (self.dropout or self.rank_dropout):
            generator = torch.Generator(device=lx.device).manual_seed(seed)
            if self.dropout:
                keep = torch.rand(lx.shape, generator=generator, device=lx.device) >= self.dropout
                lx = lx * keep / (1.0 - self.dropout)
            if self.rank_dropout:
                rank_dim = lx.ndim - 3 if self.is_conv else lx.ndim - 1  # channels for conv, last dim for linear
                shape = [1] * lx.ndim
                shape[rank_dim] = self.rank
                if rank_dim > 0:
                    shape[0] = lx.shape[0]  # one draw per sample
                keep = torch.rand(shape, generator=generator, device=lx.device) >= self.rank_dropout
                lx = lx * keep
                scale = scale / (1.0 - self.rank_dropout)  # keeps the expected output, as kohya does
        return self.up(lx) * scale

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """base(x) + lora(x) * multiplier * alpha / rank, cast back to the base output's dtype."""
        base_forward = self._original_forward if self._installed else self.base.forward
        out = base_forward(x, *args, **kwargs)
        if self.multiplier == 0.0:
            return out
        training = self.training and bool(self.dropout or self.rank_dropout or self.module_dropout)
        seed = self._next_seed() if training else 0
        if training and self.module_dropout:
            coin = torch.rand((), generator=torch.Generator().manual_seed(seed ^ 1))  # CPU: no device sync
            if float(coin) < self.module_dropout:
                return out
        return out + (self.lora(x, training, seed) * self.multiplier).to(out.dtype)

    def extra_repr(self) -> str:
        return f"key={self.key}, rank={self.rank}, alpha={self.alpha_value:g}"


class LoRANetwork(nn.Module):
    """Every adapter of one training run, over one or more roots (UNet, text encoders), keyed by kohya base name."""

    def __init__(self, roots: dict[str, nn.Module], config: NetworkConfig, seed: int = 0):
        super().__init__()
        if not isinstance(roots, dict) or not roots:
            raise ValueError("LoRANetwork needs roots as a non-empty dict of kohya prefix -> module, e.g. "
                             "{'lora_unet': unet, 'lora_te': text_encoder}; "
                             f"got {type(roots).__name__} {roots!r:.80}.")
        for prefix, root in roots.items():
            if not isinstance(prefix, str) or not prefix or not isinstance(root, nn.Module):
                raise ValueError(f"LoRANetwork roots map a prefix string to a torch.nn.Module; got {prefix!r} -> "
                                 f"{type(root).__name__}.")
        self.config, self.seed = config, seed
        self._prefixes = sorted(roots)
        include = [_compile(p, "target_patterns") for p in config.target_patterns]
        exclude = [_compile(p, "exclude_patterns") for p in config.exclude_patterns]
        overrides = [(_compile(p, "rank_overrides"), r, a) for p, r, a in config.rank_overrides]

        def selected(name: str, key: str) -> bool:
            def hits(patterns):
                return any(p.search(name) or p.search(key) for p in patterns)
            return (not include or hits(include)) and not hits(exclude)

        built: dict[str, LoRAModule] = {}
        adapted: dict[int, str] = {}  # id(base layer) -> key, so a layer shared between roots is adapted once
        self.skipped: list[tuple[str, str]] = []
        candidates: list[str] = []
        for prefix in sorted(roots):  # sorted: the result does not depend on the dict's order
            root = roots[prefix]
            # torch's MultiheadAttention reads out_proj.weight directly and never calls out_proj's forward.
            mha_children = {f"{n}.{c}" if n else c for n, m in root.named_modules()
                            if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_children()}
            for name, layer in root.named_modules():
                is_conv = isinstance(layer, nn.Conv2d)
                # A 1x1 convolution is a Linear over channels (SD1.5's proj_in/proj_out): kohya's plain LoRA adapts
                # it at the main rank, so it counts as linear here; only k×k convolutions need LoCon (conv_rank).
                pointwise = is_conv and tuple(layer.kernel_size) == (1, 1)
                if not (isinstance(layer, nn.Linear) or pointwise or (is_conv and config.conv_rank > 0)):
                    continue
                candidates.append(f"{prefix}: {name}")
                key = kohya_base(prefix, name)
                if not selected(name, key):
                    continue
                if name in mha_children:
                    self.skipped.append((name, f"{prefix}: inside torch.nn.MultiheadAttention, which bypasses the "
                                               "layer's forward, so an adapter would have no effect"))
                    continue
                if is_conv and layer.groups != 1:
                    self.skipped.append((name, f"{prefix}: grouped Conv2d (groups={layer.groups}); LoCon adapts "
                                               "only groups=1 convolutions"))
                    continue
                if id(layer) in adapted:
                    self.skipped.append((name, f"{prefix}: the same layer is already adapted as {adapted[id(layer)]}"))
                    continue
                rank, alpha = ((config.conv_rank, config.conv_alpha) if is_conv and not pointwise
                               else (config.rank, config.alpha))
                for pattern, r, a in overrides:
                    if pattern.search(name) or pattern.search(key):
                        rank, alpha = r, a
                        break
                if rank == 0:
                    self.skipped.append((name, f"{prefix}: rank_overrides gave it rank 0"))
                    continue
                if is_conv:
                    kh, kw = layer.kernel_size
                    fan_in, fan_out = layer.in_channels * kh * kw, layer.out_channels
                    shape = f"Conv2d({layer.in_channels}, {layer.out_channels}, kernel {kh}x{kw})"
                else:
                    fan_in, fan_out = layer.in_features, layer.out_features
                    shape = f"Linear({fan_in} -> {fan_out})"
                if rank > min(fan_in, fan_out):
                    raise ValueError(
                        f"Layer '{name}' ({prefix}) is {shape}: rank {rank} is larger than min(in, out) = "
                        f"{min(fan_in, fan_out)}, so the adapter could not be low-rank. Use a rank <= "
                        f"{min(fan_in, fan_out)}, a rank_overrides entry for this layer, or an exclude pattern "
                        f"such as {re.escape(name)!r}.")
                if key in built:
                    raise ValueError(f"Modules '{built[key].name}' and '{name}' under {prefix} both map to the kohya "
                                     f"key '{key}' ('.' becomes '_'); exclude one of them.")
                built[key] = LoRAModule(key, layer, rank, alpha, name=name, dropout=config.dropout,
                                        rank_dropout=config.rank_dropout, module_dropout=config.module_dropout,
                                        seed=seed)
                adapted[id(layer)] = key
        if not built:
            kinds = "Linear or Conv2d" if config.conv_rank else "Linear"
            found = (f"{len(candidates)} {kinds} layers such as " + ", ".join(candidates[:6]) if candidates
                     else f"no {kinds} layers at all")
            raise ValueError(f"No layer matched for LoRA in roots {sorted(roots)}: found {found}; "
                             f"target_patterns={list(config.target_patterns)}, "
                             f"exclude_patterns={list(config.exclude_patterns)}. Patterns are re.search on the module "
                             "name (e.g. 'attn1\\.to_q') or its kohya key (e.g. 'lora_unet_.*attn1').")
        # torch module names cannot hold '.', which ComfyUI's generic text_encoders.* keys keep; the file keys
        # (modules_by_key) stay as they are
        self.lora = nn.ModuleDict({key.replace(".", "__"): built[key] for key in sorted(built)})
        self.modules_by_key: dict[str, LoRAModule] = {key: built[key] for key in sorted(built)}
        self._applied = False

    @property
    def is_applied(self) -> bool:
        return self._applied

    def apply(self, fn=None):
        """Routes every adapted layer's forward through its LoRA; a second call does nothing.

        With a function, behaves as torch.nn.Module.apply(fn) instead, so torch code that recurses with
        `.apply(init_fn)` through a parent module still works.
        """
        if fn is not None:
            return super().apply(fn)
        if self._applied:
            return None
        for module in self.modules_by_key.values():
            module.install()
        self._applied = True
        return None

    def remove(self) -> None:
        """Restores every adapted layer's original forward exactly; a second call does nothing."""
        for module in self.modules_by_key.values():
            module.uninstall()
        self._applied = False

    @contextlib.contextmanager
    def applied(self):
        """Applied inside the block, back to the previous state after it, even when the block raises."""
        was_applied = self._applied
        self.apply()
        try:
            yield self
        finally:
            if not was_applied:
                self.remove()

    def set_multiplier(self, value: float) -> None:
        """Strength of every adapter (1.0 = as trained, 0.0 = base model exactly)."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"LoRA multiplier must be a finite number, got {value!r}.")
        for module in self.modules_by_key.values():
            module.multiplier = value

    def parameters_for(self, prefix: str) -> list[nn.Parameter]:
        """Parameters of the adapters whose key starts with `prefix` ("lora_te" also covers lora_te1/lora_te2)."""
        return [p for key, module in self.modules_by_key.items() if key.startswith(prefix)
                for p in (module.down.weight, module.up.weight)]

    # ------------------------------------------------------------------ the Trainable protocol (trainable.py)

    def param_groups(self, unet_lr: float, te_lr: float, train_text_encoder: bool) -> list[dict]:
        """The UNet's adapters at unet_lr, and the text encoders' at te_lr when they train (else frozen)."""
        groups = [{"params": self.parameters_for("lora_unet"), "lr": unet_lr, "name": "unet"}]
        te_params = [p for p in self.parameters() if not any(p is q for q in groups[0]["params"])]
        if train_text_encoder:
            groups.append({"params": te_params, "lr": te_lr, "name": "te"})
        else:
            for p in te_params:
                p.requires_grad_(False)
        return groups

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The weights in full precision, kohya-keyed (the resume state's lora.safetensors)."""
        return self.kohya_state_dict(torch.float32)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_kohya_state_dict(tensors)

    def export(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """The shipped LoRA: kohya keys in `dtype`, which A1111, Forge, kohya and ComfyUI all load."""
        return self.kohya_state_dict(dtype)

    def kohya_state_dict(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """kohya-format tensors (down, up and alpha, all in `dtype` as kohya saves them), contiguous copies on CPU."""
        out = {}
        for key, module in self.modules_by_key.items():
            out.update(module_tensors(key, module.down.weight.detach().to("cpu", dtype=dtype, copy=True).contiguous(),
                                      module.up.weight.detach().to("cpu", dtype=dtype, copy=True).contiguous(),
                                      module.alpha.detach().to("cpu", dtype=dtype, copy=True)))  # alpha: shape ()
        return out

    def load_kohya_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Continues from a kohya-format file: all of this network's keys with the same shapes, nothing else.

        Loads nothing unless everything matches. A missing `.alpha` means alpha = rank (kohya's default); a
        present one replaces the configured alpha, so the file's scale is kept. The file's rank must equal this
        network's: to continue at another rank, build the network with the file's rank.
        """
        expected = {}
        for key, module in self.modules_by_key.items():
            expected[key + DOWN] = tuple(module.down.weight.shape)
            expected[key + UP] = tuple(module.up.weight.shape)
        alphas = {key + ALPHA for key in self.modules_by_key}
        for k, v in sd.items():
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"LoRA state dict entry '{k}' is {type(v).__name__}, expected a tensor.")
        missing = [k for k in expected if k not in sd]
        unexpected = [k for k in sd if k not in expected and k not in alphas]
        mismatched = [k for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
        mismatched += [k for k in alphas if k in sd and sd[k].numel() != 1]
        if missing or unexpected or mismatched:
            raise ValueError(self._mismatch_message(sd, expected, missing, unexpected, mismatched))
        for k in alphas:
            if k in sd and not math.isfinite(float(sd[k])):
                raise ValueError(f"LoRA state dict alpha '{k}' is {float(sd[k])}; expected a finite number. "
                                 "The file is damaged.")
        with torch.no_grad():
            for key, module in self.modules_by_key.items():
                module.down.weight.copy_(sd[key + DOWN])
                module.up.weight.copy_(sd[key + UP])
                module.set_alpha(effective_alpha(sd.get(key + ALPHA), module.rank))

    def _mismatch_message(self, sd, expected, missing, unexpected, mismatched) -> str:
        lines = [f"The LoRA state dict does not match this network ({len(self.modules_by_key)} modules under "
                 f"{self._prefixes}): "
                 f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} with another shape."]
        if missing:
            lines.append("missing: " + ", ".join(f"{k} {expected[k]}" for k in missing[:10])
                         + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            lines.append("unexpected: " + ", ".join(f"{k} {tuple(sd[k].shape)}" for k in unexpected[:10])
                         + (" ..." if len(unexpected) > 10 else ""))
        if mismatched:
            lines.append("other shape: " + ", ".join(f"{k} file {tuple(sd[k].shape)} vs network "
                                                     f"{expected.get(k, '()')}" for k in mismatched[:10])
                         + (" ..." if len(mismatched) > 10 else ""))
        file_ranks = sorted({sd[k].shape[0] for k in sd if k.endswith(DOWN) and sd[k].ndim >= 2})
        ours = sorted({m.rank for m in self.modules_by_key.values()})
        if mismatched and file_ranks and file_ranks != ours:
            lines.append(f"The file has rank {file_ranks} and this network {ours}: continuing needs the same rank, "
                         "so build the network with the file's rank (and conv_rank).")
        elif unexpected or missing:
            lines.append("The file was probably trained for another model or with other include/exclude/conv "
                         "settings; pick the LoRA made for this model, or match the settings it was trained with.")
        return "\n".join(lines)

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """kohya key -> strength-1 ΔW (float32) in the base weight's shape; the multiplier is not applied."""
        return {key: lora_delta(m.down.weight, m.up.weight, m.alpha_value, m.base.weight.shape)
                for key, m in self.modules_by_key.items()}
