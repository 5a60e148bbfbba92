"""Text-encoder LoRA for SD2.x, SDXL, SD3.5 and Flux.1 on tiny CLIPs built from ComfyUI's own encoder classes."""

import pytest
from test_host_objectives import host_script

# family -> (ComfyUI's text-encoder class, kohya prefixes of the trained encoders, a sample key per encoder)
EXPECTED = {
    "sd2v": ("SD2ClipModel", {"lora_te": "lora_te_text_model_encoder_layers_0_mlp_fc1"}),
    "sdxl": ("SDXLClipModel", {"lora_te1": "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                               "lora_te2": "lora_te2_text_model_encoder_layers_0_mlp_fc1"}),
    "sd3": ("SD3ClipModel_", {"lora_te1": "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                              "lora_te2": "lora_te2_text_model_encoder_layers_0_mlp_fc1"}),
    # kohya lora_flux: CLIP-L lora_te1, T5-XXL lora_te3 (with train_t5xxl); ComfyUI maps both
    "flux": ("FluxClipModel_", {"lora_te1": "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                                "lora_te3": "lora_te3_encoder_block_0_layer_0_SelfAttention_k"}),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_text_encoder_lora_trains_and_loads_in_stock_comfyui(comfy_server, family):
    clip_class, prefixes = EXPECTED[family]
    r = host_script(comfy_server, "te_family_check.py", 120, family)
    assert r["clip"] == clip_class and r["roots"] == sorted([*prefixes, "lora_unet"])
    assert r["steps"] == 3 and r["losses_finite"]
    for prefix, key in prefixes.items():
        assert r["te_modules"][prefix] > 0 and r["te_changed"][prefix], prefix  # each encoder's LoRA trained
        assert r["sample_keys"][prefix] == key + ".alpha"
    # LoraLoader on MODEL and CLIP: every key maps, clip strength 0 is the base encoding bit for bit, 1 changes it
    assert r["not_loaded_count"] == 0, r["not_loaded"]
    assert r["patched"] == r["modules"] == r["lora_keys"] // 3
    assert r["strength0_equal"] and r["cond_change"] > 1e-4 and r["pooled_change"] > 1e-4
