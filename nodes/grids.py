"""Comparison grid nodes: XY grids of LoRA files / strengths / sampler settings, labelled and reproducible."""

from __future__ import annotations

import time

from comfy_api.latest import io

import comfy.model_management
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths

from ..core.draw import pil_to_image_tensor
from ..core.grid import AXIS_KINDS, Axis, draw_grid, grid_metadata, parse_values, plan_cells, save_png_with_metadata
from ..core.lora_io import load_lora
from ..core.paths import safe_name
from .host import output_subdir
from .sampling import render_image

NONE = "(none)"
GRID_KINDS = [k for k in AXIS_KINDS if k != "checkpoint"]


def choices_for(kind: str) -> list[str] | None:
    if kind == "lora":
        return folder_paths.get_filename_list("loras")
    if kind == "sampler":
        return list(comfy.samplers.KSampler.SAMPLERS)
    if kind == "scheduler":
        return list(comfy.samplers.KSampler.SCHEDULERS)
    return None


def cell_settings(cell: dict, x: Axis, y: Axis | None, defaults: dict) -> dict:
    """The generation settings of one cell: the defaults with the x and y values applied (baseline: no LoRA)."""
    s = dict(defaults)
    for axis, value in ((x, cell["x"]), (y, cell.get("y"))):
        if axis is None or value is None:
            continue
        if axis.kind == "prompt_sr":
            s["positive"] = s["positive"].replace(axis.values[0], value)
        elif axis.kind == "sampler":
            s["sampler"] = value
        else:
            s[axis.kind] = value
    if cell.get("baseline"):
        s["lora"] = None
    return s


class AtelierXYGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        axis_help = ("Values: numbers '0,0.5,1', ranges '1-10 (+2)' or '0-1 [5]'; LoRA files by name or "
                     "'folder/*' (natural order: epoch 2 before 10); samplers by name; prompt_sr 'find, replace1, "
                     "...'; negative prompts separated by ' | '.")
        return io.Schema(
            node_id="AtelierXYGrid", display_name="XY Grid (Atelier)", category="atelier/grids",
            description="Samples a labelled grid over two axes (LoRA files, strength, CFG, steps, sampler, scheduler, "
                        "seed, prompt S/R, negative, denoise) with ComfyUI's sampler; saves a PNG that records "
                        "every cell's settings.",
            inputs=[
                io.Model.Input("model", tooltip="The base model."),
                io.Clip.Input("clip", tooltip="Its CLIP."),
                io.Vae.Input("vae", tooltip="Decodes the cells."),
                io.String.Input("positive", default="a starsectorportrait of a person", multiline=True,
                                tooltip="Prompt of every cell (prompt_sr axes replace parts of it)."),
                io.String.Input("negative", default="", multiline=True, tooltip="Negative prompt of every cell."),
                io.Combo.Input("x_kind", options=GRID_KINDS, default="strength",
                               tooltip="What changes across columns."),
                io.String.Input("x_values", default="0.25,0.5,0.75,1", tooltip=axis_help),
                io.Combo.Input("y_kind", options=["none"] + GRID_KINDS, default="lora",
                               tooltip="What changes down the rows (none = one row)."),
                io.String.Input("y_values", default="*", tooltip=axis_help),
                io.Combo.Input("lora", options=[NONE] + folder_paths.get_filename_list("loras"), default=NONE,
                               tooltip="The LoRA of every cell when no axis chooses LoRA files."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="LoRA strength of every cell when no axis varies it."),
                io.Combo.Input("baseline", options=["none", "row", "column"], default="row",
                               tooltip="Add a first row / column without the LoRA (the y / x axis must be LoRA or "
                                       "strength)."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, tooltip="Seed of every cell (same seed = "
                                                                               "comparable cells)."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=30.0, step=0.1, tooltip="CFG scale."),
                io.Combo.Input("sampler", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               tooltip="ComfyUI sampler (euler_ancestral = A1111's Euler a)."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="normal",
                               tooltip="ComfyUI scheduler."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Denoise (1 = txt2img)."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8, tooltip="Cell width."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8, tooltip="Cell height."),
                io.String.Input("grid_name", default="grid", tooltip="File name prefix in output/atelier/grids."),
            ],
            outputs=[io.Image.Output("grid", tooltip="The labelled grid."),
                     io.String.Output("file", tooltip="The saved PNG (its metadata holds every cell's settings).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, positive, negative, x_kind, x_values, y_kind, y_values, lora, strength,
                baseline, seed, steps, cfg, sampler, scheduler, denoise, width, height, grid_name) -> io.NodeOutput:
        name = safe_name(grid_name, "grid_name")
        x = Axis(x_kind, tuple(parse_values(x_kind, x_values, choices=choices_for(x_kind))))
        y = None if y_kind == "none" else Axis(y_kind, tuple(parse_values(y_kind, y_values,
                                                                         choices=choices_for(y_kind))))
        cells = plan_cells(x, y, baseline=None if baseline == "none" else baseline,
                           megapixels_per_cell=width * height / 1e6)
        defaults = {"positive": positive, "negative": negative, "lora": None if lora == NONE else lora,
                    "strength": strength, "seed": seed, "steps": steps, "cfg": cfg, "sampler": sampler,
                    "scheduler": scheduler, "denoise": denoise}
        rows, cols = max(c["row"] for c in cells) + 1, max(c["col"] for c in cells) + 1
        images = [[None] * cols for _ in range(rows)]
        bar = comfy.utils.ProgressBar(len(cells))
        loras, patched, conds = {}, {}, {}
        for done, cell in enumerate(cells, 1):
            comfy.model_management.throw_exception_if_processing_interrupted()
            s = cell_settings(cell, x, y, defaults)
            key = (s["lora"], s["strength"]) if s["lora"] else None
            if key not in patched:  # each (LoRA, strength) patched once, whatever the cell order
                if key is None:
                    patched[key] = (model, clip)
                else:
                    if s["lora"] not in loras:
                        loras[s["lora"]] = load_lora(folder_paths.get_full_path_or_raise("loras", s["lora"]))[0]
                    patched[key] = comfy.sd.load_lora_for_models(model, clip, loras[s["lora"]], s["strength"],
                                                                 s["strength"])
            m, c = patched[key]
            for text in (s["positive"], s["negative"]):
                if (key, text) not in conds:  # each prompt encoded once per CLIP variant
                    conds[(key, text)] = c.encode_from_tokens_scheduled(c.tokenize(text))
            images[cell["row"]][cell["col"]] = render_image(
                m, conds[(key, s["positive"])], conds[(key, s["negative"])], vae, seed=s["seed"], steps=s["steps"],
                cfg=s["cfg"], sampler=s["sampler"], scheduler=s["scheduler"], width=width, height=height,
                denoise=s["denoise"])
            bar.update_absolute(done)
        x_labels = x.labels() if baseline != "column" else ["no LoRA"] + x.labels()
        y_labels = None
        if y is not None:
            y_labels = y.labels() if baseline != "row" else ["no LoRA"] + y.labels()
        grid = draw_grid(images, x, y, x_labels=x_labels, y_labels=y_labels,
                         title=f"{positive[:120]} · seed {seed} · {steps} steps · cfg {cfg:g} · {sampler}")
        path = output_subdir("atelier", "grids") / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}.png"
        axes = {"x": x} if y is None else {"x": x, "y": y}
        save_png_with_metadata(grid, path, grid_metadata(axes, cells, {**defaults, "width": width,
                                                                      "height": height, "baseline": baseline}))
        return io.NodeOutput(pil_to_image_tensor([grid]), str(path), ui={"text": [str(path)]})


NODES = [AtelierXYGrid]
