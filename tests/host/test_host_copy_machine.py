"""The copy-machine flow through a real server in ONE queued prompt (the "classic" variant of issue 14): render with
the checkpoint, turn that render into a dataset, train a copier on it, train the target on checkpoint + copier with
the render as regularisation, render again with the ORIGINAL model; then the shipped file alone on stock LoraLoader."""

import hashlib
import json

import pytest
import torch
from comfy_host import (FIXTURE_CHECKPOINT_NAME, ComfyError, load_dataset_node, prepare_dataset_node, saved_pixels,
                        txt2img_prompt, write_elf_folder)
from safetensors import safe_open
from safetensors.torch import save_file

NAN = float("nan")


@pytest.fixture(scope="module")
def target_folder(comfy_server):
    return write_elf_folder(comfy_server.input_dir / "copy_machine_host" / "2_elf", 2, seed=7)


def copy_machine_node(dataset, **widgets) -> dict:
    inputs = dict(model=["1", 0], clip=["1", 1], vae=["1", 2], dataset=dataset, output_name="cm_target",
                  copier_1="(none)", copier_strength_1=1.0, copier_2="(none)", copier_strength_2=1.0,
                  copier_3="(none)", copier_strength_3=1.0, rank=4, alpha=2.0, unet_lr=1e-3, epochs=1, max_steps=2,
                  batch_size=1, train_text_encoder=False, te_lr=2e-5, seed=0, prior_loss_weight=1.0, reg_repeats=1,
                  reuse=False)
    return {"class_type": "AtelierTrainCopyMachine", "inputs": {**inputs, **widgets}}


def classic_prompt() -> dict:
    """txt2img (nodes 1-7) → Images to Dataset → Train LoRA (copier) → Copy-Machine (target on elf images, the
    render as regularisation) → the same txt2img on the original model, its latent made after the training."""
    prompt = txt2img_prompt("blonde elf", seed=5, prefix="cm_before")
    prompt.update({
        "10": {"class_type": "AtelierImagesToDataset", "inputs": {
            "images": ["6", 0], "captions": "own style", "subset_name": "own", "role": "train", "repeats": 1}},
        "11": {"class_type": "AtelierTrainLoRA", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["10", 0], "output_name": "cm_copier",
            "rank": 4, "alpha": 4.0, "unet_lr": 5e-2, "epochs": 1, "max_steps": 2, "batch_size": 1,
            "train_text_encoder": False, "te_lr": 1e-4, "seed": 0, "reuse": False}},
        "12": load_dataset_node("input/copy_machine_host", repeats=0, subset_name="elf"),
        "13": prepare_dataset_node(["12", 0]),
        "14": copy_machine_node(["13", 0], copier_files=["11", 4], regularization=["10", 0]),
        # an all-zero latent like EmptyLatentImage's, but made from the copy-machine's chart, so it runs after it
        "15": {"class_type": "ImageScale", "inputs": {"image": ["14", 2], "upscale_method": "nearest-exact",
                                                      "width": 64, "height": 64, "crop": "disabled"}},
        "16": {"class_type": "VAEEncode", "inputs": {"pixels": ["15", 0], "vae": ["1", 2]}},
        "17": {"class_type": "LatentMultiply", "inputs": {"samples": ["16", 0], "multiplier": 0.0}},
        "18": {"class_type": "KSampler", "inputs": {**prompt["5"]["inputs"], "latent_image": ["17", 0]}},
        "19": {"class_type": "VAEDecode", "inputs": {"samples": ["18", 0], "vae": ["1", 2]}},
        "20": {"class_type": "SaveImage", "inputs": {"images": ["19", 0], "filename_prefix": "cm_after"}},
    })
    return prompt


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_copy_machine_in_one_prompt_ships_the_target_alone_and_leaves_the_model_untouched(comfy, comfy_server,
                                                                                          target_folder):
    out = comfy.run(classic_prompt(), timeout=900)
    before = saved_pixels(comfy_server, out)
    after = saved_pixels(comfy_server, {"7": out["20"]})
    assert before.shape == after.shape and (before == after).all(), "the original model renders differently"

    loras = comfy_server.models / "loras" / "atelier"
    target, copier = loras / "cm_target.safetensors", loras / "cm_copier.safetensors"
    with safe_open(str(target), "pt") as f:
        meta, shipped = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    with safe_open(str(copier), "pt") as f:
        copier_tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert set(shipped) == set(copier_tensors)  # the same default layers, the target's own tensors only
    assert not any(torch.equal(shipped[k], copier_tensors[k]) for k in shipped if not k.endswith(".alpha"))
    assert meta["ss_sd_model_name"] == FIXTURE_CHECKPOINT_NAME
    assert meta["ss_new_sd_model_hash"] == sha256_of(comfy_server.models / "checkpoints" / FIXTURE_CHECKPOINT_NAME)
    (record,) = json.loads(meta["atelier_base_weights"])
    assert record["name"] == "atelier/cm_copier.safetensors" and record["strength"] == 1.0
    assert record["sha256"] == sha256_of(copier) and record["source"] == "run"
    assert record["addnet_hash"] == meta_of(copier)["sshs_model_hash"]  # kohya's hash, as A1111 shows it
    assert json.loads(meta["atelier_objective"])["method"] == "copy_machine"
    assert meta["ss_num_reg_images"] == "1" and "own" in meta["ss_reg_dataset_dirs"]
    report = json.loads(out["14"]["text"][0])
    assert report["steps"] == 2 and report["copy_machine"]["copiers"][0]["name"] == record["name"]

    log_before = len(comfy_server.log_text())
    comfy.run(txt2img_prompt("blonde elf", seed=5, prefix="cm_ship", lora="atelier/cm_target.safetensors"))
    assert "lora key not loaded" not in comfy_server.log_text()[log_before:]


def meta_of(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def failure(comfy, prompt) -> str:
    """The error of a prompt that must fail: the node's exception or the server's validation refusal."""
    try:
        prompt_id = comfy.queue(prompt)
    except ComfyError as e:
        return "refused: " + json.dumps(e.body)
    entry = comfy.wait(prompt_id, timeout=300)
    assert entry["status"]["status_str"] == "error", "the prompt ran"
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    return f"{err['exception_type']}: {err['exception_message']}"


@pytest.fixture(scope="module")
def foreign_copier(comfy_server):
    """An SDXL-shaped LoRA (te1 / te2 keys): made for another architecture than the SD1.5 fixture."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for te, width in (("te1", 768), ("te2", 1280)):
        base = f"lora_{te}_text_model_encoder_layers_0_self_attn_q_proj"
        tensors.update({f"{base}.lora_down.weight": torch.randn(4, width, generator=g) * 0.01,
                        f"{base}.lora_up.weight": torch.randn(width, 4, generator=g) * 0.01,
                        f"{base}.alpha": torch.tensor(4.0)})
    path = comfy_server.models / "loras" / "cm_bad" / "sdxl_copier.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return "cm_bad/sdxl_copier.safetensors"


def bad_prompt(**widgets) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
            "12": load_dataset_node("input/copy_machine_host", repeats=0, subset_name="elf"),
            "13": prepare_dataset_node(["12", 0]),
            "14": copy_machine_node(["13", 0], output_name="cm_bad", **widgets)}


def test_bad_copiers_get_clear_errors_and_nothing_is_trained(comfy, comfy_server, target_folder, foreign_copier):
    message = failure(comfy, bad_prompt(copier_1=foreign_copier))
    assert message.startswith("ValueError: ") and f"LoRA '{foreign_copier}'" in message, message
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj" in message, message  # names the keys
    message = failure(comfy, bad_prompt(copier_1=foreign_copier, copier_strength_1=NAN))
    assert message.startswith("ValueError: copier_strength_1 (copier 'cm_bad/sdxl_copier.safetensors') is nan"), \
        message
    message = failure(comfy, bad_prompt(copier_1=foreign_copier, copier_strength_1=1e9))
    assert message.startswith("refused: ") and "copier_strength_1" in message, message
    message = failure(comfy, bad_prompt())
    assert message.startswith("ValueError: No copier chosen"), message
    assert str(comfy_server.workdir) not in message
    assert not (comfy_server.models / "loras" / "atelier" / "cm_bad.safetensors").exists()
