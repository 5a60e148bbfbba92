"""How each example workflow runs tiny: the widget values that replace the real-scale ones, the tiny inputs they
point at, and the files each Note promises.

TINY = {
    "caption_a_folder": {
        "Images": {"sub_path": "tiny_uncaptioned"},
        "WD14 Tags": {"model": "tiny-wd14", "general_threshold": 0.5},
    },workflow stem: {node title (or type, for nodes left with their default title): {widget: value}}}.
A new workflow in example_workflows/ needs an entry here (test_browser_examples.py fails until it has one); add
tiny folders or files it needs to make_tiny_inputs, and a PROMISES line for a node type that writes new files.
"""

from pathlib import Path

from comfy_host import FIXTURE_CHECKPOINT_NAME, random_lora, write_elf_folder
from tiny_tagger import write_tiny_tagger

FIXTURE = {"ckpt_name": FIXTURE_CHECKPOINT_NAME}
QUICK_FINETUNE = {"epochs": 1, "max_steps": 1, "gradient_checkpointing": False}
QUICK_GRID = {"width": 64, "height": 64, "steps": 1, "batch_size": 4}
QUICK_LORA = {"epochs": 1, "max_steps": 1, "rank": 4, "alpha": 2.0}

TINY = {
    "caption_a_folder": {
        "Images": {"sub_path": "tiny_uncaptioned"},
        "WD14 Tags": {"model": "tiny-wd14", "general_threshold": 0.5},
    },
    "starsector_portrait_style": {
        "CheckpointLoaderSimple": FIXTURE,
        "Portraits": {"sub_path": "tiny_portraits"},
        "Regularisation Set": {"sub_path": "tiny_regularization"},
        "Prepare 512": {"width": 64, "height": 64},
        "Full Fine-Tune": QUICK_FINETUNE,
        "Hypernetwork": {"epochs": 1, "max_steps": 1},
        "CFG x Steps (fine-tune)": {**QUICK_GRID, "x_values": "4,7", "y_values": "1,2"},
        "CFG x Steps (hypernetwork)": {**QUICK_GRID, "x_values": "4,7", "y_values": "1,2"},
    },
    "style_and_character_from_screencaps": {
        "CheckpointLoaderSimple": FIXTURE,
        "Screencaps (captions from file names)": {"sub_path": "tiny_screencaps"},
        "Crop 512": {"width": 64, "height": 64},
        "Fan Art (hand captions)": {"sub_path": "tiny_portraits"},
        "Letterbox 512": {"width": 64, "height": 64},
        "Phase 1 (3e-6)": QUICK_FINETUNE,
        "Phase 2 (2e-6)": QUICK_FINETUNE,
        "Sampler x CFG": {**QUICK_GRID, "x_values": "euler_ancestral,lms", "y_values": "7,4"},
    },
    "xy_grid_of_a_finished_run": {
        "CheckpointLoaderSimple": FIXTURE,
        "Epochs x Strength": {**QUICK_GRID, "y_values": "atelier/tiny_run*", "x_values": "0.5,1"},
    },
    "merge_resize_extract_loras": {
        "Merge": {"lora_1": "tiny_style.safetensors", "lora_2": "tiny_character.safetensors", "rank": 4},
        "Resize": {"lora": "tiny_character.safetensors", "rank": 2},
        "Base Checkpoint": FIXTURE,
        "Fine-Tuned Checkpoint": {"ckpt_name": "tiny_tuned.safetensors"},
        "Extract": {"rank": 4},
    },
    "banner_generator": {
        "CheckpointLoaderSimple": FIXTURE,
        "Steam Banners": {"sub_path": "tiny_portraits"},
        "Letterbox 256": {"width": 64, "height": 64},
        "Banner LoRA (5,000 kimg)": {**QUICK_LORA, "batch_size": 1, "grad_accum": 1, "save_every_steps": 0},
        "Truncation: 1.0 vs 0.7": {**QUICK_GRID, "seeds": 1},
        "Mixing A x B": {**QUICK_GRID, "lora_b": "tiny_style.safetensors", "strengths_a": "0, 1",
                         "strengths_b": "0, 1"},
        "Real vs Generated": {**QUICK_GRID, "count": 2},
        "Projection (Reconstruction Check)": {**QUICK_GRID, "count": 2},
    },
    "character_from_3d_renders": {
        "CheckpointLoaderSimple": FIXTURE,
        "Art-Style Renders (copier set)": {"sub_path": "tiny_regularization", "repeats": 1},
        "Style 512 (white background)": {"width": 64, "height": 64},
        "Copier LoRA (dim 64 / alpha 32)": QUICK_LORA,
        "Character Renders": {"sub_path": "tiny_renders", "repeats": 1},
        "WD14 Tags (0.5, escaped)": {"model": "tiny-wd14"},
        "Character 512 (white background)": {"width": 64, "height": 64},
        "384x384 Copy x 2": {"size": 64, "repeats": 1},
        "Character LoRA (dim 32 / alpha 16)": QUICK_LORA,
        "Strength Grid (original model)": {**QUICK_GRID, "x_values": "0.5,1", "y_values": "run 1-1"},
        "Leakage (original model)": {**QUICK_GRID, "seeds": 1},
    },
    "slider_from_prompts": {
        "CheckpointLoaderSimple": FIXTURE,
        "Smile Slider": {"max_steps": 1, "resolution": 64, "denoise_steps": 2},
        "Slider -1 ... +1": {**QUICK_GRID, "x_values": "-1,1", "y_values": "0"},
    },
}

# node type -> the files (globs relative to the server's folder, ** included) it promises, from its widget values
PROMISES = {
    "AtelierTrainFullFineTune": lambda w: [f"models/checkpoints/atelier/{w['output_name']}.safetensors"],
    "AtelierTrainHypernetwork": lambda w: [f"models/hypernetworks/atelier/{w['output_name']}.pt"],
    "AtelierXYGrid": lambda w: [f"output/atelier/grids/{w['grid_name']}_*.png"],
    "AtelierMergeLoRAs": lambda w: [f"models/loras/atelier/{w['output_name']}.safetensors"],
    "AtelierResizeLoRA": lambda w: [f"models/loras/atelier/{w['output_name']}.safetensors"],
    "AtelierExtractLoRA": lambda w: [f"models/loras/atelier/{w['output_name']}.safetensors"],
    "AtelierWriteCaptions": lambda w: [f"output/atelier/captions/{w['set_name']}/**/*{w['caption_extension']}"],
    "AtelierDedupeDataset": lambda w: [f"output/atelier/reports/{w['report_name']}*.json"],
    "AtelierTrainLoRAAdvanced": lambda w: [f"models/loras/atelier/{w['output_name']}.safetensors"],
    "AtelierTrainCopyMachine": lambda w: [f"models/loras/atelier/{w['output_name']}.safetensors"],
    "AtelierTrainTextSlider": lambda w: [f"models/loras/atelier/{w['output_name']}.safetensors"],
    "AtelierCompareSideBySide": lambda w: [f"output/atelier/grids/{w['grid_name']}_*.png"],
    "AtelierPlotStrengthMatrix": lambda w: [f"output/atelier/grids/{w['grid_name']}_*.png"],
    "AtelierCompareRealGenerated": lambda w: [f"output/atelier/grids/{w['grid_name']}_*.png"],
    "AtelierCheckReconstruction": lambda w: [f"output/atelier/grids/{w['grid_name']}_*.png"],
    "AtelierCheckLeakage": lambda w: [f"output/atelier/grids/{w['grid_name']}_*.png"],
}


def tuned_checkpoint(fixture: Path, out: Path) -> Path:
    """The fixture with its UNet attention weights scaled by 1.05: a 'fine-tuned' model that differs from the base."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(fixture))
    for key, value in tensors.items():
        if key.startswith("model.diffusion_model.") and ".attn" in key and key.endswith(".weight"):
            tensors[key] = value * 1.05
    save_file(tensors, str(out))
    return out


def make_tiny_inputs(server) -> None:
    """Every tiny folder and file the TINY values name, made in the server's own input/ and models/ folders."""
    from PIL import Image

    write_elf_folder(server.input_dir / "tiny_portraits", 3, seed=11)
    write_elf_folder(server.input_dir / "tiny_regularization", 2, seed=12)
    caps = server.input_dir / "tiny_screencaps"
    write_elf_folder(caps, 3, seed=13)
    for i, png in enumerate(sorted(caps.glob("*.png"))):  # captions live in the file names, as the card's set
        png.rename(caps / f"korra standing city street tlok artstyle {i}.png")
    for txt in caps.glob("*.txt"):
        txt.unlink()
    Image.open(next(caps.glob("*.png"))).save(caps / "korra duplicate frame.png")  # one near-duplicate to drop
    bare = write_elf_folder(server.input_dir / "tiny_uncaptioned", 2, seed=14)
    for txt in bare.glob("*.txt"):
        txt.unlink()
    renders = write_elf_folder(server.input_dir / "tiny_renders", 2, seed=15)
    for txt in renders.glob("*.txt"):
        txt.unlink()
    for png, name in zip(sorted(renders.glob("*.png")), ("face_0.png", "portrait_1.png")):  # composition by name
        png.rename(renders / name)
    write_tiny_tagger(server.models / "wd14_tagger" / "tiny-wd14")
    ckpt = server.models / "checkpoints" / FIXTURE_CHECKPOINT_NAME
    loras = server.models / "loras"
    random_lora(ckpt, loras / "tiny_style.safetensors", seed=1)
    random_lora(ckpt, loras / "tiny_character.safetensors", seed=2)
    for epoch in (1, 2):
        random_lora(ckpt, loras / "atelier" / f"tiny_run-{epoch}.safetensors", seed=10 + epoch)
    tuned_checkpoint(ckpt, server.models / "checkpoints" / "tiny_tuned.safetensors")
