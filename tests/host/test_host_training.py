"""LoRA training through a real ComfyUI server on the fixture SD1.5 checkpoint at 64²."""

import re

import numpy as np
import pytest
from comfy_host import (FIXTURE_CHECKPOINT_NAME, advanced_train_widgets, load_dataset_node, prepare_dataset_node,
                        saved_pixels, txt2img_prompt, write_elf_folder)
from PIL import Image
from safetensors import safe_open


@pytest.fixture(scope="module")
def train_folder(comfy_server):
    return write_elf_folder(comfy_server.input_dir / "train_host" / "10_elf", 4, seed=3)


def train_prompt(output_name, **overrides):
    widgets = dict(output_name=output_name, rank=4, alpha=4.0, unet_lr=1e-3, epochs=1, max_steps=10, batch_size=2,
                   train_text_encoder=True, te_lr=1e-4, seed=0)
    widgets.update(overrides)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": load_dataset_node("input/train_host", repeats=0, subset_name="elf", verify_images=True),
        "3": prepare_dataset_node(["2", 0]),
        "4": {"class_type": "AtelierTrainLoRA", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                           "dataset": ["3", 0], **widgets}},
    }


def sample_prompt(lora=None, strength=1.0, prefix="s"):
    return txt2img_prompt("blonde elf, pose 1", seed=7, prefix=prefix, lora=lora, strength=strength)


def test_train_with_te_lora_save_and_load_in_stock_lora_loader(comfy, comfy_server, train_folder):
    out = comfy.run(train_prompt("host_lora"), timeout=600)
    report = out["4"]["text"][0]
    assert '"steps": 10' in report
    path = comfy_server.models / "loras" / "atelier" / "host_lora.safetensors"
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in keys)
    assert any(k.startswith("lora_unet_") and "transformer_blocks" in k for k in keys)
    assert meta["ss_network_dim"] == "4" and meta["ss_steps"] == "10" and meta["ss_output_name"] == "host_lora"
    assert '"10_elf"' in meta["ss_dataset_dirs"] and "blonde elf" in meta["ss_tag_frequency"]

    log_before = len(comfy_server.log_text())
    base = saved_pixels(comfy_server, comfy.run(sample_prompt(prefix="base")))
    with_lora = saved_pixels(comfy_server, comfy.run(sample_prompt("atelier/host_lora.safetensors", 1.0, "lora1")))
    zero = saved_pixels(comfy_server, comfy.run(sample_prompt("atelier/host_lora.safetensors", 0.0, "lora0")))
    assert "lora key not loaded" not in comfy_server.log_text()[log_before:]
    assert np.abs(with_lora - base).max() > 0, "the trained LoRA changed nothing"
    assert np.array_equal(zero, base), "strength 0 must equal the base model"


def test_bad_output_names_are_refused(comfy, train_folder):
    for name in ("../escape", "sub/dir", "..", ""):
        entry = comfy.wait(comfy.queue(train_prompt(name, max_steps=1)))
        err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
        assert "output_name" in err["exception_message"], err["exception_message"]


def test_interrupt_mid_run_leaves_a_loadable_lora(comfy, comfy_server, train_folder):
    prompt_id = comfy.queue(train_prompt("host_interrupted", max_steps=400, train_text_encoder=False))
    event = comfy.wait_for_event("atelier.train.step", timeout=180, predicate=lambda d: d.get("step", 0) >= 2)
    assert event["total"] == 400 and event["loss"] >= 0 and event["lr"] > 0
    comfy.interrupt()
    entry = comfy.wait(prompt_id, timeout=300)
    assert entry["status"]["status_str"] == "error"  # ComfyUI reports the run as interrupted
    # where it stopped reaches the error dialog and /history in every version (an interrupt's own text is dropped)
    err = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"][0]
    assert re.search(r"Training stopped at step \d+ of 400 because it was cancelled", err["exception_message"])
    path = comfy_server.models / "loras" / "atelier" / "host_interrupted.safetensors"
    assert path.exists(), "no LoRA was saved when the run was interrupted"
    with safe_open(str(path), "pt") as f:
        steps = int(f.metadata()["ss_steps"])
    assert 2 <= steps < 400
    state = comfy_server.output_dir / "atelier" / "train_state" / "host_interrupted" / "state.json"
    assert state.exists() and f'"step": {steps}' in state.read_text()
    loaded = comfy.run(sample_prompt("atelier/host_interrupted.safetensors", 1.0, "intr"))
    assert saved_pixels(comfy_server, loaded).shape == (64, 64, 3)


def advanced_prompt(output_name, **overrides):
    widgets = advanced_train_widgets(output_name, **{"max_steps": 6, "batch_size": 2, "min_snr_gamma": 5.0,
                                                     "noise_offset": 0.05, "cache_latents": True, **overrides})
    prompt = train_prompt(output_name)
    prompt["4"] = {"class_type": "AtelierTrainLoRAAdvanced", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["3", 0], **widgets}}
    return prompt


def lora_tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_resumed_run_equals_an_uninterrupted_one(comfy, comfy_server, train_folder):
    import json

    loras = comfy_server.models / "loras" / "atelier"
    comfy.run(advanced_prompt("adv_full", max_steps=6), timeout=600)
    out = comfy.run(advanced_prompt("adv_part", max_steps=3), timeout=600)
    assert json.loads(out["4"]["text"][0])["latent_cache"] == {"hits": 4, "misses": 0}  # adv_full encoded them
    first_half = lora_tensors(loras / "adv_part.safetensors")
    comfy.run(advanced_prompt("adv_part", max_steps=6, resume_state="adv_part"), timeout=600)
    full, resumed = lora_tensors(loras / "adv_full.safetensors"), lora_tensors(loras / "adv_part.safetensors")
    assert full.keys() == resumed.keys()
    assert all(torch_equal(full[k], resumed[k]) for k in full), "resume did not continue the same run"
    assert not all(torch_equal(first_half[k], resumed[k]) for k in full)

    entry = comfy.wait(comfy.queue(advanced_prompt("adv_part", max_steps=9, resume_state="adv_part", unet_lr=5e-4)))
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    assert "unet_lr: saved 0.001, now 0.0005" in err["exception_message"]


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_epoch_saves_keep_last_and_config_json(comfy, comfy_server, train_folder):
    import json

    out = comfy.run(advanced_prompt("adv_epochs", epochs=3, max_steps=0, batch_size=8, save_every_epochs=1,
                                    keep_last=1), timeout=600)
    loras = comfy_server.models / "loras" / "atelier"
    assert sorted(p.name for p in loras.glob("adv_epochs*")) == ["adv_epochs-000002.safetensors",
                                                                 "adv_epochs.safetensors"]
    report = json.loads(out["4"]["text"][0])
    assert report["steps"] == 15 and report["config"]["save_every_epochs"] == 1  # 4 images × 10 repeats / 8
    with safe_open(str(loras / "adv_epochs-000002.safetensors"), "pt") as f:
        assert f.metadata()["ss_epoch"] == "2"
    # the report's config drives a new run through config_json (widgets ignored)
    again = comfy.run(advanced_prompt("adv_json", epochs=99, config_json=json.dumps(
        {"config": {**report["config"], "epochs": 1, "save_every_epochs": 0}})), timeout=600)
    assert json.loads(again["4"]["text"][0])["steps"] == 5


def test_step_saves_inside_an_epoch_are_each_kept_and_loadable(comfy, comfy_server, train_folder):
    """save_every_steps inside an epoch: every step file and every epoch file is there (none overwritten), each
    loads in stock LoraLoader with zero unloaded keys, and each records its own step."""
    import json

    out = comfy.run(advanced_prompt("adv_steps", epochs=2, max_steps=0, batch_size=8, save_every_steps=2,
                                    save_every_epochs=1), timeout=600)
    report = json.loads(out["4"]["text"][0])
    assert report["steps"] == 10  # 40 samples per epoch / 8
    loras = comfy_server.models / "loras" / "atelier"
    names = sorted(p.name for p in loras.glob("adv_steps*"))
    assert names == sorted(["adv_steps.safetensors", "adv_steps-000001.safetensors"]
                           + [f"adv_steps-step{s:08d}.safetensors" for s in (2, 4, 6, 8)])
    assert report["saved"][-1] == "models/loras/atelier/adv_steps.safetensors"
    steps = {}
    for name in names:
        with safe_open(str(loras / name), "pt") as f:
            steps[name] = (f.metadata()["ss_steps"], f.metadata()["ss_epoch"])
    assert steps["adv_steps-step00000004.safetensors"] == ("4", "1")
    assert steps["adv_steps-000001.safetensors"] == ("5", "1")
    assert steps["adv_steps.safetensors"] == ("10", "2")
    log_before = len(comfy_server.log_text())
    for name in names:
        comfy.run(sample_prompt(f"atelier/{name}", 1.0, f"load_{name[:-12]}"))
    assert "lora key not loaded" not in comfy_server.log_text()[log_before:]


def test_continue_from_a_lora_of_another_architecture_lists_the_keys(comfy, comfy_server, train_folder):
    import torch
    from safetensors.torch import save_file

    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 3072),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(9216, 4)},
              str(comfy_server.models / "loras" / "flux_style.safetensors"))
    entry = comfy.wait(comfy.queue(advanced_prompt("adv_cont", continue_from="flux_style.safetensors")))
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    assert "lora_unet_double_blocks_0_img_attn_qkv" in err["exception_message"], err["exception_message"]


def test_samples_during_training_use_comfyui_sampler(comfy, comfy_server, train_folder):
    import json

    out = comfy.run(advanced_prompt("adv_samples", max_steps=4, sample_every_steps=2,
                                    sample_prompts="blonde elf\na cat"), timeout=600)
    report = json.loads(out["4"]["text"][0])
    folder = comfy_server.output_dir / "atelier" / "samples" / "adv_samples"
    names = sorted(p.name for p in folder.glob("*.png"))
    assert names == ["e0000_s000002_00.png", "e0000_s000002_01.png", "e0000_s000004_00.png", "e0000_s000004_01.png"]
    assert len(report["samples"]) == 4 and Image.open(folder / names[0]).size == (64, 64)
    first, later = (np.asarray(Image.open(folder / n), dtype=np.int16) for n in (names[0], names[2]))
    assert np.abs(first - later).max() > 0  # same seed and prompt: only the weights changed between them
    # with block swap the previews are drawn while the blocks are swapped out: the same pictures
    comfy.run(advanced_prompt("adv_samples_swap", max_steps=4, sample_every_steps=2, blocks_to_swap=6,
                              sample_prompts="blonde elf\na cat"), timeout=600)
    swapped = comfy_server.output_dir / "atelier" / "samples" / "adv_samples_swap"
    assert sorted(p.name for p in swapped.glob("*.png")) == names
    for name in names:
        a, b = (np.asarray(Image.open(f / name), dtype=np.int16) for f in (folder, swapped))
        assert np.abs(a - b).max() <= 2, name


def test_gradient_checkpointing_and_block_swap_give_the_same_lora(comfy, comfy_server, train_folder):
    import json

    loras = comfy_server.models / "loras" / "atelier"
    comfy.run(advanced_prompt("adv_gc_off", max_steps=2), timeout=600)
    comfy.run(advanced_prompt("adv_gc_on", max_steps=2, gradient_checkpointing=True), timeout=600)
    out = comfy.run(advanced_prompt("adv_swap", max_steps=2, blocks_to_swap=5), timeout=600)
    off, on = lora_tensors(loras / "adv_gc_off.safetensors"), lora_tensors(loras / "adv_gc_on.safetensors")
    swapped = lora_tensors(loras / "adv_swap.safetensors")
    assert off.keys() == on.keys() == swapped.keys()
    assert all((off[k].float() - on[k].float()).abs().max() < 1e-3 for k in off)  # fp16 files; same maths
    assert all((off[k].float() - swapped[k].float()).abs().max() < 1e-3 for k in off)  # block swap: same maths
    note = json.loads(out["4"]["text"][0])["block_swap"]
    assert note["blocks"] == 5 and note["of"] > 5 and note["offloaded_mib"] > 0 and "saves no memory" in note["note"]


def test_blocks_to_swap_above_the_models_blocks_is_refused(comfy, comfy_server, train_folder):
    entry = comfy.wait(comfy.queue(advanced_prompt("adv_swap_many", max_steps=1, blocks_to_swap=199)), 600)
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]["exception_message"]
    assert "blocks_to_swap is 199 but this model has" in err and "set blocks_to_swap to at most" in err
    assert not (comfy_server.models / "loras" / "atelier" / "adv_swap_many.safetensors").exists()


def test_targeting_rank_overrides_and_ema_weights_are_what_is_shipped(comfy, comfy_server, train_folder):
    import json

    out = comfy.run(advanced_prompt("adv_target", max_steps=3, target_patterns="attn2", rank_overrides="to_k = 2/1",
                                    ema_decay=0.5), timeout=600)
    tensors = lora_tensors(comfy_server.models / "loras" / "atelier" / "adv_target.safetensors")
    modules = {k.split(".")[0] for k in tensors}
    assert modules and all("attn2" in m for m in modules)  # only cross-attention adapted
    assert tensors[next(k for k in tensors if "to_k" in k and k.endswith("lora_down.weight"))].shape[0] == 2
    assert tensors[next(k for k in tensors if "to_q" in k and k.endswith("lora_down.weight"))].shape[0] == 4
    with safe_open(str(comfy_server.models / "loras" / "atelier" / "adv_target.safetensors"), "pt") as f:
        meta = f.metadata()
    assert len(meta["ss_sd_model_hash"]) == 8 and '"rank_overrides": [["to_k", 2, 1.0]]' in meta["ss_network_args"]
    state = comfy_server.output_dir / "atelier" / "train_state" / "adv_target"
    from safetensors.torch import load_file

    raw, ema = load_file(str(state / "lora.safetensors")), load_file(str(state / "ema.safetensors"))
    key = next(k for k in tensors if k.endswith("lora_up.weight"))
    assert not torch_equal(raw[key].half(), tensors[key])  # the shipped file holds the EMA average, not the raw weights
    assert json.loads(out["4"]["text"][0])["steps"] == 3 and ema


def test_advanced_widget_names_are_the_config_fields(comfy):
    """A workflow JSON reads like the Python call: every TrainConfig and NetworkConfig field is a widget of the same
    name on the Advanced node."""
    import dataclasses

    from atelier.trainers.loop import TrainConfig
    from atelier.trainers.network import NetworkConfig

    info = comfy.object_info()["AtelierTrainLoRAAdvanced"]["input"]
    widgets = set(info["required"]) | set(info.get("optional", {}))
    fields = {f.name for cls in (TrainConfig, NetworkConfig) for f in dataclasses.fields(cls)}
    assert fields - widgets == set()


def test_a_second_run_of_an_unchanged_graph_trains_nothing(comfy, comfy_server, train_folder):
    """Queued twice, the same graph is served from ComfyUI's cache: no second training, the LoRA file untouched."""
    prompt = train_prompt("host_twice", max_steps=2, train_text_encoder=False)
    comfy.run(prompt, timeout=600)
    path = comfy_server.models / "loras" / "atelier" / "host_twice.safetensors"
    stamp = path.stat().st_mtime_ns
    entry = comfy.wait(comfy.queue(prompt), timeout=600)
    cached = [m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached"]
    assert entry["status"]["status_str"] == "success" and cached and "4" in cached[0]
    assert path.stat().st_mtime_ns == stamp


def report_of(outputs: dict, node: str = "4") -> dict:
    import json

    return json.loads(outputs[node]["text"][0])


def test_after_a_restart_a_finished_run_is_reused_and_a_change_trains_again(comfy, comfy_server, train_folder):
    """ComfyUI's cache is gone after a restart; the file's recorded identity makes the node load it instead of
    training again (file untouched, the run's step files still offered); changed data or reuse off train anew."""
    loras = comfy_server.models / "loras" / "atelier"
    prompt = advanced_prompt("host_reuse", max_steps=2, save_every_steps=1, cache_latents=False)
    first = report_of(comfy.run(prompt, timeout=600))
    assert first["reuse"].startswith("trained (no earlier file")
    final = loras / "host_reuse.safetensors"
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in loras.glob("host_reuse*.safetensors")}
    assert len(stamps) == 2  # the step-1 save and the final file (the last step is the final file)

    comfy_server.stop()
    comfy_server.client = comfy_server.start()  # same port: `comfy` keeps working
    again = comfy.run(prompt, timeout=600)
    report = report_of(again)
    assert report["reuse"].startswith("reused models/loras/atelier/host_reuse.safetensors") and "nothing was trained" \
        in report["reuse"]
    assert report["steps"] == 2 and report["losses"] == first["losses"] and len(report["saved"]) == 2
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in loras.glob("host_reuse*.safetensors")} == stamps

    changed = advanced_prompt("host_reuse", max_steps=2, save_every_steps=1, cache_latents=False, seed=4)
    report = report_of(comfy.run(changed, timeout=600))
    assert report["reuse"].startswith("trained (the existing file was not reused: the training settings changed")
    assert final.read_bytes() != stamps[final.name][1]

    report = report_of(comfy.run({**changed, "4": {**changed["4"], "inputs": {**changed["4"]["inputs"],
                                                                              "reuse": False}}}, timeout=600))
    assert report["reuse"].startswith("trained (reuse is off)")
