"""SD1.5 (tiny: memory options), SD2.x 768-v, SDXL and SD3.5 end to end on tiny models built from ComfyUI's own
classes (in the host's Python)."""

import pytest
from test_host_objectives import host_script

# family -> (ComfyUI config class, model type, latent channels, kohya ss_base_model_version, a default target)
EXPECTED = {
    "sd15": ("SD15", "EPS", 4, "sd_v1", "lora_unet_input_blocks_1_1_proj_in"),
    "sd2v": ("SD20", "V_PREDICTION", 4, "sd_v2_v", "lora_unet_input_blocks_1_1_proj_in"),
    "sdxl": ("SDXL", "EPS", 4, "sdxl_base_v1-0", "lora_unet_input_blocks_1_1_proj_in"),
    "sd3": ("SD3", "FLOW", 16, "unknown", "lora_unet_joint_blocks_0_context_block_adaLN_modulation_1"),
}


def SCRIPT_JOB(params):  # noqa: N802  the check each test runs, queued at collection (script_pool.py)
    return "family_check.py", 180, params["family"]


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_family_trains_ships_loads_and_tools(comfy_server, family):
    config, model_type, channels, version, target = EXPECTED[family]
    r = host_script(comfy_server, *SCRIPT_JOB({"family": family}))
    assert (r["config"], r["model_type"], r["out_shape"]) == (config, model_type, [2, channels, 8, 8])
    assert r["target_error"] < 1e-4  # the objective's target is the family's ε / v / flow
    assert r["steps"] == 3 and r["losses_finite"] and r["lora_changed"]
    assert r["lora_modules"] > 0 and target in r["module_sample"] and r["checkpoint_blocks"] > 0
    assert r["base_version"] == version
    # stock loading: every key maps, strength 0 is the base bit for bit, strength 1 changes the output
    assert r["not_loaded_count"] == 0, r["not_loaded"]
    assert r["patched_keys"] == r["lora_modules"] and r["strength0_equal"] and r["lora_effect"] > 0
    # tools on the family's file: inspect, resize to rank 2, concatenating merge, extraction that ComfyUI loads
    assert r["inspect_modules"] == r["tool_modules"] == r["lora_modules"] and r["inspect_prefixes"] == ["lora_unet"]
    assert (r["resized_rank"], r["merged_rank"]) == (2, 8)
    assert r["resized_not_loaded"] == r["merged_not_loaded"] == 0
    assert r["extracted_modules"] == r["changed_modules"] > 0 and r["extract_not_loaded"] == 0
    assert r["extract_error"] < 1e-3 * max(r["lora_effect"], 1e-3) + 1e-5
    # the XY grid's forward-time LoRA: strength 0 is the base bit for bit, strength s is the stock loader's output
    assert r["forward_problem"] == "" and r["forward_layers"] == r["lora_modules"] and r["forward_zero_equal"]
    assert r["forward_effect"] > 0 and r["forward_error"] < 1e-3 * r["forward_effect"] + 1e-5
    # training on float8_e4m3fn-stored base weights computing in fp32 (ComfyUI's fp8 weight_dtype)
    assert r["fp8_weight_dtypes"] == ["torch.float8_e4m3fn"]
    assert r["fp8_steps"] == 2 and r["fp8_losses_finite"] and r["fp8_lora_changed"]
    assert_memory_options(r)
    assert r["saved_bytes_ckpt"] < r["saved_bytes_plain"] / 2  # the UNet's layers are checkpointed (not a no-op)


def assert_memory_options(r: dict) -> None:
    """tests/host/memory_check.py's measurements: checkpointing and block swap change memory, not gradients."""
    assert r["ckpt_blocks"] >= 2 and r["grad_norm"] > 0
    assert r["ckpt_grad_error"] < 1e-6 * max(1.0, r["grad_norm"])
    assert r["swap_blocks"] == r["ckpt_blocks"] and r["swap_grad_error"] < 1e-6 * max(1.0, r["grad_norm"])
    assert r["swap_loads"] >= r["swap_blocks"] and r["swap_restored"]  # each block loaded; all weights back after
    # the peak holds the unswapped weights plus one swapped block, never two: less than the whole model
    assert r["resident_peak_swap"] == r["resident_bytes_plain"] - r["swapped_bytes"] + r["swap_largest_block"]
    assert r["resident_peak_swap"] < r["resident_bytes_plain"]
    assert r["swap_fp8_finite"] and r["swap_fp8_bytes"] < r["swapped_bytes"] / 2  # float8 weights swap as float8
