"""A slider LoRA from before/after image pairs through a real ComfyUI server on the fixture SD1.5 checkpoint."""

import json

import numpy as np
from comfy_host import FIXTURE_CHECKPOINT_NAME, cosine, prepare_dataset_node, sample_latent, write_elf_folder
from PIL import Image
from safetensors import safe_open

PAIRS = 3


def write_pairs(root):
    """before/: elf images (+ one without a partner); after/: the same images tinted red (+ one of another size)."""
    before = write_elf_folder(root / "before", PAIRS + 1, seed=5)
    after = root / "after"
    after.mkdir(parents=True, exist_ok=True)
    for i in range(PAIRS):
        pixels = np.asarray(Image.open(before / f"elf_{i}.png"), dtype=np.int16)
        pixels[..., 0] = np.minimum(pixels[..., 0] + 120, 255)  # the attribute the slider learns: a red tint
        Image.fromarray(pixels.astype(np.uint8)).save(after / f"elf_{i}.png")
    Image.open(before / f"elf_{PAIRS}.png").resize((32, 32)).save(after / f"elf_{PAIRS}.png")  # size mismatch
    Image.new("RGB", (64, 64), (9, 9, 9)).save(before / "lonely.png")  # no partner


def pair_prompt(output_name):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "AtelierLoadImagePairs", "inputs": {
            "before_folder": "input/pairs_host", "before_sub_path": "before", "after_folder": "input/pairs_host",
            "after_sub_path": "after", "rule": "same_name", "suffix": "_after", "repeats": 1,
            "caption_source": "fixed", "fixed_caption": "blonde elf", "verify_images": True}},
        "3": prepare_dataset_node(["2", 0]),
        "4": {"class_type": "AtelierTrainPairSlider", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["3", 0], "output_name": output_name,
            "pair_strength": 1.0, "rank": 4, "alpha": 1.0, "unet_lr": 1e-3, "max_steps": 3, "seed": 0,
            "reuse": False}},
    }


def test_pair_slider_trains_records_skips_and_moves_both_ways(comfy, comfy_server):
    """Trains 3 steps, then samples with stock LoraLoader at +1, 0, −1 (KSampler, 3 euler steps, cfg 1, two seeds)
    and reads the KSampler's output LATENT through stock SaveLatent: cos(L(+1) − L(0), L(−1) − L(0)) < −0.9
    (measured −0.976, −0.993, −0.973 for seeds 7, 8, 9), so the two strengths move the model in opposite directions.

    Decoded pixels cannot show this (the fixture's random VAE saturates them; a pixel cosine came out +0.43), hence
    the latent. unet_lr is 1e-3: at 5e-3 the 3-step LoRA is already so strong on the random weights that the
    response is not linear in the strength and ±1 both push the same way (cosine −0.65, +0.04, −0.60 for seeds 7, 8, 9).
    What cannot be shown here is the sign along the intended direction, mean(VAEEncode(after) − VAEEncode(before)):
    measured cos(L(+1) − L(0), that direction) = −0.14, +0.30, −0.08 for seeds 7, 8, 9. The pair objective teaches
    the LoRA the base model's own response to after vs before, and a random-weight UNet is no denoiser, so that
    response has no fixed relation to the images' latent difference. The sign is shown on the tiny trained model
    (tests/core/test_pairs.py::test_plus_one_moves_toward_after_and_minus_one_toward_before)."""
    write_pairs(comfy_server.input_dir / "pairs_host")
    out = comfy.run(pair_prompt("host_pair_slider"), timeout=600)
    report = json.loads(out["4"]["text"][0])
    assert report["steps"] == 3
    skipped = "\n".join(report["skipped"])
    assert "lonely.png: no 'after' image named lonely" in skipped
    assert "elf_3.png: 32×32 but its partner elf_3.png is 64×64" in skipped
    path = comfy_server.models / "loras" / "atelier" / "host_pair_slider.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    objective = json.loads(meta["atelier_objective"])
    assert objective["method"] == "pair_slider" and objective["pairs"] == PAIRS and objective["strength"] == 1.0
    assert objective["use"] == "+1 = after, -1 = before" and len(objective["skipped"]) == 2

    log_before = len(comfy_server.log_text())
    lora = "atelier/host_pair_slider.safetensors"
    for seed in (7, 8):
        at = {s: sample_latent(comfy, comfy_server, "blonde elf", seed=seed, prefix=f"pair_{seed}", lora=lora,
                               strength=s, steps=3, cfg=1.0) for s in (0.0, 1.0, -1.0)}
        up, down = at[1.0] - at[0.0], at[-1.0] - at[0.0]
        assert np.abs(up).max() > 0 and np.abs(down).max() > 0, "+1 and −1 must both change the sampled latent"
        assert cosine(up, down) < -0.9, f"seed {seed}: +1 and −1 moved the latent the same way ({cosine(up, down)})"
    assert "lora key not loaded" not in comfy_server.log_text()[log_before:]


def test_the_same_folder_on_both_sides_is_refused(comfy, comfy_server):
    """With the same_name rule, one folder as both 'before' and 'after' would pair each image with itself."""
    folder = comfy_server.input_dir / "pairs_same" / "both"
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (200, 180, 150)).save(folder / "a.png")
    node = {"class_type": "AtelierLoadImagePairs", "inputs": {
        "before_folder": "input/pairs_same", "before_sub_path": "both", "after_folder": "input/pairs_same",
        "after_sub_path": "both/.", "rule": "same_name", "suffix": "_after", "repeats": 1, "caption_source": "fixed",
        "fixed_caption": "x", "verify_images": True}}
    entry = comfy.wait(comfy.queue({"1": node, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}),
                       timeout=120)
    assert entry["status"]["status_str"] == "error"
    error = next(m[1]["exception_message"] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert "are the same folder, so every image would pair with itself" in error


def test_a_plain_training_node_refuses_a_pairs_dataset(comfy, comfy_server):
    """Train LoRA would quietly learn only the 'after' images of pairs: it refuses them, naming the slider node."""
    root = comfy_server.input_dir / "pairs_plain"
    for side, colour in (("before", (90, 90, 90)), ("after", (200, 60, 60))):
        (root / side).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), colour).save(root / side / "a.png")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "AtelierLoadImagePairs", "inputs": {
            "before_folder": "input/pairs_plain", "before_sub_path": "before", "after_folder": "input/pairs_plain",
            "after_sub_path": "after", "rule": "same_name", "suffix": "_after", "repeats": 1,
            "caption_source": "fixed", "fixed_caption": "x", "verify_images": True}},
        "3": prepare_dataset_node(["2", 0]),
        "4": {"class_type": "AtelierTrainLoRA", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["3", 0], "output_name": "pairs_plain",
            "rank": 4, "alpha": 4.0, "unet_lr": 1e-3, "epochs": 1, "max_steps": 1, "batch_size": 1,
            "train_text_encoder": False, "te_lr": 1e-4, "seed": 0}},
    }
    entry = comfy.wait(comfy.queue(prompt), timeout=300)
    assert entry["status"]["status_str"] == "error"
    error = next(m[1]["exception_message"] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert "holds 1 before/after image pairs (Load Image Pairs); only Train Slider LoRA from Pairs" in error
    assert not (comfy_server.models / "loras" / "atelier" / "pairs_plain.safetensors").exists()
