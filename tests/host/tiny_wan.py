"""Tiny Wan 2.1 parts shared by the host checks (run inside ComfyUI's Python, after comfy.cli_args is set)."""

import torch

import comfy.ldm.wan.vae
import comfy.sd

CTX = 32  # text width of the tiny model (the tiny umT5's d_model in te_family_check)
WAN = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=16, in_dim=16, dim=64, ffn_dim=128, freq_dim=32,
           text_dim=CTX, out_dim=16, num_heads=2, num_layers=2, image_model="wan2.1")


def wan_vae():
    """ComfyUI's VAE for a Wan 2.1 VAE state dict (random weights: RMS gains 1, weights ~ 1/sqrt(fan-in))."""
    shape = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                     temperal_downsample=[False, True, True]).state_dict()
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.ones_like(v) if "gamma" in k else torch.randn(v.shape, generator=g) / v[0].numel() ** 0.5
          if v.ndim > 1 else torch.zeros_like(v) for k, v in shape.items()}
    return comfy.sd.VAE(sd=sd)
