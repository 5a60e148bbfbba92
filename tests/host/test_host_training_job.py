"""Export Training Job through a real ComfyUI server, then the headless runner against the same ComfyUI checkout:
the LoRA it writes has the node's kohya keys and loads in stock LoraLoader without a 'lora key not loaded' line; a job
exported with block swap and gradient checkpointing trains the same LoRA as with them off."""

import json
import os
import shutil
import subprocess

import numpy as np
from comfy_host import (FIXTURE_CHECKPOINT_NAME, advanced_train_widgets, load_dataset_node, prepare_dataset_node,
                        saved_pixels, txt2img_prompt, write_elf_folder)
from conftest import CHECKOUT
from safetensors import safe_open
from safetensors.torch import load_file

ADVANCED_ONLY = ("keep_last", "sample_every_steps", "sample_every_epochs", "sample_prompts", "sample_negative",
                 "sample_seed", "sample_steps", "sample_cfg", "sample_sampler", "sample_scheduler", "sample_width",
                 "sample_height", "cache_latents", "gradient_checkpointing", "resume_state", "continue_from")


def export_prompt(name: str, **memory) -> dict:
    widgets = advanced_train_widgets(name, max_steps=2, batch_size=2, caption_shuffle=False, keep_tokens=0,
                                     unet_lr=5e-2)
    widgets = {k: v for k, v in widgets.items() if k not in ADVANCED_ONLY} | memory
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": load_dataset_node("input/job_host", repeats=0, subset_name="elf"),
        "3": prepare_dataset_node(["2", 0]),
        "4": {"class_type": "AtelierExportTrainingJob", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                                   "vae": ["1", 2], "dataset": ["3", 0], **widgets}},
    }


def keys_of(path) -> set:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def run_job_cli(comfy_server, job, *extra: str) -> subprocess.CompletedProcess:
    """python -m atelier.nodes.job run JOB on the CPU against the host's ComfyUI checkout and fixture checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(comfy_server.workdir / "custom_nodes")}
    cmd = [comfy_server.python, "-m", "atelier.nodes.job", "run", str(job), "--comfyui", str(CHECKOUT),
           "--checkpoint", str(comfy_server.models / "checkpoints" / FIXTURE_CHECKPOINT_NAME), "--device", "cpu",
           *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=comfy_server.workdir)


def test_exported_job_trains_headless_and_loads_in_stock_lora_loader(comfy, comfy_server):
    write_elf_folder(comfy_server.input_dir / "job_host" / "10_elf", 3, seed=5)
    report = json.loads(comfy.run(export_prompt("host_job"), timeout=600)["4"]["text"][0])
    assert report["job"] == "output/atelier/jobs/host_job" and report["samples"] == 3
    assert report["base_model"]["file"] == FIXTURE_CHECKPOINT_NAME and len(report["base_model"]["sha256"]) == 64
    job = comfy_server.file(report["job"])
    assert {"job.json", "latents.safetensors", "text.safetensors"} <= {p.name for p in job.iterdir()}
    assert str(comfy_server.workdir) not in (job / "job.json").read_text()  # no server path in the job

    assert json.loads((job / "job.json").read_text())["memory"] == {"gradient_checkpointing": False,
                                                                    "blocks_to_swap": 0}
    done = run_job_cli(comfy_server, job)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 2/2" in done.stderr and "Saved host_job.safetensors after 2 steps" in done.stderr
    assert "Block swap" not in done.stderr and "Gradient checkpointing" not in done.stderr  # off: nothing said
    steps = [json.loads(line) for line in (job / "host_job.steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and all(np.isfinite(s["loss"]) for s in steps)

    lora = job / "host_job.safetensors"
    keys = keys_of(lora)
    assert any(k.startswith("lora_unet_") and "transformer_blocks" in k for k in keys)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    shutil.copyfile(lora, comfy_server.models / "loras" / "host_job_headless.safetensors")
    log_before = len(comfy_server.log_text())
    base = saved_pixels(comfy_server, comfy.run(txt2img_prompt("blonde elf", seed=7, prefix="jobbase")))
    with_lora = saved_pixels(comfy_server, comfy.run(txt2img_prompt(
        "blonde elf", seed=7, prefix="joblora", lora="host_job_headless.safetensors")))
    assert "lora key not loaded" not in comfy_server.log_text()[log_before:]
    assert np.abs(with_lora - base).max() > 0, "the headless LoRA changed nothing"


def test_job_exported_with_block_swap_trains_the_same_lora_headless(comfy, comfy_server):
    write_elf_folder(comfy_server.input_dir / "job_host" / "10_elf", 3, seed=5)
    report = json.loads(comfy.run(export_prompt("host_job_swap", blocks_to_swap=5, gradient_checkpointing=True),
                                  timeout=600)["4"]["text"][0])
    assert report["memory"] == {"gradient_checkpointing": True, "blocks_to_swap": 5}
    job = comfy_server.file(report["job"])
    assert json.loads((job / "job.json").read_text())["memory"] == report["memory"]

    swapped = run_job_cli(comfy_server, job, "--out", str(job / "swapped"))
    assert swapped.returncode == 0, swapped.stderr[-3000:]
    assert "Block swap: 5 of " in swapped.stderr and "MiB of frozen weights kept on cpu" in swapped.stderr
    assert "saves no memory" in swapped.stderr and "Gradient checkpointing: on" in swapped.stderr
    plain = run_job_cli(comfy_server, job, "--out", str(job / "plain"), "--blocks-to-swap", "0",
                        "--no-gradient-checkpointing")  # the command-line overrides turn both off
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "Block swap" not in plain.stderr and "Gradient checkpointing" not in plain.stderr
    a = load_file(str(job / "swapped" / "host_job_swap.safetensors"))
    b = load_file(str(job / "plain" / "host_job_swap.safetensors"))
    assert a.keys() == b.keys() and a
    assert all((a[k].float() - b[k].float()).abs().max() < 1e-3 for k in a)  # fp16 files; same maths
    assert any((b[k].float().abs().max() > 0) for k in b if k.endswith("lora_up.weight"))  # it trained

    bad = run_job_cli(comfy_server, job, "--blocks-to-swap", "201")
    assert bad.returncode == 2 and "--blocks-to-swap: expected a whole number from 0 to 200" in bad.stderr
    too_many = run_job_cli(comfy_server, job, "--out", str(job / "many"), "--blocks-to-swap", "200")
    assert too_many.returncode != 0 and "blocks_to_swap is 200 but this model has" in too_many.stderr


def test_job_training_the_text_encoder_runs_headless_with_te_keys(comfy, comfy_server):
    write_elf_folder(comfy_server.input_dir / "job_te" / "10_elf", 2, seed=6)
    prompt = export_prompt("host_job_te", train_text_encoder=True, te_lr=1e-3)
    prompt["2"] = load_dataset_node("input/job_te", repeats=0, subset_name="elf")
    report = json.loads(comfy.run(prompt, timeout=600)["4"]["text"][0])
    job = comfy_server.file(report["job"])
    assert "text.safetensors" not in {p.name for p in job.iterdir()}  # the encoder trains: captions encoded live
    done = run_job_cli(comfy_server, job)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = keys_of(job / "host_job_te.safetensors")
    assert any(k.startswith("lora_te_") for k in keys) and any(k.startswith("lora_unet_") for k in keys)
    up = load_file(str(job / "host_job_te.safetensors"))
    assert any(float(v.abs().sum()) > 0 for k, v in up.items() if k.startswith("lora_te_") and "lora_up" in k)
