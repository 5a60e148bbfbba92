"""Tiny DiT parts shared by the host checks (run inside ComfyUI's Python, after comfy.cli_args is set): the model
configs of the DiT families and random-weight Wan VAEs (ComfyUI fixes their widths, so they are full size)."""

import torch

import comfy.ldm.wan.vae
import comfy.ldm.wan.vae2_2
import comfy.sd
import comfy.supported_models as sm

CTX = 32  # text width of the tiny models (the tiny T5 / umT5's d_model in te_family_check)
FLUX = dict(in_channels=16, out_channels=16, context_in_dim=CTX, hidden_size=64, mlp_ratio=2.0,
            num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000, patch_size=2,
            qkv_bias=True)
WAN = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=16, in_dim=16, dim=64, ffn_dim=128, freq_dim=32,
           text_dim=CTX, out_dim=16, num_heads=2, num_layers=2)
# family -> (supported_models config, unet_config, latent shape of one sample, pooled width or 0)
FAMILIES = {
    "Flux": (sm.Flux, dict(FLUX, image_model="flux", guidance_embed=True, vec_in_dim=CTX), (16, 8, 8), CTX),
    # Chroma's img_in and final layer work on 2x2-patched tokens (16·4 = 64 channels each way, as ComfyUI detects
    # a real Chroma); its approximator takes 16 + 16 + 32 timestep/guidance/index features to hidden_size
    "Chroma": (sm.Chroma, dict(FLUX, image_model="chroma", in_channels=64, out_channels=64, in_dim=64, out_dim=64,
                               hidden_dim=32, n_layers=1), (16, 8, 8), 0),
    "QwenImage": (sm.QwenImage, dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
                                     num_layers=2, attention_head_dim=32, num_attention_heads=2,
                                     joint_attention_dim=CTX, axes_dims_rope=(8, 12, 12)), (16, 1, 8, 8), 0),
    "WAN21": (sm.WAN21_T2V, dict(WAN, image_model="wan2.1"), (16, 1, 8, 8), 0),
    "WAN22": (sm.WAN22_T2V, dict(WAN, image_model="wan2.1", in_dim=48, out_dim=48), (48, 1, 8, 8), 0),
}


def random_vae(shapes: dict):
    """comfy.sd.VAE detected from random weights of these shapes (RMS gains 1, weights ~ 1/sqrt(fan-in))."""
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.ones(v.shape) if "gamma" in k else torch.randn(v.shape, generator=g) / v[0].numel() ** 0.5
          if v.ndim > 1 else torch.zeros(v.shape) for k, v in shapes.items()}
    return comfy.sd.VAE(sd=sd)


def wan_vae():
    """ComfyUI's VAE for a Wan 2.1 VAE state dict (16 channels, 8x downscale), random weights."""
    with torch.device("meta"):  # shapes only
        shapes = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                          temperal_downsample=[False, True, True]).state_dict()
    return random_vae(shapes)


def wan22_vae():
    """ComfyUI's VAE for a Wan 2.2 VAE state dict (48 channels, 16x downscale), random weights."""
    with torch.device("meta"):
        shapes = comfy.ldm.wan.vae2_2.WanVAE(dim=160, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                             attn_scales=[], temperal_downsample=[False, True, True]).state_dict()
    return random_vae(shapes)
