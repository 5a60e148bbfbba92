"""Run inside ComfyUI's Python: one model family end to end on a tiny model built from ComfyUI's own classes.

usage: python family_check.py ATELIER_CHECKOUT FAMILY   (FAMILY: sd15, sd2v, sdxl, sd3)

The model is the family's comfy.supported_models config with small widths and depths, random weights, wrapped in a
ModelPatcher as ComfyUI wraps a loaded checkpoint. Training goes through the training node's own wiring
(trainable_host, lora_network with the family's default targets, the Trainer, gradient checkpointing of the
repeated blocks); the text side is fixed tensors of the family's shapes (real text encoders are far too large for a
fixture). The LoRA is saved with core.lora_io.save_lora, read back, and loaded with comfy.sd.load_lora_for_models
(what stock LoraLoader calls) while "lora key not loaded" lines are counted. Prints one JSON line.
"""

import json
import logging
import os
import sys
import tempfile

sys.path.insert(0, os.getcwd())
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import torch  # noqa: E402

import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402

sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import conftest  # noqa: E402,F401  registers the Atelier checkout as the package `atelier` (as the test suite does)
from atelier.core.lora_format import join_modules, kohya_base, split_modules  # noqa: E402
from atelier.core.lora_io import load_lora, lora_summary, save_lora  # noqa: E402
from atelier.core.lora_math import apply_to_weights, extract, merge_concat, resize  # noqa: E402,I001
from atelier.core.lora_meta import HOST_FAMILIES, minimum_metadata  # noqa: E402
from atelier.core.forward_lora import ForwardLoRA  # noqa: E402
from atelier.nodes.cells import forward_layers  # noqa: E402
from atelier.nodes.lora_files import fit_lora  # noqa: E402
from atelier.nodes.training import checkpoint_blocks, checkpointed, lora_network, trainable_host  # noqa: E402
from atelier.trainers.loop import Trainer, TrainConfig, TrainSample  # noqa: E402
from atelier.nodes.train_adapter import ComfyDenoiser  # noqa: E402
from atelier.trainers.network import NetworkConfig, extract_targets  # noqa: E402
from atelier.trainers.objectives import prediction_target  # noqa: E402
from memory_check import memory_report  # noqa: E402

UNET_SD = dict(use_linear_in_transformer=True, transformer_depth=[1], transformer_depth_output=[1, 1],
               transformer_depth_middle=1, use_temporal_attention=False, in_channels=4, out_channels=4,
               num_res_blocks=[1], channel_mult=[1], num_head_channels=64, num_heads=-1, image_size=32,
               use_spatial_transformer=True, legacy=False, use_temporal_resblock=False, model_channels=64)
# family -> (config class, its unet_config, text width, pooled width or 0, latent channels)
FAMILIES = {
    # SD1.5's own config class at tiny width (the host tier's other SD1.5 tests use the full-width fixture checkpoint)
    "sd15": (comfy.supported_models.SD15, dict(UNET_SD, context_dim=768, adm_in_channels=None), 768, 0, 4),
    "sd2v": (comfy.supported_models.SD20, dict(UNET_SD, context_dim=1024, adm_in_channels=None), 1024, 0, 4),
    "sdxl": (comfy.supported_models.SDXL, dict(UNET_SD, context_dim=2048, adm_in_channels=2816,
                                               num_classes="sequential"), 2048, 1280, 4),
    # SD3.5 (medium-style: RMS q/k norm, a second x-block attention in block 0); hidden size 64·depth
    "sd3": (comfy.supported_models.SD3, dict(in_channels=16, pos_embed_scaling_factor=None, depth=2, patch_size=2,
                                             adm_in_channels=2048, pos_embed_max_size=16, num_patches=256,
                                             qk_norm="rms", x_block_self_attn_layers=[0],
                                             context_embedder_config={"target": "torch.nn.Linear",
                                                                      "params": {"in_features": 4096,
                                                                                 "out_features": 128}}),
            4096, 2048, 16),
}


class NotLoaded(logging.Handler):
    """Collects ComfyUI's 'lora key not loaded' warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.keys = []

    def emit(self, record):
        if "lora key not loaded" in record.getMessage():
            self.keys.append(record.getMessage())


def build(family: str, weight_dtype=None):
    """ComfyUI's model for the family (fp8 storage with fp32 compute when weight_dtype is a float8 type)."""
    config_class, unet_config, *_ = FAMILIES[family]
    config = config_class(dict(unet_config))
    if weight_dtype is not None:
        config.set_inference_dtype(weight_dtype, torch.float32)  # what the loaders' weight_dtype fp8 options set
    # SD2.x is v-prediction when this norm bias varies (how ComfyUI tells 768-v from 512 checkpoints)
    probe = {"output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.linspace(-1, 1, 64)}
    torch.manual_seed(0)
    model = config.get_model(probe if family == "sd2v" else {})
    with torch.no_grad():  # ComfyUI builds weights (and MMDiT's pos_embed) uninitialised: small random values
        for p in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            p.copy_((torch.randn(p.shape) * 0.02).to(p.dtype))
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def fp8_training(family: str, encode) -> dict:
    """Two LoRA steps on the family's model with float8_e4m3fn-stored weights computing in fp32."""
    channels = FAMILIES[family][4]
    patcher = build(family, torch.float8_e4m3fn)
    g = torch.Generator().manual_seed(2)
    with torch.inference_mode(False):
        host = trainable_host(patcher, None, False)
        network, _ = lora_network(host, NetworkConfig(rank=4, alpha=4.0), seed=0, continue_from="(none)")
        samples = [TrainSample(latent=torch.randn(channels, 8, 8, generator=g), caption=f"caption {i}")
                   for i in range(2)]
        state = Trainer(TrainConfig(max_steps=2, batch_size=2, unet_lr=1e-2, save_every_epochs=0), network,
                        host.denoise, host.denoise.model_sampling, samples, encode).run()
        network.remove()
        tensors = network.kohya_state_dict(torch.float32)
    weights = host.patcher.model.diffusion_model.named_parameters()
    return {"fp8_weight_dtypes": sorted({str(p.dtype) for n, p in weights if n.endswith("weight") and p.ndim >= 2}),
            "fp8_steps": state.step, "fp8_losses_finite": all(abs(v) < 1e9 for v in state.losses),
            "fp8_lora_changed": any(float(v.abs().sum()) > 0 for k, v in tensors.items() if "lora_up" in k)}


def main(family: str) -> dict:
    _, _, text_width, pooled_width, channels = FAMILIES[family]
    patcher = build(family)
    g = torch.Generator().manual_seed(1)
    texts = {f"caption {i}": (torch.randn(1, 77, text_width, generator=g), torch.randn(1, max(pooled_width, 1),
                                                                                         generator=g))
             for i in range(2)}

    def encode(captions):
        cond = torch.cat([texts[c][0] for c in captions])
        return cond, ({"pooled_output": torch.cat([texts[c][1] for c in captions])} if pooled_width else {})

    result = {"config": type(patcher.model.model_config).__name__, "model_type": patcher.model.model_type.name,
              "sampling": type(patcher.model.model_sampling).__name__}
    result["host_family"] = HOST_FAMILIES.get(result["config"], "")
    x_t = torch.randn(2, channels, 8, 8, generator=g)
    sigma = torch.tensor([0.5, 0.9]) if family == "sd3" else torch.tensor([1.0, 5.0])
    cond, extra = encode(["caption 0", "caption 1"])

    with torch.inference_mode(False):
        host = trainable_host(patcher, None, False)
        network, net = lora_network(host, NetworkConfig(rank=4, alpha=4.0), seed=0, continue_from="(none)")
        result["targets"] = list(net.target_patterns)
        result["lora_modules"] = len(network.modules_by_key)
        result["module_sample"] = sorted(network.modules_by_key)[:3]
        x0 = torch.randn_like(x_t)
        target = prediction_target(host.denoise.model_sampling, sigma, x_t, x0)
        # what the objective trains towards, against the family's parametrisation of x_t from x0 and noise
        s = sigma.view(-1, 1, 1, 1)
        if family == "sd3":  # rectified flow: x_t = (1-σ)·x0 + σ·noise, the model predicts noise - x0
            noise = (x_t - (1 - s) * x0) / s
            expected = noise - x0
        else:  # k-diffusion scaling x_t = x0 + σ·noise: ε = noise; v = (noise - σ·x0) / sqrt(σ² + 1)
            noise = (x_t - x0) / s
            expected = (noise - s * x0) / (s * s + 1).sqrt() if family == "sd2v" else noise
        result["target_error"] = float((target - expected).abs().max())
        samples = [TrainSample(latent=torch.randn(channels, 8, 8, generator=g), caption=f"caption {i}")
                   for i in range(2)]
        blocks = checkpoint_blocks(host.patcher.model.diffusion_model)
        result["checkpoint_blocks"] = len(blocks)
        trainer = Trainer(TrainConfig(max_steps=3, batch_size=2, unet_lr=1e-2, save_every_epochs=0), network,
                          host.denoise, host.denoise.model_sampling, samples, encode)
        with checkpointed(blocks):
            state = trainer.run()
        result["steps"] = state.step
        result["losses_finite"] = all(v == v and abs(v) < 1e9 for v in state.losses)
        network.remove()
        tensors = network.kohya_state_dict(torch.float32)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{family}.safetensors")
        save_lora(path, tensors, minimum_metadata(family=result["host_family"] or "unknown", dim=4, alpha=4.0,
                                                  v_prediction=result["model_type"] == "V_PREDICTION"))
        loaded, metadata = load_lora(path)
    result["base_version"] = metadata.get("ss_base_model_version", "")
    result["lora_changed"] = any(float(v.abs().sum()) > 0 for k, v in loaded.items() if "lora_up" in k)
    result.update(host_outputs(patcher, loaded, x_t, sigma, cond, extra))
    result.update(tools(patcher, loaded))
    result.update(forward_time(patcher, loaded, x_t, sigma, cond, extra))
    result.update(extraction(patcher, loaded, x_t, sigma, cond, extra, result.pop("lora_out")))
    result.update(fp8_training(family, encode))
    result.update(memory_report(lambda: build(family), (x_t, sigma, cond, extra),
                                lambda: build(family, torch.float8_e4m3fn)))
    return result


def host_outputs(patcher, lora: dict, x_t, sigma, cond, extra) -> dict:
    """Outputs of the stock-loaded LoRA at strengths 0 and 1 against the base, and the keys ComfyUI did not map."""
    handler = NotLoaded()
    logging.getLogger().addHandler(handler)
    outs = {}
    try:
        for strength in (None, 0.0, 1.0):
            m = patcher if strength is None else comfy.sd.load_lora_for_models(patcher, None, lora, strength, 0)[0]
            m.patch_model()
            try:
                with torch.no_grad():
                    outs[strength] = ComfyDenoiser(m)(x_t, sigma, cond, **dict(extra))
            finally:
                m.unpatch_model()
            if strength is not None:
                outs[f"patches{strength}"] = len(m.patches)
    finally:
        logging.getLogger().removeHandler(handler)
    return {"not_loaded": handler.keys[:5], "not_loaded_count": len(handler.keys), "patched_keys": outs["patches1.0"],
            "strength0_equal": bool(torch.equal(outs[None], outs[0.0])),
            "lora_effect": float((outs[1.0] - outs[None]).abs().max()),
            "out_shape": list(outs[None].shape), "lora_out": outs[1.0]}


def extraction(patcher, lora: dict, x_t, sigma, cond, extra, lora_out) -> dict:
    """core.lora_math.extract from (base, base + the trained LoRA's ΔW) at the LoRA's rank, loaded back by
    ComfyUI: the same output as the LoRA, one module per layer the LoRA changes."""
    base = patcher.model.diffusion_model.state_dict()
    names = {k: kohya_base("lora_unet", k[: -len(".weight")]) for k in extract_targets(
        {k: tuple(v.shape) for k, v in base.items()}, r".", convs=False)}
    trained = split_modules(lora)[0]
    tuned = apply_to_weights(base, trained, {k: b for k, b in names.items() if b in trained})  # a "fine-tune"
    modules, _, _ = extract(tuned, base, names, rank=4)
    handler = NotLoaded()
    logging.getLogger().addHandler(handler)
    try:
        m = comfy.sd.load_lora_for_models(patcher, None, join_modules(modules, torch.float32), 1.0, 0)[0]
    finally:
        logging.getLogger().removeHandler(handler)
    m.patch_model()
    try:
        with torch.no_grad():
            out = ComfyDenoiser(m)(x_t, sigma, cond, **dict(extra))
    finally:
        m.unpatch_model()
    changed = sum(bool(m.up.abs().sum() > 0) for m in trained.values())  # a LoRA whose up is all 0 changes nothing
    return {"extracted_modules": len(modules), "changed_modules": changed, "extract_not_loaded": len(handler.keys),
            "extract_error": float((out - lora_out).abs().max())}


def stock_unloaded(patcher, lora: dict) -> int:
    """How many 'lora key not loaded' lines comfy.sd.load_lora_for_models (what LoraLoader calls) logs for `lora`."""
    handler = NotLoaded()
    logging.getLogger().addHandler(handler)
    try:
        comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)
    finally:
        logging.getLogger().removeHandler(handler)
    return len(handler.keys)


def tools(patcher, lora: dict) -> dict:
    """Inspect, resize (rank 4 -> 2) and merge (concatenate with itself) on the family's LoRA; the resized and merged
    files loaded by ComfyUI's loader."""
    summary = lora_summary(lora, {})
    modules = split_modules(lora)[0]
    smaller = resize(modules, rank=2)[0]
    merged = merge_concat([(modules, 1.0), (modules, 0.5)])
    return {"inspect_modules": summary["modules"], "inspect_prefixes": sorted(summary["prefixes"]),
            "resized_rank": max(int(m.down.shape[0]) for m in smaller.values()),
            "merged_rank": max(int(m.down.shape[0]) for m in merged.values()), "tool_modules": len(modules),
            "resized_not_loaded": stock_unloaded(patcher, join_modules(smaller, torch.float32)),
            "merged_not_loaded": stock_unloaded(patcher, join_modules(merged, torch.float32))}


def forward_time(patcher, lora: dict, x_t, sigma, cond, extra, strength: float = 0.75) -> dict:
    """The XY grid's forward-time LoRA (nodes/cells.forward_layers + core.forward_lora) on a batch of two samples
    at strengths (0, s), against the base and against the stock-loaded LoRA at s on the same batch."""
    fit = fit_lora(lora, "family.safetensors", patcher)
    layers, problem = forward_layers(fit, {"unet": patcher.model})
    forward = ForwardLoRA()
    slot = forward.add_slot("family.safetensors")
    for _, module, down, up, alpha, key in layers:
        forward.add(slot, module, down, up, alpha, where=key)
    forward.set_strengths([[0.0], [strength]])
    with torch.no_grad():
        base = ComfyDenoiser(patcher)(x_t, sigma, cond, **dict(extra))
        with forward.attached():
            hooked = ComfyDenoiser(patcher)(x_t, sigma, cond, **dict(extra))
    stock = comfy.sd.load_lora_for_models(patcher, None, lora, strength, 0)[0]
    stock.patch_model()
    try:
        with torch.no_grad():
            merged = ComfyDenoiser(stock)(x_t, sigma, cond, **dict(extra))
    finally:
        stock.unpatch_model()
    return {"forward_problem": problem or "", "forward_layers": forward.layer_count(slot),
            "forward_zero_equal": bool(torch.equal(hooked[0], base[0])),
            "forward_effect": float((merged[1] - base[1]).abs().max()),
            "forward_error": float((hooked[1] - merged[1]).abs().max())}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[2])))
