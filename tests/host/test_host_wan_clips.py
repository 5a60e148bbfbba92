"""Wan 2.1 short clips: a folder of frames per clip trains a LoRA through the real data path (scan, prepare, the
Wan VAE's own clip encoding, latent cache, trainer) on a tiny model from ComfyUI's own classes."""

from test_host_objectives import host_script


def test_wan_clip_trains_through_the_data_path_and_loads_in_stock_comfyui(comfy_server):
    r = host_script(comfy_server, "wan_clip_check.py", 300)
    # two clips, captions from '<clip>.txt' beside each folder; 5 frames -> 2 latent frames (1 + 4k rule)
    assert r["clips"] == 2 and r["skipped"] == 0 and r["captions"] == ["a turn clip", "a walk clip"]
    assert r["latent_shapes"] == [[16, 2, 4, 4]] and r["latents_finite"] and r["misses"] == 2
    assert r["direct_error"] == 0.0  # the VAE's own encoding of the first five frames in natural name order
    # the cache keys on every frame: a second load hits both; editing one frame of one clip re-encodes that clip
    assert (r["second_hits"], r["second_misses"]) == (2, 0)
    assert (r["edited_hits"], r["edited_misses"]) == (1, 1) and r["identity_changed"]
    assert r["edited_latent_changed"] > 1e-4
    # training on the clips, then stock ComfyUI's loader: every key maps, strength 0 is the base bit for bit
    assert r["family"] == "WAN21" and r["steps"] == 3 and r["losses_finite"] and r["lora_modules"] > 0
    assert r["lora_keys"] == 3 * r["lora_modules"] and r["unloaded"] == [] and r["patched"] == r["lora_modules"]
    assert r["zero_equal"] and r["lora_change"] > 1e-4 and r["out_shape"] == [1, 16, 2, 4, 4]
