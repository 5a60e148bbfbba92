"""The leakage check: neutral prompts rendered with and without a LoRA at the same seeds, the distance between each
pair (pixels, and the VAE encodings of both renders), and a sheet base | base+LoRA | amplified difference. Cells go
through the compare nodes' rendering path (nodes/grids.py render_specs); the measures live in core/leakage.py."""

from __future__ import annotations

import json

from .compat import io

import comfy.model_management

from ..core.draw import pil_to_image_tensor
from ..core.grid import Axis, draw_grid
from ..core.leakage import CHANGED_THRESHOLD, HEATMAP_GAIN, MEANINGS, difference_heatmap, pair_distances, summarize
from ..core.lora_math import STRENGTH_LIMIT, check_strength
from ..core.paths import safe_name
from .cells import CellSpec
from .compare import finish_sheet, lora_input, model_inputs, settings, short
from .grids import common_inputs, lora_choice, render_specs, speed_inputs
from .lora_files import lora_files_input, run_files
from .provenance import connected_checkpoint

DEFAULT_PROMPTS = "a red cube on a table\na landscape, mountains\na dog in a park"
MAX_PROMPTS = 32  # rows are prompts x seeds; 32 x 16 seeds x 2 renders is already a long run


def prompt_lines(prompts: str) -> list[str]:
    """The non-empty lines of `prompts`, checked for count."""
    lines = [p.strip() for p in prompts.splitlines() if p.strip()]
    if not lines:
        raise ValueError("The leakage check needs at least one neutral prompt: write one prompt per line about what "
                         "the LoRA must NOT change (e.g. 'a dog in a park').")
    if len(lines) > MAX_PROMPTS:
        raise ValueError(f"The leakage check got {len(lines)} prompts; the limit is {MAX_PROMPTS}. Use fewer lines.")
    return lines


def checked_lora(lora: str, lora_files) -> str:
    """The LoRA to measure: the connected training run's final file, else the dropdown's (re-checked) choice."""
    name = run_files(lora_files).final if lora_files is not None else lora_choice(lora)
    if name is None:
        raise ValueError("The leakage check measures a LoRA: choose it in 'lora' or connect a training node's "
                         "lora_files output.")
    return name


def plan(lines: list[str], seeds: int, base: dict, name: str, strength: float) -> tuple[list, list, list]:
    """(specs, cells, rows): per prompt and seed a base cell then the same cell with the LoRA."""
    specs, cells, rows = [], [], []
    for row, (text, k) in enumerate((t, k) for t in lines for k in range(seeds)):
        rows.append((text, base["seed"] + k))
        for col, loras in enumerate(((), ((name, float(strength)),))):
            specs.append(CellSpec(loras=loras, **{**base, "seed": base["seed"] + k, "positive": text}))
            cells.append({"row": row, "col": col, "settings": specs[-1].describe()})
    return specs, cells, rows


def encode(vae, image):
    """The VAE encoding of one rendered image, one at a time so equal images give equal latents bit for bit."""
    return vae.encode(pil_to_image_tensor([image])[:, :, :, :3])  # IMAGE is BHWC in 0..1, as VAE Encode takes it


def measure(vae, images: list, rows: list) -> tuple[list, list, list]:
    """(pairs for core.leakage.summarize, sheet rows [base, LoRA, heatmap], captions) for rendered pairs."""
    pairs, grid, captions = [], [], []
    for r, (text, seed) in enumerate(rows):
        comfy.model_management.throw_exception_if_processing_interrupted()
        base, lora = images[2 * r], images[2 * r + 1]
        d = pair_distances(base, lora, encode(vae, base), encode(vae, lora))
        pairs.append({"prompt": text, "seed": seed, "distances": d})
        grid.append([base, lora, difference_heatmap(base, lora)])
        captions.append(["", "", f"RMSE {d['pixel_rmse']:.3f}"])  # the rest is in the report: cells are small
    return pairs, grid, captions


def report_of(name: str, strength: float, summary: dict) -> str:
    """The report output: JSON with per-prompt distances, the means, and what each number means."""
    return json.dumps({"lora": name, "strength": strength, **summary, "measures": MEANINGS,
                       "latent": "VAE encodings of the two rendered 8-bit images (the render keeps no latents)",
                       "changed_threshold": CHANGED_THRESHOLD, "heatmap_gain": HEATMAP_GAIN},
                      indent=1, allow_nan=False)


def summary_text(summary: dict) -> str:
    """The report panel's lines: the means, then each prompt's means."""
    def line(m):
        return (f"pixel RMSE {m['pixel_rmse']:.4f} · MAE {m['pixel_mae']:.4f} · {100 * m['changed']:.1f}% changed · "
                f"latent RMSE {m['latent_rmse']:.4f}")
    return "\n".join([f"leakage (0 = the LoRA changes nothing): {line(summary['mean'])}"]
                     + [f"{p['prompt'][:80]}: {line(p['mean'])}" for p in summary["per_prompt"]])


class AtelierCheckLeakage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierCheckLeakage", display_name="Check LoRA Leakage (Atelier)", category="atelier/grids",
            description="Renders neutral prompts (things the LoRA should NOT change) with and without the LoRA at the "
                        "same seeds and measures how far apart each pair lands, in pixels and in the VAE's latent "
                        "space: base | base+LoRA | difference x4 per row. 0 = the LoRA leaves them alone.",
            inputs=[
                *model_inputs(),
                lora_input("lora", "The LoRA to check (ignored when lora_files is connected)."),
                io.Float.Input("strength", default=1.0, min=-STRENGTH_LIMIT, max=STRENGTH_LIMIT, step=0.01,
                               tooltip="LoRA strength of the right-hand cells (1 = as trained)."),
                io.String.Input("prompts", default=DEFAULT_PROMPTS, multiline=True,
                                tooltip="Neutral prompts, one per line: subjects the LoRA must not change (no "
                                        "trigger word). Each line becomes one row per seed."),
                io.Int.Input("seeds", default=2, min=1, max=16, tooltip="Seeds per prompt: seed, seed+1, ..."),
                *[i for i in common_inputs() if i.id != "positive"],
                io.String.Input("grid_name", default="leakage", tooltip="File name prefix in output/atelier/grids."),
                *speed_inputs(),
                lora_files_input("Optional: the lora_files output of a Train LoRA node; its final file is checked "
                                 "instead of the lora choice, so one queued graph trains then measures."),
            ],
            outputs=[io.Image.Output("sheet", tooltip="base | base+LoRA | |difference| x4, one row per prompt · seed."),
                     io.String.Output("report", tooltip="JSON: per-prompt distances (per seed and mean), overall "
                                                        "means, and what each number means."),
                     io.Float.Output("mean_pixel_rmse", tooltip="Mean pixel RMSE over prompts (0..1; 0 = no change)."),
                     io.String.Output("file", tooltip="The saved sheet PNG (its metadata holds every cell's settings "
                                                      "and the distances).")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt], is_output_node=True)

    @classmethod
    def execute(cls, model, clip, vae, lora, strength, prompts, seeds, negative, seed, steps, cfg, sampler, scheduler,
                width, height, grid_name, batch_size=4, resume=True, lora_files=None) -> io.NodeOutput:
        safe_name(grid_name, "grid_name")  # a bad name is refused before any cell is rendered
        name = checked_lora(lora, lora_files)
        strength = check_strength(strength, "strength")
        lines = prompt_lines(prompts)
        base = settings("", negative, seed, steps, cfg, sampler, scheduler, width, height)
        specs, cells, rows = plan(lines, seeds, base, name, strength)
        images, renderer = render_specs(model, clip, vae, specs, batch_size=batch_size, resume=resume)
        pairs, grid, captions = measure(vae, images, rows)
        summary = summarize(pairs)
        for r, pair in enumerate(pairs):
            cells[2 * r + 1]["distances"] = pair["distances"]
        labels = ["base model", f"{short(name)} @ {strength:g}", f"difference x{HEATMAP_GAIN:g}"]
        x = Axis("lora", tuple(labels), "compared")
        y = Axis("seed", tuple(range(len(rows))), "prompt · seed")
        mean = summary["mean"]["pixel_rmse"]
        sheet = draw_grid(grid, x, y, x_labels=labels, y_labels=[f"{t[:80]} · seed {s}" for t, s in rows],
                          captions=captions, title=f"leakage of {short(name)} @ {strength:g} · mean pixel RMSE "
                                                   f"{mean:.4f} · {steps} steps · cfg {cfg:g}")
        out = finish_sheet(sheet, grid_name, {"x": x, "y": y}, cells,
                           {**base, "seeds": seeds, "lora": name, "strength": strength, "mean": summary["mean"]},
                           renderer, images, summary_text(summary), checkpoint=connected_checkpoint(model, cls.hidden))
        return io.NodeOutput(out.args[0], report_of(name, strength, summary), mean, out.args[1], ui=out.ui)


NODES = [AtelierCheckLeakage]
