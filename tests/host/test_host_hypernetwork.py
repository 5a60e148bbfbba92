"""Hypernetwork training through a real ComfyUI server: the file loads in stock HypernetworkLoader (weights-only)."""

import json
import re

import numpy as np
import pytest
import torch
from comfy_host import (FIXTURE_CHECKPOINT_NAME, load_dataset_node, prepare_dataset_node, saved_pixels,
                        txt2img_prompt, write_elf_folder)

NAME = "atelier/host_hyper.pt"
WIDGETS = dict(output_name="host_hyper", layer_structure="1, 2, 1", activation="relu", layer_norm=False, dropout=False,
               weight_init="Normal", lr=5e-2, epochs=1, max_steps=3, batch_size=2, seed=0, strength=1.0)


@pytest.fixture(scope="module")
def trained(comfy, comfy_server):
    """Three strong steps of Train Hypernetwork on the fixture; returns the node's outputs."""
    write_elf_folder(comfy_server.input_dir / "hyper_host" / "5_elf", 2, seed=5)
    return comfy.run(train_prompt(WIDGETS), timeout=600)


def train_prompt(widgets: dict) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": load_dataset_node("input/hyper_host", repeats=0, subset_name="elf"),
        "3": prepare_dataset_node(["2", 0]),
        "4": {"class_type": "AtelierTrainHypernetwork", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                                   "vae": ["1", 2], "dataset": ["3", 0], **widgets}},
    }


def hyper_prompt(strength: float | None, prefix: str) -> dict:
    """The stock txt2img graph, with stock HypernetworkLoader between the checkpoint and KSampler."""
    prompt = txt2img_prompt("blonde elf, pose 1", seed=7, prefix=prefix)
    if strength is not None:
        prompt["9"] = {"class_type": "HypernetworkLoader", "inputs": {"model": ["1", 0], "hypernetwork_name": NAME,
                                                                      "strength": strength}}
        prompt["5"]["inputs"]["model"] = ["9", 0]
    return prompt


def test_trained_file_loads_weights_only_with_every_key(trained, comfy_server):
    assert '"steps": 3' in trained["4"]["text"][0]
    path = comfy_server.models / "hypernetworks" / "atelier" / "host_hyper.pt"
    sd = torch.load(path, weights_only=True)  # as HypernetworkLoader's safe_load reads it
    widths = [k for k in sd if isinstance(k, int)]
    assert widths == [768], widths  # SD1.5's cross-attention context width only
    k_state, v_state = sd[768]
    assert list(k_state) == ["linear.0.weight", "linear.0.bias", "linear.2.weight", "linear.2.bias"]  # 1: ReLU
    assert k_state["linear.0.weight"].shape == (1536, 768) and torch.isfinite(v_state["linear.2.weight"]).all()
    assert sd["step"] == 3 and sd["name"] == "host_hyper" and sd["activation_func"] == "relu"
    assert sd["sd_checkpoint_name"] == FIXTURE_CHECKPOINT_NAME.rsplit(".", 1)[0]
    assert sd["use_dropout"] is False and sd["dropout_structure"] == [0.0, 0.0, 0.0]
    assert sd["activate_output"] is False and sd["is_layer_norm"] is False


def test_stock_loader_changes_the_output_and_strength_zero_is_the_base(trained, comfy, comfy_server):
    log_before = len(comfy_server.log_text())
    base = saved_pixels(comfy_server, comfy.run(hyper_prompt(None, "hbase")))
    full = saved_pixels(comfy_server, comfy.run(hyper_prompt(1.0, "hfull")))
    zero = saved_pixels(comfy_server, comfy.run(hyper_prompt(0.0, "hzero")))
    assert "Unsupported Hypernetwork format" not in comfy_server.log_text()[log_before:]
    assert np.abs(full - base).max() > 0, "the trained hypernetwork changed nothing"
    assert np.array_equal(zero, base), "strength 0 must equal the base model bit for bit"


def test_the_nodes_model_is_the_stock_loaders(trained, comfy, comfy_server):
    render = hyper_prompt(None, "hnode")
    train = train_prompt(WIDGETS)  # the same node inputs: ComfyUI reuses the trained outputs
    render.update({"12": train["2"], "13": {**train["3"], "inputs": {**train["3"]["inputs"], "dataset": ["12", 0]}},
                   "14": {**train["4"], "inputs": {**train["4"]["inputs"], "dataset": ["13", 0]}}})
    render["5"]["inputs"]["model"] = ["14", 0]
    from_node = saved_pixels(comfy_server, comfy.run(render, timeout=600))
    stock = saved_pixels(comfy_server, comfy.run(hyper_prompt(1.0, "hstock")))
    assert np.array_equal(from_node, stock), "the node's MODEL should be what HypernetworkLoader gives at strength 1"


def test_bad_layer_structure_is_refused_before_training(comfy, comfy_server, trained):
    widgets = {**WIDGETS, "output_name": "host_hyper_bad", "layer_structure": "2, 1"}
    entry = comfy.wait(comfy.queue(train_prompt(widgets)))
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    assert "start and end with 1" in err["exception_message"], err["exception_message"]
    assert not (comfy_server.models / "hypernetworks" / "atelier" / "host_hyper_bad.pt").exists()


def report_of(outputs: dict) -> dict:
    return json.loads(outputs["4"]["text"][0])


def test_a_second_queue_changing_only_strength_loads_the_file_and_trains_nothing(trained, comfy, comfy_server):
    """strength is not part of the run's identity (recorded in the .pt): the finished file is loaded, not retrained."""
    first = report_of(trained)
    assert first["reuse"].startswith("trained (no earlier file"), first["reuse"]
    path = comfy_server.models / "hypernetworks" / "atelier" / "host_hyper.pt"
    sd = torch.load(path, weights_only=True)
    assert sd["atelier_run_finished"] == "true" and json.loads(sd["atelier_run_identity"]).keys() == {
        "settings", "data", "base"}
    stamp = (path.stat().st_mtime_ns, path.read_bytes())
    again = report_of(comfy.run(train_prompt({**WIDGETS, "strength": 0.5}), timeout=600))
    assert again["reuse"].startswith("reused models/hypernetworks/atelier/host_hyper.pt") and "nothing was trained" \
        in again["reuse"], again["reuse"]
    assert again["steps"] == 3 and again["losses"] == first["losses"]
    assert (path.stat().st_mtime_ns, path.read_bytes()) == stamp, "a reused file must not be written again"
    changed = report_of(comfy.run(train_prompt({**WIDGETS, "strength": 0.5, "reuse": False}), timeout=600))
    assert changed["reuse"].startswith("trained (reuse is off)"), changed["reuse"]


def test_stopping_at_n_steps_and_resuming_to_2n_equals_an_uninterrupted_2n_run_bit_for_bit(trained, comfy,
                                                                                            comfy_server):
    """max_steps 2, then resume its state with max_steps 4 (mid-epoch: 10 samples, batch 2) = a 4-step run."""
    folder = comfy_server.models / "hypernetworks" / "atelier"
    comfy.run(train_prompt({**WIDGETS, "output_name": "host_hyper_half", "max_steps": 2}), timeout=600)
    state = comfy_server.output_dir / "atelier" / "train_state" / "host_hyper_half-hypernetwork" / "state.json"
    assert '"step": 2' in state.read_text()
    resumed = report_of(comfy.run(train_prompt({**WIDGETS, "output_name": "host_hyper_half", "max_steps": 4,
                                                "resume": "host_hyper_half-hypernetwork"}), timeout=600))
    assert resumed["steps"] == 4 and "settings changed" in resumed["reuse"], resumed["reuse"]
    comfy.run(train_prompt({**WIDGETS, "output_name": "host_hyper_whole", "max_steps": 4}), timeout=600)
    a, b = (torch.load(folder / f"{name}.pt", weights_only=True) for name in ("host_hyper_half", "host_hyper_whole"))
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a[768][i][k], b[768][i][k]) for i in (0, 1) for k in b[768][i]), \
        "a resumed run must equal the uninterrupted one bit for bit"
    assert a["atelier_run_identity"] == b["atelier_run_identity"]  # the same run, so either file stands for it


def test_a_cancel_says_where_it_stopped_and_how_to_resume_in_this_nodes_words(trained, comfy, comfy_server):
    """The shared stop path (nodes/training.run_in_host): the message names the saved file and the 'resume' widget."""
    prompt_id = comfy.queue(train_prompt({**WIDGETS, "output_name": "host_hyper_cancel", "max_steps": 400}))
    comfy.wait_for_event("atelier.train.step", timeout=180, predicate=lambda d: d.get("step", 0) >= 2)
    comfy.interrupt()
    entry = comfy.wait(prompt_id, timeout=300)
    err = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"][0]["exception_message"]
    assert re.search(r"Training stopped at step \d+ of 400 because it was cancelled", err), err
    assert "saved as models/hypernetworks/atelier/host_hyper_cancel.pt" in err, err
    assert "set resume to 'host_hyper_cancel-hypernetwork' (same settings" in err, err
    assert (comfy_server.output_dir / "atelier" / "train_state" / "host_hyper_cancel-hypernetwork" / "state.json"
            ).is_file()


def test_preview_samples_are_drawn_with_the_hypernetwork_on(trained, comfy, comfy_server):
    """sample_prompts: one preview per prompt at each epoch's end, saved and listed in the report."""
    widgets = {**WIDGETS, "output_name": "host_hyper_prev", "max_steps": 0, "epochs": 1, "batch_size": 5,
               "sample_prompts": "blonde elf\n\na cat", "sample_every_epochs": 1, "sample_steps": 2, "sample_size": 64}
    report = report_of(comfy.run(train_prompt(widgets), timeout=600))
    assert report["steps"] == 2  # 10 samples (2 images × 5 repeats) in batches of 5
    assert report["samples"] == ["output/atelier/samples/host_hyper_prev/e0001_s000002_00.png",
                                 "output/atelier/samples/host_hyper_prev/e0001_s000002_01.png"], report["samples"]
    folder = comfy_server.output_dir / "atelier" / "samples" / "host_hyper_prev"
    assert sorted(p.name for p in folder.iterdir()) == ["e0001_s000002_00.png", "e0001_s000002_01.png"]
