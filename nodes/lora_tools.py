"""LoRA tool nodes: merge LoRAs, resize, extract from a model difference, inspect. The maths is core/lora_math.py,
the format core/lora_format.py."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import torch
from .compat import io, resident_clip, resident_patcher

import comfy.lora
import comfy.model_management
import comfy.sd
import folder_paths

from ..core.draw import bar_chart, pil_to_image_tensor
from ..core.lora_format import ALPHA, TEXT_PREFIXES, join_modules, split_modules
from ..core.lora_io import (check_same_family, key_formats, load_lora, lora_family, lora_summary, save_lora,
                            write_safetensors)
from ..core.lora_meta import tool_metadata
from ..core.lora_math import (EXTRACT_METHODS, STRENGTH_LIMIT, apply_block_weights, check_strength,
                              energy_report_text, extract, merge_average_weights, merge_concat, merge_svd,
                              parse_block_weights, resize)
from ..trainers.network import TE_INCLUDE, UNET_INCLUDE, extract_targets
from .train_adapter import GENERIC_KEY_ENCODERS
from .validate import NONE, check_choice, check_number
from .host import Progress, model_output_path
from .lora_files import chosen_lora, fit_lora, lora_files_input, read_lora
from .provenance import model_family
from .training import lora_output_path

DYNAMIC = ("none", "sv_ratio", "sv_fro", "sv_cumulative")
MERGE_MODES = ("concat", "svd", "average_weights")
DYNAMIC_PARAM_MAX = 1000.0


FROM_RUN = ("Optional: the lora_files output of a Train LoRA node; when connected, the run's final file replaces "
            "the {choice} choice, and this node runs after the training in the same queued graph.")


def lora_choices() -> list[str]:
    return folder_paths.get_filename_list("loras")


def load_modules(name: str):
    """(modules, metadata) of a LoRA from the loras folders; LyCORIS-only keys are refused with a clear message."""
    tensors, meta = read_lora(name)
    return plain_modules(name, tensors), meta


def plain_modules(name: str, tensors: dict) -> dict:
    """The plain LoRA modules of file `name`; keys of other formats are refused with a clear message."""
    modules, others = split_modules(tensors)
    if others:
        raise ValueError(f"'{name}' holds {len(others)} keys that are not plain LoRA (e.g. {others[0]}; LyCORIS "
                         "LoHa/LoKr or DoRA). Merging or resizing those is not supported; merge such a file into the "
                         "model with ComfyUI's LoraLoader instead.")
    return modules


SLOTS = 4


def chosen_slots(slots: dict, lora_files=None) -> list[tuple[int, str, float]]:
    """(slot number, LoRA name, strength) of the slots in use, each name re-checked against the loras list and
    each strength finite and within range (ComfyUI's own range check lets NaN through); a connected training run's
    final file takes slot 1."""
    options = [NONE] + lora_choices()
    chosen = []
    for i in range(1, SLOTS + 1):
        name = chosen_lora(slots[f"lora_{i}"], options, f"lora_{i}", lora_files if i == 1 else None)
        if name != NONE:
            chosen.append((i, name, check_strength(slots[f"strength_{i}"], f"strength_{i}")))
    return chosen


def lora_slots(strength_tooltip: str, block_weights: bool = False) -> list:
    """The LoRA / strength (/ block weights) widgets of the merge nodes: lora_1..lora_4, strength_1..strength_4."""
    slots = []
    for i in range(1, SLOTS + 1):
        slots += [io.Combo.Input(f"lora_{i}", options=[NONE] + lora_choices(), default=NONE,
                                 tooltip=f"LoRA {i} to merge ((none) = unused)."),
                  io.Float.Input(f"strength_{i}", default=1.0, min=-STRENGTH_LIMIT, max=STRENGTH_LIMIT, step=0.01,
                                 tooltip=strength_tooltip.format(i=i))]
        if block_weights:
            slots.append(io.String.Input(
                f"block_weights_{i}", default="",
                tooltip="Optional A1111 LoRA Block Weight vector: 17 values for SD1.x/SD2.x (BASE,IN01,IN02,IN04,"
                        "IN05,IN07,IN08,MID,OUT03..OUT11), 12 for SDXL, or 26 for every block (LoCon); empty = 1 "
                        "everywhere."))
    return slots


def dynamic_kwargs(method: str, param: float, max_rank: int) -> dict:
    check_choice(method, list(DYNAMIC), "dynamic_method")
    check_number("dynamic_param", param, 0.0, DYNAMIC_PARAM_MAX)
    return {} if method == "none" else {"dynamic": method, "dynamic_param": param, "max_rank": max_rank}


def energy_chart(report: dict, title: str):
    rows = sorted(report.items(), key=lambda kv: kv[1].get("energy", 1.0))[:30]
    return pil_to_image_tensor([bar_chart([(k.replace("lora_unet_", "").replace("lora_te", "te")[:48],
                                            100.0 * v.get("energy", 1.0)) for k, v in rows], title=title)])


def rank_inputs(default_rank: int):
    return [
        io.Int.Input("rank", default=default_rank, min=1, max=4096,
                     tooltip="Target rank (or the upper limit when a dynamic method is chosen)."),
        io.Combo.Input("dynamic_method", options=list(DYNAMIC), default="none",
                       tooltip="Choose the rank per layer: sv_ratio keeps σ ≥ σmax/param; sv_fro keeps param of the "
                               "Frobenius norm; sv_cumulative keeps param of the sum of σ; none = fixed rank."),
        io.Float.Input("dynamic_param", default=0.9, min=0.0, max=DYNAMIC_PARAM_MAX, step=0.01,
                       tooltip="Parameter of the dynamic method: sv_fro and sv_cumulative take 0–1 (e.g. 0.9); "
                               "sv_ratio takes ≥ 1 (e.g. 20). Ignored when dynamic_method is none."),
    ]


def layer_progress():
    """An on_layer(done, total) callback for the core loops: a progress bar sized on its first call that checks
    Cancel before every layer."""
    bars = []

    def on_layer(done: int, total: int) -> None:
        if not bars:
            bars.append(Progress(total))
        bars[0](done)

    return on_layer


def tool_outputs():
    return [io.String.Output("report", tooltip="What was written and the per-layer retained energy."),
            io.Image.Output("chart", tooltip="Retained energy of the least-kept layers (percent).")]


def write(output_name: str, modules: dict, meta: dict, **minimum) -> Path:
    """Saves atomically with kohya's minimum keys (core.lora_meta.tool_metadata(**minimum), over `meta`), then reads
    the file back and checks every module survived (a loadable file or an error)."""
    path = lora_output_path(output_name)
    tensors = join_modules(modules)
    stale = ("sshs_model_hash", "sshs_legacy_hash")  # hashes of a source file, not of this one
    meta = {k: str(v) for k, v in meta.items() if k not in stale}
    save_lora(path, tensors, {**meta, **tool_metadata(tensors, **minimum)})
    again, others = split_modules(load_lora(path)[0])
    if others or set(again) != set(modules):
        raise OSError(f"'{path}' did not read back as the LoRA that was written ({len(again)} of {len(modules)} "
                      "modules); check free disk space and write again.")
    return path


class AtelierMergeLoRAs(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        slots = lora_slots("Strength of LoRA {i}, as in LoraLoader (applied once, not squared).")
        return io.Schema(
            node_id="AtelierMergeLoRAs", display_name="Merge LoRAs (Atelier)", category="atelier/lora",
            description="Merges LoRAs into one: exact concatenation (rank = sum), SVD re-rank to a target rank, or "
                        "weight averaging of same-shape epochs.",
            inputs=[*slots,
                    io.Combo.Input("mode", options=list(MERGE_MODES), default="concat",
                                   tooltip="concat: exact (rank adds up); svd: exact sum re-factorised to `rank`; "
                                           "average_weights: average up/down of same-shape LoRAs (epoch soup, "
                                           "approximate)."),
                    *rank_inputs(64),
                    io.String.Input("output_name", default="merged", tooltip="File name in models/loras/atelier."),
                    lora_files_input(FROM_RUN.format(choice="lora_1"))],
            outputs=tool_outputs(),
            is_output_node=True,
        )

    @classmethod
    def execute(cls, mode, rank, dynamic_method, dynamic_param, output_name, lora_files=None,
                **slots) -> io.NodeOutput:
        lora_output_path(output_name)  # a bad name is refused before any work
        check_choice(mode, list(MERGE_MODES), "mode")
        dynamic = dynamic_kwargs(dynamic_method, dynamic_param, rank)
        chosen = [(name, strength) for _, name, strength in chosen_slots(slots, lora_files)]
        if not chosen:
            raise ValueError("Choose at least one LoRA to merge.")
        read = [read_lora(name) for name, _ in chosen]  # every file checked before any work
        files = [(name, tensors) for (name, _), (tensors, _) in zip(chosen, read)]
        check_same_family(files)
        loaded = [(plain_modules(name, tensors), strength) for (name, tensors), (_, strength) in zip(files, chosen)]
        report = {}
        if mode == "concat":
            modules = merge_concat(loaded)
        elif mode == "svd":
            modules, report = merge_svd(loaded, rank, on_layer=layer_progress(), **dynamic)
        else:
            modules = merge_average_weights(loaded)
        path = write(output_name, modules, {"ss_output_name": Path(output_name).stem, "ss_training_comment":
                                            f"merged with Atelier ({mode})",
                                            "atelier_merge_sources": json.dumps(chosen)},
                     sources=[meta for _, meta in read], dynamic=bool(dynamic) and mode == "svd")
        text = f"wrote {path} ({len(modules)} modules, mode {mode})\n" + (energy_report_text(report) if report else "")
        return io.NodeOutput(text, energy_chart(report, "retained energy %"), ui={"text": [text]})


class AtelierResizeLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierResizeLoRA", display_name="Resize LoRA (Atelier)", category="atelier/lora",
            description="Shrinks a LoRA's rank exactly (QR + small SVD per layer, no full-matrix rebuild), keeping "
                        "its effective strength; reports the retained energy per layer.",
            inputs=[io.Combo.Input("lora", options=lora_choices(), tooltip="The LoRA to resize."),
                    *rank_inputs(32),
                    io.String.Input("output_name", default="resized", tooltip="File name in models/loras/atelier."),
                    lora_files_input(FROM_RUN.format(choice="lora"))],
            outputs=tool_outputs(),
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lora, rank, dynamic_method, dynamic_param, output_name, lora_files=None) -> io.NodeOutput:
        lora_output_path(output_name)  # a bad name is refused before any work
        dynamic = dynamic_kwargs(dynamic_method, dynamic_param, rank)
        lora = chosen_lora(lora, lora_choices(), "lora", lora_files)
        modules, meta = load_modules(lora)
        resized, report = resize(modules, rank, on_layer=layer_progress(), **dynamic)
        meta = {**meta, "atelier_resized_from": lora, "ss_output_name": Path(output_name).stem}
        path = write(output_name, resized, meta, sources=[meta], dynamic=bool(dynamic))
        text = f"wrote {path}\n" + energy_report_text(report)
        return io.NodeOutput(text, energy_chart(report, "retained energy %"), ui={"text": [text]})


def lora_name_map(key_map: dict, weight_keys: set[str], prefix_re: str) -> dict[str, str]:
    """weight key → kohya base name, from ComfyUI's own LoRA key map (the names LoraLoader will look for)."""
    out = {}
    for lora_key, weight_key in key_map.items():
        if isinstance(weight_key, str) and weight_key in weight_keys and re.match(prefix_re, lora_key) \
                and "." not in lora_key and weight_key not in out:
            out[weight_key] = lora_key
    return out


def effective_weights(patcher, keys, tick=lambda: None) -> dict[str, torch.Tensor]:
    """The weights a ModelPatcher would run with (its LoRA patches applied), as float32 CPU tensors.

    tick() runs before each layer (progress and the cancel check)."""
    patches = patcher.get_key_patches()
    out = {}
    for k in keys:
        tick()
        (weight, convert), *rest = patches[k]
        w = convert(weight.float().clone().cpu(), inplace=False) if rest else weight.float().cpu()
        out[k] = comfy.lora.calculate_weight(rest, w, k) if rest else w.clone()
    return out


class AtelierExtractLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierExtractLoRA", display_name="Extract LoRA (Atelier)", category="atelier/lora",
            description="A LoRA from the difference between a tuned and a base model (randomized SVD per layer).",
            inputs=[io.Model.Input("tuned_model", tooltip="The fine-tuned model (or base + LoRAs)."),
                    io.Model.Input("base_model", tooltip="The model it was tuned from."),
                    io.Clip.Input("tuned_clip", optional=True, tooltip="Tuned CLIP, to extract text-encoder layers."),
                    io.Clip.Input("base_clip", optional=True, tooltip="Base CLIP (needed with tuned_clip)."),
                    *rank_inputs(64),
                    io.Boolean.Input("include_convs", default=False,
                                     tooltip="Also extract 3×3 convolutions (LoCon); off = kohya's linear layers."),
                    io.Float.Input("min_diff", default=0.0, min=0.0, max=1.0, step=1e-6,
                                   tooltip="Skip layers whose largest change is at most this."),
                    io.Float.Input("clamp_quantile", default=1.0, min=0.5, max=1.0, step=0.001,
                                   tooltip="Clamp outlier factor values at this quantile; 1.0 = off (ComfyUI's "
                                           "extractor always uses 0.99)."),
                    io.Combo.Input("method", options=list(EXTRACT_METHODS), default="randomized",
                                   tooltip="randomized: fast low-rank SVD; full: exact SVD of each whole matrix "
                                           "(slow, the reference)."),
                    io.String.Input("output_name", default="extracted", tooltip="File name in models/loras/atelier.")],
            outputs=tool_outputs(),
            is_output_node=True,
        )

    @classmethod
    def execute(cls, tuned_model, base_model, rank, dynamic_method, dynamic_param, include_convs, min_diff,
                clamp_quantile, method, output_name, tuned_clip=None, base_clip=None) -> io.NodeOutput:
        text, report = extract_lora(tuned_model, base_model, tuned_clip, base_clip, rank=rank,
                                    dynamic_method=dynamic_method, dynamic_param=dynamic_param,
                                    include_convs=include_convs, min_diff=min_diff, clamp_quantile=clamp_quantile,
                                    method=method, output_name=output_name)
        return io.NodeOutput(text, energy_chart(report, "kept energy %"), ui={"text": [text]})


def extract_plans(tuned_model, base_model, tuned_clip, base_clip, include_convs: bool) -> list:
    """(tuned patcher, base patcher, weight keys, weight key -> kohya name) for the UNet and, with both CLIPs, the
    text encoders."""
    pairs = [(tuned_model, base_model, comfy.lora.model_lora_keys_unet(base_model.model, {}), "lora_unet_",
              UNET_INCLUDE)]
    if tuned_clip is not None and base_clip is not None:
        pairs.append((tuned_clip.patcher, base_clip.patcher,
                      comfy.lora.model_lora_keys_clip(base_clip.cond_stage_model, {}), "lora_te", TE_INCLUDE))
    plans = []
    for tuned, base, key_map, prefix, include in pairs:
        sd = base.model_state_dict()
        names = lora_name_map(key_map, set(sd), prefix)
        keys = extract_targets({k: tuple(sd[k].shape) for k in names}, include, include_convs)
        plans.append((tuned, base, keys, {k: names[k] for k in keys}))
    return plans


def extract_lora(tuned_model, base_model, tuned_clip, base_clip, *, rank: int, output_name: str,
                 dynamic_method: str = "none", dynamic_param: float = 0.0, include_convs: bool = False,
                 min_diff: float = 0.0, clamp_quantile: float = 1.0, method: str = "randomized") -> tuple[str, dict]:
    """Extract LoRA's body: a LoRA of tuned - base written to models/loras/atelier; returns (text, energy report)."""
    lora_output_path(output_name)  # a bad name is refused before any layer is read
    check_choice(method, list(EXTRACT_METHODS), "method")
    check_number("min_diff", min_diff, 0.0, 1.0)
    check_number("clamp_quantile", clamp_quantile, 0.5, 1.0)
    dynamic_kwargs(dynamic_method, dynamic_param, rank)  # checks both before any layer is read
    modules, report, skipped = {}, {}, []
    kw = dict(dynamic_kwargs(dynamic_method, dynamic_param, rank), method=method, min_diff=min_diff,
              clamp_quantile=None if clamp_quantile >= 1.0 else clamp_quantile)
    plans = extract_plans(tuned_model, base_model, tuned_clip, base_clip, include_convs)
    # one bar over every layer: tuned weights, base weights, extraction (+1 per pair for extract's last call)
    progress, ticks = Progress(sum(3 * len(p[2]) + 1 for p in plans)), itertools.count(1)
    tick = lambda *_: progress(next(ticks))  # also raises ComfyUI's interrupt on Cancel: nothing is written
    for tuned, base, keys, names in plans:
        tuned_w, base_w = effective_weights(tuned, keys, tick), effective_weights(base, keys, tick)
        m, r, s = extract(tuned_w, base_w, names, rank=None if kw.get("dynamic") else rank, on_layer=tick, **kw)
        modules.update(m)
        report.update(r)
        skipped += s
    if not modules:
        raise ValueError("The tuned and base models do not differ in any targeted layer (nothing to extract).")
    family, v_prediction = model_family(base_model)
    path = write(output_name, modules, {"ss_output_name": Path(output_name).stem,
                                        "ss_training_comment": f"extracted with Atelier ({method} SVD)"},
                 dynamic=bool(kw.get("dynamic")), family=family, v_prediction=v_prediction)
    text = f"wrote {path}: {len(modules)} modules, {len(skipped)} unchanged layers skipped\n" + \
        unextracted_encoders(base_clip) + energy_report_text(report)
    return text, report


def unextracted_encoders(clip) -> str:
    """A line naming the CLIP's text encoders that extraction leaves out (those ComfyUI keys only as
    text_encoders.*: Qwen-Image's Qwen2.5-VL, Wan's umT5-XXL), else ''."""
    csm = getattr(clip, "cond_stage_model", None)
    left = [label for name, label in GENERIC_KEY_ENCODERS.items() if getattr(csm, name, None) is not None]
    return (f"text encoder not extracted: {', '.join(left)} (extraction writes kohya lora_te names, which ComfyUI "
            "does not map for it; the diffusion model's layers are extracted)\n") if left else ""


class AtelierInspectLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierInspectLoRA", display_name="Inspect LoRA (Atelier)", category="atelier/lora",
            description="Keys, ranks, alphas, metadata, target family, and whether it loads on a given MODEL/CLIP.",
            inputs=[io.Combo.Input("lora", options=lora_choices(), tooltip="The LoRA file to inspect."),
                    io.Model.Input("model", optional=True, tooltip="Check that every UNet key would load on this."),
                    io.Clip.Input("clip", optional=True, tooltip="Check that every text-encoder key would load."),
                    lora_files_input(FROM_RUN.format(choice="lora"))],
            outputs=[io.String.Output("report", tooltip="JSON report.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lora, model=None, clip=None, lora_files=None) -> io.NodeOutput:
        lora = chosen_lora(lora, lora_choices(), "lora", lora_files)
        tensors, meta = read_lora(lora)
        summary = lora_summary(tensors, meta)
        families = [f for f, pattern in (("SDXL (two text encoders)", r"^(lora_te[12]_|text_encoders\.clip_g\.)"),
                                         ("Flux / DiT", r"double_blocks|single_blocks"),
                                         ("SD-style UNet", r"^(lora_unet_|diffusion_model\.)(input|middle|output|down"
                                                           r"|mid|up)_"))
                    if any(re.search(pattern, k) for k in tensors)]
        report = {"file": lora, "format": key_formats(tensors), **summary, "family": lora_family(tensors),
                  "families": families,
                  "metadata": {k: v for k, v in meta.items() if k not in ("ss_tag_frequency", "ss_dataset_dirs")}}
        if model is not None or clip is not None:
            # Keys for the part that was not given are not counted: a UNet-only check ignores text-encoder keys.
            fit = fit_lora(tensors, lora, model, clip)
            given = {True: clip is not None, False: model is not None}  # keyed by "is a text-encoder key"
            counted = {k for k in tensors if not k.endswith(ALPHA) and given[k.startswith(TEXT_PREFIXES)]}
            missing = [k for k in fit.not_loaded if k in counted]
            report["would_load"] = {"checked": len(counted), "not_loaded": len(missing) + len(fit.mismatched),
                                    "examples": missing[:10], "shape_mismatch": fit.mismatched[:10],
                                    "loads_cleanly": not missing and not fit.mismatched}
        text = json.dumps(report, indent=1, default=str)
        return io.NodeOutput(text, ui={"text": [text]})


class AtelierMergeLoRAIntoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        slots = lora_slots("Strength of LoRA {i} on the model and CLIP, as in LoraLoader.", block_weights=True)
        return io.Schema(
            node_id="AtelierMergeLoRAIntoModel", display_name="Merge LoRA into Model (Atelier)",
            category="atelier/lora",
            description="Bakes LoRAs into the MODEL and CLIP (e.g. the copy-machine step: merge the style LoRA at "
                        "1.0), optionally per block, and can save the result as a checkpoint with the merge "
                        "recorded in its metadata.",
            inputs=[io.Model.Input("model", tooltip="The model to merge into."),
                    io.Clip.Input("clip", tooltip="Its CLIP (text-encoder parts of the LoRAs go here)."),
                    *slots,
                    io.Vae.Input("vae", optional=True, tooltip="Needed only to save a complete checkpoint."),
                    io.String.Input("checkpoint_name", default="",
                                    tooltip="Save models/checkpoints/atelier/<name>.safetensors; empty = don't save."),
                    lora_files_input(FROM_RUN.format(choice="lora_1"))],
            outputs=[io.Model.Output("model_out", display_name="model", tooltip="The merged model."),
                     io.Clip.Output("clip_out", display_name="clip", tooltip="The merged CLIP."),
                     io.String.Output("report", tooltip="What was merged and where it was saved.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, checkpoint_name, vae=None, lora_files=None, **slots) -> io.NodeOutput:
        planned = []  # every slot is checked (name, strength, block weights, file, fit) before anything is merged
        for i, name, strength in chosen_slots(slots, lora_files):
            weights = parse_block_weights(slots[f"block_weights_{i}"], f"block_weights_{i}")
            tensors, _ = read_lora(name)
            fit_lora(tensors, name, model, clip).check(every_key=True)
            if weights is not None:  # block weights need plain LoRA modules; other formats go to ComfyUI as they are
                modules = plain_modules(name, tensors)
                tensors = join_modules(apply_block_weights(modules, weights), torch.float32)
            planned.append((name, strength, weights, tensors))
        if not planned:
            raise ValueError("Choose at least one LoRA to merge.")
        path = model_output_path("checkpoints", checkpoint_name, "checkpoint_name") if checkpoint_name.strip() else None
        merged = []
        progress = Progress(len(planned))
        for n, (name, strength, weights, tensors) in enumerate(planned):
            progress(n)  # Cancel stops here, between LoRAs
            model, clip = comfy.sd.load_lora_for_models(model, clip, tensors, strength, strength)
            merged.append({"lora": name, "strength": strength, "block_weights": weights})
        report = {"merged": merged}
        if path is not None:
            save_checkpoint_file(path, model, clip, vae, {"atelier_merged_loras": json.dumps(merged),
                                                          "modelspec.title": path.stem})
            report["checkpoint"] = str(path)
        text = json.dumps(report, indent=1)
        return io.NodeOutput(model, clip, text, ui={"text": [text]})


def save_checkpoint_file(path: Path, model, clip, vae, metadata: dict[str, str]) -> None:
    """comfy.sd.save_checkpoint's layout, written by us: a cancel check per tensor, NaN/inf refused, and one hidden
    temp file (removed on any failure, and by the next save of this name if a kill left it) renamed into place."""
    # dynamic-VRAM patchers refuse force_patch_weights: bake into upstream's resident delegates (plain clones here)
    model = resident_patcher(model, "Saving a merged checkpoint")
    clip = resident_clip(clip, "Saving a merged checkpoint") if clip is not None else None
    load = [model] + ([clip.patcher] if clip is not None else [])
    vae_sd = vae.get_sd() if vae is not None else None
    comfy.model_management.load_models_gpu(load, force_patch_weights=True)  # bake the LoRA patches into weights
    clip_sd = clip.get_sd() if clip is not None else None  # read after the load: the CLIP's tensors as patched
    sd = model.model.state_dict_for_saving(clip_sd, vae_sd, None)
    progress = Progress(len(sd) + 1)
    tensors = {}
    for i, (key, t) in enumerate(sd.items()):
        progress(i)  # Cancel stops here: nothing has been written yet
        checked = t.float() if t.is_floating_point() and t.element_size() == 1 else t  # float8 has no isfinite
        if t.is_floating_point() and not bool(torch.isfinite(checked).all()):
            raise ValueError(f"The merged weight '{key}' has NaN or inf values, so checkpoint '{path.name}' was not "
                             "saved: a LoRA strength or block weight is too large or not a number. Lower it and "
                             "merge again.")
        tensors[key] = t.contiguous()
    # the last cancel check runs after the data is on disk and before it is renamed into the checkpoints list
    write_safetensors(path, tensors, metadata, what="checkpoint", before_replace=lambda: progress(len(sd)))


NODES = [AtelierMergeLoRAs, AtelierResizeLoRA, AtelierExtractLoRA, AtelierInspectLoRA, AtelierMergeLoRAIntoModel]
