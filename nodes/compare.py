"""Comparison sheets beyond XY grids: A vs B side by side, the A x B strength matrix ("style mixing"), real vs
generated, and the reconstruction check. All cells go through nodes/cells.py (batched, forward-time LoRA)."""

from __future__ import annotations

import numpy as np
from .compat import io

import folder_paths

from ..core.draw import pil_to_image_tensor
from ..core.grid import Axis, draw_grid, grid_metadata, model_label, parse_values, run_file_label
from ..core.images import prepare_image
from ..core.lora_math import STRENGTH_LIMIT, check_strength
from ..core.paths import base_name, safe_name
from ..core.prepare import prepare_sample
from .cells import CONNECTED, CellSpec
from .grids import (check_choice, checked_sampling, common_inputs, finish, lora_choice, render_specs,
                    speed_inputs)
from .host import DATASET
from .lora_files import LORA_FILES, read_lora_metadata, run_files
from .provenance import connected_checkpoint
from .validate import NONE, check_number

FROM_RUN = ("Optional: the lora_files output of a Train LoRA node; when connected, the run's final file replaces "
            "the {choice} choice (labelled with its epoch), and this node runs after the training in the same "
            "queued graph.")


def lora_input(name: str, tooltip: str):
    return io.Combo.Input(name, options=[NONE] + folder_paths.get_filename_list("loras"), default=NONE,
                          tooltip=tooltip)


def run_input(name: str, choice: str):
    """The optional input that takes a training node's lora_files in place of the `choice` dropdown."""
    return LORA_FILES.Input(name, optional=True, tooltip=FROM_RUN.format(choice=choice))


def short(name: str | None) -> str:
    """A LoRA's label on a sheet (grids' model_label), or 'no LoRA'."""
    return model_label(name) if name else "no LoRA"


def chosen(choice: str, lora_files, input_name: str) -> tuple[str | None, str]:
    """(LoRA, its label on the sheet): the connected run's final file labelled with its epoch from metadata
    ("my_lora · final (epoch 3)"), else the dropdown's file re-checked (None for (none)) labelled by name."""
    if lora_files is None:
        name = lora_choice(choice)
        return name, short(name)
    final = run_files(lora_files, input_name).final
    return final, f"{short(final)} · {run_file_label('final', read_lora_metadata(final), final)}"


def settings(positive, negative, seed, steps, cfg, sampler, scheduler, width, height) -> dict:
    checked_sampling(sampler, scheduler, cfg)
    return dict(positive=positive, negative=negative, seed=seed, steps=steps, cfg=cfg, sampler=sampler,
                scheduler=scheduler, width=width, height=height)


def finish_sheet(sheet, name: str, axes: dict, cells: list, extra: dict, renderer, images, summary: str = "", *,
                 checkpoint: dict):
    """Saves the one sheet with its metadata (the connected checkpoint included) and returns the node output
    (sheet, file, cells, text)."""
    return finish([sheet], [grid_metadata(axes, cells, {**extra, "checkpoint": checkpoint})],
                  safe_name(name, "grid_name"), renderer, images, summary)


def sheet_outputs():
    return [io.Image.Output("grid", tooltip="The labelled sheet."),
            io.String.Output("file", tooltip="The saved PNG (its metadata holds every cell's settings)."),
            io.Image.Output("cells", tooltip="Every generated image, unlabelled, row by row.")]


def model_inputs():
    return [io.Model.Input("model", tooltip="The base model."), io.Clip.Input("clip", tooltip="Its CLIP."),
            io.Vae.Input("vae", tooltip="Decodes the cells.")]


class AtelierCompareSideBySide(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierCompareSideBySide", display_name="Side by Side A vs B (Atelier)",
            category="atelier/grids",
            description="The same prompts and seeds rendered two ways (LoRA, strength, negative prompt or "
                        "checkpoint), A in the left column and B in the right.",
            inputs=[
                *model_inputs(),
                io.String.Input("prompts", default="a starsectorportrait of a person", multiline=True,
                                tooltip="One prompt per line; each line becomes a row per seed."),
                lora_input("lora_a", "LoRA of side A ((none) = the base model)."),
                io.Float.Input("strength_a", default=1.0, min=-STRENGTH_LIMIT, max=STRENGTH_LIMIT, step=0.01,
                               tooltip="LoRA strength of side A."),
                io.String.Input("negative_a", default="", multiline=True, tooltip="Negative prompt of side A."),
                lora_input("lora_b", "LoRA of side B ((none) = the base model)."),
                io.Float.Input("strength_b", default=1.0, min=-STRENGTH_LIMIT, max=STRENGTH_LIMIT, step=0.01,
                               tooltip="LoRA strength of side B."),
                io.String.Input("negative_b", default="", multiline=True, tooltip="Negative prompt of side B."),
                io.Combo.Input("checkpoint_b", options=[NONE] + folder_paths.get_filename_list("checkpoints"),
                               default=NONE, tooltip="Render side B with this checkpoint instead of the connected "
                                                     "model ((none) = the connected model)."),
                io.Int.Input("seeds", default=2, min=1, max=64, tooltip="Seeds per prompt: seed, seed+1, ..."),
                *[i for i in common_inputs() if i.id not in ("positive", "negative")],
                io.String.Input("grid_name", default="side_by_side", tooltip="File name prefix in "
                                                                             "output/atelier/grids."),
                *speed_inputs(),
                run_input("lora_files_a", "lora_a"), run_input("lora_files_b", "lora_b"),
            ],
            outputs=sheet_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt], is_output_node=True)

    @classmethod
    def execute(cls, model, clip, vae, prompts, lora_a, strength_a, negative_a, lora_b, strength_b, negative_b,
                checkpoint_b, seeds, seed, steps, cfg, sampler, scheduler, width, height, grid_name, batch_size=4,
                resume=True, lora_files_a=None, lora_files_b=None) -> io.NodeOutput:
        safe_name(grid_name, "grid_name")  # a bad name is refused before any cell is rendered
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not lines:
            raise ValueError("Side by Side needs at least one prompt: write one prompt per line.")
        base = settings("", "", seed, steps, cfg, sampler, scheduler, width, height)
        (la, name_a), (lb, name_b) = chosen(lora_a, lora_files_a, "lora_files_a"), chosen(lora_b, lora_files_b,
                                                                                          "lora_files_b")
        strength_a = check_strength(strength_a, "strength_a")
        strength_b = check_strength(strength_b, "strength_b")
        ckpt_b = None if checkpoint_b == NONE else check_choice(
            checkpoint_b, folder_paths.get_filename_list("checkpoints"), "checkpoint_b")
        sides = [((la, strength_a), negative_a, CONNECTED), ((lb, strength_b), negative_b, ckpt_b or CONNECTED)]
        specs, cells = [], []
        for row, (text, k) in enumerate((t, k) for t in lines for k in range(seeds)):
            for col, ((lora, strength), negative, checkpoint) in enumerate(sides):
                s = CellSpec(loras=((lora, float(strength)),) if lora else (), checkpoint=checkpoint,
                             **{**base, "seed": seed + k, "positive": text, "negative": negative})
                specs.append(s)
                cells.append({"row": row, "col": col, "settings": s.describe()})
        images, renderer = render_specs(model, clip, vae, specs, batch_size=batch_size, resume=resume)

        def label(lora, name, strength, negative, checkpoint):
            parts = [name + (f" @ {strength:g}" if lora else "")]
            if negative_a != negative_b:
                parts.append(f"neg: {negative or '(empty)'}")
            if ckpt_b:
                parts.append(short(checkpoint) if checkpoint else "connected model")
            return " · ".join(parts)

        x = Axis("lora", ("A", "B"), "A vs B")
        y = Axis("seed", tuple(range(len(lines) * seeds)), "prompt · seed")
        grid = [images[i:i + 2] for i in range(0, len(images), 2)]
        sheet = draw_grid(grid, x, y, title=f"A vs B · {steps} steps · cfg {cfg:g} · {sampler}",
                          x_labels=[f"A: {label(la, name_a, strength_a, negative_a, None)}",
                                    f"B: {label(lb, name_b, strength_b, negative_b, ckpt_b)}"],
                          y_labels=[f"{t[:80]} · seed {seed + k}" for t in lines for k in range(seeds)])
        return finish_sheet(sheet, grid_name, {"x": x, "y": y}, cells, {"seeds": seeds}, renderer, images,
                            checkpoint=connected_checkpoint(model, cls.hidden))


class AtelierPlotStrengthMatrix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        values = "Strengths: '0, 0.5, 1', '0-1 [5]' or '0-1 (+0.25)'."
        return io.Schema(
            node_id="AtelierPlotStrengthMatrix", display_name="A × B Strength Matrix (Atelier)",
            category="atelier/grids",
            description="Two LoRAs mixed at every pair of strengths (\"style mixing\"): rows are LoRA A's "
                        "strengths, columns LoRA B's; every cell uses both LoRAs at forward time in one batch.",
            inputs=[
                *model_inputs(),
                lora_input("lora_a", "LoRA A (rows)."),
                io.String.Input("strengths_a", default="0, 0.5, 1", tooltip=values),
                lora_input("lora_b", "LoRA B (columns)."),
                io.String.Input("strengths_b", default="0, 0.5, 1", tooltip=values),
                *common_inputs(),
                io.String.Input("grid_name", default="strength_matrix",
                                tooltip="File name prefix in output/atelier/grids."),
                *speed_inputs(),
                run_input("lora_files_a", "lora_a"), run_input("lora_files_b", "lora_b"),
            ],
            outputs=sheet_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt], is_output_node=True)

    @classmethod
    def execute(cls, model, clip, vae, lora_a, strengths_a, lora_b, strengths_b, positive, negative, seed, steps,
                cfg, sampler, scheduler, width, height, grid_name, batch_size=4, resume=True, lora_files_a=None,
                lora_files_b=None) -> io.NodeOutput:
        safe_name(grid_name, "grid_name")  # a bad name is refused before any cell is rendered
        (la, name_a), (lb, name_b) = chosen(lora_a, lora_files_a, "lora_files_a"), chosen(lora_b, lora_files_b,
                                                                                          "lora_files_b")
        if la is None or lb is None or la == lb:
            raise ValueError("The strength matrix mixes two different LoRAs: choose lora_a and lora_b (not (none), "
                             "not the same file; a connected lora_files_a / lora_files_b gives its run's final file). "
                             "For one LoRA use the XY Grid's strength axis.")
        y = Axis("strength", tuple(parse_values("strength", strengths_a)), f"A: {name_a}")
        x = Axis("strength", tuple(parse_values("strength", strengths_b)), f"B: {name_b}")
        if len(x.values) * len(y.values) > 1024:
            raise ValueError(f"The matrix asks for {len(x.values) * len(y.values)} cells; the limit is 1024. Use "
                             "fewer strengths.")
        base = settings(positive, negative, seed, steps, cfg, sampler, scheduler, width, height)
        specs, cells = [], []
        for row, sa in enumerate(y.values):
            for col, sb in enumerate(x.values):
                specs.append(CellSpec(loras=((la, sa), (lb, sb)), **base))
                cells.append({"row": row, "col": col, "settings": specs[-1].describe()})
        images, renderer = render_specs(model, clip, vae, specs, batch_size=batch_size, resume=resume)
        cols = len(x.values)
        sheet = draw_grid([images[i:i + cols] for i in range(0, len(images), cols)], x, y,
                          title=f"{positive[:120]} · seed {seed} · {steps} steps · cfg {cfg:g}")
        return finish_sheet(sheet, grid_name, {"x": x, "y": y}, cells, base, renderer, images,
                            checkpoint=connected_checkpoint(model, cls.hidden))


def pick_samples(dataset, count: int) -> list:
    """`count` training samples spread evenly over the dataset (first and last included), mirrored copies left out."""
    samples = [s for s in dataset.samples() if s.role == "train" and not s.mirrored]
    if not samples:
        raise ValueError("The dataset has no training images. Load a folder with role 'train' first.")
    picks = np.unique(np.linspace(0, len(samples) - 1, min(count, len(samples))).round().astype(int))
    return [samples[i] for i in picks]


def real_image(dataset, sample, width: int, height: int):
    """The training pixels of `sample` (its subset's preparation), centre-cropped to the cell size."""
    img = prepare_sample(sample, dataset.memory)
    return img if img.size == (width, height) else prepare_image(img, "crop", width, height)


def distance(a, b) -> float:
    """Mean absolute difference in 0..255 levels."""
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def dataset_inputs():
    return [DATASET.Input("dataset", tooltip="Training images with their captions (from Load / Prepare Dataset)."),
            io.Int.Input("count", default=4, min=1, max=64, tooltip="Images to compare, spread over the dataset."),
            lora_input("lora", "The LoRA trained on this dataset."),
            io.Float.Input("strength", default=1.0, min=-STRENGTH_LIMIT, max=STRENGTH_LIMIT, step=0.01,
                           tooltip="LoRA strength."),
            io.String.Input("prefix", default="", tooltip="Text put before every caption (e.g. a trigger word).")]


class AtelierCompareRealGenerated(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierCompareRealGenerated", display_name="Real vs Generated (Atelier)",
            category="atelier/grids",
            description="Dataset images beside generations from their own captions: real | with the LoRA | "
                        "base model, one row per image.",
            inputs=[
                *model_inputs(), *dataset_inputs(),
                io.Boolean.Input("include_base", default=True, tooltip="Add a column rendered without the LoRA."),
                *[i for i in common_inputs() if i.id != "positive"],
                io.String.Input("grid_name", default="real_vs_generated",
                                tooltip="File name prefix in output/atelier/grids."),
                *speed_inputs(),
                run_input("lora_files", "lora"),
            ],
            outputs=sheet_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt], is_output_node=True)

    @classmethod
    def execute(cls, model, clip, vae, dataset, count, lora, strength, prefix, include_base, negative, seed, steps,
                cfg, sampler, scheduler, width, height, grid_name, batch_size=4, resume=True,
                lora_files=None) -> io.NodeOutput:
        safe_name(grid_name, "grid_name")  # a bad name is refused before any cell is rendered
        name, shown = chosen(lora, lora_files, "lora_files")
        if name is None:
            raise ValueError("Real vs Generated compares a LoRA with its dataset: choose the LoRA, or connect a "
                             "training node's lora_files.")
        strength = check_strength(strength, "strength")
        base = settings("", negative, seed, steps, cfg, sampler, scheduler, width, height)
        samples = pick_samples(dataset, count)
        variants = [((name, float(strength)),)] + ([()] if include_base else [])
        specs, cells = [], []
        for row, sample in enumerate(samples):
            caption = f"{prefix} {sample.item.caption}".strip()
            for col, loras in enumerate(variants, 1):
                specs.append(CellSpec(loras=loras, **{**base, "positive": caption, "seed": seed + row}))
                cells.append({"row": row, "col": col, "source": sample.item.source, "settings": specs[-1].describe()})
        images, renderer = render_specs(model, clip, vae, specs, batch_size=batch_size, resume=resume)
        per = len(variants)
        grid = [[real_image(dataset, s, width, height)] + images[r * per:(r + 1) * per] for r, s in enumerate(samples)]
        labels = ["real", f"{shown} @ {strength:g}"] + (["base model"] if include_base else [])
        x = Axis("lora", tuple(labels), "compared")
        y = Axis("prompt_sr", tuple(s.item.caption for s in samples), "caption")
        sheet = draw_grid(grid, x, y, x_labels=labels, y_labels=[s.item.caption[:160] for s in samples],
                          title=f"real vs generated · seed {seed}+row · {steps} steps · cfg {cfg:g}")
        for c in cells:
            c["source"] = base_name(c["source"])  # the file name only: no server paths in a PNG
        return finish_sheet(sheet, grid_name, {"x": x, "y": y}, cells, base, renderer, images,
                            checkpoint=connected_checkpoint(model, cls.hidden))


class AtelierCheckReconstruction(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierCheckReconstruction", display_name="Reconstruction Check (Atelier)",
            category="atelier/grids",
            description="Encodes training images, noises them to `denoise`, and regenerates each from its caption "
                        "with and without the LoRA: target | base | LoRA, with each one's distance to the target. "
                        "A LoRA that learned its images lands closer than the base model.",
            inputs=[
                *model_inputs(), *dataset_inputs(),
                io.Float.Input("denoise", default=0.6, min=0.05, max=1.0, step=0.01,
                               tooltip="How much of each image is re-generated (1 = from pure noise)."),
                *[i for i in common_inputs() if i.id != "positive"],
                io.String.Input("grid_name", default="reconstruction",
                                tooltip="File name prefix in output/atelier/grids."),
                *speed_inputs(),
                run_input("lora_files", "lora"),
            ],
            outputs=[*sheet_outputs(), io.String.Output("report", tooltip="Mean distance to the targets (0..255 "
                                                                          "levels) of the base model and the LoRA.")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt], is_output_node=True)

    @classmethod
    def execute(cls, model, clip, vae, dataset, count, lora, strength, prefix, denoise, negative, seed, steps, cfg,
                sampler, scheduler, width, height, grid_name, batch_size=4, resume=True,
                lora_files=None) -> io.NodeOutput:
        safe_name(grid_name, "grid_name")  # a bad name is refused before any cell is rendered
        name, shown = chosen(lora, lora_files, "lora_files")
        if name is None:
            raise ValueError("The reconstruction check measures a LoRA: choose the LoRA, or connect a training "
                             "node's lora_files.")
        strength = check_strength(strength, "strength")
        denoise = check_number("denoise", denoise, 0.05, 1.0)
        base = settings("", negative, seed, steps, cfg, sampler, scheduler, width, height)
        samples = pick_samples(dataset, count)
        targets = [real_image(dataset, s, width, height) for s in samples]
        inits = {f"target{i}": pil_to_image_tensor([t]) for i, t in enumerate(targets)}
        specs, cells = [], []
        for row, sample in enumerate(samples):
            caption = f"{prefix} {sample.item.caption}".strip()
            for col, loras in enumerate(((), ((name, float(strength)),)), 1):
                specs.append(CellSpec(loras=loras, denoise=float(denoise), init=f"target{row}",
                                      **{**base, "positive": caption, "seed": seed + row}))
                cells.append({"row": row, "col": col, "source": base_name(sample.item.source),
                              "settings": specs[-1].describe()})
        images, renderer = render_specs(model, clip, vae, specs, batch_size=batch_size, resume=resume,
                                        init_images=inits)
        grid, captions, dist = [], [], {"base": [], "lora": []}
        for r, target in enumerate(targets):
            made_base, made_lora = images[2 * r], images[2 * r + 1]
            d_base, d_lora = distance(made_base, target), distance(made_lora, target)
            dist["base"].append(d_base)
            dist["lora"].append(d_lora)
            cells[2 * r]["distance"], cells[2 * r + 1]["distance"] = d_base, d_lora
            grid.append([target, made_base, made_lora])
            captions.append(["target", f"dist {d_base:.1f}", f"dist {d_lora:.1f}"])
        mean_base, mean_lora = float(np.mean(dist["base"])), float(np.mean(dist["lora"]))
        summary = (f"mean distance to the targets (0..255): base {mean_base:.2f}, LoRA {mean_lora:.2f} "
                   f"({'closer' if mean_lora < mean_base else 'not closer'} with the LoRA) at denoise {denoise:g}")
        labels = ["target", "base model", f"{shown} @ {strength:g}"]
        x = Axis("lora", tuple(labels), "compared")
        y = Axis("prompt_sr", tuple(s.item.caption for s in samples), "caption")
        sheet = draw_grid(grid, x, y, x_labels=labels, y_labels=[s.item.caption[:160] for s in samples],
                          captions=captions, title=f"reconstruction at denoise {denoise:g} · {summary}")
        out = finish_sheet(sheet, grid_name, {"x": x, "y": y}, cells, {**base, "denoise": denoise, "base": mean_base,
                                                                 "lora": mean_lora}, renderer, images, summary,
                           checkpoint=connected_checkpoint(model, cls.hidden))
        return io.NodeOutput(*out.args, summary, ui=out.ui)


NODES = [AtelierCompareSideBySide, AtelierPlotStrengthMatrix, AtelierCompareRealGenerated, AtelierCheckReconstruction]
