"""Run inside ComfyUI's Python: Wan 2.x short-clip training through Atelier's real data path on a tiny model.

A folder of clips ('walk': a subfolder of frames; 'turn': an animated GIF; '<clip>.txt' beside each) is scanned by
core.clips, prepared,
and encoded by the version's VAE (Wan 2.1: 16 channels, 8x; Wan 2.2: 48 channels, 16x) that ComfyUI's own
comfy.sd.VAE builds and detects from a state dict (the real architecture with random weights: ComfyUI fixes the
VAE's widths, so it cannot be made smaller) through the training node's own clip encoder; each 5-frame clip becomes
one (C, 2, 4, 4) latent. The latent cache is checked to key on every frame. A tiny WAN21 / WAN22 model (ComfyUI's
classes, random weights) then trains a LoRA on the clips; the LoRA is loaded by comfy.sd.load_lora_for_models: no
unloaded keys, strength 0 = base bit for bit on a 5-D input.
Prints one JSON line. usage: python wan_clip_check.py ATELIER_CHECKOUT [WAN21|WAN22]
"""

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402

from tiny_dit import CTX, FAMILIES, wan22_vae, wan_vae  # noqa: E402  the Wan config and VAE shared with the other checks

sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import conftest  # noqa: E402,F401  registers the Atelier checkout as the package `atelier`
from atelier.core.clips import scan_clips  # noqa: E402
from atelier.core.dataset import Preparation, with_preparation  # noqa: E402
from atelier.nodes.train_adapter import ComfyDenoiser, clip_encoder, encode_latents, thaw  # noqa: E402
from atelier.trainers.data import LatentCache, build_samples  # noqa: E402
from atelier.trainers.loop import Trainer, TrainConfig  # noqa: E402
from atelier.trainers.network import LoRANetwork, NetworkConfig, family_default_targets  # noqa: E402
from atelier.trainers.reuse import data_digest  # noqa: E402
from family_check import NotLoaded  # noqa: E402  collects ComfyUI's "lora key not loaded" warnings

VERSION = sys.argv[2] if len(sys.argv) > 2 else "WAN21"
# version -> (tiny_dit family, latent channels, its VAE as comfy.sd.VAE detects it, frame side); the side gives 4x4
# latents (2x2 tokens after the 1x2x2 patches) under the VAE's 8x (2.1) or 16x (2.2) downscale
VERSIONS = {"WAN21": ("WAN21", 16, wan_vae, 32), "WAN22": ("WAN22", 48, wan22_vae, 64)}
FAMILY, CHANNELS, version_vae, SIDE = VERSIONS[VERSION]


def wan_model():
    """A tiny WAN21 / WAN22 text-to-video model from ComfyUI's classes, wrapped in a ModelPatcher."""
    torch.manual_seed(0)
    model = FAMILIES[FAMILY][0](dict(FAMILIES[FAMILY][1])).get_model({})
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_((torch.randn(p.shape) * 0.05).to(p.dtype))
    thaw(model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def write_clips(top: Path) -> None:
    """'walk': 6 frames named frame_1, frame_3 … frame_11 (natural order); 'turn.gif': a 7-frame animated GIF whose
    later frames change only a square (stored as partial frames); captions beside them."""
    rng = np.random.default_rng(0)
    (top / "walk").mkdir(parents=True)
    for i in range(6):
        pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(top / "walk" / f"frame_{2 * i + 1}.png")  # 1, 3, …, 9, 11: natural order
    canvas = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    turn = []
    for i in range(7):
        canvas = canvas.copy()
        canvas[4 * i:4 * i + 4, 4 * i:4 * i + 4] = 255 - 30 * i  # a square moving down the diagonal
        turn.append(Image.fromarray(canvas))
    turn[0].save(top / "turn.gif", save_all=True, append_images=turn[1:], duration=40)
    for name in ("walk", "turn"):
        (top / f"{name}.txt").write_text(f"a {name} clip", encoding="utf-8")


result = {}
tmp = Path(tempfile.mkdtemp(prefix="atelier-wanclip-"))
write_clips(tmp / "clips")
dataset = with_preparation(scan_clips(tmp / "clips", frames=5), Preparation(mode="crop", width=SIDE, height=SIDE))
patcher, vae = wan_model(), version_vae()
result.update(vae=type(vae.first_stage_model).__module__, vae_channels=vae.latent_channels)  # what ComfyUI detected
encode_clip = clip_encoder(vae, patcher)
cache = LatentCache(tmp / "cache", "wan-test")
samples, skipped = build_samples(dataset, lambda imgs: encode_latents(vae, patcher, imgs), cache=cache,
                                 encode_clip=encode_clip)
result.update(clips=len(samples), skipped=len(skipped), captions=sorted(s.caption for s in samples),
              latent_shapes=sorted({tuple(s.latent.shape) for s in samples}),
              latents_finite=all(bool(torch.isfinite(s.latent).all()) for s in samples), misses=cache.misses)
# the latent is the VAE's own encoding of the first five frames in natural order
frames = [np.asarray(Image.open(tmp / "clips" / "walk" / f"frame_{2 * i + 1}.png"), dtype=np.float32) / 255.0
          for i in range(5)]
with torch.no_grad():
    direct = patcher.model.process_latent_in(vae.encode(torch.from_numpy(np.stack(frames))))[0].float()
walk = next(s for s in samples if s.caption == "a walk clip")
result["direct_error"] = float((walk.latent - direct).abs().max())
# the GIF's latent is the VAE's encoding of its first five frames as Pillow composites them
with Image.open(tmp / "clips" / "turn.gif") as gif:
    frames = []
    for i in range(5):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB"), dtype=np.float32) / 255.0)
with torch.no_grad():
    direct = patcher.model.process_latent_in(vae.encode(torch.from_numpy(np.stack(frames))))[0].float()
turn = next(s for s in samples if s.caption == "a turn clip")
result.update(turn_direct_error=float((turn.latent - direct).abs().max()),
              clip_sources=sorted(os.path.basename(i.source) for i in dataset.subsets[0].items))

# the cache and the run identity key on every frame: a second load hits; editing the third frame misses
identity = data_digest(dataset)
again = LatentCache(tmp / "cache", "wan-test")
build_samples(dataset, lambda imgs: encode_latents(vae, patcher, imgs), cache=again, encode_clip=encode_clip)
result.update(second_hits=again.hits, second_misses=again.misses)
Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(tmp / "clips" / "walk" / "frame_5.png")
edited = LatentCache(tmp / "cache", "wan-test")
samples_after, _ = build_samples(dataset, lambda imgs: encode_latents(vae, patcher, imgs), cache=edited,
                                 encode_clip=encode_clip)
walk_after = next(s for s in samples_after if s.caption == "a walk clip")
result.update(edited_hits=edited.hits, edited_misses=edited.misses, identity_changed=data_digest(dataset) != identity,
              edited_latent_changed=float((walk_after.latent - walk.latent).abs().max()))

# train a LoRA on the two clips (one batch of two (C, 2, 4, 4) latents), ship it, load it with the stock loader
g = torch.Generator().manual_seed(0)
texts = {c: torch.randn(1, 7, CTX, generator=g) for c in ("a walk clip", "a turn clip")}


def encode(captions):
    return torch.cat([texts[c] for c in captions]), {}


denoise = ComfyDenoiser(patcher)
network = LoRANetwork({"lora_unet": patcher.model.diffusion_model},
                      family_default_targets(NetworkConfig(rank=4, alpha=4.0), denoise.family))
trainer = Trainer(TrainConfig(max_steps=3, batch_size=2, unet_lr=1e-2, save_every_epochs=0), network, denoise,
                  denoise.model_sampling, samples, encode)
state = trainer.run()
lora = network.export(torch.float32)
network.remove()
result.update(family=denoise.family, model=type(patcher.model).__name__, steps=state.step,
              losses_finite=all(abs(v) < 1e9 for v in state.losses), lora_modules=len(network.modules_by_key),
              lora_keys=len(lora))
unloaded = NotLoaded()  # ComfyUI's 'lora key not loaded' warnings
logging.getLogger().addHandler(unloaded)
x_t, sigma, cond = torch.randn((1, CHANNELS, 2, 4, 4), generator=g), torch.tensor([0.7]), texts["a walk clip"]


def run(p):
    p.patch_model()
    try:
        with torch.no_grad():
            return ComfyDenoiser(p)(x_t, sigma, cond)
    finally:
        p.unpatch_model()


base = run(patcher)
zero, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 0.0, 0.0)
one, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)
result.update(unloaded=unloaded.keys[:5], patched=len(one.patches), zero_equal=bool(torch.equal(run(zero), base)),
              lora_change=float((run(one) - base).abs().max()), out_shape=list(base.shape))
print(json.dumps(result))
