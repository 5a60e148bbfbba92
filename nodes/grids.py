"""Comparison grid nodes: XY(Z) grids, A vs B side by side, A x B strength matrix, real vs generated, and the
reconstruction check. Cells are rendered in batches by nodes/cells.py; drawing and metadata live in core/grid.py."""

from __future__ import annotations

import re

import time

from .compat import io

import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths

from ..core.draw import pil_to_image_tensor
from ..core.grid import (AXIS_KINDS, AXIS_RANGES, Axis, draw_grid, grid_metadata, join_row, model_label,
                         pad_to_common_size, paginate, parse_values, plan_cells, run_file_label,
                         save_png_with_metadata)
from ..core.lora_math import STRENGTH_LIMIT, check_strength
from ..core.paths import safe_name
from .cells import CONNECTED, CellRenderer, CellSpec, cell_cache_dir
from .validate import NONE, check_choice, check_number
from .host import output_subdir
from .lora_files import lora_files_input, read_lora_metadata, run_files
from .provenance import connected_checkpoint

MAX_PAGE_SIDE = 8192
CAPTIONS = ("none", "seed", "settings")
CFG_MAX = AXIS_RANGES["cfg"][1]


def choices_for(kind: str) -> list[str] | None:
    if kind == "lora":
        return folder_paths.get_filename_list("loras")
    if kind == "checkpoint":
        return folder_paths.get_filename_list("checkpoints")
    if kind == "sampler":
        return list(comfy.samplers.KSampler.SAMPLERS)
    if kind == "scheduler":
        return list(comfy.samplers.KSampler.SCHEDULERS)
    return None


def cell_settings(cell: dict, axes: dict, defaults: dict) -> dict:
    """The generation settings of one cell: the defaults with the x, y and z values applied (baseline: no LoRA)."""
    s = dict(defaults)
    for name, axis in axes.items():
        value = cell.get(name)
        if axis is None or value is None:
            continue
        if axis.kind == "prompt_sr":
            s["positive"] = s["positive"].replace(axis.values[0], value)
        else:
            s[axis.kind] = value
    if cell.get("baseline"):
        s["lora"] = None
    s["seed"] = s["seed"] + cell.get("seed_index", 0)
    return s


def spec_of(s: dict, width: int, height: int) -> CellSpec:
    return CellSpec(loras=((s["lora"], float(s["strength"])),) if s["lora"] else (), positive=s["positive"],
                    negative=s["negative"], seed=int(s["seed"]), steps=int(s["steps"]), cfg=float(s["cfg"]),
                    sampler=s["sampler"], scheduler=s["scheduler"], denoise=float(s["denoise"]), width=width,
                    height=height, checkpoint=s.get("checkpoint") or CONNECTED)


def cell_caption(mode: str, spec: CellSpec, seeds: list[int]) -> str:
    if mode == "seed":
        return "seed " + ", ".join(map(str, seeds))
    if mode == "settings":
        lora = ", ".join(f"{n.rsplit('/', 1)[-1].rsplit('.', 1)[0]} @ {s:g}" for n, s in spec.loras) or "no LoRA"
        return (f"{lora} · seed {', '.join(map(str, seeds))} · {spec.steps} steps · cfg {spec.cfg:g} · "
                f"{spec.sampler}/{spec.scheduler}")
    return ""


def render_specs(model, clip, vae, specs: list[CellSpec], *, batch_size: int, resume: bool,
                 init_images: dict | None = None):
    """Rendered images for specs (progress per finished batch, interruptible), and the renderer for its report."""
    renderer = CellRenderer(model, clip, vae, batch_size=batch_size, init_images=init_images,
                            cache_dir=cell_cache_dir() if resume else None)
    bar = comfy.utils.ProgressBar(max(1, len(specs)))

    def on_cell(done, total):
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total)

    return renderer.render(specs, on_cell), renderer


def report(renderer: CellRenderer) -> str:
    lines = [f"{renderer.rendered} cells rendered, {renderer.reused} reused from an interrupted run; "
             f"{renderer.batches} sampler batches."]
    for v in renderer.variants.values():
        for name, why in v.merged_only.items():
            lines.append(f"LoRA {name} is merged into the weights per strength ({why}), not batched.")
        for name, keys in v.unloaded.items():
            if keys:
                lines.append(f"LoRA {name}: {len(keys)} keys match no layer of this model (e.g. {keys[0]}).")
    return "\n".join(lines)


def save_pages(pages: list, name: str, metadata: list[str]) -> list:
    folder = output_subdir("atelier", "grids")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    paths = []
    for i, (page, meta) in enumerate(zip(pages, metadata)):
        suffix = f"_p{i + 1}" if len(pages) > 1 else ""
        path = folder / f"{name}_{stamp}{suffix}.png"
        save_png_with_metadata(page, path, meta)
        paths.append(path)
    return paths


def finish(sheets: list, metadata: list[str], name: str, renderer: CellRenderer, images: list,
           summary: str = "") -> io.NodeOutput:
    """Saves the pages with their metadata, drops the run's resume files, and returns (pages, files, cells) with
    the files, the renderer's report and an optional summary as the node's text."""
    paths = save_pages(sheets, name, metadata)
    renderer.forget_cache()
    text = [*map(str, paths), report(renderer)] + ([summary] if summary else [])
    return io.NodeOutput(pil_to_image_tensor(pad_to_common_size(sheets)), "\n".join(map(str, paths)),
                         pil_to_image_tensor(pad_to_common_size(images)), ui={"text": text})


def common_inputs(prompt_default: str = "a starsectorportrait of a person") -> list:
    """Sampler settings shared by the comparison nodes (every cell uses them unless an axis varies them)."""
    return [
        io.String.Input("positive", default=prompt_default, multiline=True,
                        tooltip="Prompt of every cell (prompt_sr axes replace parts of it)."),
        io.String.Input("negative", default="", multiline=True, tooltip="Negative prompt of every cell."),
        io.Int.Input("seed", default=0, control_after_generate=False, min=0, max=2**63 - 1,
                     tooltip="Seed of every cell (same seed = comparable cells); extra seeds count up from it."),
        io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps."),
        io.Float.Input("cfg", default=7.0, min=0.0, max=CFG_MAX, step=0.1, tooltip="CFG scale."),
        io.Combo.Input("sampler", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                       tooltip="ComfyUI sampler (euler_ancestral = A1111's Euler a)."),
        io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="normal",
                       tooltip="ComfyUI scheduler."),
        io.Int.Input("width", default=512, min=64, max=4096, step=8, tooltip="Cell width."),
        io.Int.Input("height", default=512, min=64, max=4096, step=8, tooltip="Cell height."),
    ]


def speed_inputs() -> list:
    return [
        io.Int.Input("batch_size", default=4, min=1, max=64, optional=True,
                     tooltip="Cells sampled together in one UNet call (LoRA strengths, seeds and prompts may "
                             "differ within a batch). Larger is faster until memory runs out."),
        io.Boolean.Input("resume", default=True, optional=True,
                         tooltip="Keep finished cells until the grid is saved, so an interrupted grid run again "
                                 "with the same settings only renders the missing cells."),
    ]


def checked_sampling(sampler: str, scheduler: str, cfg: float) -> None:
    """The shared sampler settings re-checked: combo values against their lists, cfg finite (NaN passes ComfyUI)."""
    check_choice(sampler, list(comfy.samplers.KSampler.SAMPLERS), "sampler")
    check_choice(scheduler, list(comfy.samplers.KSampler.SCHEDULERS), "scheduler")
    check_number("cfg", cfg, 0.0, CFG_MAX)


RUN_VALUES = ("", "run")  # a lora axis with these values takes every file of the connected training run
RUN_EPOCHS = re.compile(r"run\s*:?\s*(?:epochs?\s*)?(\d{1,6})\s*-\s*(\d{1,6})", re.IGNORECASE)  # 'run 8-10'


def run_axis(lora_files, epochs: tuple[int, int] | None = None) -> Axis:
    """A LoRA axis over every file of a training run (epoch / step files in order, then the final one), or over those
    saved in `epochs` (first, last), labelled from each file's metadata: "epoch 2", ..., "final (epoch 3)"."""
    run = run_files(lora_files)
    names, labels, saved = [], [], []
    for name, kind in zip(run.names(), run.kinds()):
        meta = read_lora_metadata(name)
        epoch = int(meta["ss_epoch"]) if str(meta.get("ss_epoch", "")).isdigit() else None
        saved.append(str(epoch))
        if epochs is None or (epoch is not None and epochs[0] <= epoch <= epochs[1]):
            names.append(name)
            labels.append(run_file_label(kind, meta, name))
    if not names:
        raise ValueError(f"The lora axis asks for the run's epochs {epochs[0]}-{epochs[1]}, but the run saved files "
                         f"of epochs {', '.join(saved)}; set save_every_epochs on the training node, or change the "
                         "range (or write 'run' for every file).")
    return Axis("lora", tuple(names), label=f"lora: {model_label(run.final)}", value_labels=tuple(labels))


def axis_of(kind: str, text: str, lora_files=None) -> Axis:
    """One axis from its kind and values; a lora axis left empty (or 'run') takes the connected run's files, 'run
    8-10' those saved in epochs 8 to 10."""
    if kind == "lora" and lora_files is not None:
        if text.strip().lower() in RUN_VALUES:
            return run_axis(lora_files)
        chosen = RUN_EPOCHS.fullmatch(text.strip())
        if chosen:
            first, last = sorted((int(chosen[1]), int(chosen[2])))
            return run_axis(lora_files, (first, last))
    return Axis(kind, tuple(parse_values(kind, text, choices=choices_for(kind))))


def lora_choice(name: str) -> str | None:
    if name in (None, "", NONE):
        return None
    return check_choice(name, folder_paths.get_filename_list("loras"), "LoRA")


class AtelierXYGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        axis_help = ("Values: numbers '0,0.5,1', ranges '1-10 (+2)' or '0-1 [5]'; LoRA / checkpoint files by name "
                     "or 'folder/*' (natural order: epoch 2 before 10); samplers by name; prompt_sr 'find, "
                     "replace1, ...'; negative prompts separated by ' | '.")
        kinds = list(AXIS_KINDS)
        return io.Schema(
            node_id="AtelierXYGrid", display_name="XY Grid (Atelier)", category="atelier/grids",
            description="Samples a labelled grid over up to three axes (LoRA files, strength, checkpoint, CFG, steps, "
                        "sampler, scheduler, seed, prompt S/R, negative, denoise) with ComfyUI's sampler, cells "
                        "batched with the LoRA applied at forward time; saves PNGs that record every cell's "
                        "settings.",
            inputs=[
                io.Model.Input("model", tooltip="The base model (cells on a checkpoint axis use that checkpoint)."),
                io.Clip.Input("clip", tooltip="Its CLIP."),
                io.Vae.Input("vae", tooltip="Decodes the cells."),
                *common_inputs()[:2],
                io.Combo.Input("x_kind", options=kinds, default="strength", tooltip="What changes across columns."),
                io.String.Input("x_values", default="0.25,0.5,0.75,1", tooltip=axis_help),
                io.Combo.Input("y_kind", options=["none"] + kinds, default="lora",
                               tooltip="What changes down the rows (none = one row)."),
                io.String.Input("y_values", default="*", tooltip=axis_help),
                io.Combo.Input("lora", options=[NONE] + folder_paths.get_filename_list("loras"), default=NONE,
                               tooltip="The LoRA of every cell when no axis chooses LoRA files."),
                io.Float.Input("strength", default=1.0, min=-STRENGTH_LIMIT, max=STRENGTH_LIMIT, step=0.01,
                               tooltip="LoRA strength of every cell when no axis varies it."),
                io.Combo.Input("baseline", options=["none", "row", "column"], default="row",
                               tooltip="Add a first row / column without the LoRA (the y / x axis must be LoRA or "
                                       "strength)."),
                *common_inputs()[2:7],
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Denoise (1 = txt2img)."),
                *common_inputs()[7:],
                io.String.Input("grid_name", default="grid", tooltip="File name prefix in output/atelier/grids."),
                io.Combo.Input("z_kind", options=["none"] + kinds, default="none", optional=True,
                               tooltip="A third axis: one page (one grid image and PNG) per value."),
                io.String.Input("z_values", default="", optional=True, tooltip=axis_help),
                io.Int.Input("seeds_per_cell", default=1, min=1, max=16, optional=True,
                             tooltip="Images per cell, side by side, with seeds seed, seed+1, ..."),
                io.Combo.Input("cell_caption", options=list(CAPTIONS), default="none", optional=True,
                               tooltip="Text under each cell: nothing, its seeds, or all its settings."),
                *speed_inputs(),
                lora_files_input("Optional: the lora_files output of a Train LoRA node, so one queued graph trains "
                                 "then compares. A 'lora' axis whose values are empty or 'run' then uses every epoch "
                                 "/ step file of that run plus the final file, labelled from their metadata (epoch "
                                 "2, ..., final), and 'run 8-10' only the files saved in epochs 8 to 10; with no "
                                 "LoRA axis, the run's final file replaces the lora choice."),
            ],
            outputs=[io.Image.Output("grid", tooltip="The labelled grid pages (padded to one size)."),
                     io.String.Output("file", tooltip="The saved PNGs, one per line (their metadata holds every "
                                                      "cell's settings)."),
                     io.Image.Output("cells", tooltip="Every generated image, unlabelled, in grid order (page, row, "
                                                      "column, seed), padded to one size.")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, positive, negative, x_kind, x_values, y_kind, y_values, lora, strength,
                baseline, seed, steps, cfg, sampler, scheduler, denoise, width, height, grid_name, z_kind="none",
                z_values="", seeds_per_cell=1, cell_caption="none", batch_size=4, resume=True,
                lora_files=None) -> io.NodeOutput:
        name = safe_name(grid_name, "grid_name")
        checked_sampling(sampler, scheduler, cfg)
        check_strength(strength, "strength")
        check_number("denoise", denoise, 0.0, 1.0)
        check_choice(baseline, ["none", "row", "column"], "baseline")
        check_choice(cell_caption, list(CAPTIONS), "cell_caption")
        kinds = ["none"] + list(AXIS_KINDS)
        axes = {}
        for axis_name, kind, text in (("x", x_kind, x_values), ("y", y_kind, y_values), ("z", z_kind, z_values)):
            check_choice(kind, kinds if axis_name != "x" else list(AXIS_KINDS), f"{axis_name}_kind")
            axes[axis_name] = None if kind == "none" else axis_of(kind, text, lora_files)
        x, y, z = axes["x"], axes["y"], axes["z"]
        cells = plan_cells(x, y, z, baseline=None if baseline == "none" else baseline, seeds_per_cell=seeds_per_cell,
                           megapixels_per_cell=width * height / 1e6)
        chosen = lora_choice(lora) if lora_files is None else run_files(lora_files).final  # the run replaces it
        defaults = {"positive": positive, "negative": negative, "lora": chosen, "strength": strength,
                    "seed": seed, "steps": steps, "cfg": cfg, "sampler": sampler, "scheduler": scheduler,
                    "denoise": denoise, "checkpoint": None}
        specs = [spec_of(cell_settings(c, axes, defaults), width, height) for c in cells]
        for cell, spec in zip(cells, specs):
            cell["settings"] = spec.describe()
        images, renderer = render_specs(model, clip, vae, specs, batch_size=batch_size, resume=resume)

        pages_count, rows, cols = (max(c[k] for c in cells) + 1 for k in ("page", "row", "col"))
        x_labels = x.labels() if baseline != "column" else ["no LoRA"] + x.labels()
        y_labels = None if y is None else (y.labels() if baseline != "row" else ["no LoRA"] + y.labels())
        title = f"{positive[:120]} · seed {seed} · {steps} steps · cfg {cfg:g} · {sampler}"
        sheets, metadata = [], []
        checkpoint = connected_checkpoint(model, cls.hidden)  # cells on a checkpoint axis record their own
        for page in range(pages_count):
            grid = [[[] for _ in range(cols)] for _ in range(rows)]
            first = {}
            for cell, spec, image in zip(cells, specs, images):
                if cell["page"] == page:
                    grid[cell["row"]][cell["col"]].append((spec, image))
                    first.setdefault((cell["row"], cell["col"]), spec)
            strips = [[join_row([im for _, im in grid[r][c]]) for c in range(cols)] for r in range(rows)]
            captions = None
            if cell_caption != "none":
                captions = [[strip_caption(cell_caption, grid[r][c]) for c in range(cols)] for r in range(rows)]
            page_title = title if z is None else f"{z.label}: {z.labels()[page]} · {title}"
            cell_h = max(im.height for row in strips for im in row)
            cell_w = max(im.width for row in strips for im in row)
            for start, end in paginate(rows, cols, cell_w, cell_h, MAX_PAGE_SIDE):
                sheets.append(draw_grid(strips[start:end], x, y, title=page_title, x_labels=x_labels,
                                        y_labels=None if y_labels is None else y_labels[start:end],
                                        captions=None if captions is None else captions[start:end]))
                page_cells = [c for c in cells if c["page"] == page and start <= c["row"] < end]
                metadata.append(grid_metadata(axes, page_cells, {
                    **{k: v for k, v in defaults.items() if k != "checkpoint"}, "width": width, "height": height,
                    "baseline": baseline, "seeds_per_cell": seeds_per_cell, "rows": [start, end],
                    "page": page, "checkpoint": checkpoint}))
        return finish(sheets, metadata, name, renderer, images)


def strip_caption(mode: str, entries: list) -> str:
    """The caption of one grid cell holding (spec, image) for each of its seeds."""
    if not entries:
        return ""
    return cell_caption(mode, entries[0][0], [spec.seed for spec, _ in entries])


NODES = [AtelierXYGrid]
