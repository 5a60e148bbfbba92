"""Wan 2.1 and 2.2 short clips: a folder of frames and an animated GIF train a LoRA through the real data path (scan,
prepare, the version's own Wan VAE encoding the clip, latent cache, trainer) on a tiny model from ComfyUI's own
classes."""

import pytest
from test_host_objectives import host_script

# version -> (ComfyUI's model class, the VAE module comfy.sd.VAE detects from the state dict, latent channels)
VERSIONS = {"WAN21": ("WAN21", "comfy.ldm.wan.vae", 16), "WAN22": ("WAN22", "comfy.ldm.wan.vae2_2", 48)}


def SCRIPT_JOB(params):  # noqa: N802  the check each test runs, queued at collection (script_pool.py)
    return "wan_clip_check.py", 300, params["version"]


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_wan_clip_trains_through_the_data_path_and_loads_in_stock_comfyui(comfy_server, version):
    model, vae, channels = VERSIONS[version]
    r = host_script(comfy_server, *SCRIPT_JOB({"version": version}))
    assert r["vae"] == vae and r["vae_channels"] == channels  # ComfyUI's own VAE detection picked the version's VAE
    # two clips, captions from '<clip>.txt' beside each; 5 frames -> 2 latent frames (1 + 4k rule)
    assert r["clips"] == 2 and r["skipped"] == 0 and r["captions"] == ["a turn clip", "a walk clip"]
    assert r["latent_shapes"] == [[channels, 2, 4, 4]] and r["latents_finite"] and r["misses"] == 2
    assert r["direct_error"] == 0.0  # the VAE's own encoding of the first five frames in natural name order
    # 'turn' is an animated GIF with partial frames: its latent is the VAE's encoding of its first five frames as
    # Pillow composites them
    assert r["clip_sources"] == ["turn.gif", "walk"] and r["turn_direct_error"] == 0.0
    # the cache keys on every frame: a second load hits both; editing one frame of one clip re-encodes that clip
    assert (r["second_hits"], r["second_misses"]) == (2, 0)
    assert (r["edited_hits"], r["edited_misses"]) == (1, 1) and r["identity_changed"]
    assert r["edited_latent_changed"] > 1e-4
    # training on the clips, then stock ComfyUI's loader: every key maps, strength 0 is the base bit for bit
    # WAN22 is a WAN21 subclass in ComfyUI, so the adapter's family (its conditioning and targets) is WAN21 for both
    assert r["model"] == model and r["family"] == "WAN21"
    assert r["steps"] == 3 and r["losses_finite"] and r["lora_modules"] > 0
    assert r["lora_keys"] == 3 * r["lora_modules"] and r["unloaded"] == [] and r["patched"] == r["lora_modules"]
    assert r["zero_equal"] and r["lora_change"] > 1e-4 and r["out_shape"] == [1, channels, 2, 4, 4]


def clips_prompt(folder: str, clip_frames: int) -> dict:
    """Load Clips -> Dataset Stats (an output node, so ComfyUI runs the graph)."""
    return {"1": {"class_type": "AtelierLoadClips", "inputs": {
        "folder": folder, "sub_path": "", "clip_frames": clip_frames, "role": "train", "repeats": 2,
        "caption_source": "sidecar", "caption_extension": ".txt", "fixed_caption": "", "on_missing_caption": "error"}},
        "2": {"class_type": "AtelierDatasetStats", "inputs": {
            "dataset": ["1", 0], "batch_size": 1, "epochs": 1, "grad_accum": 1, "kimg": 0.0}}}


def test_load_clips_node_reports_clips_and_names_a_short_clip(comfy, comfy_server):
    import numpy as np
    import pytest
    from PIL import Image

    top = comfy_server.input_dir / "clips_host"
    for name, n in (("walk", 6), ("turn", 5)):
        (top / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)).save(top / name / f"frame_{i + 1}.png")
        (top / f"{name}.txt").write_text(f"a {name} clip", encoding="utf-8")
    out = comfy.run(clips_prompt("input/clips_host", 5), timeout=120)
    assert "subset 'clips_host' (train): 2 clips of 5 frames × 2 repeats" in out["1"]["text"][0]
    with pytest.raises(AssertionError, match=r"Clip 'input/clips_host/turn' has 5 frame\(s\); this subset takes "
                                             r"clip_frames = 9"):
        comfy.run(clips_prompt("input/clips_host", 9), timeout=120)
