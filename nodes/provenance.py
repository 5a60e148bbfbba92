"""What a connected MODEL is: its checkpoint file (found through the queued prompt), the file's hashes, its family,
a fingerprint of its unpatched weights and the patches it carries. The walk and the hashing are core/provenance.py.

ComfyUI 0.3.64 keeps no file name on a MODEL, so the name comes from the prompt (the `prompt` hidden input); when
it cannot be found there, records say "unknown" and use the model's class name and weights fingerprint instead.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.model_sampling

from ..core.lora_meta import HOST_FAMILIES
from ..core.paths import PathRefused
from ..core.provenance import BaseModel, file_hashes, model_source
from .host import model_file, output_subdir
from .train_adapter import weights_fingerprint


def model_family(model) -> tuple[str, bool]:
    """(family as core.lora_meta names it, v-prediction) of a ModelPatcher, from ComfyUI's model config class and
    the model sampling it will run with (a ModelSamplingDiscrete node can switch it to v-prediction)."""
    config = type(getattr(model.model, "model_config", None)).__name__
    sampling = model.get_model_object("model_sampling")
    return HOST_FAMILIES.get(config, config), isinstance(sampling, comfy.model_sampling.V_PREDICTION)


def unpatched_fingerprint(model) -> str:
    """weights_fingerprint of the diffusion model as loaded from its file: weights that a loaded LoRA patched in
    place are read from the patcher's backup, so the same checkpoint gives the same fingerprint with or without
    LoRAs."""
    sd = model.model.diffusion_model.state_dict()
    backup = getattr(model, "backup", {}) or {}
    for key in list(sd):
        saved = backup.get("diffusion_model." + key)
        if saved is not None:
            sd[key] = saved.weight
    return weights_fingerprint(sd)


def patch_summary(model) -> dict:
    """{"patched_keys": weights with patches, "patches": patch entries} of a ModelPatcher; {} when it has none."""
    patches = getattr(model, "patches", {}) or {}
    if not patches:
        return {}
    return {"patched_keys": len(patches), "patches": sum(len(v) for v in patches.values())}


def base_model(model, prompt, node_id, input_name: str = "model", hash_file: bool = True) -> BaseModel:
    """The BaseModel record of the MODEL wired into `input_name` of node `node_id`: checkpoint name (and, with
    hash_file, its hashes: cached per file, Cancel checked) when the prompt shows the loader, else class and
    fingerprint."""
    source = model_source(prompt, node_id, input_name)
    family, v_pred = model_family(model)
    record = dict(model_class=type(model.model).__name__, family=family, v_prediction=v_pred,
                  fingerprint=unpatched_fingerprint(model), chain=tuple(source["chain"]),
                  patches=patch_summary(model), why=source["why"])
    if source["file"] is None:
        return BaseModel(**record)
    if not hash_file:
        return BaseModel(**record, file=source["file"], folder=source["folder"])
    try:
        real = model_file(source["folder"], source["file"])
        hashes = file_hashes(real, cache_file=output_subdir("atelier", "cache") / "file_hashes.json",
                             tick=comfy.model_management.throw_exception_if_processing_interrupted)
    except (PathRefused, OSError) as e:  # listed when loaded, gone or moved since: keep the name, say why
        logging.warning("[Atelier] could not hash %s '%s': %s", source["folder"], source["file"], e)
        return BaseModel(**record, file=source["file"], folder=source["folder"])
    return BaseModel(**record, file=source["file"], folder=source["folder"], sha256=hashes["sha256"],
                     legacy_hash=hashes["legacy"])


def connected_checkpoint(model, hidden) -> dict:
    """What a grid's PNG records as the checkpoint of the MODEL wired into the node: its file name when the prompt
    shows its loader, else "connected MODEL"; with the weights fingerprint and any patches either way (no file hash:
    a grid does not read the checkpoint file)."""
    record = base_model(model, getattr(hidden, "prompt", None), getattr(hidden, "unique_id", None),
                        hash_file=False).record()
    record.pop("sha256", None)
    record.pop("autov2", None)
    if not record["file"]:
        record["name"] = "connected MODEL"
    return record
