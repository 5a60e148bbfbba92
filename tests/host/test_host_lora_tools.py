"""LoRA tools through a real ComfyUI server: extract, merge, resize, inspect on the fixture checkpoint."""

import json

import numpy as np
from comfy_host import FIXTURE_CHECKPOINT_NAME
from comfy_host import render as render_txt2img


def render(comfy, comfy_server, lora=None, strength=1.0, prefix="t"):
    return render_txt2img(comfy, comfy_server, "x style", seed=3, prefix=prefix, lora=lora, strength=strength)


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
    return render_txt2img(comfy, comfy_server, "x style", seed=3, prefix=prefix, ckpt=ckpt)


def test_merge_into_model_saves_a_checkpoint_equal_to_the_lora_applied(comfy, comfy_server, source_lora):
    from safetensors import safe_open

    text = merge_into_model(comfy, source_lora, checkpoint_name="merged_ckpt")
    path = comfy_server.models / "checkpoints" / "atelier" / "merged_ckpt.safetensors"
    assert "models/checkpoints/atelier/merged_ckpt.safetensors" in text and path.exists()
    assert str(comfy_server.workdir) not in text  # the report names no server path
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
