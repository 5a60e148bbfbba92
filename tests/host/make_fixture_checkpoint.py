"""Writes a tiny random-weight checkpoint that stock CheckpointLoaderSimple detects as SD1.5.

Runs inside the host's Python (ComfyUI's venv, cwd = the ComfyUI checkout) because it asks ComfyUI's own model
classes for key names and shapes, built on the meta device so nothing large is allocated. The UNet has SD1.5's
width (model_channels=320, context_dim=768) but a single level with one res block; the text encoder is a full
CLIP-L (its architecture is fixed by the loader); the VAE is TAESD. Every tensor comes from one seeded generator,
so the same seed and ComfyUI version give the same bytes.

usage: python make_fixture_checkpoint.py OUT.safetensors [--seed N]
"""

import argparse
import math
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.getcwd())  # the ComfyUI checkout

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # as `main.py --cpu`: model_management must not look for a GPU

import comfy.clip_model  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import comfy.taesd.taesd  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402

UNET_CONFIG = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1], channel_mult=[1],
    transformer_depth=[1], transformer_depth_middle=1, transformer_depth_output=[1, 1], context_dim=768,
    num_heads=8, num_head_channels=-1, use_spatial_transformer=True, use_linear_in_transformer=False,
    legacy=False, adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False,
)


def meta_shapes(module: torch.nn.Module, prefix: str) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Key → (shape, dtype) of a module's state dict, under a checkpoint prefix."""
    return {prefix + k: (v.shape, v.dtype) for k, v in module.state_dict().items()}


def random_tensor(key: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """Norm scales 1, biases 0, weights He-scaled so activations stay finite through the random net."""
    if len(shape) == 0:
        return torch.zeros(())
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "bias":
        return torch.zeros(shape)
    if len(shape) == 1:  # norm / layernorm scales and the like
        return torch.ones(shape)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def build(seed: int) -> dict[str, torch.Tensor]:
    ops = comfy.ops.disable_weight_init
    unet = UNetModel(**UNET_CONFIG, dtype=torch.float32, device="meta", operations=ops)
    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        import json

        clip_config = json.load(f)
    clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float32, "meta", ops)
    shapes = {}
    shapes.update(meta_shapes(unet, "model.diffusion_model."))
    shapes.update(meta_shapes(clip, "cond_stage_model.transformer."))
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)  # small enough to build for real
    shapes.update(meta_shapes(taesd, "first_stage_model."))

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape, dtype = shapes[key]
        if key.endswith("position_ids"):
            out[key] = torch.arange(shape[-1]).expand(shape).contiguous().to(dtype)
            continue
        if key.endswith(("vae_scale", "vae_shift")):
            out[key] = torch.tensor(1.0 if key.endswith("scale") else 0.0).reshape(shape)
            continue
        t = random_tensor(key, shape, gen)
        if "embedding" in key and t.ndim == 2:
            t = t * 0.02 * math.sqrt(shape[1])  # embeddings: std 0.02 like CLIP's init
        out[key] = t.to(torch.float16) if dtype.is_floating_point else t.to(dtype)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sd = build(args.seed)
    tmp = args.out + ".tmp"
    save_file(sd, tmp, metadata={"atelier_fixture": "tiny-sd15", "seed": str(args.seed)})
    os.replace(tmp, args.out)  # atomic: a half-written file never carries the final name
    print(f"wrote {len(sd)} tensors to {args.out}")


if __name__ == "__main__":
    main()
