"""Comparison grids through a real ComfyUI server on the fixture checkpoint."""

import pytest
from comfy_host import FIXTURE_CHECKPOINT_NAME
from PIL import Image


@pytest.fixture(scope="module")
def epoch_loras(comfy_server, source_lora):
    """Three 'epoch' LoRAs (scaled copies of the session's trained LoRA), named so that natural order matters."""
    import torch
    from safetensors.torch import load_file, save_file

    src = load_file(str(comfy_server.models / "loras" / source_lora))
    out = comfy_server.models / "loras" / "grid_epochs"
    out.mkdir(exist_ok=True)
    for epoch, scale in ((10, 2.0), (2, 1.0), (1, 0.5)):
        save_file({k: (v * scale if "lora_up" in k else v).to(torch.float16) if v.ndim else v for k, v in src.items()},
                  str(out / f"epoch-{epoch}.safetensors"))
    return ["grid_epochs/epoch-1.safetensors", "grid_epochs/epoch-2.safetensors", "grid_epochs/epoch-10.safetensors"]


def test_epoch_by_strength_grid_with_baseline(comfy, comfy_server, epoch_loras):
    log_before = len(comfy_server.log_text())
    out = comfy.run({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "AtelierXYGrid", "inputs": dict(
            model=["1", 0], clip=["1", 1], vae=["1", 2], positive="x style", negative="", x_kind="strength",
            x_values="0.5-1 [3]", y_kind="lora", y_values="grid_epochs/*", lora="(none)", strength=1.0,
            baseline="row", seed=1, steps=2, cfg=4.0, sampler="euler", scheduler="normal", denoise=1.0, width=64,
            height=64, grid_name="epochs")},
    }, timeout=600)
    path = out["2"]["text"][0]
    assert path.endswith(".png") and "/atelier/grids/epochs_" in path
    from atelier.core.grid import read_png_metadata  # the PNG is read directly, as any script would

    meta = read_png_metadata(path)
    assert list(meta["axes"]["y"].values) == epoch_loras  # natural order: epoch 1, 2, 10
    assert list(meta["axes"]["x"].values) == [0.5, 0.75, 1.0]
    cells = meta["cells"]
    assert len(cells) == 12 and sum(c["baseline"] for c in cells) == 3 and all(c["y"] is None for c in cells
                                                                                if c["baseline"])
    assert "lora key not loaded" not in comfy_server.log_text()[log_before:]
    img = Image.open(path)
    assert img.width > 3 * 64 and img.height > 4 * 64


def test_bad_axes_are_refused_with_the_reason(comfy, epoch_loras):
    def err(**overrides):
        inputs = dict(positive="x", negative="", x_kind="strength", x_values="0,1", y_kind="none", y_values="",
                      lora="(none)", strength=1.0, baseline="none", seed=1, steps=1, cfg=4.0, sampler="euler",
                      scheduler="normal", denoise=1.0, width=64, height=64, grid_name="bad")
        inputs.update(overrides)
        entry = comfy.wait(comfy.queue({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
            "2": {"class_type": "AtelierXYGrid", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                             **inputs}}}))
        return [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]["exception_message"]

    assert "no values" in err(x_values="")
    assert "euler" in err(x_kind="sampler", x_values="eulerr")  # the message lists the valid samplers
    assert "10000 cells" in err(x_values="1-100", y_kind="seed", y_values="1-100")
    assert "matched none of the" in err(x_kind="lora", x_values="nothing_here/*")  # a LoRA folder with no files
