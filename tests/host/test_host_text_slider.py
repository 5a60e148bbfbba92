"""A text slider trains through a real server on the fixture checkpoint, loads in stock LoraLoader with every key
mapped, changes nothing at strength 0, and changes the render at +1 and −1."""

import json
import struct

import numpy as np
from comfy_host import FIXTURE_CHECKPOINT_NAME, render


def slider_prompt(output_name: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "AtelierTrainTextSlider", "inputs": dict(
            model=["1", 0], clip=["1", 1], output_name=output_name, target="a photo of a person",
            positive="a photo of a person, smiling", negative="a photo of a person, frowning",
            neutral="a photo of a person", action="enhance", guidance_scale=4.0, resolution=64, denoise_steps=4,
            bidirectional=False, prompts_yaml="", rank=4, alpha=4.0, unet_lr=0.05, max_steps=3, seed=0,
            reuse=False)},
    }


def header(path) -> dict:
    data = path.read_bytes()
    return json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"]


def test_text_slider_trains_loads_and_moves_both_ways(comfy, comfy_server):
    log_before = len(comfy_server.log_text())
    out = comfy.run(slider_prompt("host_slider"), timeout=900)
    report = json.loads(out["2"]["text"][0])
    assert report["steps"] == 3 and report["lora"] == "models/loras/atelier/host_slider.safetensors"
    meta = header(comfy_server.file(report["lora"]))
    objective = json.loads(meta["atelier_objective"])
    assert objective["method"] == "text_slider" and objective["sets"][0]["positive"] == "a photo of a person, smiling"
    assert "smiling" in meta["ss_training_comment"]

    text = "a photo of a person"
    base = render(comfy, comfy_server, text, seed=3, prefix="slider_base")
    at = {s: render(comfy, comfy_server, text, seed=3, prefix=f"slider_{s}", lora="atelier/host_slider.safetensors",
                    strength=s) for s in (0.0, 1.0, -1.0)}
    assert "lora key not loaded" not in comfy_server.log_text()[log_before:]
    assert np.array_equal(at[0.0], base), "strength 0 changed the render"
    assert np.abs(at[1.0] - base).max() > 0 and np.abs(at[-1.0] - base).max() > 0
    assert np.abs(at[1.0] - at[-1.0]).max() > 0
