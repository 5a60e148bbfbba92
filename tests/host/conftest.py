"""Host tier: tests that drive a real ComfyUI server over HTTP. Skipped, with one line naming where we looked,
when no ComfyUI checkout is found."""

from pathlib import Path

import pytest

import numpy as np
import script_pool
from comfy_host import (FIXTURE_CHECKPOINT_NAME, ROOT, ComfyServer, find_checkout, find_python, fixture_checkpoint,
                        load_dataset_node, prepare_dataset_node, random_lora)
from PIL import Image

CHECKOUT, WHY_NOT = find_checkout()


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: only the selected tests' checks are queued
def pytest_collection_modifyitems(config, items):
    here = str(Path(__file__).parent)
    jobs = []
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.host)
            if CHECKOUT is None:
                item.add_marker(pytest.mark.skip(reason=f"host tier: {WHY_NOT}"))
            job = getattr(item.module, "SCRIPT_JOB", None)
            if job is not None and hasattr(item, "callspec"):
                name, timeout, *args = job(item.callspec.params)  # (script, timeout, its arguments...)
                jobs.append((name, timeout, tuple(args)))
    if CHECKOUT is not None and jobs:  # the server-free family checks start now, on the other core (script_pool)
        script_pool.start(find_python(CHECKOUT), CHECKOUT, ROOT, jobs)


def pytest_sessionfinish(session, exitstatus):
    script_pool.stop()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One real ComfyUI server for the whole session, this checkout loaded as custom node `atelier`."""
    python = find_python(CHECKOUT)
    checkpoint = fixture_checkpoint(CHECKOUT, python)
    server = ComfyServer(CHECKOUT, python, tmp_path_factory.mktemp("comfy_host"))
    server.prepare(checkpoint)
    server.client = server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def comfy(comfy_server):
    """An HTTP client of the session's server."""
    return comfy_server.client


@pytest.fixture(scope="session")
def source_lora(comfy, comfy_server):
    """A small LoRA trained on the fixture (UNet only, 4 strong steps): the starting point of the tool and grid
    tests. Returns its name in the loras list."""
    folder = comfy_server.input_dir / "tools_src" / "5_x"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    for i in range(2):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((64, 64)).save(folder / f"{i}.png")
    comfy.run({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": load_dataset_node("input/tools_src", repeats=0, caption_source="fixed", fixed_caption="x style",
                               subset_name="x"),
        "3": prepare_dataset_node(["2", 0]),
        "4": {"class_type": "AtelierTrainLoRA", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["3", 0], "output_name": "tools_src",
            "rank": 4, "alpha": 4.0, "unet_lr": 5e-2, "epochs": 1, "max_steps": 4, "batch_size": 2,
            "train_text_encoder": False, "te_lr": 1e-4, "seed": 0}},
    }, timeout=600)
    return "atelier/tools_src.safetensors"


@pytest.fixture(scope="session")
def rand_lora(comfy_server):
    """A random LoRA on the fixture's UNet attention and first two CLIP layers (so text encoding changes too)."""
    ckpt = comfy_server.models / "checkpoints" / FIXTURE_CHECKPOINT_NAME
    random_lora(ckpt, comfy_server.models / "loras" / "grid_rand.safetensors", seed=3)
    return "grid_rand.safetensors"


@pytest.fixture(scope="session")
def tagger_model(comfy_server):
    """The tiny WD14 model in the server's models/wd14_tagger (needs onnx here and onnxruntime in the host)."""
    pytest.importorskip("onnx", reason="onnx is in the test extra: pip install -e '.[test]'")
    if not comfy_server.has_module("onnxruntime"):
        pytest.skip(f"the host's Python ({comfy_server.python}) has no onnxruntime; pip install onnxruntime there")
    from tiny_tagger import write_tiny_tagger

    write_tiny_tagger(comfy_server.models / "wd14_tagger" / "tiny-wd14")
    return "tiny-wd14"
