"""The leakage check through a real server on the fixture checkpoint with a random LoRA: strength 0 measures exactly
nothing, stronger LoRAs measure more, the sheet is saved, bad inputs are refused clearly."""

import json

import pytest
from comfy_host import (FIXTURE_CHECKPOINT_NAME, ComfyError, advanced_train_widgets, load_dataset_node,
                        prepare_dataset_node, write_elf_folder)
from PIL import Image

LOADER = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}}}
MODEL = {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2]}
SETTINGS = dict(prompts="a red cube\na dog in a park", seeds=2, negative="", seed=5, steps=3, cfg=4.0,
                sampler="euler", scheduler="normal", width=64, height=64, batch_size=4, resume=False)


def leakage(lora, strength, name="leak"):
    return {**LOADER, "2": {"class_type": "AtelierCheckLeakage", "inputs": {
        **MODEL, "lora": lora, "strength": strength, "grid_name": name, **SETTINGS}}}


def check(comfy, comfy_server, lora, strength):
    """Runs the node; returns (the sheet PNG's metadata, the report panel's text)."""
    text = comfy.run(leakage(lora, strength, f"leak{int(strength * 10)}"), timeout=600)["2"]["text"]
    assert "8 cells rendered" in text[1], text
    with Image.open(comfy_server.file(text[0])) as sheet:  # the sheet PNG exists and has every row and column
        assert sheet.width > 3 * 64 and sheet.height > 4 * 64  # base | LoRA | difference; 2 prompts x 2 seeds
        meta = json.loads(sheet.info["atelier_grid"])
    return meta, "\n".join(text)


@pytest.fixture(scope="module")
def reports(comfy, comfy_server, rand_lora):
    """{strength: (sheet metadata, panel text)} of the check at strengths 0, 0.5 and 1."""
    return {strength: check(comfy, comfy_server, rand_lora, strength) for strength in (0.0, 0.5, 1.0)}


def distances(meta):
    return [c["distances"] for c in meta["cells"] if "distances" in c]


def test_strength_zero_measures_exactly_nothing(reports):
    meta, panel = reports[0.0]
    pairs = distances(meta)
    assert len(pairs) == 4
    assert set(pairs[0]) == {"pixel_rmse", "pixel_mae", "changed", "latent_rmse"}
    assert all(value == 0.0 for d in pairs for value in d.values()), pairs
    assert all(v == 0.0 for v in meta["extra"]["mean"].values())
    assert "pixel RMSE 0.0000" in panel


def test_a_stronger_lora_leaks_more(reports):
    half, full = reports[0.5][0]["extra"]["mean"], reports[1.0][0]["extra"]["mean"]
    for key in ("pixel_rmse", "pixel_mae", "latent_rmse"):
        assert 0 < half[key] < full[key], (key, half, full)
    assert all(d["pixel_rmse"] > 0 for d in distances(reports[1.0][0]))
    panel = reports[1.0][1]
    assert "a red cube: pixel RMSE" in panel and "a dog in a park: pixel RMSE" in panel


def test_one_prompt_trains_then_checks_the_run_final_file(comfy, comfy_server):
    write_elf_folder(comfy_server.input_dir / "leak_chain" / "1_elf", 2, seed=7)
    prompt = {**LOADER, "3": load_dataset_node("input/leak_chain", repeats=0, subset_name="elf"),
              "4": prepare_dataset_node(["3", 0]),
              "5": {"class_type": "AtelierTrainLoRAAdvanced", "inputs": {
                  **MODEL, "dataset": ["4", 0], **advanced_train_widgets("leak_chain", unet_lr=5e-2, max_steps=2)}},
              "2": {"class_type": "AtelierCheckLeakage", "inputs": {
                  **MODEL, "lora": "(none)", "lora_files": ["5", 4], "strength": 1.0, "grid_name": "leak_chain",
                  **{**SETTINGS, "prompts": "a red cube", "seeds": 1}}}}
    text = comfy.run(prompt, timeout=900)["2"]["text"]
    with Image.open(comfy_server.file(text[0])) as sheet:
        extra = json.loads(sheet.info["atelier_grid"])["extra"]
    assert extra["lora"] == "atelier/leak_chain.safetensors" and extra["mean"]["pixel_rmse"] > 0, extra


def failure(comfy, prompt):
    """The node's exception of a prompt that must fail, or the server's validation refusal."""
    try:
        prompt_id = comfy.queue(prompt)
    except ComfyError as e:
        return "refused: " + json.dumps(e.body)
    entry = comfy.wait(prompt_id, timeout=600)
    assert entry["status"]["status_str"] == "error", "the prompt ran"
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    return f"{err['exception_type']}: {err['exception_message']}"


def test_bad_strength_and_unknown_lora_are_refused(comfy, rand_lora):
    message = failure(comfy, leakage(rand_lora, float("nan"), "leak_nan"))
    assert "strength is nan; expected a finite number" in message, message
    message = failure(comfy, leakage("no_such_lora.safetensors", 1.0, "leak_bad"))
    assert "no_such_lora.safetensors" in message and ("Unknown LoRA" in message or "not in list" in message), message
    message = failure(comfy, leakage("(none)", 1.0, "leak_none"))
    assert "choose it in 'lora' or connect" in message, message
