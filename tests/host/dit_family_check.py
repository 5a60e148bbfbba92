"""Run inside ComfyUI's Python: one DiT family (Flux, Chroma, QwenImage, WAN21, WAN22) end to end on a tiny model.

The model is built from ComfyUI's own classes (supported_models config -> model_base -> comfy.ldm network, tiny
widths/depths, random weights made here) and wrapped in a ModelPatcher, so its model_sampling, extra_conds and
LoRA key map are ComfyUI's. The text side is fixed tensors of the family's shapes (the real T5 / Qwen2.5-VL / umT5
encoders are far too large for a fixture). Trains a LoRA through the Atelier adapter with the family's default
targets, exports kohya keys, loads them with comfy.sd.load_lora_for_models and checks: no unloaded keys, strength 0
is the base bit for bit, the LoRA changes the output, the training target is noise - x0 (flow). Also compares
gradients with and without per-block checkpointing and block swap (tests/host/memory_check.py), and trains on
float8_e4m3fn-stored weights computing in fp32.
Prints one JSON line. usage: python dit_family_check.py ATELIER_CHECKOUT FAMILY
"""

import json
import logging
import os
import sys

sys.path.insert(0, os.getcwd())
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import torch  # noqa: E402

import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402

sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import conftest  # noqa: E402,F401  registers the Atelier checkout as the package `atelier` (as the test suite does)
from atelier.nodes.train_adapter import ComfyDenoiser, thaw  # noqa: E402
from family_check import NotLoaded, extraction, forward_time, tools  # noqa: E402  same checks as the SD families
from tiny_dit import CTX, FAMILIES  # noqa: E402  the tiny DiT configs shared with grid_family_check
from atelier.trainers import objectives as ob  # noqa: E402
from atelier.trainers.loop import Trainer, TrainConfig, TrainSample  # noqa: E402
from atelier.trainers.memory import gradient_checkpointing  # noqa: E402
from memory_check import memory_report  # noqa: E402
from atelier.trainers.network import LoRANetwork, NetworkConfig, family_default_targets  # noqa: E402

FAMILY = sys.argv[2]
config_class, unet_config, latent_shape, pooled_width = FAMILIES[FAMILY]


def build(weight_dtype=None):
    """ComfyUI's model for the family (fp8 storage with fp32 compute when weight_dtype is a float8 type)."""
    config = config_class(dict(unet_config))
    if weight_dtype is not None:
        config.set_inference_dtype(weight_dtype, torch.float32)
    torch.manual_seed(0)
    model = config.get_model({})
    with torch.no_grad():
        for p in model.diffusion_model.parameters():  # ComfyUI builds weights uninitialised: small random values
            p.copy_((torch.randn(p.shape) * 0.05).to(p.dtype))
    thaw(model.diffusion_model)  # frozen base weights, as the training node leaves them
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


g = torch.Generator().manual_seed(0)
texts = {f"caption {i}": (torch.randn(1, 7, CTX, generator=g), torch.randn(1, max(pooled_width, 1), generator=g))
         for i in range(2)}


def encode(captions):
    cond = torch.cat([texts[c][0] for c in captions])
    return cond, ({"pooled_output": torch.cat([texts[c][1] for c in captions])} if pooled_width else {})


def train(patcher, steps=3, blocks=()):
    denoise = ComfyDenoiser(patcher)
    net = family_default_targets(NetworkConfig(rank=4, alpha=4.0), denoise.family)
    network = LoRANetwork({"lora_unet": patcher.model.diffusion_model}, net)
    samples = [TrainSample(latent=torch.randn(latent_shape, generator=g), caption=f"caption {i}") for i in range(2)]
    trainer = Trainer(TrainConfig(max_steps=steps, batch_size=2, unet_lr=1e-2, save_every_epochs=0), network,
                      denoise, denoise.model_sampling, samples, encode)
    with gradient_checkpointing(list(blocks)):
        state = trainer.run()
    return denoise, network, state


result = {"family": FAMILY}
patcher = build()
denoise, network, state = train(patcher)
result.update(detected=denoise.family, steps=state.step, losses_finite=all(abs(v) < 1e9 for v in state.losses),
              lora_modules=len(network.modules_by_key))
lora = network.export(torch.float32)
network.remove()
result["lora_keys"] = len(lora)
result["names"] = sorted(k for k in lora if k.endswith(".alpha"))[:3]

# stock loader: every key maps, strength 0 is the base bit for bit, strength 1 changes the output
x_t = torch.randn((1,) + latent_shape, generator=g)
sigma = torch.tensor([0.7])
cond, extra = encode(["caption 0"])
unloaded = NotLoaded()  # ComfyUI's 'lora key not loaded' warnings
logging.getLogger().addHandler(unloaded)


def run(p):
    p.patch_model()
    try:
        with torch.no_grad():
            return ComfyDenoiser(p)(x_t, sigma, cond, **dict(extra))
    finally:
        p.unpatch_model()


base = run(patcher)
zero, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 0.0, 0.0)
one, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)
lora_out = run(one)
result.update(unloaded=unloaded.keys[:5], patched=len(one.patches), zero_equal=bool(torch.equal(run(zero), base)),
              lora_change=float((lora_out - base).abs().max()), out_shape=list(base.shape))

# the LoRA tools and the XY grid's forward-time LoRA on the family's file (a batch of two samples for the grid)
result.update(tools(patcher, lora))
result.update(extraction(patcher, lora, x_t, sigma, cond, extra, lora_out))
cond2, extra2 = encode(["caption 0", "caption 1"])
result.update(forward_time(patcher, lora, torch.randn((2,) + latent_shape, generator=g), torch.tensor([0.4, 0.8]),
                           cond2, extra2))

# the objective's target is ComfyUI's flow target: noise - x0 for model_sampling CONST
x0, noise = torch.randn_like(x_t), torch.randn_like(x_t)
ms = patcher.model.model_sampling
xt = ms.noise_scaling(sigma, noise, x0)
result["target_error"] = float((ob.prediction_target(ms, sigma, xt, x0) - (noise - x0)).abs().max())
result["sampling"] = type(ms).__name__

# per-block checkpointing and block swap: same gradients, fewer saved activations / resident weights
result.update(memory_report(build, (x_t, sigma, cond, extra), lambda: build(torch.float8_e4m3fn)))

# fp8-stored base weights, fp32 compute
fp8 = build(torch.float8_e4m3fn)
fp8_dtypes = sorted({str(p.dtype) for n, p in fp8.model.diffusion_model.named_parameters() if n.endswith("weight")
                     and p.ndim == 2})
d8, n8, s8 = train(fp8, steps=2)
result.update(fp8_weight_dtypes=fp8_dtypes, fp8_steps=s8.step, fp8_losses_finite=all(abs(v) < 1e9 for v in s8.losses),
              fp8_lora_changed=any(float(v.abs().sum()) > 0 for k, v in n8.export(torch.float32).items()
                                   if "lora_up" in k))
print(json.dumps(result))
