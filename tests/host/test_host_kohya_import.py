"""A kohya_ss GUI JSON pasted into Train LoRA Advanced's config_json trains exactly as the equivalent widgets."""

import json

import numpy as np
import pytest
from comfy_host import (FIXTURE_CHECKPOINT_NAME, advanced_train_widgets, load_dataset_node, prepare_dataset_node,
                        write_elf_folder)
from safetensors import safe_open

# Shaped like a kohya_ss GUI save: numbers as text, empty strings for unset, keys set elsewhere in the graph.
KOHYA_GUI = {
    "LoRA_type": "Standard", "epoch": "", "max_train_epochs": "", "max_train_steps": 2, "train_batch_size": 2,
    "learning_rate": 0.001, "unet_lr": 0.001, "text_encoder_lr": 0.0001, "network_train_unet_only": True,
    "network_dim": 4, "network_alpha": 2, "optimizer": "AdamW8bit", "optimizer_args": "weight_decay=0.02",
    "lr_scheduler": "cosine", "lr_warmup_steps": 1, "mixed_precision": "no", "seed": "5", "shuffle_caption": True,
    "keep_tokens": "1", "min_snr_gamma": 5, "noise_offset": 0.05, "max_grad_norm": 1, "min_timestep": 0,
    "max_timestep": 1000, "save_every_n_epochs": 0, "output_name": "ignored", "cache_latents": True,
    "xformers": "xformers",
}
# The same run typed into the widgets.
EQUIVALENT = dict(epochs=10, max_steps=2, batch_size=2, unet_lr=1e-3, te_lr=1e-4, train_text_encoder=False, rank=4,
                  alpha=2.0, optimizer="adamw", weight_decay=0.02, scheduler="cosine", warmup_steps=1,
                  precision="fp32", seed=5, caption_shuffle=True, keep_tokens=1, min_snr_gamma=5.0, noise_offset=0.05,
                  max_grad_norm=1.0, save_every_epochs=0)


@pytest.fixture(scope="module")
def kohya_folder(comfy_server):
    return write_elf_folder(comfy_server.input_dir / "kohya_host" / "2_elf", 2, seed=5)


def advanced_prompt(output_name, **overrides):
    widgets = advanced_train_widgets(output_name, **overrides)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": load_dataset_node("input/kohya_host", repeats=0, subset_name="elf", verify_images=True),
        "3": prepare_dataset_node(["2", 0]),
        "4": {"class_type": "AtelierTrainLoRAAdvanced", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["3", 0], **widgets}},
    }


def tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_kohya_json_trains_as_the_equivalent_widgets(comfy, comfy_server, kohya_folder):
    widgets = json.loads(comfy.run(advanced_prompt("kohya_widgets", **EQUIVALENT), timeout=600)["4"]["text"][0])
    # the widgets differ on purpose: the imported config replaces them (rank and alpha too)
    imported = json.loads(comfy.run(advanced_prompt("kohya_json", epochs=99, rank=8, alpha=8.0, seed=1,
                                                    config_json=json.dumps(KOHYA_GUI)), timeout=600)["4"]["text"][0])
    assert imported["config"] == widgets["config"]
    assert imported["network"] == widgets["network"]
    assert imported["steps"] == widgets["steps"] == 2
    report = imported["config_import"]
    assert report["unknown"] == ["xformers"]
    assert report["no_equivalent"]["output_name"] == "set with the output_name widget"
    assert report["mapped"]["network_dim"] == "rank" and "epoch" in report["off"]
    assert imported["kohya_config"]["network_dim"] == 4 and imported["kohya_config"]["max_train_steps"] == 2
    assert "config_import" not in widgets
    loras = comfy_server.models / "loras" / "atelier"
    a, b = tensors(loras / "kohya_widgets.safetensors"), tensors(loras / "kohya_json.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_sd_scripts_toml_with_a_bad_value_names_the_key(comfy, comfy_server, kohya_folder):
    toml = "[training_arguments]\nmax_train_steps = 2\ntrain_batch_size = 2\n\n[optimizer_arguments]\n" \
           "optimizer_type = \"Prodigy\"\n"
    entry = comfy.wait(comfy.queue(advanced_prompt("kohya_bad", config_json=toml)), timeout=300)
    assert entry["status"]["status_str"] == "error", entry["status"]
    error = next(m[1]["exception_message"] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert "kohya key 'optimizer_type' = 'Prodigy' has no equivalent here" in error
