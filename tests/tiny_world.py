"""Tiny world: procedurally drawn shapes × colours × two render styles, a text-conditioned pixel-space diffusion model
pretrained on them with our Trainer, a tiny classifier that reads shape, colour and style back, and the two measures
built on it (likeness, leakage). For core tests and benchmarks/tiny_world.py; nothing here knows ComfyUI.

Images are 16×16 RGB in [-1, 1] (latents = pixels). "flat" draws a uniformly filled shape on white; "render" draws
the same shape shaded (light top-left, dark bottom-right) with a black outline on a dark gradient background, the
stand-in for the "3D look" a copy-machine LoRA should not learn. Captions read "red circle, flat". The model is a
TinyUNet-like stack (two attention blocks) under rectified flow; sampling is plain Euler on the flow ODE.
Pretrained weights and the classifier are cached in ~/.cache/atelier/tiny_world_<hash>.safetensors (the hash covers
every setting below), so only the first run pays for them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from tiny_models import Block, TinyTextEncoder

from atelier.core.paths import atomic_write_bytes
from atelier.trainers import objectives as ob
from atelier.trainers.finetune import FullFineTune
from atelier.trainers.loop import Trainer, TrainConfig, TrainSample
from atelier.trainers.network import LoRANetwork, NetworkConfig

SIZE = 16
SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")  # the classifier knows all six
KNOWN = SHAPES[:5]  # the base model is pretrained on these; "diamond" is the new character
CHARACTER = "diamond"
COLOURS = {"red": (1.0, 0.15, 0.15), "green": (0.15, 0.8, 0.2), "blue": (0.2, 0.3, 1.0), "yellow": (1.0, 0.9, 0.1)}
STYLES = ("flat", "render")
VERSION = 2  # bump when drawing, model or training changes, so stale caches are not reused


def shape_mask(shape: str, cx: float, cy: float, radius: float) -> np.ndarray:
    """A boolean (SIZE, SIZE) mask of one shape centred at (cx, cy) with the given half-size in pixels."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    dx, dy = x - cx, y - cy
    r = np.hypot(dx, dy)
    if shape == "circle":
        return r < radius
    if shape == "square":
        return np.maximum(abs(dx), abs(dy)) < radius * 0.8
    if shape == "triangle":  # apex up, base at +0.8 radius
        return (dy < radius * 0.8) & (abs(dx) < (dy + radius) / 1.8)
    if shape == "cross":
        arm = radius / 3
        return ((abs(dx) < arm) & (abs(dy) < radius)) | ((abs(dy) < arm) & (abs(dx) < radius))
    if shape == "ring":
        return (r < radius) & (r > radius * 0.5)
    if shape == "diamond":
        return abs(dx) + abs(dy) < radius * 1.1
    raise ValueError(f"Unknown shape '{shape}'; expected one of {', '.join(SHAPES)}.")


def draw(shape: str, colour: str, style: str, rng: np.random.Generator) -> torch.Tensor:
    """One image (3, SIZE, SIZE) in [-1, 1]; position and size jitter come from `rng`."""
    cx, cy = SIZE / 2 + rng.uniform(-1.0, 1.0), SIZE / 2 + rng.uniform(-1.0, 1.0)
    radius = rng.uniform(5.0, 6.2)
    mask = shape_mask(shape, cx, cy, radius)
    rgb = np.array(COLOURS[colour])[:, None, None]  # (3, 1, 1)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    if style == "flat":
        image = np.where(mask[None], rgb, 1.0)  # white background, uniform fill
    elif style == "render":
        background = 0.15 + 0.2 * y / SIZE  # dark vertical gradient
        shade = np.clip(1.15 - 0.55 * ((x - cx) + (y - cy) + 2 * radius) / (2 * radius), 0.35, 1.15)  # light top-left
        image = np.where(mask[None], np.clip(rgb * shade[None], 0, 1), background[None])
        grown = np.zeros_like(mask)
        for sy, sx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            grown |= np.roll(np.roll(mask, sy, 0), sx, 1)
        image = np.where((grown & ~mask)[None], 0.0, image)  # black outline one pixel wide
    else:
        raise ValueError(f"Unknown style '{style}'; expected one of {', '.join(STYLES)}.")
    return torch.from_numpy(image * 2 - 1).float()


def caption(shape: str, colour: str, style: str | None) -> str:
    """'red circle, flat', or 'red circle' when the style goes uncaptioned (as a user's character renders do)."""
    return f"{colour} {shape}" + (f", {style}" if style else "")


def dataset(shapes, colours, styles, variants: int, seed: int, captioned_style: bool = True):
    """[(image, caption, (shape, colour, style))] for every combination, `variants` jittered copies each."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        for colour in colours:
            for style in styles:
                for _ in range(variants):
                    out.append((draw(shape, colour, style, rng), caption(shape, colour, style if captioned_style
                                                                         else None), (shape, colour, style)))
    return out


# ---------------------------------------------------------------------------------------------------- the model


class WorldUNet(nn.Module):
    """A small U: conv at 16×16, two attention blocks (self + cross, like SD's) at 8×8, up again with a skip;
    unet(x, timesteps, context) -> (B, 3, H, W)."""

    def __init__(self, width: int = 32, context_dim: int = 16, seed: int = 0):
        super().__init__()
        self.width = width
        self.time_embed = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))
        self.input_blocks = nn.ModuleList([nn.ModuleList([nn.Conv2d(3, width, 3, padding=1)]),
                                           nn.ModuleList([nn.Conv2d(width, width, 3, stride=2, padding=1)]),
                                           nn.ModuleList([Block(width, context_dim)]),
                                           nn.ModuleList([Block(width, context_dim)])])
        self.up = nn.Conv2d(2 * width, width, 3, padding=1)
        self.out = nn.Sequential(nn.GroupNorm(4, width), nn.SiLU(), nn.Conv2d(width, 3, 3, padding=1))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():  # deterministic init from a local generator
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5 if p.ndim > 1 else torch.zeros(p.shape))
            for norm in (m for m in self.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))):
                norm.weight.fill_(1.0)

    def forward(self, x, timesteps, context):
        temb = self.time_embed(ob.sinusoidal_embedding(timesteps, self.width))[:, :, None, None]  # (B, W, 1, 1)
        skip = self.input_blocks[0][0](x) + temb  # (B, W, 16, 16)
        h = self.input_blocks[1][0](nn.functional.silu(skip))  # (B, W, 8, 8)
        h = self.input_blocks[2][0](h + temb, context)
        h = self.input_blocks[3][0](h, context)
        h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")  # back to 16×16
        h = skip + self.up(nn.functional.silu(torch.cat([h, skip], dim=1)))
        return self.out(h)


class Classifier(nn.Module):
    """A small CNN with three heads: shape (6), colour (4), style (2) logits."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1),
                                  nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(64 * 4 * 4, 128), nn.ReLU())
        self.shape, self.colour = nn.Linear(128, len(SHAPES)), nn.Linear(128, len(COLOURS))
        self.style = nn.Linear(128, len(STYLES))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5 if p.ndim > 1
                        else torch.zeros(p.shape))

    def forward(self, x):
        h = self.body(x)
        return self.shape(h), self.colour(h), self.style(h)

    def probabilities(self, x) -> dict[str, torch.Tensor]:
        """Softmax of each head: {'shape': (B, 6), 'colour': (B, 4), 'style': (B, 2)}."""
        with torch.no_grad():
            s, c, st = self(x)
        return {"shape": s.softmax(1), "colour": c.softmax(1), "style": st.softmax(1)}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that decides the pretrained world; its hash names the cache file."""

    width: int = 32
    context_dim: int = 16
    variants: int = 6
    pretrain_steps: int = 2400
    pretrain_lr: float = 2e-3
    batch_size: int = 16
    classifier_steps: int = 1500
    seed: int = 0
    version: int = VERSION

    def key(self, part: str = "model") -> str:
        """The hash of the settings one part depends on: "model" (the base) or "classifier"."""
        fields = asdict(self)
        mine = ({k: fields[k] for k in ("classifier_steps", "variants", "seed", "version")} if part == "classifier"
                else {k: v for k, v in fields.items() if k != "classifier_steps"})
        return hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:12]


@contextlib.contextmanager
def deterministic():
    """torch.use_deterministic_algorithms inside the block (warn-only where an op has no deterministic form)."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


class World:
    """A pretrained tiny world: unet, text encoder, model sampling, classifier, and how to train and sample."""

    def __init__(self, config: WorldConfig, unet: WorldUNet, classifier: Classifier):
        self.config, self.unet, self.classifier = config, unet, classifier
        self.te = TinyTextEncoder(dim=config.context_dim, vocab=1009, length=4, seed=1)
        self.ms = ob.RectifiedFlow()
        for p in list(self.unet.parameters()) + list(self.te.parameters()) + list(self.classifier.parameters()):
            p.requires_grad_(False)

    def denoise_with(self, unet):
        def denoise(x_t, sigma, cond, **extra):
            return unet(self.ms.calculate_input(sigma, x_t), self.ms.timestep(sigma), cond)
        return denoise

    def encode(self, captions):
        return self.te(captions), {}

    def sample(self, captions: list[str], seed: int, unet: nn.Module | None = None, steps: int = 20) -> torch.Tensor:
        """Euler on the flow ODE from σ = 1 to 0, one generator per call (same seed ⇒ same noise): (B, 3, H, W)."""
        unet = unet or self.unet
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(len(captions), 3, SIZE, SIZE, generator=g)
        cond = self.te(captions)
        sigmas = torch.linspace(1.0, 0.0, steps + 1)
        with torch.no_grad():
            for s, s_next in zip(sigmas[:-1], sigmas[1:]):
                sigma = s.repeat(len(captions))
                x0 = self.ms.calculate_denoised(sigma, self.denoise_with(unet)(x, sigma, cond), x)
                x = x + (x - x0) / s * (s_next - s)  # Euler step (ComfyUI's euler)
        return x.clamp(-1, 1)


def cache_path(config: WorldConfig, part: str = "model") -> Path:
    root = Path(os.environ.get("ATELIER_CACHE", Path.home() / ".cache" / "atelier"))
    return root / f"tiny_world_{'classifier_' if part == 'classifier' else ''}{config.key(part)}.safetensors"


def pretrain(config: WorldConfig) -> WorldUNet:
    """The base model from scratch: a full fine-tune with our Trainer under rectified flow."""
    unet = WorldUNet(config.width, config.context_dim, seed=config.seed)
    world = World(config, unet, Classifier(config.seed))
    for p in unet.parameters():
        p.requires_grad_(True)
    data = dataset(KNOWN, COLOURS, STYLES, config.variants, config.seed)
    samples = [TrainSample(latent=x, caption=c) for x, c, _ in data]
    train = TrainConfig(max_steps=config.pretrain_steps, batch_size=config.batch_size, unet_lr=config.pretrain_lr,
                        scheduler="cosine", warmup_steps=50, save_every_epochs=0, seed=config.seed, weight_decay=0.0)
    tune = FullFineTune({"unet": unet})  # trains a private copy of the weights, installed only while training
    Trainer(train, tune, world.denoise_with(unet), world.ms, samples, world.encode).run()
    unet.load_state_dict({k[len("unet."):]: v for k, v in tune.export().items()})  # keep the trained weights
    for p in unet.parameters():
        p.requires_grad_(False)
    return unet


def train_classifier(config: WorldConfig) -> Classifier:
    """The classifier on every shape (the character too), colour and style, with pixel noise so it reads samples."""
    net = Classifier(config.seed)
    data = dataset(SHAPES, COLOURS, STYLES, 8 * config.variants, config.seed + 1)  # many positions: no overfit
    x = torch.stack([d[0] for d in data])
    labels = torch.tensor([(SHAPES.index(s), list(COLOURS).index(c), STYLES.index(st)) for _, _, (s, c, st) in data])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(config.seed)
    for _ in range(config.classifier_steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        noisy = x[idx] + torch.randn(x[idx].shape, generator=g) * torch.rand(64, 1, 1, 1, generator=g) * 0.3
        logits = net(noisy.clamp(-1, 1))
        loss = sum(nn.functional.cross_entropy(lg, labels[idx, i]) for i, lg in enumerate(logits))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def _cached(path: Path, module: nn.Module, make) -> nn.Module:
    """`module` with the weights cached at `path`, made by make() (deterministically) and cached on first use."""
    if path.exists():
        module.load_state_dict(load_file(str(path)))
    else:
        with deterministic():
            module = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save({k: v.contiguous() for k, v in module.state_dict().items()}))  # never half
    return module.eval()


def load_world(config: WorldConfig | None = None) -> World:
    """The pretrained world from the cache, made (and cached) on first use."""
    config = config or WorldConfig()
    unet = _cached(cache_path(config), WorldUNet(config.width, config.context_dim, seed=config.seed),
                   lambda: pretrain(config))
    classifier = _cached(cache_path(config, "classifier"), Classifier(config.seed), lambda: train_classifier(config))
    return World(config, unet, classifier)


# ---------------------------------------------------------------------------------------------------- LoRAs


def train_lora(world: World, data, steps: int, unet: nn.Module | None = None, reg=None, rank: int = 8,
               lr: float = 5e-3, seed: int = 0, objective=None) -> LoRANetwork:
    """A LoRA on `unet` (default the base) trained with our Trainer on [(image, caption, ...)] or TrainSamples
    (+ regularisation images at weight 1, as DreamBooth prior preservation); returned removed (apply it with
    .applied())."""
    unet = unet or world.unet
    network = LoRANetwork({"lora_unet": unet}, NetworkConfig(rank=rank, alpha=float(rank), conv_rank=3,
                                                             conv_alpha=3.0), seed=seed)
    samples = [d if isinstance(d, TrainSample) else  # ready-made samples (a text slider's image-free ones)
               TrainSample(latent=d[0], caption=d[1], partner_latent=d[3] if len(d) > 3 else None) for d in data]
    samples += [TrainSample(latent=d[0], caption=d[1], regularization=True) for d in (reg or [])]
    config = TrainConfig(max_steps=steps, batch_size=16, unet_lr=lr, save_every_epochs=0, seed=seed, weight_decay=0.0)
    with deterministic():
        Trainer(config, network, world.denoise_with(unet), world.ms, samples, world.encode, objective=objective).run()
    network.remove()
    return network


def merged_copy(unet: nn.Module, network: LoRANetwork, strength: float = 1.0) -> nn.Module:
    """A deep copy of `unet` with the LoRA merged into its weights: W + strength·ΔW (kohya merge_to)."""
    merged = copy.deepcopy(unet)
    with torch.no_grad():
        for key, delta in network.delta_weights().items():
            weight = merged.get_submodule(network.modules_by_key[key].name).weight
            weight += strength * delta.reshape(weight.shape)
    return merged


def ship(world: World, network: LoRANetwork) -> LoRANetwork:
    """The LoRA as a user loads it: its exported kohya tensors in a fresh network on the ORIGINAL base model."""
    fresh = LoRANetwork({"lora_unet": world.unet}, network.config, seed=99)
    fresh.load_kohya_state_dict(network.export(torch.float32))
    return fresh


# ---------------------------------------------------------------------------------------------------- measures


def render(world: World, captions: list[str], seeds, network: LoRANetwork | None = None, strength: float = 1.0):
    """Samples for every caption × seed, base model or base + LoRA at `strength`: (len(seeds)·B, 3, H, W)."""
    out = []
    for seed in seeds:
        if network is None:
            out.append(world.sample(captions, seed))
            continue
        with network.applied():
            network.set_multiplier(strength)
            try:
                out.append(world.sample(captions, seed))
            finally:
                network.set_multiplier(1.0)
    return torch.cat(out)


def likeness(world: World, network: LoRANetwork | None, shape: str = CHARACTER, seeds=(0, 1),
             strength: float = 1.0) -> dict:
    """P(classifier says `shape`) on prompts naming it in each style (every colour), and P(style as prompted)."""
    out = {}
    for style in STYLES:
        captions = [caption(shape, c, style) for c in COLOURS]
        p = world.classifier.probabilities(render(world, captions, seeds, network, strength))
        out[f"p_shape_{style}"] = p["shape"][:, SHAPES.index(shape)].mean().item()
        out[f"p_style_ok_{style}"] = p["style"][:, STYLES.index(style)].mean().item()
    out["likeness"] = 0.5 * (out["p_shape_flat"] + out["p_shape_render"])
    return out


def leakage(world: World, network: LoRANetwork | None, shapes=KNOWN[:4], seeds=(0, 1), strength: float = 1.0,
            styles=STYLES) -> dict:
    """How much the LoRA changes prompts about OTHER shapes (same seeds ⇒ same noise), base vs base + LoRA.

    style = mean |ΔP(render)|; colour and shape = mean total-variation distance of those heads' distributions;
    character = mean P(character) added; pixel_rmse on the [0, 1] scale (as core.leakage measures renders).
    """
    captions = [caption(s, c, st) for s in shapes for c in COLOURS for st in styles]
    base = render(world, captions, seeds)
    lora = base if network is None else render(world, captions, seeds, network, strength)
    pb, pl = world.classifier.probabilities(base), world.classifier.probabilities(lora)
    tv = lambda head: 0.5 * (pl[head] - pb[head]).abs().sum(1).mean().item()  # noqa: E731 - total variation
    return {"style": (pl["style"][:, 1] - pb["style"][:, 1]).abs().mean().item(), "colour": tv("colour"),
            "shape": tv("shape"), "character": (pl["shape"][:, SHAPES.index(CHARACTER)]
                                                - pb["shape"][:, SHAPES.index(CHARACTER)]).mean().item(),
            "pixel_rmse": ((lora - base) / 2).pow(2).mean().sqrt().item()}
