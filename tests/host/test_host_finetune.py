"""Full fine-tune through a real ComfyUI server: the saved checkpoint loads in stock CheckpointLoaderSimple and
renders differently; the original MODEL in the same server renders bit for bit as before."""

import numpy as np
from comfy_host import (FIXTURE_CHECKPOINT_NAME, load_dataset_node, prepare_dataset_node, render, saved_pixels,
                        write_elf_folder)
from safetensors import safe_open

WIDGETS = dict(output_name="host_ft", unet_lr=1e-3, train_text_encoder=False, te_lr=1e-6, epochs=1, max_steps=2,
               batch_size=2, optimizer="adamw", precision="fp32", gradient_checkpointing=True, ema_decay=0.0,
               block_lrs="time_embed = 0", seed=0, save_every_epochs=0, resume="(none)", extract_rank=4)


def finetune_prompt(**overrides):
    """Training graph on the fixture; its trained MODEL output also renders (KSampler → SaveImage id 7)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "20": load_dataset_node("input/ft_host", repeats=0, subset_name="elf"),
        "21": prepare_dataset_node(["20", 0]),
        "22": {"class_type": "AtelierTrainFullFineTune", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                                     "vae": ["1", 2], "dataset": ["21", 0],
                                                                     **WIDGETS, **overrides}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["22", 1], "text": "blonde elf, pose 1"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["22", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["22", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 7, "steps": 3, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "ft_out"}},
    }


def test_full_finetune_saves_a_loadable_checkpoint_and_leaves_the_base_model_as_it_was(comfy, comfy_server):
    write_elf_folder(comfy_server.input_dir / "ft_host" / "5_elf", 2, seed=5)
    before = render(comfy, comfy_server, "blonde elf, pose 1", seed=7, prefix="ft_before")
    out = comfy.run(finetune_prompt(), timeout=900)
    trained_render = saved_pixels(comfy_server, out)
    report = out["22"]["text"][0]
    assert '"steps": 2' in report and "models/checkpoints/atelier/host_ft.safetensors" in report
    assert "models/loras/atelier/host_ft_extracted.safetensors" in report
    assert str(comfy_server.models) not in report  # no server path in the report

    # the same loader node (cached: the very MODEL the training used) renders bit for bit as before
    after = render(comfy, comfy_server, "blonde elf, pose 1", seed=7, prefix="ft_after")
    assert np.array_equal(after, before), "training changed the original MODEL"

    path = comfy_server.models / "checkpoints" / "atelier" / "host_ft.safetensors"
    fixture = comfy_server.models / "checkpoints" / FIXTURE_CHECKPOINT_NAME
    with safe_open(str(path), "pt") as f, safe_open(str(fixture), "pt") as g:
        saved_keys, meta = set(f.keys()), f.metadata()
        assert set(g.keys()) <= saved_keys, sorted(set(g.keys()) - saved_keys)[:5]  # the original file's layout
        frozen = "model.diffusion_model.time_embed.0.weight"  # block_lrs froze it: unchanged
        assert np.array_equal(f.get_tensor(frozen).float().numpy(), g.get_tensor(frozen).float().numpy())
        vae_key = next(k for k in g.keys() if k.startswith("first_stage_model."))
        assert np.array_equal(f.get_tensor(vae_key).float().numpy(), g.get_tensor(vae_key).float().numpy())
    assert meta["atelier_base_checkpoint"] == FIXTURE_CHECKPOINT_NAME and len(meta["atelier_base_sha256"]) == 64
    assert '"elf"' in meta["atelier_subsets"] and '"block_lrs": "time_embed = 0"' in meta["atelier_settings"]

    loaded = render(comfy, comfy_server, "blonde elf, pose 1", seed=7, prefix="ft_loaded",
                    ckpt="atelier/host_ft.safetensors")
    assert np.abs(loaded.astype(int) - before).max() > 0, "the fine-tuned checkpoint renders like the fixture"
    assert np.array_equal(loaded, trained_render), "the node's MODEL output and the saved checkpoint differ"
    log_before = len(comfy_server.log_text())
    lora = render(comfy, comfy_server, "blonde elf, pose 1", seed=7, prefix="ft_lora",
                  lora="atelier/host_ft_extracted.safetensors")
    assert "lora key not loaded" not in comfy_server.log_text()[log_before:]
    assert np.abs(lora.astype(int) - before).max() > 0


def test_full_finetune_resumes_from_its_state_folder(comfy, comfy_server):
    """Runs after the test above (same module): continuing its state to step 3 trains one more step."""
    state = comfy_server.output_dir / "atelier" / "train_state" / "host_ft-finetune" / "state.json"
    assert state.exists() and '"step": 2' in state.read_text()
    out = comfy.run(finetune_prompt(max_steps=3, extract_rank=0, resume="host_ft-finetune"), timeout=900)
    assert '"steps": 3' in out["22"]["text"][0]
    assert '"step": 3' in state.read_text()
    entry = comfy.wait(comfy.queue(finetune_prompt(max_steps=4, extract_rank=0, unet_lr=5e-4,
                                                   resume="host_ft-finetune")))
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]["exception_message"]
    assert "different settings" in err and "unet_lr" in err, err
