"""LoRA training through a real ComfyUI server on the fixture SD1.5 checkpoint at 64²."""

import numpy as np
import pytest
from comfy_host import FIXTURE_CHECKPOINT_NAME
from PIL import Image
from safetensors import safe_open


@pytest.fixture(scope="module")
def train_folder(comfy_server):
    folder = comfy_server.input_dir / "train_host" / "10_elf"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((64, 64), Image.BICUBIC).save(
            folder / f"elf_{i}.png")
        (folder / f"elf_{i}.txt").write_text(f"blonde elf, pose {i}", encoding="utf-8")
    return folder


def train_prompt(output_name, **overrides):
    widgets = dict(output_name=output_name, rank=4, alpha=4.0, unet_lr=1e-3, epochs=1, max_steps=10, batch_size=2,
                   train_text_encoder=True, te_lr=1e-4, seed=0)
    widgets.update(overrides)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "AtelierLoadDataset", "inputs": dict(
            folder="input/train_host", sub_path="", role="train", repeats=0, caption_source="sidecar",
            caption_extension=".txt", fixed_caption="", caption_encoding="utf-8", on_missing_caption="error",
            recursive=True, prior_loss_weight=1.0, subset_name="elf", verify_images=True)},
        "3": {"class_type": "AtelierPrepareDataset", "inputs": dict(
            dataset=["2", 0], mode="crop", width=64, height=64, pad_color="black", background="white",
            filter="lanczos", bucket_step=64, no_upscale=False, subsets="")},
        "4": {"class_type": "AtelierTrainLoRA", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                           "dataset": ["3", 0], **widgets}},
    }


def sample_prompt(lora=None, strength=1.0, prefix="s"):
    """Stock graph: checkpoint (+ stock LoraLoader) → encode → KSampler → decode → SaveImage."""
    model, clip = ["1", 0], ["1", 1]
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}}}
    if lora:
        prompt["9"] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": lora,
                                                              "strength_model": strength, "strength_clip": strength}}
        model, clip = ["9", 0], ["9", 1]
    prompt.update({
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "blonde elf, pose 1"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": model, "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 7, "steps": 3, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    })
    return prompt


def saved_pixels(comfy_server, outputs):
    info = outputs["7"]["images"][0]
    return np.asarray(Image.open(comfy_server.output_dir / info["subfolder"] / info["filename"]), dtype=np.int16)


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
    assert '"elf"' in meta["ss_dataset_dirs"] and "blonde elf" in meta["ss_tag_frequency"]

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
    path = comfy_server.models / "loras" / "atelier" / "host_interrupted.safetensors"
    assert path.exists(), "no LoRA was saved when the run was interrupted"
    with safe_open(str(path), "pt") as f:
        steps = int(f.metadata()["ss_steps"])
    assert 2 <= steps < 400
    state = comfy_server.output_dir / "atelier" / "train_state" / "host_interrupted" / "state.json"
    assert state.exists() and f'"step": {steps}' in state.read_text()
    loaded = comfy.run(sample_prompt("atelier/host_interrupted.safetensors", 1.0, "intr"))
    assert saved_pixels(comfy_server, loaded).shape == (64, 64, 3)
