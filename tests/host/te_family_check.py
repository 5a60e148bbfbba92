"""Run inside ComfyUI's Python: text-encoder LoRA training for one family on a tiny model and a tiny CLIP.

usage: python te_family_check.py ATELIER_CHECKOUT FAMILY   (FAMILY: sd2v, sdxl, sd3, flux; wan, qwen_image)

The CLIP is comfy.sd.CLIP over the family's own text-encoder classes (SD2ClipModel, SDXLClipModel, SD3ClipModel with
CLIP-L + CLIP-G, FluxClipModel with CLIP-L + T5-XXL) and tokenizers (shipped inside the ComfyUI checkout), with
each encoder's config dict made tiny (few narrow layers, the real vocabularies) while it is built, and random
weights. The diffusion model is the family's tiny ComfyUI model whose text widths match. Training goes through the
node's own wiring: the Advanced node's widgets through config_from into TrainConfig, trainable_host with
train_text_encoder and train_t5 (text_encoder_roots; for Flux the T5 too), lora_network
with the family's default targets, make_encoder and autograd_friendly_clip. The LoRA is saved and read back with
core.lora_io, then loaded with comfy.sd.load_lora_for_models (what stock LoraLoader calls) on MODEL and CLIP while
"lora key not loaded" lines are counted; the encodings at clip strength 0 and 1 are compared with the base CLIP's.
For wan and qwen_image it only reports which LoRA prefixes ComfyUI maps for their text encoders (umT5-XXL,
Qwen2.5-VL; generic text_encoders.* keys, no kohya lora_te*) and the node's refusal. Prints one JSON line.
"""

import contextlib
import json
import logging
import os
import sys
import tempfile
import types

sys.path.insert(0, os.getcwd())
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import torch  # noqa: E402

import comfy.lora  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import comfy.sdxl_clip  # noqa: E402
import comfy.supported_models as sm  # noqa: E402
import comfy.text_encoders.flux  # noqa: E402
import comfy.text_encoders.qwen_image  # noqa: E402
import comfy.text_encoders.wan  # noqa: E402
import comfy.text_encoders.sd2_clip  # noqa: E402
import comfy.text_encoders.sd3_clip  # noqa: E402

sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import conftest  # noqa: E402,F401  registers the Atelier checkout as the package `atelier` (as the test suite does)
from atelier.core.lora_io import load_lora, save_lora  # noqa: E402
from atelier.core.lora_meta import HOST_FAMILIES, minimum_metadata  # noqa: E402
from atelier.nodes.train_adapter import autograd_friendly_clip, make_encoder  # noqa: E402
from atelier.nodes.training import config_from, lora_network, trainable_host  # noqa: E402
from atelier.trainers.loop import Trainer, TrainSample  # noqa: E402
from atelier.trainers.network import NetworkConfig  # noqa: E402

FAMILY = sys.argv[2]
# tiny widths by the real encoder's width: CLIP-L 768, OpenCLIP-H 1024, OpenCLIP-G 1280, T5-XXL 4096
TINY = {768: 32, 1024: 40, 1280: 48, 4096: 32}
UNET_SD = dict(use_linear_in_transformer=True, transformer_depth=[1], transformer_depth_output=[1, 1],
               transformer_depth_middle=1, use_temporal_attention=False, in_channels=4, out_channels=4,
               num_res_blocks=[1], channel_mult=[1], num_head_channels=64, num_heads=-1, image_size=32,
               use_spatial_transformer=True, legacy=False, use_temporal_resblock=False, model_channels=64)
FLUX = dict(in_channels=16, out_channels=16, context_in_dim=32, hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1,
            depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000, patch_size=2, qkv_bias=True, image_model="flux",
            guidance_embed=True, vec_in_dim=32)
SD3 = dict(in_channels=16, pos_embed_scaling_factor=None, depth=2, patch_size=2, adm_in_channels=32 + 48,
           pos_embed_max_size=16, num_patches=256, qk_norm="rms", x_block_self_attn_layers=[0],
           context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}})
# family -> (model config class, its unet_config, CLIP class, tokenizer class, train_t5, latent shape of one sample)
FAMILIES = {
    "sd2v": (sm.SD20, dict(UNET_SD, context_dim=40, adm_in_channels=None), comfy.text_encoders.sd2_clip.SD2ClipModel,
             comfy.text_encoders.sd2_clip.SD2Tokenizer, False, (4, 8, 8)),
    "sdxl": (sm.SDXL, dict(UNET_SD, context_dim=32 + 48, adm_in_channels=48 + 1536, num_classes="sequential"),
             comfy.sdxl_clip.SDXLClipModel, comfy.sdxl_clip.SDXLTokenizer, False, (4, 8, 8)),
    "sd3": (sm.SD3, SD3, comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=False),
            comfy.text_encoders.sd3_clip.SD3Tokenizer, False, (16, 8, 8)),
    "flux": (sm.Flux, FLUX, comfy.text_encoders.flux.flux_clip(), comfy.text_encoders.flux.FluxTokenizer, True,
             (16, 8, 8)),
}
# families whose text encoder ComfyUI maps only under generic text_encoders.* keys: checked on the real-size class
# built on the meta device (no memory), and the node's refusal
GENERIC_KEY_FAMILIES = {"wan": comfy.text_encoders.wan.WanT5Model,
                        "qwen_image": comfy.text_encoders.qwen_image.QwenImageTEModel}
if FAMILY in FAMILIES:
    config_class, unet_config, clip_class, tokenizer_class, train_t5, latent_shape = FAMILIES[FAMILY]
# the Advanced node's training widgets this check sets (the rest keep their defaults)
WIDGETS = dict(max_steps=3, batch_size=2, unet_lr=1e-2, te_lr=1e-2, train_text_encoder=True, save_every_epochs=0)


def tiny(config: dict) -> dict:
    """The encoder's config dict with its real vocabulary and positions, and few narrow layers."""
    if "d_model" in config:  # T5
        width = TINY[config["d_model"]]
        return dict(config, d_model=width, d_ff=2 * width, d_kv=8, num_heads=2, num_layers=2)
    width = TINY[config["hidden_size"]]
    return dict(config, hidden_size=width, intermediate_size=2 * width, num_attention_heads=2, num_hidden_layers=3,
                projection_dim=width)


@contextlib.contextmanager
def tiny_encoders():
    """While active, every SDClipModel (CLIP and T5 encoders alike) is built from a tiny copy of its config."""
    original = comfy.sd1_clip.SDClipModel.__init__

    def init(self, *args, textmodel_json_config=None, **kwargs):
        if isinstance(textmodel_json_config, dict):  # a config built in code (Qwen2.5-VL's): left to the caller
            return original(self, *args, textmodel_json_config=textmodel_json_config, **kwargs)
        path = textmodel_json_config or os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")
        with open(path) as f:
            config = json.load(f)
        original(self, *args, textmodel_json_config=tiny(config), **kwargs)

    comfy.sd1_clip.SDClipModel.__init__ = init
    try:
        yield
    finally:
        comfy.sd1_clip.SDClipModel.__init__ = original


class Target:
    """What comfy.sd.CLIP reads from a checkpoint's detected config: the encoder class, the tokenizer, params."""

    def __init__(self):
        self.clip, self.tokenizer, self.params = clip_class, tokenizer_class, {}


def build_clip(tokenizer_data=None):
    """The tiny CLIP (tokenizer_data: what a checkpoint carries for tokenizers not shipped with ComfyUI)."""
    with tiny_encoders():
        clip = comfy.sd.CLIP(Target(), tokenizer_data=tokenizer_data or {}, model_options={"dtype": torch.float32})
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in clip.cond_stage_model.named_parameters():
            if p.ndim == 1:  # layer norms start at identity, biases at zero
                p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
            else:
                p.copy_(torch.randn(p.shape) * 0.2)
    return clip


def build_model():
    config = config_class(dict(unet_config))
    # SD2.x is v-prediction when this norm bias varies (how ComfyUI tells 768-v from 512 checkpoints)
    probe = {"output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.linspace(-1, 1, 64)}
    torch.manual_seed(0)
    model = config.get_model(probe if FAMILY == "sd2v" else {})
    with torch.no_grad():
        for p in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            p.copy_(torch.randn(p.shape) * 0.02)  # ComfyUI builds weights (and MMDiT's pos_embed) uninitialised
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


class NotLoaded(logging.Handler):
    """Collects ComfyUI's 'lora key not loaded' warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.keys = []

    def emit(self, record):
        if "lora key not loaded" in record.getMessage():
            self.keys.append(record.getMessage())


def encoding(clip, caption: str):
    """The CLIP's (cond, pooled) for a caption, as a sampler's conditioning would get them."""
    with torch.no_grad():
        cond, pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
    return cond.float(), pooled.float()


def refusals(patcher, clip) -> dict:
    """What the node says to train_t5 without train_text_encoder, and to train_t5 on a CLIP without a T5."""
    out = {}
    try:
        config_from(dict(WIDGETS, train_text_encoder=False, train_t5=True), "")[0].validate()
    except ValueError as e:
        out["t5_without_te"] = str(e)
    if not train_t5:
        try:
            with torch.inference_mode(False):
                trainable_host(patcher, clip, True, True)
        except ValueError as e:
            out["t5_missing"] = str(e)
    return out


def train(patcher, clip) -> tuple[dict, dict]:
    """Trains UNet + text-encoder LoRA for 3 steps through the node's wiring; (kohya tensors, facts)."""
    facts = {}
    # the Advanced node's widgets -> TrainConfig (config_from), then trainable_host as train_lora calls it
    config, _, _ = config_from(dict(WIDGETS, train_t5=train_t5), "")
    config.validate()
    facts["config_train_t5"] = config.train_t5
    with torch.inference_mode(False):
        host = trainable_host(patcher, clip, config.train_text_encoder, config.train_t5)
        facts["roots"] = sorted(host.roots)
        network, net = lora_network(host, NetworkConfig(rank=4, alpha=4.0), seed=0, continue_from="(none)")
        facts["targets"] = list(net.target_patterns)
        keys = sorted(network.modules_by_key)
        facts["te_modules"] = {p: sum(k.startswith(p + "_") for k in keys) for p in facts["roots"]}
        g = torch.Generator().manual_seed(2)
        samples = [TrainSample(latent=torch.randn(latent_shape, generator=g), caption=c)
                   for c in ("a red fox", "a blue bird")]
        trainer = Trainer(config, network, host.denoise, host.denoise.model_sampling,
                          samples, make_encoder(clip, pooled=host.denoise.needs_pooled))
        with autograd_friendly_clip(clip.cond_stage_model):
            state = trainer.run()
        facts["steps"] = state.step
        facts["losses_finite"] = all(v == v and abs(v) < 1e9 for v in state.losses)
        network.remove()
        tensors = network.kohya_state_dict(torch.float32)
    facts["te_changed"] = {p: any(float(v.abs().sum()) > 0 for k, v in tensors.items()
                                  if k.startswith(p + "_") and "lora_up" in k) for p in facts["roots"]}
    facts["sample_keys"] = {p: next(k for k in sorted(tensors) if k.startswith(p + "_")) for p in facts["roots"]}
    return tensors, facts


def main() -> dict:
    patcher, clip = build_model(), build_clip()
    result = {"family": FAMILY, "clip": type(clip.cond_stage_model).__name__}
    base = encoding(clip, "a red fox")
    result["refusals"] = refusals(patcher, clip)
    tensors, facts = train(patcher, clip)
    result.update(facts)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{FAMILY}_te.safetensors")
        family = HOST_FAMILIES.get(type(patcher.model.model_config).__name__, "unknown")
        save_lora(path, tensors, minimum_metadata(family=family, dim=4, alpha=4.0))
        loaded, _ = load_lora(path)
    result["lora_keys"] = len(loaded)
    handler = NotLoaded()
    logging.getLogger().addHandler(handler)
    try:
        outs, patched = {}, {}
        for strength in (0.0, 1.0):
            model, new_clip = comfy.sd.load_lora_for_models(patcher, clip, loaded, 1.0, strength)
            patched[strength] = len(model.patches) + len(new_clip.patcher.patches)
            outs[strength] = encoding(new_clip, "a red fox")
    finally:
        logging.getLogger().removeHandler(handler)
    result.update(not_loaded=handler.keys[:5], not_loaded_count=len(handler.keys), patched=patched[1.0],
                  modules=len(loaded) // 3)
    result["strength0_equal"] = all(torch.equal(a, b) for a, b in zip(base, outs[0.0]))
    result["cond_change"] = float((outs[1.0][0] - base[0]).abs().max())
    result["pooled_change"] = float((outs[1.0][1] - base[1]).abs().max())
    return result


def generic_key_check() -> dict:
    """The prefixes ComfyUI's model_lora_keys_clip maps for the family's text encoder, and the node's refusal."""
    with torch.device("meta"):  # the real-size encoder's names without its weights
        encoder = GENERIC_KEY_FAMILIES[FAMILY](dtype=torch.float16)
    mapped = comfy.lora.model_lora_keys_clip(encoder, {})
    result = {"family": FAMILY, "clip": type(encoder).__name__, "mapped": len(mapped),
              "kohya_mapped": sum(k.startswith("lora_") for k in mapped),
              "prefixes": sorted({".".join(k.split(".")[:2]) for k in mapped})}
    try:
        trainable_host(None, types.SimpleNamespace(cond_stage_model=encoder), True)  # refused before any loading
    except ValueError as e:
        result["refusal"] = str(e)
    return result


if __name__ == "__main__":
    print(json.dumps(generic_key_check() if FAMILY in GENERIC_KEY_FAMILIES else main()))
