"""Run inside ComfyUI's Python: trains a LoRA for a few steps on a small SDXL model built from ComfyUI's own classes.

Checks that the denoiser adapter feeds SDXL's ADM vector `y` (pooled text + sizes, from the model's encode_adm) and
that training through it changes the LoRA. The text side is fixed tensors of SDXL's shapes (a real CLIP-G is far
too large for a test fixture). Prints one JSON line. usage: python sdxl_adapter_check.py ATELIER_CHECKOUT
"""

import json
import os
import sys

sys.path.insert(0, os.getcwd())
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import torch  # noqa: E402

import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402

sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import conftest  # noqa: E402,F401  registers the Atelier checkout as the package `atelier` (as the test suite does)
from atelier.nodes.train_adapter import UNET_INCLUDE, ComfyDenoiser  # noqa: E402
from atelier.trainers.loop import Trainer, TrainConfig, TrainSample  # noqa: E402
from atelier.trainers.network import LoRANetwork, NetworkConfig  # noqa: E402

unet_config = dict(model_channels=64, use_linear_in_transformer=True, transformer_depth=[1],
                   transformer_depth_output=[1, 1], transformer_depth_middle=1, context_dim=2048,
                   adm_in_channels=2816, use_temporal_attention=False, in_channels=4, out_channels=4,
                   num_res_blocks=[1], channel_mult=[1], num_head_channels=64, num_heads=-1, image_size=32,
                   use_spatial_transformer=True, legacy=False, num_classes="sequential",
                   use_temporal_resblock=False)
config = comfy.supported_models.SDXL(unet_config)
torch.manual_seed(0)
model = config.get_model({})  # comfy.model_base.SDXL: real encode_adm, model_sampling, latent format
for p in model.parameters():  # ComfyUI builds weights uninitialised: give them small values
    torch.nn.init.normal_(p, std=0.02)
patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
denoise = ComfyDenoiser(patcher)

g = torch.Generator().manual_seed(0)
x_t, sigma = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([1.0, 5.0])
cond, pooled = torch.randn(2, 77, 2048, generator=g), torch.randn(2, 1280, generator=g)
with torch.no_grad():
    out = denoise(x_t, sigma, cond, pooled_output=pooled)
    other_size = denoise(torch.nn.functional.pad(x_t, (0, 8)), sigma, cond, pooled_output=pooled)[..., :8]
    other_pooled = denoise(x_t, sigma, cond, pooled_output=pooled * 2)
result = {"out_shape": list(out.shape), "needs_pooled": denoise.needs_pooled,
          "pooled_matters": float((out - other_pooled).abs().max()),
          "size_matters": float((out - other_size).abs().max())}
try:
    denoise(x_t, sigma, cond)
    result["missing_pooled_error"] = ""
except ValueError as e:
    result["missing_pooled_error"] = str(e)

texts = {f"caption {i}": (torch.randn(1, 77, 2048, generator=g), torch.randn(1, 1280, generator=g)) for i in range(2)}


def encode(captions):
    return (torch.cat([texts[c][0] for c in captions]), {"pooled_output": torch.cat([texts[c][1] for c in captions])})


samples = [TrainSample(latent=torch.randn(4, 8, 8, generator=g), caption=f"caption {i}") for i in range(2)]
network = LoRANetwork({"lora_unet": model.diffusion_model},
                      NetworkConfig(rank=4, alpha=4.0, target_patterns=(UNET_INCLUDE,)))
trainer = Trainer(TrainConfig(max_steps=3, batch_size=2, unet_lr=1e-2, save_every_epochs=0), network, denoise,
                  denoise.model_sampling, samples, encode)
state = trainer.run()
ups = [v for k, v in network.kohya_state_dict(torch.float32).items() if "lora_up" in k]
result.update(steps=state.step, losses_finite=all(l == l and abs(l) < 1e9 for l in state.losses),
              lora_changed=any(float(v.abs().sum()) > 0 for v in ups), lora_modules=len(network.modules_by_key))
print(json.dumps(result))
