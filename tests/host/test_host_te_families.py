"""Text-encoder LoRA for SD2.x, SDXL, SD3.5 (CLIPs, and with its T5-XXL), Flux.1, Chroma (lone T5-XXL), Qwen-Image
and Wan 2.x on tiny CLIPs built from ComfyUI's own encoder classes; Qwen2.5-VL and umT5-XXL under ComfyUI's generic
text_encoders.* keys, the only ones it maps."""

import pytest
from test_host_objectives import host_script

# family -> (ComfyUI's text-encoder class, kohya prefixes of the trained encoders, a sample key per encoder)
EXPECTED = {
    "sd2v": ("SD2ClipModel", {"lora_te": "lora_te_text_model_encoder_layers_0_mlp_fc1"}),
    "sdxl": ("SDXLClipModel", {"lora_te1": "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                               "lora_te2": "lora_te2_text_model_encoder_layers_0_mlp_fc1"}),
    "sd3": ("SD3ClipModel_", {"lora_te1": "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                              "lora_te2": "lora_te2_text_model_encoder_layers_0_mlp_fc1"}),
    # kohya lora_sd3 with train_t5xxl: CLIP-L lora_te1, CLIP-G lora_te2, T5-XXL lora_te3; ComfyUI maps all three
    "sd3_t5": ("SD3ClipModel_", {"lora_te1": "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                                 "lora_te2": "lora_te2_text_model_encoder_layers_0_mlp_fc1",
                                 "lora_te3": "lora_te3_encoder_block_0_layer_0_SelfAttention_k"}),
    # kohya lora_flux: CLIP-L lora_te1, T5-XXL lora_te3 (with train_t5xxl); ComfyUI maps both
    "flux": ("FluxClipModel_", {"lora_te1": "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                                "lora_te3": "lora_te3_encoder_block_0_layer_0_SelfAttention_k"}),
    # Chroma's lone T5-XXL: ComfyUI's model_lora_keys_clip numbers a T5 after the CLIPs, so with none it is lora_te1
    "chroma": ("PixArtTEModel_", {"lora_te1": "lora_te1_encoder_block_0_layer_0_SelfAttention_k"}),
    # ComfyUI maps no kohya lora_te* key for these, only text_encoders.<CLIP state-dict key>: written that way
    "wan": ("WanT5Model", {"text_encoders.umt5xxl.transformer":
                           "text_encoders.umt5xxl.transformer.encoder.block.0.layer.0.SelfAttention.k"}),
    "qwen_image": ("QwenImageTEModel", {"text_encoders.qwen25_7b.transformer":
                                        "text_encoders.qwen25_7b.transformer.model.layers.0.mlp.down_proj"}),
}
T5_FAMILIES = {"sd3_t5", "flux", "chroma"}  # trained with train_t5
GENERIC = {"wan": "umt5xxl", "qwen_image": "qwen25_7b"}  # ComfyUI's name of the family's text encoder
LABELS = {"wan": "Wan 2.x's umT5-XXL", "qwen_image": "Qwen-Image's Qwen2.5-VL 7B"}
# the layers a generic-key encoder's LoRA adapts by default: umT5's attention q/k/v/o and gated feed-forward; the
# Qwen2.5-VL decoder layers' attention q/k/v/o and gated MLP (its vision tower left alone)
LAYERS = {"wan": ["k", "o", "q", "v", "wi_0", "wi_1", "wo"],
          "qwen_image": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]}


def SCRIPT_JOB(params):  # noqa: N802  the check each test runs, queued at collection (script_pool.py)
    return "te_family_check.py", 120, params["family"]


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_text_encoder_lora_trains_and_loads_in_stock_comfyui(comfy_server, family):
    clip_class, prefixes = EXPECTED[family]
    r = host_script(comfy_server, *SCRIPT_JOB({"family": family}))
    assert r["clip"] == clip_class and r["roots"] == sorted([*prefixes, "lora_unet"])
    assert r["steps"] == 3 and r["losses_finite"]
    for prefix, key in prefixes.items():
        assert r["te_modules"][prefix] > 0 and r["te_changed"][prefix], prefix  # each encoder's LoRA trained
        assert r["sample_keys"][prefix] == key + ".alpha"
    # LoraLoader on MODEL and CLIP: every key maps, clip strength 0 is the base encoding bit for bit, 1 changes it
    assert r["not_loaded_count"] == 0, r["not_loaded"]
    assert r["patched"] == r["modules"] == r["lora_keys"] // 3
    assert r["strength0_equal"] and r["cond_change"] > 1e-4
    if family in GENERIC or family == "chroma":
        assert r["pooled_change"] is None  # Qwen-Image, Wan and a lone T5 have no pooled output
    else:
        assert r["pooled_change"] > 1e-4
    if family in T5_FAMILIES:  # the T5's own tokens (appended after the CLIPs' on SD3.5) change at strength 1
        assert r["t5_change"] > 1e-4
    else:
        assert r["t5_change"] is None
    if family in GENERIC:  # ComfyUI 0.3.64 maps every encoder weight under text_encoders.<name>.*, no kohya key
        assert r["kohya_mapped"] == 0 and r["mapped_prefixes"] == [f"text_encoders.{GENERIC[family]}"]
        assert r["te_layer_names"] == LAYERS[family] and r["te_vision_modules"] == 0
        assert r["extract_note"].startswith(f"text encoder not extracted: {LABELS[family]} (extraction writes kohya")
        assert r["finetune_refusal"].startswith(f"Full fine-tune trains CLIP text encoders only; this CLIP's is "
                                                f"{GENERIC[family]} ({clip_class}). Turn train_text_encoder off")
    elif family == "chroma":  # its lone T5-XXL trains as a LoRA (train_t5), not in a full fine-tune
        assert r["extract_note"] == "" and r["finetune_refusal"].startswith(
            "Full fine-tune trains CLIP text encoders only; this CLIP's is t5xxl (PixArtTEModel_). Turn "
            "train_text_encoder off")
    else:
        assert r["extract_note"] == "" and "finetune_refusal" not in r
    # Inspect names each encoder's prefix; resize and merge write files stock LoraLoader maps whole
    assert r["inspect_prefixes"] == sorted(["lora_unet", *(p.removesuffix(".transformer") for p in prefixes)])
    assert r["resized_rank"] == 2 and r["merged_rank"] == 8
    assert r["resized_not_loaded"] == r["merged_not_loaded"] == 0
    # train_t5 (kohya's train_t5xxl): set through the Advanced node's widgets, refused without a T5 or without
    # train_text_encoder, each message saying what to do
    assert r["config_train_t5"] == (family in T5_FAMILIES)
    assert "train_text_encoder is off; turn train_text_encoder on, or train_t5 off" in r["refusals"]["t5_without_te"]
    if family not in T5_FAMILIES:
        still = "its text encoder still trains" if family in GENERIC else "its CLIP text encoders still train"
        assert r["refusals"]["t5_missing"] == (
            f"train_t5 trains the T5-XXL text encoder of SD3.5, Flux.1 and Chroma, but this CLIP ({r['clip']}) has "
            f"no T5-XXL loaded; turn train_t5 off ({still} with train_text_encoder), or "
            "load the model's T5-XXL with its CLIP loader.")

    if family == "chroma":  # its only encoder is the T5, so train_text_encoder alone has nothing to train
        assert r["refusals"]["t5_needed"] == (
            "Text-encoder training supports CLIP text encoders (SD1.x, SD2.x, SDXL, SD3.5, Flux.1), with train_t5 "
            "T5-XXL (SD3.5, Flux.1, Chroma), Qwen-Image's Qwen2.5-VL and Wan 2.x's umT5-XXL; this CLIP is "
            "PixArtTEModel_. Turn train_text_encoder off to train the diffusion model only, or turn train_t5 on to "
            "train its T5-XXL.")
