"""What a connected MODEL is: its checkpoint file (found through the queued prompt), the file's hashes, its family,
a fingerprint of its unpatched weights and the patches it carries. The walk and the hashing are core/provenance.py.

ComfyUI 0.3.64 keeps no file name on a MODEL, so the name comes from the prompt (the `prompt` hidden input); when
it cannot be found there, records say "unknown" and use the model's class name and weights fingerprint instead.
"""

from __future__ import annotations

import hashlib
import logging

import torch

import comfy.model_management
import comfy.model_sampling

from ..core.lora_meta import HOST_FAMILIES
from ..core.paths import PathRefused
from ..core.provenance import BaseModel, file_hashes, hash_tensor, model_source
from .host import model_file, output_subdir
from .train_adapter import encoder_key, weights_fingerprint


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


def _tensors(value, depth: int = 0):
    """Every tensor inside a patch value (a tensor, a weight adapter's weights, nested tuples or lists)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 4 and isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v, depth + 1)
    elif depth < 4 and hasattr(value, "weights"):  # comfy.weight_adapter adapters keep their tensors here
        yield from _tensors(value.weights, depth + 1)


def patches_digest(patcher) -> str:
    """sha256 of a ModelPatcher's pending weight patches by content (key, strengths, every tensor's bytes), so two
    different LoRAs applied under the same names and strengths never look alike."""
    h = hashlib.sha256()
    patches = getattr(patcher, "patches", {}) or {}
    for key in sorted(patches):
        for entry in patches[key]:
            h.update(f"{key}|{entry[0]}|{entry[2] if len(entry) > 2 else ''}|{entry[3:4]}|".encode())
            for t in _tensors(entry[1]):
                hash_tensor(h, t)
    return h.hexdigest()


def base_identity(model, clip, vae, base: BaseModel) -> dict:
    """What a training run's result depends on besides its settings and data: the model's record (file hash, weights
    fingerprint, chain), its patches by content and object patches (e.g. a sampling switch), the CLIP's weights and
    patches, and the VAE with the model's latent scaling."""
    object_patches = getattr(model, "object_patches", {}) or {}
    sampling = model.get_model_object("model_sampling")
    return {"model": base.record(), "model_patches": patches_digest(model),
            "object_patches": sorted((k, type(v).__name__) for k, v in object_patches.items()),
            "sampling": [type(sampling).__name__, float(sampling.sigma_min), float(sampling.sigma_max)],
            "clip": [weights_fingerprint(clip.cond_stage_model.state_dict()), patches_digest(clip.patcher)],
            "vae": encoder_key(vae, model) if vae is not None else None}  # None: an image-free run (text slider)
