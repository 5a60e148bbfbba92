"""LoRA files from ComfyUI's loras folders: validated as they are read, and checked against the MODEL / CLIP they
will change with ComfyUI's own key maps and loader, so a LoRA that does not fit is an error naming the layer and
both shapes, never only a line on the server console."""

from __future__ import annotations

from dataclasses import dataclass, field

import comfy.lora
import comfy.lora_convert
from comfy.weight_adapter.lora import LoRAAdapter

from .compat import io

from ..core.lora_format import ALPHA, fit_problem
from ..core.lora_io import check_lora_tensors, load_lora, load_lora_metadata
from ..core.report import listing
from ..trainers.run import RunLoras
from .host import model_file
from .validate import check_choice

LISTED = 6  # problems an error message lists before "and N more"
LORA_FILES = io.Custom("ATELIER_LORA_FILES")  # the files a training node wrote (trainers.run.RunLoras)


def lora_files_input(tooltip: str):
    """The optional input that takes a training node's `lora_files` output, so one queued graph trains, then uses."""
    return LORA_FILES.Input("lora_files", optional=True, tooltip=tooltip)


def run_files(lora_files, input_name: str = "lora_files") -> RunLoras:
    """The connected value checked: a training node's files, else an error saying what to connect to `input_name`."""
    if not isinstance(lora_files, RunLoras):
        raise ValueError(f"{input_name} expects the 'lora_files' output of a Train LoRA node; got "
                         f"{type(lora_files).__name__}. Connect a training node's lora_files output to {input_name}, "
                         "or disconnect it.")
    return lora_files


def chosen_lora(choice: str, options: list[str], what: str, lora_files=None) -> str:
    """The final file of the connected training run, which replaces the dropdown; else the dropdown's value,
    re-checked against its options."""
    return check_choice(choice, options, what) if lora_files is None else run_files(lora_files).final


def read_lora(name: str) -> tuple[dict, dict]:
    """(tensors, metadata) of `name` in the loras folders; malformed files are refused with a message naming it."""
    tensors, meta = load_lora(model_file("loras", name))  # listed, and inside the loras folders
    check_lora_tensors(tensors, name)
    return tensors, meta


def read_lora_metadata(name: str) -> dict:
    """The metadata of `name` in the loras folders (header only), under the same path policy as read_lora."""
    return load_lora_metadata(model_file("loras", name))


class _Reads(dict):
    """A LoRA dict that records which keys ComfyUI's loader reads: the keys it loads."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            self.read.add(key)
        return super().get(key, default)


@dataclass
class LoraFit:
    """What ComfyUI's LoRA loader would do with one file on a MODEL and/or CLIP."""

    name: str
    adapters: dict = field(default_factory=dict)  # (part "unet" / "text", weight key) -> ComfyUI's patch
    not_loaded: list = field(default_factory=list)  # file keys no layer takes ("lora key not loaded"), alphas aside
    mismatched: list = field(default_factory=list)  # one line per layer whose shape cannot take the LoRA

    def check(self, *, every_key: bool) -> None:
        """ValueError when a layer's shape does not fit, and (every_key) when some keys would not load at all."""
        if self.mismatched:
            raise ValueError(f"LoRA '{self.name}' does not fit this model: {listing(self.mismatched, LISTED)}. It was "
                             "made for another base model (or is damaged); choose a LoRA trained on this model.")
        if every_key and self.not_loaded:
            raise ValueError(f"LoRA '{self.name}': {len(self.not_loaded)} keys match no layer of this model or its "
                             f"CLIP (e.g. {listing(self.not_loaded, LISTED)}), so ComfyUI would skip them. It was made "
                             "for another model family; choose a LoRA trained on this model.")


def _target_shape(target, shapes: dict):
    """(weight key, shape the patch must have): a (key, (dim, offset, size)) target patches a slice of the weight."""
    if isinstance(target, tuple):
        key, (dim, _, size) = target
        shape = list(shapes[key])
        shape[dim] = size
        return key, tuple(shape)
    return target, shapes[target]


def _problem(patch, target, bases: list[str], sd: dict, shapes: dict) -> str | None:
    key, shape = _target_shape(target, shapes)
    if isinstance(patch, LoRAAdapter):
        up, down, _, mid, _, reshape = patch.weights
        if reshape is not None:
            return None  # ComfyUI pads the weight to the shape the file gives first
        base = next((b for b in bases if any(k.startswith((b + ".", b + "_lora.")) for k in sd)), bases[0])
        return fit_problem(base, up.shape, down.shape, key, shape, None if mid is None else mid.shape)
    if isinstance(patch, tuple) and patch[0] == "diff" and tuple(patch[1][0].shape) != tuple(shape):
        return f"'{bases[0]}' is a full {tuple(patch[1][0].shape)} difference but the layer '{key}' is {tuple(shape)}"
    return None  # LoHa, LoKr, OFT ...: ComfyUI builds their change itself


def fit_lora(tensors: dict, name: str, model=None, clip=None) -> LoraFit:
    """Runs ComfyUI's key maps and loader on the file (as LoraLoader does) and checks every layer it would patch
    for shape fit; nothing is patched."""
    sd = _Reads(comfy.lora_convert.convert_lora(dict(tensors)))
    fit = LoraFit(name)
    parts = []
    if model is not None:
        parts.append(("unet", comfy.lora.model_lora_keys_unet(model.model, {}), model.model))
    if clip is not None:
        parts.append(("text", comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}), clip.cond_stage_model))
    for part, key_map, root in parts:
        shapes = {k: tuple(v.shape) for k, v in root.state_dict().items()}
        bases: dict = {}
        for base, target in key_map.items():
            bases.setdefault(target, []).append(base)
        for target, patch in comfy.lora.load_lora(sd, key_map, log_missing=False).items():
            fit.adapters[(part, target)] = patch
            problem = _problem(patch, target, bases.get(target, ["?"]), sd, shapes)
            if problem:
                fit.mismatched.append(problem)
    fit.not_loaded = sorted(k for k in sd if k not in sd.read and not k.endswith(ALPHA))
    return fit
