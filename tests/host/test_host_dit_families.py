"""DiT families (Flux.1, Chroma, Qwen-Image, Wan 2.1 / 2.2) on tiny models from ComfyUI's own classes, in the host's
Python: train, ship, stock load, the LoRA tools and the XY grid's forward-time LoRA."""

import pytest
from test_host_families import assert_memory_options
from test_host_objectives import host_script


def SCRIPT_JOB(params):  # noqa: N802  the check each test runs, queued at collection (script_pool.py)
    return "dit_family_check.py", 120, params["family"]


@pytest.mark.parametrize("family, latent", [("Flux", [1, 16, 8, 8]), ("Chroma", [1, 16, 8, 8]),
                                            ("QwenImage", [1, 16, 1, 8, 8]),
                                            ("WAN21", [1, 16, 1, 8, 8]), ("WAN22", [1, 48, 1, 8, 8])])
def test_dit_family_trains_ships_and_loads_in_stock_comfyui(comfy_server, family, latent):
    r = host_script(comfy_server, *SCRIPT_JOB({"family": family}))
    assert r["detected"] == ("WAN21" if family == "WAN22" else family)  # WAN22 is a WAN21 subclass in ComfyUI
    assert r["steps"] == 3 and r["losses_finite"] and r["lora_modules"] > 0 and r["out_shape"] == latent
    assert r["lora_keys"] == 3 * r["lora_modules"] and all(n.startswith("lora_unet_") for n in r["names"])
    assert r["unloaded"] == [] and r["patched"] == r["lora_modules"]  # every key mapped by ComfyUI's loader
    assert r["zero_equal"] and r["lora_change"] > 1e-4  # strength 0 = base bit for bit; strength 1 changes it
    assert r["sampling"] == "ModelSampling" and r["target_error"] < 1e-5  # flow: target = noise - x0
    assert_memory_options(r)  # checkpointing and block swap: same gradients, less memory
    if family not in ("Flux", "Chroma"):  # their in-place residual copies hide the saves from the counting hook
        assert r["saved_bytes_ckpt"] < r["saved_bytes_plain"] / 4
    assert r["fp8_weight_dtypes"] == ["torch.float8_e4m3fn"]
    assert r["fp8_steps"] == 2 and r["fp8_losses_finite"] and r["fp8_lora_changed"]
    # the LoRA tools on the family's file, each result loaded by ComfyUI's loader with no unloaded key
    assert r["inspect_modules"] == r["tool_modules"] == r["lora_modules"] and r["inspect_prefixes"] == ["lora_unet"]
    assert (r["resized_rank"], r["merged_rank"]) == (2, 8)
    assert r["resized_not_loaded"] == r["merged_not_loaded"] == 0
    assert r["extracted_modules"] == r["changed_modules"] > 0 and r["extract_not_loaded"] == 0
    assert r["extract_error"] < 1e-3 * r["lora_change"] + 1e-5  # the extraction reproduces the LoRA's output
    # the XY grid's forward-time LoRA: strength 0 is the base bit for bit, strength s is the stock loader's output
    assert r["forward_problem"] == "" and r["forward_layers"] == r["lora_modules"] and r["forward_zero_equal"]
    assert r["forward_effect"] > 0 and r["forward_error"] < 1e-3 * r["forward_effect"] + 1e-5
