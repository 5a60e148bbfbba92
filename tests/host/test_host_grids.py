"""Comparison grids through a real ComfyUI server on the fixture checkpoint."""

import os

import numpy as np
import pytest
from comfy_host import FIXTURE_CHECKPOINT_NAME, render, saved_pixels, txt2img_prompt
from PIL import Image

LOADER = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}}}


def grid_inputs(**overrides) -> dict:
    """The XY grid with txt2img_prompt's settings (64², 3 euler steps, cfg 4, empty negative)."""
    inputs = dict(model=["1", 0], clip=["1", 1], vae=["1", 2], positive="x style", negative="", x_kind="strength",
                  x_values="0,1", y_kind="none", y_values="", lora="(none)", strength=1.0, baseline="none", seed=1,
                  steps=3, cfg=4.0, sampler="euler", scheduler="normal", denoise=1.0, width=64, height=64,
                  grid_name="host", batch_size=4, resume=False)
    inputs.update(overrides)
    return inputs


def grid_cells(comfy, comfy_server, prefix: str, **overrides) -> tuple[list, dict]:
    """Runs the XY grid; returns its cells as int16 arrays (saved by a stock SaveImage) and the grid's outputs."""
    out = comfy.run({**LOADER, "2": {"class_type": "AtelierXYGrid", "inputs": grid_inputs(**overrides)},
                     "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 2], "filename_prefix": prefix}}},
                    timeout=600)
    files = [comfy_server.output_dir / i["subfolder"] / i["filename"] for i in out["3"]["images"]]
    return [np.asarray(Image.open(f), dtype=np.int16) for f in files], out["2"]




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
    path = comfy_server.file(out["2"]["text"][0])  # the ui names it under output/, never by its server path
    assert out["2"]["text"][0].startswith("output/atelier/grids/epochs_") and path.suffix == ".png"
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
    assert "10000 cells" in err(x_values="0-1 [100]", y_kind="seed", y_values="1-100")
    assert "matched none of the" in err(x_kind="lora", x_values="nothing_here/*")  # a LoRA folder with no files


def test_batched_cells_match_stock_lora_loader_runs(comfy, comfy_server, rand_lora):
    """2 seeds x strengths 0, 0.5, 1 in one batch of 6 against 6 stock LoraLoader + KSampler runs."""
    cells, out = grid_cells(comfy, comfy_server, "batched", lora=rand_lora, x_values="0,0.5,1", y_kind="seed",
                            y_values="1,2", batch_size=6)
    assert "6 cells rendered" in out["text"][-1] and "1 sampler batches" in out["text"][-1]
    for k, (seed, strength) in enumerate((s, t) for s in (1, 2) for t in (0.0, 0.5, 1.0)):
        stock = render(comfy, comfy_server, "x style", seed=seed, prefix=f"stock{k}",
                       lora=rand_lora if strength else None, strength=strength)
        diff = np.abs(stock - cells[k])
        # Same maths; only float summation order differs (batched GEMMs, W x + s B A x instead of (W + s B A) x).
        assert diff.max() <= (1 if strength == 0 else 4) and diff.mean() < 0.2, (seed, strength, diff.max())
        if strength:
            assert np.abs(cells[k] - cells[k - k % 3]).mean() > 5  # the LoRA (UNet and CLIP) really acts
    # Alone in its batch, a strength-0 cell is the stock image bit for bit.
    alone, _ = grid_cells(comfy, comfy_server, "alone", lora=rand_lora, x_values="0", seed=2, batch_size=1)
    assert np.array_equal(alone[0], render(comfy, comfy_server, "x style", seed=2, prefix="stock_alone"))


def test_ancestral_sampler_cells_get_their_own_noise(comfy, comfy_server, rand_lora):
    """euler_ancestral draws noise every step: batched cells must draw what their seed draws alone."""
    cells, out = grid_cells(comfy, comfy_server, "anc", lora=rand_lora, x_kind="seed", x_values="1,2,3",
                            strength=0.5, sampler="euler_ancestral", batch_size=3)
    assert "1 sampler batches" in out["text"][-1]
    for k, seed in enumerate((1, 2, 3)):
        prompt = txt2img_prompt("x style", seed=seed, prefix=f"anc{k}", lora=rand_lora, strength=0.5)
        prompt["5"]["inputs"]["sampler_name"] = "euler_ancestral"
        stock = saved_pixels(comfy_server, comfy.run(prompt))
        assert np.abs(stock - cells[k]).max() <= 4 and np.abs(stock - cells[k]).mean() < 0.2


@pytest.mark.parametrize("sampler", ["res_multistep_ancestral", "ddpm"])
def test_samplers_the_probe_now_batches_still_match_stock_runs(comfy, comfy_server, rand_lora, sampler):
    """The noise probe (nodes/compat.py) batches these, where the old source-text search ran them one by one: each
    batched cell must still be what its seed gives alone with the stock sampler."""
    cells, out = grid_cells(comfy, comfy_server, f"probe_{sampler}", lora=rand_lora, x_kind="seed", x_values="1,2",
                            strength=0.5, sampler=sampler, batch_size=2)
    assert "1 sampler batches" in out["text"][-1]
    for k, seed in enumerate((1, 2)):
        prompt = txt2img_prompt("x style", seed=seed, prefix=f"probe_{sampler}{k}", lora=rand_lora, strength=0.5)
        prompt["5"]["inputs"]["sampler_name"] = sampler
        stock = saved_pixels(comfy_server, comfy.run(prompt))
        assert np.abs(stock - cells[k]).max() <= 4 and np.abs(stock - cells[k]).mean() < 0.2, (sampler, seed)


def test_z_pages_seeds_per_cell_and_checkpoint_axis(comfy, comfy_server):
    copy = comfy_server.models / "checkpoints" / "grid_copy.safetensors"
    if not copy.exists():
        os.link(comfy_server.models / "checkpoints" / FIXTURE_CHECKPOINT_NAME, copy)
    cells, out = grid_cells(comfy, comfy_server, "ckpt", x_kind="checkpoint",
                            x_values=f"{FIXTURE_CHECKPOINT_NAME}, grid_copy.safetensors", z_kind="cfg",
                            z_values="3,5", seeds_per_cell=2, cell_caption="settings", steps=2)
    from atelier.core.grid import read_png_metadata

    pages = [comfy_server.file(p) for p in out["text"][:2]]
    assert len(pages) == 2 and all(p.suffix == ".png" for p in pages) and len(cells) == 8
    metas = [read_png_metadata(p) for p in pages]
    assert [m["extra"]["page"] for m in metas] == [0, 1]
    assert [c["settings"]["cfg"] for c in metas[1]["cells"]] == [5.0] * 4
    assert [c["settings"]["seed"] for c in metas[0]["cells"]] == [1, 2, 1, 2]
    # cells: page, column (checkpoint), seed. The copy holds the same weights: same images, bit for bit.
    for page in (0, 4):
        assert np.array_equal(cells[page], cells[page + 2]) and np.array_equal(cells[page + 1], cells[page + 3])
        assert np.abs(cells[page] - cells[page + 1]).mean() > 1  # the two seeds differ
    assert np.abs(cells[0] - cells[4]).mean() > 0.5  # cfg 3 vs 5 differ
    with Image.open(pages[0]) as img:
        assert img.width > 4 * 64  # two columns of two seeds side by side


def test_interrupted_grid_resumes_without_redoing_finished_cells(comfy, comfy_server, rand_lora):
    inputs = grid_inputs(lora=rand_lora, x_values="0-1 [6]", steps=6, batch_size=1, resume=True, grid_name="res")
    prompt = {**LOADER, "2": {"class_type": "AtelierXYGrid", "inputs": inputs},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 2], "filename_prefix": "resumed"}}}
    prompt_id = comfy.queue(prompt)
    comfy.wait_for_event("progress", timeout=300, predicate=lambda d: d.get("node") == "2" and d["value"] >= 2)
    comfy.interrupt()
    entry = comfy.wait(prompt_id, timeout=300)
    assert entry["status"]["status_str"] == "error"
    cache = comfy_server.output_dir / "atelier" / "grids" / "cells"
    finished = len(list(cache.glob("*.png")))
    assert 2 <= finished < 6
    out = comfy.run(prompt, timeout=600)
    assert f"{6 - finished} cells rendered, {finished} reused" in out["2"]["text"][-1]
    assert not list(cache.glob("*.png"))  # the grid was saved: its finished cells are gone
    files = [comfy_server.output_dir / i["subfolder"] / i["filename"] for i in out["3"]["images"]]
    resumed = [np.asarray(Image.open(f), dtype=np.int16) for f in files]
    fresh, _ = grid_cells(comfy, comfy_server, "fresh", lora=rand_lora, x_values="0-1 [6]", steps=6, batch_size=1)
    assert all(np.array_equal(a, b) for a, b in zip(resumed, fresh))


def test_prompts_of_different_token_lengths_share_a_batch(comfy, comfy_server):
    """A 77-token and a 154-token prompt in one batch: the short one is repeated to the common length, as ComfyUI
    does when it concatenates conds, so both cells match their stock images."""
    long_text = "x style, " + ", ".join(f"detail {i}" for i in range(60))
    cells, out = grid_cells(comfy, comfy_server, "lengths", x_kind="prompt_sr", x_values=f'x style, "{long_text}"',
                            batch_size=2)
    assert "2 cells rendered" in out["text"][-1] and "1 sampler batches" in out["text"][-1]
    for k, text in enumerate(("x style", long_text)):
        stock = render(comfy, comfy_server, text, seed=1, prefix=f"len{k}")
        assert np.abs(stock - cells[k]).max() <= 1, text[:20]
    assert np.abs(cells[0] - cells[1]).mean() > 1


def test_loha_is_merged_the_stock_way_and_still_matches(comfy, comfy_server):
    """A LoHa cannot be added at forward time: it is merged once per strength, exactly as LoraLoader does."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(9)
    base = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    t = {f"{base}.hada_w1_a": torch.randn(320, 2, generator=g) * 0.3,
         f"{base}.hada_w1_b": torch.randn(2, 320, generator=g) * 0.3,
         f"{base}.hada_w2_a": torch.randn(320, 2, generator=g) * 0.3,
         f"{base}.hada_w2_b": torch.randn(2, 320, generator=g) * 0.3, f"{base}.alpha": torch.tensor(2.0)}
    save_file(t, str(comfy_server.models / "loras" / "grid_loha.safetensors"))
    cells, out = grid_cells(comfy, comfy_server, "loha", lora="grid_loha.safetensors", x_values="0,1", batch_size=1)
    assert "grid_loha.safetensors is merged into the weights per strength" in out["text"][-1]
    for k, strength in enumerate((0.0, 1.0)):
        stock = render(comfy, comfy_server, "x style", seed=1, prefix=f"loha{k}",
                       lora="grid_loha.safetensors" if strength else None, strength=strength)
        assert np.array_equal(stock, cells[k])  # the same merge, one cell per batch: bit for bit
    assert np.abs(cells[0] - cells[1]).mean() > 1
