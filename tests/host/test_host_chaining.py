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

