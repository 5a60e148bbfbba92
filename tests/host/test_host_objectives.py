"""The trainer's objectives against ComfyUI's own model_sampling objects (run in the host's Python)."""

import script_pool
from comfy_host import ROOT


def host_script(comfy_server, name: str, timeout: int, *args: str) -> dict:
    """The JSON object on the last output line of tests/host/<name> run in the host's Python from its checkout
    (started in the background at collection when its test module announces it: tests/host/script_pool.py)."""
    return script_pool.result(comfy_server.python, comfy_server.checkout, ROOT, name, timeout, args)


def test_targets_from_comfyui_model_sampling(comfy_server):
    errors = host_script(comfy_server, "objectives_parity.py", 120)
    assert set(errors) == {f"{f}{s}" for f in ("eps", "v", "flow") for s in ("", "_sigma", "_denoised")}
    assert all(v < 1e-4 for v in errors.values()), errors


def test_sdxl_adm_conditioning_and_training_through_the_adapter(comfy_server):
    r = host_script(comfy_server, "sdxl_adapter_check.py", 300)
    assert r["out_shape"] == [2, 4, 8, 8] and r["needs_pooled"]
    assert r["pooled_matters"] > 0 and r["size_matters"] > 0  # y carries the pooled text and the image size
    assert "needs the text encoder's pooled output" in r["missing_pooled_error"]
    assert r["steps"] == 3 and r["losses_finite"] and r["lora_changed"] and r["lora_modules"] > 0
