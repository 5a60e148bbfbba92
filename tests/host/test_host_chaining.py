"""One queued prompt trains a LoRA and compares its epochs: the training node's lora_files output feeds the XY Grid
and the LoRA tools, which ComfyUI runs after the training because they are linked to it."""

import json

import numpy as np
import pytest
from comfy_host import (FIXTURE_CHECKPOINT_NAME, advanced_train_widgets, load_dataset_node, prepare_dataset_node,
                        write_elf_folder)
from PIL import Image


@pytest.fixture(scope="module")
def chain_folder(comfy_server):
    return write_elf_folder(comfy_server.input_dir / "chain_host" / "10_elf", 4, seed=5)


def chain_prompt(output_name: str) -> dict:
    """Load → Prepare → Train LoRA Advanced (3 epochs, a file per epoch) → XY Grid over the run's files × strength,
    and Inspect LoRA on the run's final file, all linked in one graph."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": load_dataset_node("input/chain_host", repeats=0, subset_name="elf", verify_images=True),
        "3": prepare_dataset_node(["2", 0]),
        "4": {"class_type": "AtelierTrainLoRAAdvanced", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["3", 0],
            **advanced_train_widgets(output_name, epochs=3, max_steps=0, batch_size=8, save_every_epochs=1)}},
        "5": {"class_type": "AtelierXYGrid", "inputs": dict(
            model=["1", 0], clip=["1", 1], vae=["1", 2], lora_files=["4", 4], positive="blonde elf", negative="",
            x_kind="strength", x_values="0.5,1", y_kind="lora", y_values="", lora="(none)", strength=1.0,
            baseline="none", seed=1, steps=2, cfg=4.0, sampler="euler", scheduler="normal", denoise=1.0, width=64,
            height=64, grid_name="chain", batch_size=4, resume=False)},
        "6": {"class_type": "AtelierInspectLoRA", "inputs": {"lora": "(none)", "lora_files": ["4", 4]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["5", 2], "filename_prefix": "chain_cells"}},
    }


def test_one_prompt_trains_then_grids_every_epoch_file_by_strength(comfy, comfy_server, chain_folder):
    from atelier.core.grid import read_png_metadata  # the PNG is read directly, as any script would

    log_before = len(comfy_server.log_text())
    out = comfy.run(chain_prompt("chain"), timeout=900)
    assert json.loads(out["4"]["text"][0])["steps"] == 15  # 4 images × 10 repeats / 8 per step × 3 epochs

    meta = read_png_metadata(comfy_server.file(out["5"]["text"][0]))
    y = meta["axes"]["y"]
    assert list(y.values) == ["atelier/chain-000001.safetensors", "atelier/chain-000002.safetensors",
                              "atelier/chain.safetensors"]  # every epoch file of the run, then the final file
    assert y.labels() == ["epoch 1", "epoch 2", "final (epoch 3)"]  # from ss_epoch, not the file names
    assert list(meta["axes"]["x"].values) == [0.5, 1.0]
    assert len(meta["cells"]) == 6 and "lora key not loaded" not in comfy_server.log_text()[log_before:]

    cells = [np.asarray(Image.open(comfy_server.output_dir / i["subfolder"] / i["filename"]), dtype=np.int16)
             for i in out["7"]["images"]]
    assert len(cells) == 6  # rows epoch 1, epoch 2, final; columns 0.5, 1
    assert np.abs(cells[1] - cells[5]).max() > 0, "epoch 1 and the final file drew the same image at strength 1"

    report = json.loads(out["6"]["text"][0])  # Inspect LoRA ran on the run's final file, after the training
    assert report["file"] == "atelier/chain.safetensors" and report["metadata"]["ss_epoch"] == "3"

    # 'run 2-3' keeps the files saved in epochs 2 and 3 (the training itself comes from ComfyUI's cache)
    later = chain_prompt("chain")
    later["5"]["inputs"].update(y_values="run 2-3", grid_name="chain_late")
    del later["6"], later["7"]
    y = read_png_metadata(comfy_server.file(comfy.run(later, timeout=900)["5"]["text"][0]))["axes"]["y"]
    assert list(y.values) == ["atelier/chain-000002.safetensors", "atelier/chain.safetensors"]
    assert y.labels() == ["epoch 2", "final (epoch 3)"]
    later["5"]["inputs"].update(y_values="run 7-9")
    entry = comfy.wait(comfy.queue(later), timeout=300)
    error = next(m[1]["exception_message"] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert "epochs 7-9, but the run saved files of epochs 1, 2, 3" in error



def compare_prompt(output_name: str) -> dict:
    """Load → Prepare → a few training steps → Side by Side (A: the run's final file, B: the base model) and Real vs
    Generated on the same run, all linked in one graph."""
    sampling = dict(seed=1, steps=2, cfg=4.0, sampler="euler", scheduler="normal", width=64, height=64,
                    batch_size=4, resume=False)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": load_dataset_node("input/chain_host", repeats=0, subset_name="elf", verify_images=True),
        "3": prepare_dataset_node(["2", 0]),
        "4": {"class_type": "AtelierTrainLoRAAdvanced", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["3", 0],
            **advanced_train_widgets(output_name, epochs=1, max_steps=3, batch_size=4, unet_lr=1e-2)}},
        "5": {"class_type": "AtelierCompareSideBySide", "inputs": dict(
            model=["1", 0], clip=["1", 1], vae=["1", 2], prompts="blonde elf", lora_a="(none)", strength_a=1.0,
            negative_a="", lora_b="(none)", strength_b=1.0, negative_b="", checkpoint_b="(none)", seeds=1,
            grid_name="chain_sbs", lora_files_a=["4", 4], **sampling)},
        "6": {"class_type": "AtelierCompareRealGenerated", "inputs": dict(
            model=["1", 0], clip=["1", 1], vae=["1", 2], dataset=["3", 0], count=1, lora="(none)", strength=1.0,
            prefix="", include_base=False, negative="", grid_name="chain_rvg", lora_files=["4", 4], **sampling)},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["5", 2], "filename_prefix": "chain_sbs_cells"}},
    }


def test_one_prompt_trains_then_compares_side_by_side(comfy, comfy_server, chain_folder):
    from atelier.core.grid import read_png_metadata

    out = comfy.run(compare_prompt("chain_sbs"), timeout=900)
    assert json.loads(out["4"]["text"][0])["steps"] == 3

    meta = read_png_metadata(comfy_server.file(out["5"]["text"][0]))
    loras = [cell["settings"]["loras"] for cell in meta["cells"]]
    assert loras == [[["atelier/chain_sbs.safetensors", 1.0]], []]  # A: the run's final file; B: the base model
    a, b = (np.asarray(Image.open(comfy_server.output_dir / i["subfolder"] / i["filename"]), dtype=np.int16)
            for i in out["7"]["images"])
    assert np.abs(a - b).max() > 0, "side A (the trained LoRA) drew the same image as side B (the base model)"

    meta = read_png_metadata(comfy_server.file(out["6"]["text"][0]))  # Real vs Generated ran on the same run
    assert meta["axes"]["x"].labels() == ["real", "chain_sbs · final (epoch 1) @ 1"]  # epoch from ss_epoch
    assert meta["cells"][0]["settings"]["loras"] == [["atelier/chain_sbs.safetensors", 1.0]]


def test_a_value_that_is_not_a_training_run_is_refused_by_name(comfy, comfy_server):
    prompt = compare_prompt("unused")
    side = prompt["5"]
    side["inputs"] = {**side["inputs"], "lora_files_a": "atelier/chain_sbs.safetensors"}  # a raw string
    entry = comfy.wait(comfy.queue({"1": prompt["1"], "5": side}))
    message = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]["exception_message"]
    assert ("lora_files_a expects the 'lora_files' output of a Train LoRA node; got str. Connect a training node's "
            "lora_files output to lora_files_a") in message
