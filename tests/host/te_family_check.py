"""Run inside ComfyUI's Python: text-encoder LoRA training for one family on a tiny model and a tiny CLIP.

usage: python te_family_check.py ATELIER_CHECKOUT FAMILY
       (FAMILY: sd2v, sdxl, sd3, sd3_t5, flux, chroma, wan, qwen_image)

The CLIP is comfy.sd.CLIP over the family's own text-encoder classes (SD2ClipModel, SDXLClipModel, SD3ClipModel with
CLIP-L + CLIP-G, and with a T5-XXL too for sd3_t5, FluxClipModel with CLIP-L + T5-XXL, Chroma's PixArt T5-XXL alone)
and tokenizers (shipped inside the ComfyUI checkout), with each encoder's config dict made tiny (few narrow layers,
the real vocabularies) while it is built, and random weights. The diffusion model is the family's tiny ComfyUI model
whose text widths match. Training goes through the node's own wiring: the Advanced node's widgets through config_from
into TrainConfig, trainable_host with train_text_encoder and train_t5 (text_encoder_roots; for sd3_t5, Flux and
Chroma the T5 too), lora_network with the family's default targets, make_encoder and autograd_friendly_clip. The
LoRA is saved and read back with core.lora_io, then loaded with comfy.sd.load_lora_for_models (what stock LoraLoader
calls) on MODEL and CLIP while "lora key not loaded" lines are counted; the encodings at clip strength 0 and 1 are
compared with the base CLIP's (the whole conditioning, the pooled output, and the T5's own tokens at its end).
Wan 2.x (WanT5Model, umT5-XXL) and Qwen-Image (QwenImageTEModel, Qwen2.5-VL with a one-block vision tower) train
the same way under ComfyUI's generic text_encoders.<name>.transformer.* keys, the only names ComfyUI maps for them
(the check also counts those: no kohya lora_te* key). umT5's tokenizer ships inside a checkpoint, not ComfyUI, so
Wan's tiny CLIP tokenizes with ComfyUI's own T5 sentencepiece model (t5_pile_tokenizer). Prints one JSON line.
"""

import contextlib
import json
import logging
import os
import sys
import tempfile

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
import comfy.text_encoders.pixart_t5  # noqa: E402
import comfy.text_encoders.qwen_image  # noqa: E402
import comfy.text_encoders.qwen_vl  # noqa: E402
import comfy.text_encoders.wan  # noqa: E402
import comfy.text_encoders.sd2_clip  # noqa: E402
import comfy.text_encoders.sd3_clip  # noqa: E402

sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import conftest  # noqa: E402,F401  registers the Atelier checkout as the package `atelier` (as the test suite does)
from atelier.core.lora_format import join_modules, module_bases, split_modules  # noqa: E402
from atelier.core.lora_io import load_lora, lora_summary, save_lora  # noqa: E402
from atelier.core.lora_math import merge_concat, resize  # noqa: E402
from atelier.nodes.finetune import te_roots  # noqa: E402
from atelier.nodes.lora_tools import unextracted_encoders  # noqa: E402
from atelier.core.lora_meta import HOST_FAMILIES, minimum_metadata  # noqa: E402
from atelier.nodes.train_adapter import autograd_friendly_clip, make_encoder  # noqa: E402
from atelier.nodes.training import config_from, lora_network, trainable_host  # noqa: E402
from atelier.trainers.loop import Trainer, TrainSample  # noqa: E402
from atelier.trainers.network import NetworkConfig  # noqa: E402

FAMILY = sys.argv[2]
# tiny widths by the real encoder's width: CLIP-L 768, OpenCLIP-H 1024, OpenCLIP-G 1280, T5-XXL 4096
TINY = {768: 32, 1024: 40, 1280: 48, 4096: 32}
# SD3.5 pads its CLIP-L + CLIP-G tokens to T5-XXL's 4096 features and appends the T5's tokens, so there the T5 keeps
# its real width (narrow attention and feed-forward; its 32128 x 4096 embedding, ~0.5 GB, is most of it)
T5_WIDTH = 4096 if FAMILY == "sd3_t5" else TINY[4096]
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
WAN = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=16, in_dim=16, dim=64, ffn_dim=128, freq_dim=32,
           text_dim=32, out_dim=16, num_heads=2, num_layers=2, image_model="wan2.1")
QWEN = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
            attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(8, 12, 12))
# Qwen2.5-VL's decoder made tiny (its head_dim 128 and rope sections are fixed in ComfyUI's config class)
QWEN_LLM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
T5_SPIECE = os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "text_encoders", "t5_pile_tokenizer",
                         "tokenizer.model")
# family -> (model config class, its unet_config, CLIP class, tokenizer class, train_t5, latent shape of one sample)
FAMILIES = {
    "sd2v": (sm.SD20, dict(UNET_SD, context_dim=40, adm_in_channels=None), comfy.text_encoders.sd2_clip.SD2ClipModel,
             comfy.text_encoders.sd2_clip.SD2Tokenizer, False, (4, 8, 8)),
    "sdxl": (sm.SDXL, dict(UNET_SD, context_dim=32 + 48, adm_in_channels=48 + 1536, num_classes="sequential"),
             comfy.sdxl_clip.SDXLClipModel, comfy.sdxl_clip.SDXLTokenizer, False, (4, 8, 8)),
    "sd3": (sm.SD3, SD3, comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=False),
            comfy.text_encoders.sd3_clip.SD3Tokenizer, False, (16, 8, 8)),
    "sd3_t5": (sm.SD3, SD3, comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=True),
               comfy.text_encoders.sd3_clip.SD3Tokenizer, True, (16, 8, 8)),
    "flux": (sm.Flux, FLUX, comfy.text_encoders.flux.flux_clip(), comfy.text_encoders.flux.FluxTokenizer, True,
             (16, 8, 8)),
    # Chroma: Flux's blocks without guidance or pooled `y`, its modulation from a small approximator, 2x2-patched
    # 64-channel img_in (as in dit_family_check.py); its text encoder is a lone T5-XXL
    "chroma": (sm.Chroma, dict({k: v for k, v in FLUX.items() if k not in ("guidance_embed", "vec_in_dim")},
                               image_model="chroma", in_channels=64, out_channels=64, in_dim=64, out_dim=64,
                               hidden_dim=32, n_layers=1),
               comfy.text_encoders.pixart_t5.pixart_te(), comfy.text_encoders.pixart_t5.PixArtTokenizer, True,
               (16, 8, 8)),
    "wan": (sm.WAN21_T2V, WAN, comfy.text_encoders.wan.WanT5Model, comfy.text_encoders.wan.WanT5Tokenizer, False,
            (16, 1, 8, 8)),
    "qwen_image": (sm.QwenImage, QWEN, comfy.text_encoders.qwen_image.QwenImageTEModel,
                   comfy.text_encoders.qwen_image.QwenImageTokenizer, False, (16, 1, 8, 8)),
}
if FAMILY in FAMILIES:  # grid_family_check imports this module for other families and sets these itself
    config_class, unet_config, clip_class, tokenizer_class, train_t5, latent_shape = FAMILIES[FAMILY]
TOKENIZER_DATA = {"spiece_model": T5_SPIECE} if FAMILY == "wan" else {}
# the Advanced node's training widgets this check sets (the rest keep their defaults)
WIDGETS = dict(max_steps=3, batch_size=2, unet_lr=1e-2, te_lr=1e-2, train_text_encoder=True, save_every_epochs=0)


def tiny(config: dict) -> dict:
    """The encoder's config dict with its real vocabulary and positions, and few narrow layers."""
    if not config:  # Qwen2.5-VL: ComfyUI passes {} and its config class holds the sizes
        return dict(QWEN_LLM)
    if "d_model" in config:  # T5
        return dict(config, d_model=T5_WIDTH, d_ff=64, d_kv=8, num_heads=2, num_layers=2)
    width = TINY[config["hidden_size"]]
    return dict(config, hidden_size=width, intermediate_size=2 * width, num_attention_heads=2, num_hidden_layers=3,
                projection_dim=width)


@contextlib.contextmanager
def tiny_encoders():
    """While active, every SDClipModel (CLIP, T5 and Qwen2.5-VL encoders alike) is built from a tiny copy of its
    config, and Qwen2.5-VL's vision tower has one narrow block."""
    original = comfy.sd1_clip.SDClipModel.__init__
    vision = comfy.text_encoders.qwen_vl.Qwen2VLVisionTransformer.__init__

    def init(self, *args, textmodel_json_config=None, **kwargs):
        if isinstance(textmodel_json_config, dict):  # Qwen2.5-VL: {} (its config class holds the sizes)
            config = textmodel_json_config
        else:
            path = textmodel_json_config or os.path.join(os.path.dirname(comfy.sd1_clip.__file__),
                                                         "sd1_clip_config.json")
            with open(path) as f:
                config = json.load(f)
        original(self, *args, textmodel_json_config=tiny(config), **kwargs)

    def vision_init(self, *args, **kwargs):
        vision(self, *args, **dict(kwargs, hidden_size=32, intermediate_size=32, num_heads=2, num_layers=1))

    comfy.sd1_clip.SDClipModel.__init__ = init
    comfy.text_encoders.qwen_vl.Qwen2VLVisionTransformer.__init__ = vision_init
    try:
        yield
    finally:
        comfy.sd1_clip.SDClipModel.__init__ = original
        comfy.text_encoders.qwen_vl.Qwen2VLVisionTransformer.__init__ = vision


class Target:
    """What comfy.sd.CLIP reads from a checkpoint's detected config: the encoder class, the tokenizer, params."""

    def __init__(self):
        self.clip, self.tokenizer, self.params = clip_class, tokenizer_class, {}


def build_clip(tokenizer_data=None):
    """The tiny CLIP (tokenizer_data: what a checkpoint carries for tokenizers not shipped with ComfyUI)."""
    with tiny_encoders():
        clip = comfy.sd.CLIP(Target(), tokenizer_data=TOKENIZER_DATA if tokenizer_data is None else tokenizer_data,
                             model_options={"dtype": torch.float32})
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
    """The CLIP's (cond, pooled, the T5's tokens at the end of cond or None) for a caption, as a sampler's
    conditioning would get them; pooled is None where the encoder pools nothing (Chroma, Qwen-Image, Wan)."""
    tokens = clip.tokenize(caption)
    with torch.no_grad():
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    t5_tokens = sum(len(batch) for batch in tokens.get("t5xxl", ())) if train_t5 else 0
    t5 = cond[:, -t5_tokens:].float() if t5_tokens else None
    return cond.float(), None if pooled is None else pooled.float(), t5


def refusals(patcher, clip) -> dict:
    """What the node says to train_t5 without train_text_encoder, and to train_t5 on a CLIP without a T5."""
    out = {}
    try:
        config_from(dict(WIDGETS, train_text_encoder=False, train_t5=True), "")[0].validate()
    except ValueError as e:
        out["t5_without_te"] = str(e)
    if clip_class.__name__.startswith("PixArt"):  # a lone T5 trains only with train_t5
        try:
            with torch.inference_mode(False):
                trainable_host(patcher, clip, True, False)
        except ValueError as e:
            out["t5_needed"] = str(e)
    if not train_t5:
        try:
            with torch.inference_mode(False):
                trainable_host(patcher, clip, True, True)
        except ValueError as e:
            out["t5_missing"] = str(e)
    return out


def joined(prefix: str) -> str:
    """What a prefix's module keys start with: kohya prefixes join with '_', ComfyUI's generic ones with '.'."""
    return prefix + ("." if prefix.startswith("text_encoders.") else "_")


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
        facts["te_modules"] = {p: sum(k.startswith(joined(p)) for k in keys) for p in facts["roots"]}
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
                                  if k.startswith(joined(p)) and "lora_up" in k) for p in facts["roots"]}
    facts["sample_keys"] = {p: next(k for k in sorted(tensors) if k.startswith(joined(p))) for p in facts["roots"]}
    # a generic-key encoder's adapted layers: the last part of each module name, and the blocks they sit in
    bases = [b for b in module_bases(tensors) if b.startswith("text_encoders.")]
    facts["te_layer_names"] = sorted({b.rsplit(".", 1)[1] for b in bases})
    facts["te_vision_modules"] = sum(".visual." in b for b in bases)
    return tensors, facts


def main() -> dict:
    patcher, clip = build_model(), build_clip()
    result = {"family": FAMILY, "clip": type(clip.cond_stage_model).__name__}
    mapped = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    result.update(mapped=len(mapped), kohya_mapped=sum(k.startswith("lora_") for k in mapped),
                  mapped_prefixes=sorted({".".join(k.split(".")[:2]) for k in mapped}))
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
    result["strength0_equal"] = all(a is b is None or torch.equal(a, b) for a, b in zip(base, outs[0.0]))
    changes = [None if a is None else float((b - a).abs().max()) for a, b in zip(base, outs[1.0])]
    result["cond_change"], result["pooled_change"], result["t5_change"] = changes
    result.update(tools(patcher, clip, loaded))
    return result


def tools(patcher, clip, tensors: dict) -> dict:
    """Inspect's prefixes, resize (rank 4 -> 2) and merge (concatenated with itself) on the LoRA, each loaded on
    MODEL and CLIP with its 'lora key not loaded' lines counted; what extraction and full fine-tune say of the CLIP."""
    modules, _ = split_modules(tensors)
    out = {"inspect_prefixes": sorted(lora_summary(tensors, {})["prefixes"]),
           "extract_note": unextracted_encoders(clip)}
    for name, made in (("resized", resize(modules, rank=2)[0]), ("merged", merge_concat([(modules, 1.0),
                                                                                          (modules, 0.5)]))):
        handler = NotLoaded()
        logging.getLogger().addHandler(handler)
        try:
            comfy.sd.load_lora_for_models(patcher, clip, join_modules(made, torch.float32), 1.0, 1.0)
        finally:
            logging.getLogger().removeHandler(handler)
        out[f"{name}_not_loaded"] = len(handler.keys)
        out[f"{name}_rank"] = max(m.rank for m in made.values())
    try:
        te_roots(clip)
    except ValueError as e:
        out["finetune_refusal"] = str(e)
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
