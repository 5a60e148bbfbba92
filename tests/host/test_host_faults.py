"""Faults through a real ComfyUI server: Cancel mid-run (training, Extract LoRA, Merge into Model) and the temps a
killed save leaves behind. Run with OMP_NUM_THREADS=1 (the machine is shared)."""

import json
import os
import time

import pytest
from comfy_host import FIXTURE_CHECKPOINT_NAME, random_lora
from test_host_training import advanced_prompt, train_folder  # noqa: F401  (train_folder is a fixture)

DEAD = 2**31 - 2  # above every kernel's pid_max: the writer of a temp named with it is certainly gone
HEX = "0123abcd"

BAD_INPUTS = [
    ("cancel_training", "Cancel during training: /history carries 'Training stopped at step N' with the LoRA and "
                        "state named relative to their roots and the resume_state to set; the resume continues"),
    ("resume_other_threads", "Resume of a state saved with another torch thread count: the report warns that the "
                             "result will differ slightly from an uninterrupted run"),
    ("cancel_extract", "Cancel during Extract LoRA: the prompt ends interrupted and no LoRA (or temp) is written"),
    ("cancel_merge_into_model", "Cancel during Merge LoRA into Model's checkpoint save: no checkpoint, no temp"),
    ("stale_temp_lora", "A killed LoRA save's temp (dead pid) beside the LoRA: the next save removes it, similarly "
                        "named user files stay"),
    ("stale_temp_checkpoint", "Killed checkpoint saves' temps (this version's and 0.x's '.tmp-<pid>'): the next "
                              "save of that checkpoint removes them, user files stay"),
    ("stale_temp_training", "A killed training's temps (state folder, epoch LoRA): the next run of that name "
                            "removes them, other runs' temps and user files stay"),
]


def messages(entry, kind):
    return [m[1] for m in entry["status"]["messages"] if m[0] == kind]


def error_text(entry):
    (err,) = messages(entry, "execution_error")
    return err["exception_message"]


def no_temps(folder):
    """Hidden temps (ours or anyone's) left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name) \
        if folder.exists() else []


def test_cancel_training_tells_history_what_was_kept_and_how_to_resume(comfy, comfy_server, train_folder):  # noqa: F811
    prompt_id = comfy.queue(advanced_prompt("fault_cancel", max_steps=200))
    comfy.wait_for_event("atelier.train.step", timeout=300, predicate=lambda d: d.get("step", 0) >= 2)
    comfy.interrupt()
    entry = comfy.wait(prompt_id, timeout=300)
    assert entry["status"]["status_str"] == "error"
    text = error_text(entry)
    assert "Training stopped at step " in text and " of 200 because it was cancelled" in text, text
    assert "models/loras/atelier/fault_cancel.safetensors" in text, text
    assert "output/atelier/train_state/fault_cancel" in text and "set resume_state to 'fault_cancel'" in text, text
    assert str(comfy_server.workdir) not in text, "the message shows an absolute server path"
    (err,) = messages(entry, "execution_error")
    assert err["exception_type"].endswith("TrainingStopped") and err["node_type"] == "AtelierTrainLoRAAdvanced"
    step = int(text.split("Training stopped at step ")[1].split(" ")[0])
    assert 2 <= step < 200

    # the state records the setup exactness depends on; pretend it was saved on a machine with 7 threads
    state_file = comfy_server.output_dir / "atelier" / "train_state" / "fault_cancel" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["environment"]["device"] == "cpu" and state["environment"]["torch_threads"] >= 1
    state["environment"]["torch_threads"] = 7
    state_file.write_text(json.dumps(state))

    # the message's instruction works: resume for one more step, with a note that the thread count changed
    out = comfy.run(advanced_prompt("fault_cancel", max_steps=step + 1, resume_state="fault_cancel"), timeout=600)
    report = json.loads(out["4"]["text"][0])
    assert report["steps"] == step + 1 and len(report["losses"]) == step + 1
    assert report["skipped_steps"] == {"count": 0, "steps": []}
    (warning,) = report["warnings"]
    assert "torch threads 7 then" in warning and "differ slightly (~1e-5) from an uninterrupted run" in warning


@pytest.fixture(scope="module")
def attention_lora(comfy_server):
    """A random LoRA on the UNet attention and all twelve CLIP layers: enough layers that extraction takes seconds."""
    ckpt = comfy_server.models / "checkpoints" / FIXTURE_CHECKPOINT_NAME
    random_lora(ckpt, comfy_server.models / "loras" / "fault_attn.safetensors", seed=5, text_layers=12)
    return "fault_attn.safetensors"


def wait_progress_then_cancel(comfy, prompt_id, node, predicate=lambda d: True, timeout=300):
    comfy.wait_for_event("progress", timeout=timeout,
                         predicate=lambda d: d.get("node") == node and d.get("prompt_id") == prompt_id
                         and predicate(d))
    comfy.interrupt()
    return comfy.wait(prompt_id, timeout=300)


def test_cancel_extract_lora_writes_nothing(comfy, comfy_server, attention_lora):
    prompt_id = comfy.queue({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": attention_lora,
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "AtelierExtractLoRA", "inputs": {
            "tuned_model": ["2", 0], "base_model": ["1", 0], "tuned_clip": ["2", 1], "base_clip": ["1", 1],
            "rank": 4, "dynamic_method": "none", "dynamic_param": 0.9, "include_convs": False, "min_diff": 0.0,
            "clamp_quantile": 1.0, "method": "full", "output_name": "fault_extract"}},
    })
    entry = wait_progress_then_cancel(comfy, prompt_id, "3", lambda d: d.get("value", 0) >= 1)
    assert entry["status"]["status_str"] == "error" and messages(entry, "execution_interrupted"), \
        f"Extract LoRA ignored Cancel: {entry['status']}"
    assert messages(entry, "execution_interrupted")[0]["node_type"] == "AtelierExtractLoRA"
    folder = comfy_server.models / "loras" / "atelier"
    assert not (folder / "fault_extract.safetensors").exists(), "a cancelled extraction wrote its LoRA"
    assert no_temps(folder) == []


def merge_into_model_prompt(lora, checkpoint_name):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "AtelierMergeLoRAIntoModel", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "checkpoint_name": checkpoint_name,
            "lora_1": lora, "strength_1": 1.0, "block_weights_1": "",
            **{f"{k}_{i}": v for i in range(2, 5) for k, v in (("lora", "(none)"), ("strength", 1.0),
                                                                ("block_weights", ""))}}},
    }


def test_cancel_merge_into_model_saves_no_checkpoint(comfy, comfy_server, attention_lora):
    prompt_id = comfy.queue(merge_into_model_prompt(attention_lora, "fault_merge_cancel"))
    # the per-tensor bar of the checkpoint save (the first bar counts the 4 LoRA slots)
    entry = wait_progress_then_cancel(comfy, prompt_id, "2", lambda d: d.get("max", 0) > 10 and d.get("value", 0) >= 1)
    assert entry["status"]["status_str"] == "error" and messages(entry, "execution_interrupted"), \
        f"Merge into Model ignored Cancel: {entry['status']}"
    folder = comfy_server.models / "checkpoints" / "atelier"
    assert not (folder / "fault_merge_cancel.safetensors").exists(), "a cancelled merge saved its checkpoint"
    assert no_temps(folder) == []


def plant(folder, name, *, is_dir=False, age=0.0):
    """A file (or folder) standing for a killed save's leftover, or for a user's own file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if is_dir:
        path.mkdir()
        (path / "lora.safetensors").write_bytes(b"\0" * 64)
    else:
        path.write_bytes(b"\0" * 64)  # partly written, partly zero, as the reported leftovers were
    os.utime(path, (time.time() - age,) * 2)
    return path


def run_writer(comfy, source_lora, case):
    """Saves the target of `case` once through its node; returns (folder, target name)."""
    if case == "stale_temp_lora":
        comfy.run({"1": {"class_type": "AtelierMergeLoRAs", "inputs": dict(
            lora_1=source_lora, strength_1=1.0, lora_2="(none)", strength_2=1.0, lora_3="(none)", strength_3=1.0,
            lora_4="(none)", strength_4=1.0, mode="concat", rank=8, dynamic_method="none", dynamic_param=0.9,
            output_name="fault_stale")}}, timeout=600)
    elif case == "stale_temp_checkpoint":
        comfy.run(merge_into_model_prompt(source_lora, "fault_stale"), timeout=600)
    else:
        comfy.run(advanced_prompt("fault_stale", max_steps=1), timeout=600)


STALE_CASES = {
    # case: (folder under the server's workdir, leftovers the save must remove, user entries it must keep)
    "stale_temp_lora": ("models/loras/atelier",
                        [f".fault_stale.safetensors.atelier-{DEAD}-{HEX}.tmp"],
                        [f"fault_stale.safetensors.atelier-{DEAD}-{HEX}.tmp",  # not hidden: a user's file
                         f".fault_stale.safetensors.atelier-{DEAD}-{HEX}.tmp.mine",
                         f".fault_stale2.safetensors.atelier-{DEAD}-{HEX}.tmp", ".fault_stale.safetensors"]),
    "stale_temp_checkpoint": ("models/checkpoints/atelier",
                              [f".fault_stale.safetensors.atelier-{DEAD}-{HEX}.tmp",
                               f".fault_stale.safetensors.tmp-{DEAD}"],  # what 0.x's checkpoint save left
                              [f".fault_stale.safetensors.tmp-{DEAD}x", f".[f]ault_stale.safetensors.tmp-{DEAD}",
                               "fault_stale.safetensors.tmp"]),
    "stale_temp_training": ("output/atelier/train_state",
                            [f".fault_stale.atelier-{DEAD}-{HEX}.tmp/", f".fault_stale.atelier-{DEAD}-{HEX}.old/"],
                            [f".fault_stale_other.atelier-{DEAD}-{HEX}.tmp/", "fault_stale.notes"]),
}


@pytest.mark.parametrize("case", list(STALE_CASES), ids=list(STALE_CASES))
def test_the_next_save_removes_a_killed_saves_temps_and_nothing_else(comfy, comfy_server, source_lora, case,
                                                                     train_folder):  # noqa: F811
    where, stale, user = STALE_CASES[case]
    folder = comfy_server.workdir / where
    planted = [plant(folder, name.rstrip("/"), is_dir=name.endswith("/")) for name in stale]
    kept = [plant(folder, name.rstrip("/"), is_dir=name.endswith("/"), age=3600) for name in user]
    if case == "stale_temp_training":  # the run's epoch LoRA temps sit with the LoRAs
        loras = comfy_server.models / "loras" / "atelier"
        planted.append(plant(loras, f".fault_stale-000003.safetensors.atelier-{DEAD}-{HEX}.tmp"))
        kept.append(plant(loras, f".fault_stale-00003.safetensors.atelier-{DEAD}-{HEX}.tmp", age=3600))
    run_writer(comfy, source_lora, case)
    left = [p.name for p in planted if p.exists()]
    assert left == [], f"{case}: leftovers not removed: {left}"
    assert all(p.exists() for p in kept), f"{case}: removed a user's file: {[p.name for p in kept if not p.exists()]}"
