"""kohya's `ss_*` metadata of a LoRA file: the one place that spells its keys and values. Nothing here knows ComfyUI.

Every LoRA file Atelier writes (trained, merged, resized, extracted) carries kohya's minimum keys
(sd-scripts library/train_util.py SS_METADATA_MINIMUM_KEYS), which kohya's merge / resize scripts, A1111
extensions and LoRA browsers read: `ss_v2` ("True"/"False"), `ss_base_model_version` ("sd_v1", "sd_v2", "sd_v1_v",
"sd_v2_v", "sdxl_base_v1-0", "flux1"), `ss_network_module` ("networks.lora"), `ss_network_dim`,
`ss_network_alpha` (a number, or "Dynamic" when the modules' ranks / alphas differ, as kohya's resize_lora.py and
merge_lora.py write) and `ss_network_args` (JSON; conv_dim / conv_alpha for LoCon).

Training metadata (the dataset part: kohya's folder keys, image counts and buckets) is built here too, from a
core.dataset.Dataset: folders appear by their NAME only (kohya: os.path.basename of the image folder), never as a
server path.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import torch

from .captions import split_tags
from .dataset import Dataset
from .images import target_size
from .lora_io import lora_family
from .prepare import buckets_for

KOHYA_MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                      "ss_network_args")
NETWORK_MODULE = "networks.lora"
DYNAMIC = "Dynamic"  # kohya's value of ss_network_dim / ss_network_alpha when modules differ
UNKNOWN_VERSION = "unknown"  # ss_base_model_version of a family kohya has no name for
# kohya's base-model version per family (model_util.get_model_version_str_for_sd1_sd2, sdxl_model_util,
# flux_utils); "_v" is appended for v-prediction SD1/SD2 models.
BASE_VERSIONS = {"SD1.x": "sd_v1", "SD2.x": "sd_v2", "SDXL": "sdxl_base_v1-0", "Flux": "flux1"}
# ComfyUI's model config class names (supported_models.py) -> the family names lora_family uses.
HOST_FAMILIES = {"SD15": "SD1.x", "SD20": "SD2.x", "SD21UnclipL": "SD2.x", "SD21UnclipH": "SD2.x",
                 "SDXL": "SDXL", "SSD1B": "SDXL", "Segmind_Vega": "SDXL", "KOALA_700M": "SDXL", "KOALA_1B": "SDXL",
                 "Flux": "Flux", "FluxSchnell": "Flux"}
HOST_FAMILIES.update({"SD3": "SD3"})  # SD3 / SD3.5 medium and large: one ComfyUI config class
_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


def base_model_version(family: str, v_prediction: bool = False) -> str:
    """kohya's ss_base_model_version for a family ('SD1.x' -> 'sd_v1', v-prediction SD2 -> 'sd_v2_v')."""
    version = BASE_VERSIONS.get(family, UNKNOWN_VERSION)
    return version + "_v" if v_prediction and version in ("sd_v1", "sd_v2") else version


def minimum_metadata(*, family: str, dim, alpha, network_args: dict | None = None, v_prediction: bool = False,
                     base_version: str | None = None) -> dict[str, str]:
    """kohya's minimum keys, as strings; dim / alpha may be numbers or DYNAMIC; base_version overrides the family's."""
    version = base_version or base_model_version(family, v_prediction)
    return {
        "ss_v2": str(version.startswith("sd_v2")),
        "ss_base_model_version": version,
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": dim if dim == DYNAMIC else str(int(dim)),
        "ss_network_alpha": alpha if alpha == DYNAMIC else str(float(alpha)),
        "ss_network_args": json.dumps(network_args or {}),
    }


def _module_shapes(tensors: dict[str, torch.Tensor]) -> list[tuple[bool, int, float]]:
    """(is a k×k convolution, rank, alpha) of every kohya module of the tensors (missing alpha: alpha = rank)."""
    out = []
    for key, down in tensors.items():
        if not key.endswith(_DOWN) or down.ndim < 2:
            continue
        base, rank = key[: -len(_DOWN)], int(down.shape[0])
        alpha_t = tensors.get(base + _ALPHA)
        alpha = float(alpha_t.reshape(-1)[0]) if alpha_t is not None and alpha_t.numel() == 1 else float(rank)
        out.append((down.ndim == 4 and tuple(down.shape[2:]) != (1, 1), rank, alpha))
    return out


def _one_or_dynamic(values: set):
    return next(iter(values)) if len(values) == 1 else DYNAMIC


def tool_metadata(tensors: dict[str, torch.Tensor], *, sources: list[dict[str, str]] = (), dynamic: bool = False,
                  family: str | None = None, v_prediction: bool = False) -> dict[str, str]:
    """kohya's minimum keys of a file made by a LoRA tool (merge, resize, extract), read from its tensors.

    dim / alpha are the linear modules' rank and alpha when they all agree, else "Dynamic" (kohya's merge rule);
    dynamic=True writes "Dynamic" outright (kohya's dynamic resize). k×k convolutions go to network_args as
    conv_dim / conv_alpha. The base version is the sources' shared ss_base_model_version when they carry one, else
    the family's (given, or read from the tensors' key names and widths).
    """
    modules = _module_shapes(tensors)
    linear = [(r, a) for conv, r, a in modules if not conv] or [(r, a) for _, r, a in modules]
    conv = [(r, a) for is_conv, r, a in modules if is_conv]
    if dynamic or not linear:
        dim = alpha = DYNAMIC
    else:
        dim, alpha = _one_or_dynamic({r for r, _ in linear}), _one_or_dynamic({a for _, a in linear})
    args = {}
    if conv:
        conv_dim, conv_alpha = (DYNAMIC, DYNAMIC) if dynamic else (_one_or_dynamic({r for r, _ in conv}),
                                                                   _one_or_dynamic({a for _, a in conv}))
        args = {"conv_dim": str(conv_dim), "conv_alpha": str(conv_alpha)}  # kohya's extract writes them as text
    versions = {s.get("ss_base_model_version") for s in sources}
    shared = next(iter(versions)) if len(versions) == 1 and None not in versions else None
    return minimum_metadata(family=family or lora_family(tensors), dim=dim, alpha=alpha, network_args=args,
                            v_prediction=v_prediction, base_version=shared)


# --- training: the dataset part ---------------------------------------------------------------------------------

def _folder_name(source: str, subset_name: str) -> str:
    """The name of the folder an image came from (kohya keys datasets by folder name); graph images: the subset."""
    if source.startswith("memory:"):
        return subset_name
    return os.path.basename(os.path.dirname(source)) or subset_name


def _unique(name: str, taken: dict) -> str:
    """kohya's rule for a folder name seen twice: 'name (2)', 'name (3)', ..."""
    out, i = name, 2
    while out in taken:
        out, i = f"{name} ({i})", i + 1
    return out


def dataset_dirs(dataset: Dataset) -> tuple[dict, dict, dict]:
    """(ss_dataset_dirs, ss_reg_dataset_dirs, ss_tag_frequency) as kohya writes them: one entry per image folder,
    keyed by the folder's name only, {"n_repeats": r, "img_count": n}; tag counts per folder (lower-cased)."""
    train, reg, tags = {}, {}, {}
    for subset in dataset.subsets:
        target = reg if subset.role == "regularization" else train
        groups: dict[str, list] = {}
        for item in subset.items:
            groups.setdefault(_folder_name(item.source, subset.name), []).append(item)
        for folder, items in groups.items():
            name = _unique(folder, target)
            target[name] = {"n_repeats": max(it.repeats for it in items), "img_count": len(items)}
            if target is train:  # kohya counts tags of training folders only
                counts = Counter(t.lower() for it in items for t in split_tags(it.caption))
                tags[name] = dict(counts.most_common())
    return train, reg, tags


def bucket_metadata(dataset: Dataset) -> dict[str, str]:
    """kohya's preparation keys: ss_resolution, ss_enable_bucket, ss_min/max_bucket_reso, ss_bucket_no_upscale and
    ss_bucket_info ({"buckets": {i: {"resolution": [w, h], "count": n}}}, counts with repeats), from the subsets'
    preparations and the images' sizes (read at scan time: nothing is decoded)."""
    preps = [s.preparation for s in dataset.subsets]
    sizes = sorted({(p.width, p.height) for p in preps})
    bucketed = [p for p in preps if p.mode == "buckets"]
    sides = [side for p in bucketed for w, h in buckets_for(p.width, p.height, p.bucket_step) for side in (w, h)]
    counts: Counter = Counter()
    for s in dataset.subsets:
        p = s.preparation
        buckets = buckets_for(p.width, p.height, p.bucket_step) if p.mode == "buckets" else None
        for it in s.items:
            size = target_size(it.width, it.height, p.mode, p.width, p.height, buckets=buckets,
                               no_upscale=p.no_upscale)
            counts[size] += it.repeats * (2 if s.flip == "copies" else 1)
    info = {"buckets": {str(i): {"resolution": list(size), "count": counts[size]}
                        for i, size in enumerate(sorted(counts))}}
    return {
        "ss_resolution": str(sizes[0]) if len(sizes) == 1 else json.dumps([list(s) for s in sizes]),
        "ss_enable_bucket": str(bool(bucketed)),
        "ss_min_bucket_reso": str(min(sides)) if sides else "None",
        "ss_max_bucket_reso": str(max(sides)) if sides else "None",
        "ss_bucket_no_upscale": str(any(p.no_upscale for p in bucketed)),
        "ss_bucket_info": json.dumps(info),
    }


def image_counts(dataset: Dataset) -> dict[str, str]:
    """kohya's counts: images × repeats of the training folders, and of the regularisation folders (before they are
    balanced against the training images); mirrored copies count as images."""
    train = sum(s.samples_per_epoch for s in dataset.subsets if s.role != "regularization")
    reg = sum(s.samples_per_epoch for s in dataset.subsets if s.role == "regularization")
    return {"ss_num_train_images": str(train), "ss_num_reg_images": str(reg)}


def prior_loss_weight(dataset: Dataset) -> str:
    """kohya's ss_prior_loss_weight: the regularisation subsets' weight (1.0 without any; the largest when they
    differ, with every value in atelier_subsets)."""
    weights = [s.prior_loss_weight for s in dataset.subsets if s.role == "regularization"]
    return str(float(max(weights, default=1.0)))


def subsets_record(dataset: Dataset) -> str:
    """atelier_subsets: each subset's name, role, folders (names only), preparation and prior-loss weight (JSON)."""
    out = []
    for s in dataset.subsets:
        p = s.preparation
        out.append({"name": s.name, "role": s.role, "images": len(s.items), "flip": s.flip,
                    "folders": sorted({_folder_name(it.source, s.name) for it in s.items}),
                    "preparation": {"mode": p.mode, "width": p.width, "height": p.height,
                                    "bucket_step": p.bucket_step, "no_upscale": p.no_upscale},
                    **({"prior_loss_weight": s.prior_loss_weight} if s.role == "regularization" else {})})
    return json.dumps(out)


def epochs_of(steps: int, total_steps: int, steps_per_epoch: int) -> dict[str, str]:
    """ss_epoch (the epoch `steps` falls in, counting a partial one, as kohya's step saves do) and ss_num_epochs
    (the epochs the whole run covers: ceil(total_steps / steps_per_epoch), as kohya computes it)."""
    per = max(1, steps_per_epoch)
    return {"ss_epoch": str(math.ceil(steps / per)), "ss_num_epochs": str(math.ceil(total_steps / per))}


# Copy-machine (guides 003 / 004): kohya merges --base_weights (with --base_weights_multiplier) into the model
# before training and records neither, so Atelier names its own key after that argument.
BASE_WEIGHTS_KEY = "atelier_base_weights"
OBJECTIVE_KEY = "atelier_objective"
COPY_MACHINE = "copy_machine"
COPIER_FIELDS = ("name", "strength", "sha256", "autov2", "addnet_hash", "ss_output_name", "source")


def copy_machine_metadata(checkpoint: str, copiers: list[dict]) -> dict[str, str]:
    """The shipped target's record of a copy-machine run: every copier merged while it trained (name, strength,
    sha256, AutoV2, additional-networks hash, its ss_output_name, where it came from), the method, and a comment
    that says to use the file on `checkpoint` alone."""
    if not copiers:
        raise ValueError("A copy-machine run needs at least one copier LoRA; got none. Choose a copier file or "
                         "connect a training node's lora_files.")
    listed = []
    for copier in copiers:
        strength = float(copier["strength"])
        if not math.isfinite(strength):
            raise ValueError(f"Copier '{copier['name']}' has strength {strength}; expected a finite number.")
        listed.append({k: (strength if k == "strength" else str(copier.get(k, ""))) for k in COPIER_FIELDS})
    merged = " + ".join(f"{c['name']} @ {c['strength']:g}" for c in listed)
    return {
        BASE_WEIGHTS_KEY: json.dumps(listed),
        OBJECTIVE_KEY: json.dumps({"method": COPY_MACHINE, "copiers": len(listed),
                                   "use_on": f"{checkpoint} without the copiers"}),
        "ss_training_comment": f"copy-machine: trained on {checkpoint} + {merged}; use on {checkpoint} alone",
    }
