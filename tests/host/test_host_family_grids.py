"""The whole XY Grid node (sampler, text encoder, VAE, forward-time LoRA cells) on SD2.x, SDXL, SD3.5, Flux.1, Chroma,
Qwen-Image, Wan 2.1 and Wan 2.2: tiny models and CLIPs built from ComfyUI's own classes and VAEs from random state
dicts, each cell against stock LoraLoader + CLIPTextEncode + KSampler + VAEDecode runs
(tests/host/grid_family_check.py)."""

import pytest
from test_host_objectives import host_script

# family -> (ComfyUI's model class, its text-encoder class, latent channels of its VAE)
EXPECTED = {"sd2v": ("BaseModel", "SD2ClipModel", 4), "sdxl": ("SDXL", "SDXLClipModel", 4),
            "sd3": ("SD3", "SD3ClipModel_", 16), "flux": ("Flux", "FluxClipModel_", 16),
            "chroma": ("Chroma", "PixArtTEModel_", 16),  # T5-XXL only, UNet-only LoRA
            "qwen_image": ("QwenImage", "QwenImageTEModel", 16),  # Qwen2.5-VL, Wan 2.1 VAE, UNet-only LoRA
            # 5-D latents with one frame and the Wan VAEs (2.2's downscales 16x), UNet-only LoRA
            "wan": ("WAN21", "WanT5Model", 16), "wan22": ("WAN22", "WanT5Model", 48)}


def SCRIPT_JOB(params):  # noqa: N802  the check each test runs, queued at collection (script_pool.py)
    return "grid_family_check.py", 400, params["family"]


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_xy_grid_node_runs_on_the_family_and_matches_stock_runs(comfy_server, family):
    model, clip, channels = EXPECTED[family]
    r = host_script(comfy_server, *SCRIPT_JOB({"family": family}))
    assert (r["model"], r["clip"], r["vae_channels"]) == (model, clip, channels)
    # one page: strengths 0, 0.5, 1 as three 64² cells in one sampler batch, every LoRA key on a layer, none merged
    assert r["report"] == "3 cells rendered, 0 reused from an interrupted run; 1 sampler batches.", r["report"]
    assert r["cells_shape"] == [3, 64, 64, 3] and r["grid_shape"][0] == 1  # 64² cells at any VAE scale
    assert r["grid_shape"][2] > 3 * 64 and r["grid_shape"][1] > 64  # three labelled columns, one row
    assert r["files"] == [f"atelier/grids/family_{family}_{r['files'][0].split('_')[-1]}"]
    assert r["meta_x"] == [0.0, 0.5, 1.0] and r["meta_cells"] == 3
    # alone in its batch, the strength-0 cell is the stock image bit for bit; batched cells within summation order
    assert r["alone_equal"] and r["repeat_equal"]
    for strength, d in r["diffs"].items():
        assert d["max"] <= (1 if strength == "0.0" else 4) and d["mean"] < 0.2, (strength, d)
    # the LoRA (UNet and text encoder) really acts, more at strength 1 than at 0.5; the VAE makes a varied image
    assert 0 < r["diffs"]["0.5"]["effect"] < r["diffs"]["1.0"]["effect"] and r["diffs"]["1.0"]["effect"] > 0.1
    assert r["pixel_spread"] > 20
