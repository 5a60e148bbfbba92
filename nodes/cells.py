"""Renders comparison cells in batches with ComfyUI's own sampler, conditioning and VAE.

A cell is everything that decides one image (CellSpec). Cells that share model, sampler settings and size go
through the UNet together: their LoRAs are added at forward time with a strength per sample (core/forward_lora.py),
so a strength, LoRA-file, seed or prompt axis costs no re-patching and no extra UNet calls. Each (LoRA strengths,
prompt) is encoded once. Each sample gets the noise a single-image KSampler run with its seed would draw; samplers
that draw fresh noise every step get one generator per sample when they use ComfyUI's default noise sampler, and
run one cell at a time otherwise (Brownian-tree SDE samplers), so every cell is the image its seed gives alone.

LoRA files that are not plain LoRA / LoCon (LoHa, LoKr, DoRA, Tucker `lora_mid`, full diffs) are merged into the
weights the stock way, once per (file, strength), and batched among cells with that same patch.

Finished cells are kept as PNGs under output/atelier/grids/cells/<key>.png, so an interrupted grid run again with
the same settings starts where it stopped; the caller removes them once the grid is saved.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
from comfy.weight_adapter.lora import LoRAAdapter

from ..core.conditioning import tile_tokens
from ..core.draw import image_tensor_to_pil
from ..core.forward_lora import ForwardLoRA, fit_layer
from ..core.images import write_image
from .compat import noise_mode
from .host import model_file, output_subdir
from .lora_files import fit_lora, read_lora
from .train_adapter import weights_fingerprint

CONNECTED = None  # CellSpec.checkpoint for "the MODEL / CLIP / VAE wired into the node"


@dataclass(frozen=True)
class CellSpec:
    loras: tuple[tuple[str, float], ...] = ()  # (file in the loras folders, strength for UNet and text encoder)
    positive: str = ""
    negative: str = ""
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "euler"
    scheduler: str = "normal"
    denoise: float = 1.0
    width: int = 512
    height: int = 512
    checkpoint: str | None = CONNECTED
    init: str | None = None  # key into the renderer's init images (img2img from that image); None = empty latent

    def describe(self) -> dict:
        return {k: (list(map(list, v)) if k == "loras" else v) for k, v in asdict(self).items()}


def per_sample_noise_sampler(shape, seeds, device, dtype):
    """ComfyUI's default noise sampler, one generator per sample: sample i draws what a batch-of-one run would."""
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    one = (1,) + tuple(shape[1:])

    def draw(sigma, sigma_next):
        return torch.cat([torch.randn(one, dtype=dtype, device=device, generator=g) for g in generators])
    return draw


def batch_conds(conds: list) -> list:
    """One CONDITIONING for a batch from one single-prompt CONDITIONING per sample (None when they cannot join).

    Token sequences of different lengths are repeated to their least common multiple (core.conditioning.tile_tokens).
    """
    if any(len(c) != 1 for c in conds):
        return None
    tensors = [c[0][0] for c in conds]
    if len({t.shape[0] for t in tensors}) != 1 or tensors[0].shape[0] != 1 or len({t.shape[2] for t in tensors}) != 1:
        return None
    joined = tile_tokens(tensors, max_growth=4)
    if joined is None:
        return None
    extras = [c[0][1] for c in conds]
    if len({frozenset(e) for e in extras}) != 1:
        return None
    merged = {}
    for key, value in extras[0].items():
        values = [e[key] for e in extras]
        if isinstance(value, torch.Tensor):
            if any(not isinstance(v, torch.Tensor) or v.shape != value.shape or v.shape[:1] != (1,) for v in values):
                return None
            merged[key] = torch.cat(values)
        elif all(v is value or v == value for v in values):
            merged[key] = value
        else:
            return None
    return [[joined, merged]]


def file_identity(folder_type: str, name: str) -> str:
    """A model file's name, size and modification time: changes when the file is replaced."""
    stat = os.stat(model_file(folder_type, name))
    return f"{name}:{stat.st_size}:{stat.st_mtime_ns}"


def forward_layers(fit, roots: dict) -> tuple[list, str | None]:
    """The layers a fitted LoRA (lora_files.fit_lora) patches, as (part, module, down, up, alpha, key) ready for
    ForwardLoRA.add, or None and the reason the file must be merged the stock way instead."""
    for (part, key), adapter in fit.adapters.items():
        if isinstance(key, tuple) or not isinstance(adapter, LoRAAdapter) or not key.endswith(".weight"):
            # a slice of a fused weight (Flux qkv from separate q/k/v files), LoHa / LoKr, a full diff
            return [], f"{key}: {type(adapter).__name__ if not isinstance(adapter, tuple) else adapter[0]}"
        if any(w is not None for w in adapter.weights[3:]):
            return [], f"{key}: lora_mid / dora_scale / reshape"
    resolved = []
    try:  # every layer must take a forward hook, else the whole file is merged the stock way
        for (part, key), adapter in fit.adapters.items():
            root = roots[part]
            path = key[: -len(".weight")]
            module = root.get_submodule(path)
            parent = root.get_submodule(path.rsplit(".", 1)[0]) if "." in path else root
            if isinstance(parent, torch.nn.MultiheadAttention):  # reads the weight, never calls forward
                raise ValueError(f"{key} belongs to a MultiheadAttention")
            up, down, alpha = adapter.weights[:3]
            fit_layer(module, down, up, where=key)
            resolved.append((part, module, down, up, alpha, key))
    except (ValueError, AttributeError) as err:
        return [], str(err).splitlines()[0]
    return resolved, None


@dataclass
class _Variant:
    """One model (the connected one or a checkpoint) with its forward-time LoRAs."""

    model: object
    clip: object
    vae: object
    identity: str
    unet: ForwardLoRA = field(default_factory=ForwardLoRA)
    text: ForwardLoRA = field(default_factory=ForwardLoRA)
    slots: dict = field(default_factory=dict)  # LoRA name -> slot index (same in unet and text)
    merged_only: dict = field(default_factory=dict)  # LoRA name -> reason it is merged instead
    patched: dict = field(default_factory=dict)  # tuple of (name, strength) merged -> (model, clip)
    unloaded: dict = field(default_factory=dict)  # LoRA name -> keys that matched no layer


class CellRenderer:
    """Renders CellSpecs; the connected model first, checkpoints loaded once each, in the order cells need them."""

    def __init__(self, model, clip, vae, *, batch_size: int = 4, init_images: dict | None = None,
                 cache_dir: Path | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
        self.batch_size = batch_size
        self.connected = (model, clip, vae)
        self.init_images = dict(init_images or {})  # key -> IMAGE tensor (1, H, W, 3)
        self.cache_dir = cache_dir
        self.variants: dict = {}
        self.identities: dict = {}
        self.loras: dict = {}
        self.conds: dict = {}
        self.rendered = 0
        self.reused = 0
        self.batches = 0  # sampler runs (UNet batches) made
        self.cache_files: list[Path] = []

    # --- models and LoRAs ---------------------------------------------------------------------------------------

    def _identity(self, checkpoint) -> str:
        """What makes a model's images: a weights fingerprint of the connected model (plus its pending patches and
        VAE), or a checkpoint file's name, size and modification time."""
        if checkpoint not in self.identities:
            if checkpoint is CONNECTED:
                model, _, vae = self.connected
                # Load it first: until then the shared weights may still carry another patcher's LoRA.
                comfy.model_management.load_models_gpu([model])
                patches = sorted((k, len(v)) for k, v in getattr(model, "patches", {}).items())
                self.identities[checkpoint] = (weights_fingerprint(model.model.state_dict())
                                               + hashlib.sha256(repr(patches).encode()).hexdigest()[:8]
                                               + weights_fingerprint(vae.first_stage_model.state_dict()))
            else:
                self.identities[checkpoint] = file_identity("checkpoints", checkpoint)
        return self.identities[checkpoint]

    def _variant(self, checkpoint) -> _Variant:
        if checkpoint not in self.variants:
            if checkpoint is CONNECTED:
                model, clip, vae = self.connected
            else:
                path = str(model_file("checkpoints", checkpoint))
                out = comfy.sd.load_checkpoint_guess_config(
                    path, output_vae=True, output_clip=True,
                    embedding_directory=folder_paths.get_folder_paths("embeddings"))
                model, clip, vae = out[:3]
                if clip is None or vae is None:
                    raise ValueError(f"Checkpoint '{checkpoint}' has no text encoder or no VAE, so it cannot make "
                                     "grid cells on its own. Use checkpoints that include both.")
            self.variants[checkpoint] = _Variant(model, clip, vae, self._identity(checkpoint))
        return self.variants[checkpoint]

    def release(self, checkpoint) -> None:
        """Drops a loaded checkpoint (the connected model stays) so ComfyUI can free its memory."""
        if checkpoint is not CONNECTED:
            self.variants.pop(checkpoint, None)

    def _lora_sd(self, name: str) -> dict:
        if name not in self.loras:
            self.loras[name] = read_lora(name)[0]
        return self.loras[name]

    def _attach(self, v: _Variant, name: str) -> None:
        """Installs LoRA `name` on the variant at forward time, or records why it must be merged instead."""
        if name in v.slots or name in v.merged_only:
            return
        fit = fit_lora(self._lora_sd(name), name, v.model, v.clip)
        fit.check(every_key=False)  # a layer that cannot take the LoRA is an error; unknown keys are reported
        v.unloaded[name] = fit.not_loaded
        resolved, problem = forward_layers(fit, {"unet": v.model.model, "text": v.clip.cond_stage_model})
        if problem is None:
            slot_unet, slot_text = v.unet.add_slot(name), v.text.add_slot(name)
            for part, module, down, up, alpha, key in resolved:
                if part == "unet":
                    v.unet.add(slot_unet, module, down, up, alpha, where=key)
                else:
                    v.text.add(slot_text, module, down, up, alpha, where=key)
            v.slots[name] = slot_unet
        else:
            v.merged_only[name] = problem

    # --- conditioning -------------------------------------------------------------------------------------------

    def _encode(self, v: _Variant, spec_loras: tuple, merged: tuple, text: str, checkpoint):
        forward = tuple((n, s) for n, s in spec_loras if n in v.slots)
        key = (checkpoint, merged, forward, text)
        if key not in self.conds:
            clip = self._patched(v, merged)[1]
            if v.text.slots:
                v.text.set_strengths([self._strength_row(v, forward)])
            with v.text.attached():
                self.conds[key] = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        return self.conds[key]

    @staticmethod
    def _strength_row(v: _Variant, loras: tuple) -> list[float]:
        """One sample's strength per forward-time slot (LoRAs merged into the weights count 0 here)."""
        row = [0.0] * len(v.slots)
        for name, strength in loras:
            if name in v.slots:
                row[v.slots[name]] += strength
        return row

    def _patched(self, v: _Variant, merged: tuple):
        if not merged:
            return v.model, v.clip
        if merged not in v.patched:
            model, clip = v.model, v.clip
            for name, strength in merged:
                model, clip = comfy.sd.load_lora_for_models(model, clip, self._lora_sd(name), strength, strength)
            v.patched[merged] = (model, clip)
        return v.patched[merged]

    # --- cache ----------------------------------------------------------------------------------------------------

    def cell_key(self, spec: CellSpec) -> str:
        parts = {"spec": spec.describe(), "model": self._identity(spec.checkpoint),
                 "loras": [file_identity("loras", n) for n, _ in spec.loras]}
        if spec.init is not None:
            parts["init"] = hashlib.sha256(self.init_images[spec.init].cpu().numpy().tobytes()).hexdigest()
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.png"

    def _cached(self, key: str):
        if self.cache_dir is None:
            return None
        path = self._cache_path(key)
        self.cache_files.append(path)
        if path.is_file():
            try:
                with Image.open(path) as image:
                    return image.convert("RGB")
            except OSError:
                return None  # a damaged leftover: render the cell again
        return None

    def _store(self, key: str, image: Image.Image) -> None:
        if self.cache_dir is not None:
            write_image(self._cache_path(key), image, "PNG")

    def forget_cache(self) -> None:
        """Removes the finished-cell files of this run (call once the grid is saved)."""
        for path in self.cache_files:
            path.unlink(missing_ok=True)

    # --- rendering ------------------------------------------------------------------------------------------------

    def render(self, specs: list[CellSpec], on_cell=None) -> list[Image.Image]:
        """Images for `specs` in order; on_cell(done, total) after each batch (it may raise to stop)."""
        results: list = [None] * len(specs)
        pending = []
        for i, spec in enumerate(specs):
            key = self.cell_key(spec)
            image = self._cached(key)
            if image is not None:
                results[i] = image
                self.reused += 1
            else:
                pending.append((i, spec, key))
        done = len(specs) - len(pending)
        if on_cell:
            on_cell(done, len(specs))
        order = []  # checkpoints in first-use order, so each is loaded once
        for _, spec, _ in pending:
            if spec.checkpoint not in order:
                order.append(spec.checkpoint)
        for checkpoint in order:
            v = self._variant(checkpoint)
            groups: dict = {}
            for item in (p for p in pending if p[1].checkpoint == checkpoint):
                spec = item[1]
                for name, _ in spec.loras:
                    self._attach(v, name)
                merged = tuple((n, s) for n, s in spec.loras if n in v.merged_only)
                group = (merged, spec.steps, spec.cfg, spec.sampler, spec.scheduler, spec.denoise, spec.width,
                         spec.height, spec.init is None)
                groups.setdefault(group, []).append(item)
            for group, items in groups.items():
                size = 1 if noise_mode(group[3]) == "single" else self.batch_size
                for start in range(0, len(items), size):
                    chunk = items[start:start + size]
                    images = self._render_batch(v, checkpoint, group[0], [s for _, s, _ in chunk])
                    for (i, _, key), image in zip(chunk, images):
                        results[i] = image
                        self._store(key, image)
                    self.rendered += len(chunk)
                    done += len(chunk)
                    if on_cell:
                        on_cell(done, len(specs))
            self.release(checkpoint)
        return results

    def _render_batch(self, v: _Variant, checkpoint, merged: tuple, specs: list[CellSpec]) -> list[Image.Image]:
        first = specs[0]
        positives = [self._encode(v, s.loras, merged, s.positive, checkpoint) for s in specs]
        negatives = [self._encode(v, s.loras, merged, s.negative, checkpoint) for s in specs]
        positive, negative = batch_conds(positives), batch_conds(negatives)
        if len(specs) > 1 and (positive is None or negative is None):  # prompts that cannot share a batch
            return [img for s in specs for img in self._render_batch(v, checkpoint, merged, [s])]
        if positive is None:
            positive, negative = positives[0], negatives[0]
        model = self._patched(v, merged)[0]
        self.batches += 1
        if v.unet.slots:
            v.unet.set_strengths([self._strength_row(v, spec.loras) for spec in specs])

        channels = model.model.latent_format.latent_channels
        if first.init is None:
            scale = v.vae.spacial_compression_encode()  # 8 for most VAEs, 16 for Wan 2.2's
            latent = torch.zeros(len(specs), channels, first.height // scale, first.width // scale)
        else:
            pixels = torch.cat([self.init_images[s.init] for s in specs])
            latent = v.vae.encode(pixels[:, :, :, :3])  # as VAEEncode: the sampler applies process_latent_in
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = torch.cat([comfy.sample.prepare_noise(latent[i:i + 1], s.seed) for i, s in enumerate(specs)])
        sampler = comfy.samplers.sampler_object(first.sampler)
        if noise_mode(first.sampler) == "per_sample" and len(specs) > 1:
            sampler.extra_options = {**sampler.extra_options, "noise_sampler": per_sample_noise_sampler(
                latent.shape, [s.seed for s in specs], model.load_device, torch.float32)}
        sigmas = comfy.samplers.KSampler(model, steps=first.steps, device=model.load_device, sampler=first.sampler,
                                         scheduler=first.scheduler, denoise=first.denoise,
                                         model_options=model.model_options).sigmas

        def check(step, x0, x, total):
            comfy.model_management.throw_exception_if_processing_interrupted()

        with v.unet.attached():
            samples = comfy.sample.sample_custom(model, noise, first.cfg, sampler, sigmas, positive, negative, latent,
                                                 callback=check, disable_pbar=True, seed=first.seed)
        pixels = v.vae.decode(samples)
        if pixels.ndim == 5:  # video VAEs (Wan) decode (B, T, H, W, C); a cell's latent holds one frame
            pixels = pixels[:, 0]
        return image_tensor_to_pil(pixels)  # 8-bit as ComfyUI's SaveImage makes it, so cells match stock files


def cell_cache_dir() -> Path:
    return output_subdir("atelier", "grids", "cells")
