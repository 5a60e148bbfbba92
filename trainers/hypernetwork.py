"""A1111-format hypernetworks: a K and a V MLP per attention width, trained on an already-loaded UNet. Nothing here
knows ComfyUI.

The format is the dict AUTOMATIC1111's modules/hypernetworks/hypernetwork.py saves with torch.save and ComfyUI's
comfy_extras/nodes_hypernetwork.py reads with weights-only loading: `{width: [k_state, v_state], "layer_structure",
"activation_func", "is_layer_norm", "weight_initialization", "use_dropout", "dropout_structure", "activate_output",
"last_layer_dropout", "name", "step", "sd_checkpoint", "sd_checkpoint_name", "optional_info"}`. Each state is a
torch.nn.Sequential's state dict ("linear.<index>.weight"), laid out per hidden layer as Linear, activation (not
after the last Linear unless activate_output), LayerNorm (is_layer_norm), Dropout (dropout_structure); A1111 loads
it strictly, so the indices must follow that layout exactly. Both readers apply a width's pair wherever an
attention's key/value input has that width: `k_in = x + mlp_k(x) * strength`, `v_in = x + mlp_v(x) * strength`.
Atelier adds two string entries, IDENTITY_KEY and FINISHED_KEY of trainers/reuse.py (the run's identity, so a later
identical run can load the file instead of training): ComfyUI's loader skips every key int() refuses and A1111 reads
only integer keys and the named fields, so both ignore them. This module spells that format once; the node and the
tests import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.paths import Root, atomic_write_bytes, read_bytes_inside

# Activations both readers build: A1111's own table plus torch's activation classes by lower-case name, and
# ComfyUI's fixed table (its loader returns no patch for any other name). "swish" is Hardswish in both.
ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
               "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softsign": nn.Softsign,
               "mish": nn.Mish}
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")  # A1111's names
DROPOUT_P = 0.3  # the only probability ComfyUI's loader builds, whatever the file's dropout_structure says
FORMAT_KEYS = ("layer_structure", "activation_func", "is_layer_norm", "weight_initialization", "use_dropout",
               "dropout_structure", "activate_output", "last_layer_dropout", "name", "step", "sd_checkpoint",
               "sd_checkpoint_name", "optional_info")
DRAWS_KEY = "dropout_draws"  # resume-state entry: masks drawn so far per dropout (not part of the .pt file)
MAX_LAYERS = 8  # Linear layers per MLP; A1111's presets use 2-4
MAX_PARAMETERS = 500_000_000  # all K / V MLPs together; a 1,2,1 SD1.5 network has about 13 M
MAX_FILE_BYTES = 4 * MAX_PARAMETERS + (64 << 20)  # float32 weights plus the pickle's own bytes
SUFFIX = ".pt"  # ComfyUI lists .pt hypernetworks and A1111 only .pt; neither reads a safetensors variant


def parse_layer_structure(text: str) -> tuple[float, ...]:
    """'1, 2, 1' -> (1.0, 2.0, 1.0): width multipliers, first and last 1 (A1111's layer structure field)."""
    try:
        values = tuple(float(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        values = ()
    if len(values) < 2 or values[0] != 1 or values[-1] != 1 or not all(0 < v <= 16 and math.isfinite(v)
                                                                        for v in values):
        raise ValueError(f"layer_structure should be comma-separated width multipliers that start and end with 1, "
                         f"each in (0, 16], e.g. '1, 2, 1'; got '{text}'.")
    if len(values) - 1 > MAX_LAYERS:
        raise ValueError(f"layer_structure '{text}' makes {len(values) - 1} layers; at most {MAX_LAYERS} are accepted. "
                         "Use fewer multipliers, e.g. '1, 2, 1'.")
    return values


def parameter_count(widths, layer_structure: tuple[float, ...]) -> int:
    """Weights and biases of every K and V MLP for the given attention widths (what Hypernetwork allocates)."""
    return 2 * sum(int(w * a) * int(w * b) + int(w * b) for w in widths
                   for a, b in zip(layer_structure, layer_structure[1:]))


def dropout_structure(layer_structure: tuple[float, ...], use_dropout: bool, last_layer_dropout: bool,
                      is_layer_norm: bool = False) -> list[float]:
    """Dropout after each Linear (entry i+1 for Linear i) as ComfyUI's loader places it, written out so A1111 builds
    the same: without layer norm A1111's rule (after every hidden Linear but the last hidden one, which
    last_layer_dropout adds); with layer norm ComfyUI counts the LayerNorms as layers, so every hidden Linear gets
    one and last_layer_dropout adds one after the output Linear."""
    n = len(layer_structure)
    if use_dropout and is_layer_norm:
        return [0.0] + [DROPOUT_P] * (n - 2) + [DROPOUT_P if last_layer_dropout else 0.0]
    if not use_dropout or n < 3:  # one Linear: it is the output layer, which never gets dropout without layer norm
        return [0.0] * n
    return [0.0] + [DROPOUT_P] * (n - 3) + [DROPOUT_P if last_layer_dropout else 0.0, 0.0]


@dataclass(frozen=True)
class HypernetworkConfig:
    """The hypernetwork's shape and settings, named as the file names them."""

    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation_func: str = "linear"
    is_layer_norm: bool = False
    use_dropout: bool = False  # off: ComfyUI's loader keeps its Dropout layers active when generating
    last_layer_dropout: bool = False
    activate_output: bool = False
    weight_initialization: str = "Normal"

    def __post_init__(self):
        object.__setattr__(self, "layer_structure", parse_layer_structure(",".join(map(str, self.layer_structure))))
        if self.activation_func not in ACTIVATIONS:
            raise ValueError(f"activation_func '{self.activation_func}' is not one both A1111 and ComfyUI load; "
                             f"use one of {', '.join(ACTIVATIONS)}.")
        if self.weight_initialization not in WEIGHT_INITS:
            raise ValueError(f"weight_initialization '{self.weight_initialization}' is not one of A1111's: "
                             f"{', '.join(WEIGHT_INITS)}.")
        if self.is_layer_norm and self.activation_func != "linear":
            # ComfyUI's loader counts LayerNorms as layers and so activates the output Linear too; recording it
            # as activate_output makes A1111 build the same network.
            object.__setattr__(self, "activate_output", True)

    def dropouts(self) -> list[float]:
        return dropout_structure(self.layer_structure, self.use_dropout, self.last_layer_dropout, self.is_layer_norm)


class SeededDropout(nn.Module):
    """Dropout drawn from a local generator (never torch's global RNG); a parameter-free slot in the layout."""

    def __init__(self, p: float, seed: int):
        super().__init__()
        self.p, self.seed, self.draws = float(p), int(seed), 0

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        self.draws += 1
        g = torch.Generator().manual_seed(self.seed + self.draws)
        keep = (torch.rand(x.shape, generator=g) >= self.p).to(x.device, x.dtype)
        return x * keep / (1 - self.p)


class HypernetworkMLP(nn.Module):
    """One K or V MLP of one width, its Sequential laid out index for index as A1111 builds it (see module doc)."""

    def __init__(self, width: int, config: HypernetworkConfig, seed: int):
        super().__init__()
        ls, dropouts, layers = config.layer_structure, config.dropouts(), []
        generator = torch.Generator().manual_seed(seed)
        for i in range(len(ls) - 1):
            layers.append(nn.utils.skip_init(nn.Linear, int(width * ls[i]), int(width * ls[i + 1])))
            _init_linear(layers[-1], config, generator)
            last = i == len(ls) - 2
            if config.activation_func != "linear" and (not last or config.activate_output):
                layers.append(ACTIVATIONS[config.activation_func]())
            if config.is_layer_norm:
                layers.append(nn.LayerNorm(int(width * ls[i + 1])))  # weight 1, bias 0
            if dropouts[i + 1] > 0:
                layers.append(SeededDropout(dropouts[i + 1], seed * 1000 + i))
        # The last parametrised layer starts at zero, so an untrained hypernetwork is the base model exactly (a
        # zero last Linear, or a zero last LayerNorm gate: a LayerNorm after a zero Linear would pass no gradient).
        tail = [m for m in layers if isinstance(m, (nn.Linear, nn.LayerNorm))][-1]
        with torch.no_grad():
            tail.weight.zero_()
            tail.bias.zero_()
        self.linear = nn.Sequential(*layers)

    def forward(self, x):
        """The residual added to the key/value input (not the input plus it)."""
        return self.linear(x)


def _init_linear(layer: nn.Linear, config: HypernetworkConfig, generator: torch.Generator) -> None:
    """A1111's weight initialisations by name (biases zero), drawn from a local generator."""
    nonlinearity = "leaky_relu" if config.activation_func == "leakyrelu" else "relu"
    w = layer.weight
    with torch.no_grad():
        layer.bias.zero_()
        name = config.weight_initialization
        if name == "Normal":
            nn.init.normal_(w, 0.0, 0.01, generator=generator)
        elif name == "XavierUniform":
            nn.init.xavier_uniform_(w, generator=generator)
        elif name == "XavierNormal":
            nn.init.xavier_normal_(w, generator=generator)
        elif name == "KaimingUniform":
            nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity, generator=generator)
        else:
            nn.init.kaiming_normal_(w, nonlinearity=nonlinearity, generator=generator)


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little")


def attention_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every attention with Linear to_k and to_v (attn1 self-, attn2 cross-attention)."""
    return [(name, m) for name, m in unet.named_modules()
            if re.search(r"(^|\.)attn[12]$", name) and isinstance(getattr(m, "to_k", None), nn.Linear)
            and isinstance(getattr(m, "to_v", None), nn.Linear)]


class Hypernetwork(nn.Module):
    """A K/V MLP pair per cross-attention context width, hooked into every attention whose key/value input has that
    width (as both readers apply it); a Trainable (trainers/trainable.py)."""

    def __init__(self, unet: nn.Module, config: HypernetworkConfig, seed: int = 0):
        super().__init__()
        self.config = config
        layers = attention_layers(unet)
        widths = sorted({m.to_k.in_features for name, m in layers if name.endswith("attn2")})
        if not widths:
            found = ", ".join(name for name, _ in layers[:6]) or "no attention layers at all"
            raise ValueError(f"No cross-attention (attn2 with to_k / to_v) found in the UNet: found {found}. A "
                             "hypernetwork needs a UNet with text cross-attention (SD1.x, SD2.x, SDXL).")
        count = parameter_count(widths, config.layer_structure)
        if count > MAX_PARAMETERS:  # refused before anything is allocated
            raise ValueError(f"layer_structure {','.join(f'{v:g}' for v in config.layer_structure)} makes "
                             f"{count:,} parameters for the widths {widths}, above the {MAX_PARAMETERS:,} limit; use "
                             "smaller multipliers or fewer layers, e.g. '1, 2, 1'.")
        self.pairs = nn.ModuleDict({str(w): nn.ModuleList([HypernetworkMLP(w, config, _seed(seed, w, kv))
                                                           for kv in ("k", "v")]) for w in widths})
        self.targets = [(m.to_k, m.to_v) for _, m in layers if m.to_k.in_features in widths]
        self.multiplier = 1.0
        self.step = 0
        self._handles: list = []

    def _hook(self, width: int, index: int):
        def pre_hook(_module, args):
            x = args[0]  # (B, tokens, width): the key or value input
            mlp = self.pairs[str(width)][index]
            delta = mlp(x.to(mlp.linear[0].weight.dtype)).to(x.dtype)
            return (x + delta * self.multiplier, *args[1:])
        return pre_hook

    @contextlib.contextmanager
    def applied(self):
        """Hooks the MLPs before every targeted to_k / to_v inside the block; removes exactly those hooks after."""
        if self._handles:
            yield self
            return
        for to_k, to_v in self.targets:
            self._handles.append(to_k.register_forward_pre_hook(self._hook(to_k.in_features, 0)))
            self._handles.append(to_v.register_forward_pre_hook(self._hook(to_v.in_features, 1)))
        try:
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []

    def _dropouts(self) -> list[SeededDropout]:
        return [m for m in self.modules() if isinstance(m, SeededDropout)]

    def set_multiplier(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"Hypernetwork strength must be a finite number, got {value!r}.")
        self.multiplier = value

    def param_groups(self, unet_lr: float, te_lr: float, train_text_encoder: bool) -> list[dict]:
        """All MLPs at unet_lr; a hypernetwork has nothing on the text encoder."""
        if train_text_encoder:
            raise ValueError("A hypernetwork acts on the UNet's attention only; set train_text_encoder to false.")
        return [{"params": list(self.parameters()), "lr": unet_lr, "name": "hypernetwork"}]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """'<width>.<k|v>.linear.<i>.<weight|bias>' -> float32 CPU copies, plus DRAWS_KEY (how many masks each
        dropout has drawn) when there is dropout, so a resumed run draws the masks an uninterrupted one would."""
        out = {f"{w}.{kv}.{key}": t.detach().to("cpu", torch.float32, copy=True)
               for w, pair in self.pairs.items() for kv, mlp in zip("kv", pair)
               for key, t in mlp.state_dict().items()}
        if self._dropouts():
            out[DRAWS_KEY] = torch.tensor([m.draws for m in self._dropouts()], dtype=torch.float64)  # exact integers
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        ours = self.state_tensors()
        missing = sorted(set(ours) - set(tensors))
        unexpected = sorted(set(tensors) - set(ours))
        other = sorted(k for k in ours if k in tensors and tuple(tensors[k].shape) != tuple(ours[k].shape))
        if missing or unexpected or other:
            raise ValueError(f"The hypernetwork state does not fit this hypernetwork: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, other shape {other[:5]}; resume with the layer_structure, "
                             "layer_norm and dropout the state was trained with.")
        with torch.no_grad():
            for w, pair in self.pairs.items():
                for kv, mlp in zip("kv", pair):
                    for key, t in mlp.state_dict().items():
                        t.copy_(tensors[f"{w}.{kv}.{key}"])
        for module, draws in zip(self._dropouts(), tensors.get(DRAWS_KEY, torch.zeros(0)).tolist()):
            module.draws = int(draws)

    def export(self, dtype: torch.dtype = torch.float32) -> dict:
        """The A1111 dict (see the module doc) with this network's weights; name and checkpoint fields empty."""
        c = self.config
        out: dict = {int(w): [{k: t.detach().to("cpu", dtype, copy=True).contiguous()
                               for k, t in mlp.state_dict().items()} for mlp in pair]
                     for w, pair in self.pairs.items()}
        out.update({"layer_structure": list(c.layer_structure), "activation_func": c.activation_func,
                    "is_layer_norm": c.is_layer_norm, "weight_initialization": c.weight_initialization,
                    "use_dropout": c.use_dropout, "dropout_structure": c.dropouts(),
                    "activate_output": c.activate_output, "last_layer_dropout": c.last_layer_dropout,
                    "name": "", "step": int(self.step), "sd_checkpoint": None, "sd_checkpoint_name": None,
                    "optional_info": None})
        return out


def non_finite(sd: dict) -> list[str]:
    """'<width>.<k|v>.<key>' of every tensor in an A1111 dict holding NaN or inf."""
    return [f"{w}.{kv}.{key}" for w, pair in sd.items() if isinstance(w, int) for kv, state in zip("kv", pair)
            for key, t in state.items() if not torch.isfinite(t).all()]


def save_hypernetwork(path: Path, sd: dict, fields: dict | None = None) -> None:
    """Writes the A1111 dict as a .pt that torch.load(weights_only=True) reads, atomically; refuses NaN / inf."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"Hypernetworks are written as '{SUFFIX}' (the only kind ComfyUI and A1111 list); "
                         f"'{path.name}' should end in '{SUFFIX}'.")
    sd = {**sd, **(fields or {})}
    bad = non_finite(sd)
    if bad:
        raise ValueError(f"Refusing to write hypernetwork '{path.name}': {', '.join(bad[:5])} hold NaN/inf values "
                         "(a diverged run). Nothing was written; lower the learning rate.")
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_hypernetwork(path: Path, roots: list[Root]) -> dict:
    """A hypernetwork file inside `roots` read as ComfyUI reads it (weights-only unpickling), checked for the keys
    both readers use."""
    data = read_bytes_inside(path, roots, "hypernetwork", limit=MAX_FILE_BYTES)  # root-checked, no link followed out
    sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not any(isinstance(k, int) for k in sd):
        raise ValueError(f"'{Path(path).name}' is not an A1111 hypernetwork: expected a dict with integer width keys "
                         "such as 768 holding [k_state, v_state].")
    return sd
