"""LoRA tools through a real ComfyUI server: extract, merge, resize, inspect on the fixture checkpoint."""

import json

import numpy as np
import pytest
from comfy_host import FIXTURE_CHECKPOINT_NAME
from PIL import Image


@pytest.fixture(scope="module")
def source_lora(comfy, comfy_server):
    """A small LoRA trained on the fixture (UNet only), the starting point of every tool test."""
    folder = comfy_server.input_dir / "tools_src" / "5_x"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    for i in range(2):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((64, 64)).save(folder / f"{i}.png")
    comfy.run({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "AtelierLoadDataset", "inputs": dict(
            folder="input/tools_src", sub_path="", role="train", repeats=0, caption_source="fixed",
            caption_extension=".txt", fixed_caption="x style", caption_encoding="utf-8", on_missing_caption="error",
            recursive=True, prior_loss_weight=1.0, subset_name="x", verify_images=False)},
        "3": {"class_type": "AtelierPrepareDataset", "inputs": dict(
            dataset=["2", 0], mode="crop", width=64, height=64, pad_color="black", background="white",
            filter="lanczos", bucket_step=64, no_upscale=False, subsets="")},
        "4": {"class_type": "AtelierTrainLoRA", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["3", 0], "output_name": "tools_src",
            "rank": 4, "alpha": 4.0, "unet_lr": 5e-2, "epochs": 1, "max_steps": 4, "batch_size": 2,
            "train_text_encoder": False, "te_lr": 1e-4, "seed": 0}},
    }, timeout=600)
    return "atelier/tools_src.safetensors"


def render(comfy, comfy_server, lora=None, strength=1.0, prefix="t"):
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}}}
    model, clip = ["1", 0], ["1", 1]
    if lora:
        prompt["9"] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": lora,
                                                              "strength_model": strength, "strength_clip": strength}}
        model, clip = ["9", 0], ["9", 1]
    prompt.update({
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "x style"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": model, "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 3, "steps": 3, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    })
    info = comfy.run(prompt)["7"]["images"][0]
    return np.asarray(Image.open(comfy_server.output_dir / info["subfolder"] / info["filename"]), dtype=np.int16)


def tool(comfy, class_type, **inputs):
    return comfy.run({"1": {"class_type": class_type, "inputs": inputs}}, timeout=600)["1"]["text"][0]


def test_extract_reproduces_the_tuned_model(comfy, comfy_server, source_lora):
    text = comfy.run({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": source_lora,
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "AtelierExtractLoRA", "inputs": {
            "tuned_model": ["2", 0], "base_model": ["1", 0], "rank": 4, "dynamic_method": "none",
            "dynamic_param": 0.9, "include_convs": False, "min_diff": 0.0, "clamp_quantile": 1.0,
            "method": "randomized", "output_name": "tools_extracted"}},
    }, timeout=600)["3"]["text"][0]
    assert "tools_extracted.safetensors" in text
    log_before = len(comfy_server.log_text())
    tuned = render(comfy, comfy_server, source_lora, prefix="tuned")
    extracted = render(comfy, comfy_server, "atelier/tools_extracted.safetensors", prefix="extracted")
    base = render(comfy, comfy_server, prefix="base")
    assert "lora key not loaded" not in comfy_server.log_text()[log_before:]
    assert np.abs(tuned - base).max() > 0
    assert np.abs(extracted - tuned).max() <= 2, np.abs(extracted - tuned).max()


def test_concat_merge_of_two_halves_equals_the_whole(comfy, comfy_server, source_lora):
    text = tool(comfy, "AtelierMergeLoRAs", lora_1=source_lora, strength_1=0.5, lora_2=source_lora, strength_2=0.5,
                lora_3="(none)", strength_3=1.0, lora_4="(none)", strength_4=1.0, mode="concat", rank=8,
                dynamic_method="none", dynamic_param=0.9, output_name="tools_merged")
    assert "tools_merged.safetensors" in text and "concat" in text
    whole = render(comfy, comfy_server, source_lora, prefix="whole")
    merged = render(comfy, comfy_server, "atelier/tools_merged.safetensors", prefix="merged")
    assert np.abs(whole - merged).max() <= 1


def test_resize_and_inspect(comfy, comfy_server, source_lora):
    text = tool(comfy, "AtelierResizeLoRA", lora=source_lora, rank=2, dynamic_method="none", dynamic_param=0.9,
                output_name="tools_resized")
    assert "tools_resized.safetensors" in text and "%" in text
    report = json.loads(comfy.run({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "AtelierInspectLoRA", "inputs": {"lora": "atelier/tools_resized.safetensors",
                                                             "model": ["1", 0], "clip": ["1", 1]}},
    })["2"]["text"][0])
    assert report["ranks"] == [2] and report["would_load"]["not_loaded"] == 0 and report["would_load"]["checked"] > 0
    assert "SD-style UNet" in report["families"]


def test_lycoris_file_is_refused_in_merges(comfy, comfy_server, source_lora):
    import torch
    from safetensors.torch import save_file

    save_file({"lora_unet_input_blocks_1_1_proj_in.hada_w1_a": torch.zeros(320, 4),
               "lora_unet_input_blocks_1_1_proj_in.hada_w1_b": torch.zeros(4, 320)},
              str(comfy_server.models / "loras" / "loha.safetensors"))
    entry = comfy.wait(comfy.queue({"1": {"class_type": "AtelierMergeLoRAs", "inputs": dict(
        lora_1="loha.safetensors", strength_1=1.0, lora_2=source_lora, strength_2=1.0, lora_3="(none)",
        strength_3=1.0, lora_4="(none)", strength_4=1.0, mode="concat", rank=8, dynamic_method="none",
        dynamic_param=0.9, output_name="tools_bad")}}))
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    assert "not plain LoRA" in err["exception_message"] and "hada_w1_a" in err["exception_message"]


def merge_into_model(comfy, lora, strength=1.0, block_weights="", checkpoint_name=""):
    return comfy.run({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "AtelierMergeLoRAIntoModel", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "checkpoint_name": checkpoint_name,
            "lora_1": lora, "strength_1": strength, "block_weights_1": block_weights,
            **{f"{k}_{i}": v for i in range(2, 5) for k, v in (("lora", "(none)"), ("strength", 1.0),
                                                                ("block_weights", ""))}}},
    }, timeout=600)["2"]["text"][0]


def render_checkpoint(comfy, comfy_server, ckpt, prefix):
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
              "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x style"}},
              "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
              "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0],
                                                         "negative": ["3", 0], "latent_image": ["4", 0], "seed": 3,
                                                         "steps": 3, "cfg": 4.0, "sampler_name": "euler",
                                                         "scheduler": "normal", "denoise": 1.0}},
              "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
              "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}}}
    info = comfy.run(prompt)["7"]["images"][0]
    return np.asarray(Image.open(comfy_server.output_dir / info["subfolder"] / info["filename"]), dtype=np.int16)


def test_merge_into_model_saves_a_checkpoint_equal_to_the_lora_applied(comfy, comfy_server, source_lora):
    from safetensors import safe_open

    text = merge_into_model(comfy, source_lora, checkpoint_name="merged_ckpt")
    path = comfy_server.models / "checkpoints" / "atelier" / "merged_ckpt.safetensors"
    assert str(path) in text and path.exists()
    with safe_open(str(path), "pt") as f:
        assert source_lora in f.metadata()["atelier_merged_loras"]
    with_lora = render(comfy, comfy_server, source_lora, prefix="lora_applied")
    merged = render_checkpoint(comfy, comfy_server, "atelier/merged_ckpt.safetensors", "merged_ckpt")
    assert np.abs(with_lora - merged).max() <= 2


def test_block_weights_zero_everywhere_give_the_base_model(comfy, comfy_server, source_lora):
    # the fixture's one-level UNet has OUT00/OUT01 blocks, which only the 26-value (every block) layout covers
    merge_into_model(comfy, source_lora, block_weights=",".join(["0"] * 26), checkpoint_name="zero_blocks")
    base = render(comfy, comfy_server, prefix="base_for_blocks")
    zero = render_checkpoint(comfy, comfy_server, "atelier/zero_blocks.safetensors", "zero_blocks")
    assert np.abs(base - zero).max() <= 1
    entry = comfy.wait(comfy.queue({"1": {"class_type": "CheckpointLoaderSimple",
                                          "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
                                    "2": {"class_type": "AtelierMergeLoRAIntoModel", "inputs": {
                                        "model": ["1", 0], "clip": ["1", 1], "checkpoint_name": "",
                                        "lora_1": source_lora, "strength_1": 1.0, "block_weights_1": "1,0,1",
                                        **{f"{k}_{i}": v for i in range(2, 5) for k, v in (
                                            ("lora", "(none)"), ("strength", 1.0), ("block_weights", ""))}}}}))
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    assert "17 for SD1.x/SD2.x" in err["exception_message"]
