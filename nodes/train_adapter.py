"""Adapters from ComfyUI's MODEL / CLIP / VAE to the trainer's contracts (denoiser, model sampling, encode).

Host-specific facts live here and nowhere else:
- Nodes run under torch.inference_mode(); weights loaded there are inference tensors that autograd refuses to save.
  `thaw` swaps them for ordinary frozen clones (same values) so gradients can flow *through* the frozen model.
- ComfyUI's CLIPLayer adds its residuals in place (`x += ...`), which breaks backward through the text encoder;
  while training the text encoder, its layers run an out-of-place residual forward with the same maths.
- The raw network output (ε, v, flow...) is the UNet's own output on calculate_input(σ, x_t) at timestep(σ);
  ComfyUI's apply_model would turn it into x0, which is not what each family should be trained on.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

import comfy.clip_model
import comfy.model_management
import comfy.text_encoders.t5  # T5-XXL of SD3.5, Flux.1 and Chroma

from ..core.caption_text import ENCODE_MAX_WINDOWS, caption_for_encoder
from ..core.conditioning import tile_tokens
from ..trainers.memory import instance_forwards
from .compat import cancel_requested
from ..trainers.network import TE_INCLUDE, UNET_INCLUDE  # noqa: F401 - re-exported: kohya's default targets


def thaw(module: torch.nn.Module) -> int:
    """Replaces inference-mode parameters and buffers with frozen ordinary clones; returns how many were replaced."""
    count = 0
    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and p.is_inference():
                mod._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
                count += 1
            elif p is not None:
                p.requires_grad_(False)
        for name, b in list(mod._buffers.items()):
            if b is not None and b.is_inference():
                mod._buffers[name] = b.clone()
                count += 1
    return count


def autograd_friendly_clip(module: torch.nn.Module):
    """CLIP layers (and T5's attention / feed-forward sublayers) with out-of-place residuals while the block runs
    (ComfyUI's in-place `x +=` breaks backward)."""
    def clip_forward(layer):
        def forward(x, mask=None, optimized_attention=None):
            x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
            return x + layer.mlp(layer.layer_norm2(x))
        return forward

    def t5_attention_forward(layer):
        def forward(x, mask=None, past_bias=None, optimized_attention=None):
            output, past_bias = layer.SelfAttention(layer.layer_norm(x), mask=mask, past_bias=past_bias,
                                                    optimized_attention=optimized_attention)
            return x + output, past_bias
        return forward

    def t5_ff_forward(layer):
        return lambda x: x + layer.DenseReluDense(layer.layer_norm(x))

    t5 = comfy.text_encoders.t5
    kinds = {comfy.clip_model.CLIPLayer: clip_forward, t5.T5LayerSelfAttention: t5_attention_forward,
             t5.T5LayerFF: t5_ff_forward}

    def make_forward(layer):
        return next(make for cls, make in kinds.items() if isinstance(layer, cls))(layer)

    return instance_forwards([m for m in module.modules() if isinstance(m, tuple(kinds))], make_forward)


# ComfyUI's CLIP attributes of the text encoders LoRA users train; T5-XXL only when asked (kohya's train_t5xxl)
CLIP_ENCODERS = ("clip_l", "clip_h", "clip_g")
# Encoders ComfyUI 0.3.64's model_lora_keys_clip maps only under its generic "text_encoders.<weight key>" names, with
# no kohya lora_te prefix (every one of WanT5Model's and QwenImageTEModel's keys is text_encoders.*): their LoRA is
# written under those names (core.lora_format.GENERIC_TE_PREFIX; tests/host/test_host_te_families.py loads it).
GENERIC_KEY_ENCODERS = {"umt5xxl": "Wan 2.x's umT5-XXL", "qwen25_7b": "Qwen-Image's Qwen2.5-VL 7B"}


def text_encoder_roots(clip, t5: bool = False) -> dict[str, torch.nn.Module]:
    """LoRA prefixes of the CLIP's text encoders, as ComfyUI 0.3.64's model_lora_keys_clip maps them and kohya
    sd-scripts writes them: lora_te for a lone encoder (SD1.x CLIP-L, SD2.x OpenCLIP-H); lora_te1 (CLIP-L) and
    lora_te2 (OpenCLIP-G) for SDXL and SD3.5; lora_te1 (CLIP-L) for Flux.1; T5-XXL (with `t5`) lora_te3 beside a
    CLIP-L (SD3.5, Flux.1), else lora_te<its place after the CLIPs>, as ComfyUI numbers it (lora_te1 for Chroma's lone
    T5-XXL); Qwen-Image's Qwen2.5-VL and Wan's umT5-XXL under ComfyUI's generic 'text_encoders.<name>.transformer'."""
    csm = clip.cond_stage_model
    present = {n: getattr(csm, n) for n in CLIP_ENCODERS + ("t5xxl",) if getattr(csm, n, None) is not None}
    generic = next((n for n in GENERIC_KEY_ENCODERS if getattr(csm, n, None) is not None), None)
    if t5 and "t5xxl" not in present:
        raise ValueError(f"train_t5 trains the T5-XXL text encoder of SD3.5, Flux.1 and Chroma, but this CLIP "
                         f"({type(csm).__name__}) has no T5-XXL loaded; turn train_t5 off (its "
                         f"{'text encoder' if generic else 'CLIP text encoders'} still train"
                         f"{'s' if generic else ''} with train_text_encoder), or load the model's T5-XXL with its "
                         "CLIP loader.")
    if generic:  # ComfyUI keys these by the CLIP's own state-dict names: '<name>.transformer.<module>.weight'
        return {f"text_encoders.{generic}.transformer": getattr(csm, generic).transformer}
    if not any(n in present for n in CLIP_ENCODERS) and not (t5 and "t5xxl" in present):
        t5_hint = ", or turn train_t5 on to train its T5-XXL" if "t5xxl" in present else ""
        raise ValueError(f"Text-encoder training supports CLIP text encoders (SD1.x, SD2.x, SDXL, SD3.5, Flux.1), "
                         "with train_t5 T5-XXL (SD3.5, Flux.1, Chroma), Qwen-Image's Qwen2.5-VL and Wan 2.x's "
                         f"umT5-XXL; this CLIP is {type(csm).__name__}. Turn train_text_encoder off to train the "
                         f"diffusion model only{t5_hint}.")
    lone = len(present) == 1
    roots = {}
    if "clip_h" in present:
        roots["lora_te"] = present["clip_h"].transformer
    if "clip_l" in present:
        roots["lora_te" if lone else "lora_te1"] = present["clip_l"].transformer
    if "clip_g" in present:
        roots["lora_te2" if "clip_l" in present else "lora_te"] = present["clip_g"].transformer
    if t5 and "t5xxl" in present:
        # ComfyUI numbers T5 after the CLIPs (te2 after a lone CLIP-G) and also maps te3 beside a CLIP-L (OneTrainer)
        index = 3 if "clip_l" in present else 1 + ("clip_g" in present)
        roots[f"lora_te{index}"] = present["t5xxl"].transformer
    return roots


class ComfyDenoiser:
    """denoise(x_t, σ, cond, **extra) → the diffusion model's raw output, for any family ComfyUI loads.

    Models with extra "ADM" conditioning (SDXL: pooled text + original/crop/target sizes) get `y` from the model's
    own encode_adm, with the batch's pixel size as original and target size and no crop (images are prepared
    to exactly that size); `extra` must then carry the caption's `pooled_output`.
    """

    def __init__(self, model_patcher):
        base = model_patcher.model
        self.base = base
        self.unet = base.diffusion_model
        self.model_sampling = base.model_sampling
        # fp8-stored weights compute in the manual-cast dtype, as ComfyUI's own _apply_model does
        self.dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
        self.family = next((c.__name__ for c in type(base).__mro__ if c.__name__ in EXTRA_COND_FAMILIES), "")
        self.needs_pooled = bool(getattr(base, "adm_channels", 0)) or self.family in POOLED_FAMILIES

    def __call__(self, x_t, sigma, cond, **extra):
        ms = self.model_sampling
        xc = ms.calculate_input(sigma, x_t).to(self.dtype)
        t = ms.timestep(sigma).float()
        kwargs = {}
        if self.family:
            conds = self.family_conds(x_t, cond, extra)
            concat = conds.pop("c_concat", None)  # image-to-video / inpaint channels, joined as _apply_model does
            xc = xc if concat is None else torch.cat([xc, concat.to(xc)], dim=1)
            conds = {k: v.to(self.dtype) if torch.is_floating_point(v) else v for k, v in conds.items()}
            with saved_copies(self.family in INPLACE_RESIDUAL_FAMILIES and torch.is_grad_enabled()):
                return self.unet(xc, t, context=cond.to(self.dtype), **conds).float()
        if self.needs_pooled:
            pooled = extra.pop("pooled_output", None)
            if pooled is None:
                raise ValueError(f"{type(self.base).__name__} needs the text encoder's pooled output; the caption "
                                 "encoder did not provide it.")
            h, w = x_t.shape[-2] * 8, x_t.shape[-1] * 8
            y = self.base.encode_adm(pooled_output=pooled, width=w, height=h, crop_w=0, crop_h=0, target_width=w,
                                     target_height=h)
            kwargs["y"] = y.to(xc.device, self.dtype)
        return self.unet(xc, t, context=cond.to(self.dtype), **kwargs, **extra).float()


    def family_conds(self, x_t, cond, extra: dict) -> dict:
        """The DiT family's further inputs from the model's own extra_conds (Flux's pooled `y` and guidance, Chroma's
        guidance, Qwen-Image's and Wan's none beyond the text), each batched as ComfyUI's sampler batches them."""
        wanted = EXTRA_COND_FAMILIES[self.family]
        if self.family in POOLED_FAMILIES and extra.get("pooled_output") is None:
            raise ValueError(f"{self.family} needs the text encoder's pooled output; the caption encoder did not "
                             "provide it.")
        given = {**wanted, **extra}  # the caption's pooled output, a chosen guidance, over the family's defaults
        conds = self.base.extra_conds(noise=x_t, device=x_t.device, cross_attn=cond, **given)
        conds.pop("c_crossattn", None)  # the context goes in as `context`, already batched
        return {k: c.process_cond(batch_size=x_t.shape[0], device=x_t.device, area=None).cond.to(x_t.device)
                for k, c in conds.items()}


# DiT families whose conditioning comes from the model's own extra_conds, keyed by ComfyUI's model class name, with
# the defaults the training passes. Flux.1 dev trains at guidance 1.0 (kohya sd-scripts' and ai-toolkit's default for
# dev LoRAs; ComfyUI samples at 3.5), its `y` is CLIP-L's pooled output; Chroma's guidance input is 0 (ComfyUI's
# default); Qwen-Image and Wan 2.x (5-D latents) take the text alone.
EXTRA_COND_FAMILIES: dict[str, dict] = {
    "Chroma": {"guidance": 0.0, "pooled_output": None},  # Flux's encode_adm reads the key; Chroma has no `y`
    "Flux": {"guidance": 1.0, "pooled_output": None},
    "QwenImage": {},
    "WAN21": {},
}


# ComfyUI's Flux and Chroma blocks add their residuals in place (`x += ...`, `addcmul_`) onto tensors autograd has
# saved; while training, saved tensors are copied at save time (the values backward needs), at the cost of one copy
# of the saved activations (per-block checkpointing keeps that to one block at a time).
POOLED_FAMILIES = frozenset({"Flux"})  # families whose caption encoder must return a pooled output
INPLACE_RESIDUAL_FAMILIES = frozenset({"Flux", "Chroma"})


def saved_copies(active: bool):
    """While active, autograd keeps its own copy of every tensor it saves, so later in-place edits cannot spoil them."""
    if not active:
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t)


def bounded_tokens(clip, caption: str) -> dict:
    """The caption's tokens with the work bounded: at most ENCODE_MAX_CHARS tokenized, at most ENCODE_MAX_WINDOWS
    77-token windows per encoder kept (a 10,000-tag caption would otherwise encode hundreds of windows per step)."""
    tokens = clip.tokenize(caption_for_encoder(caption))
    return {key: value[:ENCODE_MAX_WINDOWS] if isinstance(value, list) and value and isinstance(value[0], list)
            else value for key, value in tokens.items()}


def make_encoder(clip, pooled: bool = False):
    """encode(captions) → (cond (B, T, D), extra); conds of different lengths are tiled to a common length (their
    LCM, as ComfyUI does when it batches prompts of different lengths); extra holds `pooled_output` (B, P) when
    the model needs it (SDXL)."""
    def encode(captions):
        conds, pools = [], []
        for c in captions:
            tokens = bounded_tokens(clip, c)
            if pooled:
                cond, pool = clip.encode_from_tokens(tokens, return_pooled=True)
                pools.append(pool.float())
            else:
                cond = clip.encode_from_tokens(tokens)  # (1, 77·k, D), k <= ENCODE_MAX_WINDOWS
            conds.append(cond)
        cond = tile_tokens(conds).float()  # (B, lcm of the lengths, D)
        return cond, ({"pooled_output": torch.cat(pools)} if pooled else {})
    return encode


def encode_latents(vae, model_patcher, images: list) -> list[torch.Tensor]:
    """VAE latents in the model's space (process_latent_in applied) for PIL images, one (C, h, w) tensor each."""
    import numpy as np

    out = []
    with torch.no_grad():  # encoded once and cached; the VAE is never trained
        for img in images:
            pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]  # (1, H, W, 3) IMAGE
            latent = vae.encode(pixels)
            out.append(model_patcher.model.process_latent_in(latent)[0].float().cpu())
    return out


def clip_encoder(vae, model_patcher):
    """`frames -> (C, T', h, w)` for a video VAE (Wan's encodes (T, H, W, 3) frames as one clip), else None."""
    if getattr(vae, "latent_dim", 2) != 3 or getattr(vae, "not_video", False):
        return None

    def encode_clip(frames: list) -> torch.Tensor:
        import numpy as np

        pixels = torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) / 255.0 for f in frames]))  # (T, H, W, 3)
        with torch.no_grad():  # encoded once and cached; the VAE is never trained
            latent = vae.encode(pixels)  # (1, C, T', h, w): VAE.encode moves a frame batch to (1, 3, T, H, W)
            return model_patcher.model.process_latent_in(latent)[0].float().cpu()

    return encode_clip


def interrupted() -> bool:
    """Cancel pressed: ComfyUI's flag itself (compat.cancel_requested), never a progress update raising."""
    return cancel_requested()


def draw_samples(model_patcher, clip, vae, prompts: list[str], negative: str, *, seed: int, steps: int, cfg: float,
                 sampler: str, scheduler: str, width: int, height: int) -> list:
    """Images (PIL) for each prompt with ComfyUI's own sampler on the model being trained (its LoRA is active)."""
    from .sampling import render_image

    negative_cond = clip.encode_from_tokens_scheduled(clip.tokenize(negative))
    return [render_image(model_patcher, clip.encode_from_tokens_scheduled(clip.tokenize(p)), negative_cond, vae,
                         seed=seed, steps=steps, cfg=cfg, sampler=sampler, scheduler=scheduler, width=width,
                         height=height) for p in prompts]


def weights_fingerprint(state_dict: dict, picks: int = 24, values: int = 256) -> str:
    """A stable identity of a model's weights from names, shapes, dtypes and sampled values of `picks` tensors (cheap
    enough to run per training run; not a file hash)."""
    h = hashlib.sha256()
    names = sorted(state_dict)
    for name in names[:: max(1, len(names) // picks)]:
        t = state_dict[name]
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().float().flatten()[:values].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def encoder_key(vae, model_patcher) -> str:
    """Identity of 'VAE + the model's latent scaling' for the latent cache (cached latents are in model space)."""
    fmt = model_patcher.model.latent_format
    scaling = f"{type(fmt).__name__}{getattr(fmt, 'scale_factor', '')}{getattr(fmt, 'shift_factor', '')}"
    return weights_fingerprint(vae.first_stage_model.state_dict()) + hashlib.sha256(scaling.encode()).hexdigest()[:16]
