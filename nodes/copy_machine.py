"""Copy-machine training (guides 003 / 004): train the target LoRA on the model with one or more copier LoRAs merged
in, and ship the target alone, for use on the original model.

A copier is a LoRA that makes the model reproduce a look (3D renders, the base model's own images); trained on
top of it, the target learns what the copier does not already produce (the character), not the look. The merge is
ComfyUI's own (comfy.sd.load_lora_for_models, as LoraLoader; kohya's --base_weights merge_to), on a clone: the
MODEL wired in is never changed.
"""

from __future__ import annotations

import comfy.model_management
import comfy.sd
from .compat import io

from ..core import dataset as ds
from ..core.lora_io import addnet_hash_file
from ..core.lora_math import STRENGTH_LIMIT, check_strength
from ..core.lora_meta import copy_machine_metadata
from ..core.provenance import autov2, file_hashes
from ..trainers.loop import TrainConfig
from ..trainers.network import NetworkConfig
from .host import DATASET, model_file, output_subdir
from .lora_files import LORA_FILES, fit_lora, read_lora, run_files
from .provenance import base_model
from .training import (common_inputs, lora_options, lora_run_inputs, reuse_input, train_lora, training_outputs,
                       training_result)
from .validate import NONE, check_choice

COPIERS = 3  # copier dropdowns; more copiers: merge them first (Merge LoRAs) or chain a training node's files


def copier_inputs() -> list:
    """copier_1..3 dropdowns with their strengths, and the optional lora_files of a copier training run."""
    out = []
    for i in range(1, COPIERS + 1):
        out += [io.Combo.Input(f"copier_{i}", options=lora_options(), default=NONE,
                               tooltip=f"Copier LoRA {i}, merged into the model while the target trains and left out "
                                       "of the shipped file; (none) = no copier in this slot."),
                io.Float.Input(f"copier_strength_{i}", default=1.0, min=-STRENGTH_LIMIT, max=STRENGTH_LIMIT,
                               step=0.05, tooltip=f"Strength copier {i} is merged at (model and CLIP); the guides "
                                                  "use 1.0.")]
    return out


def chosen_copiers(slots: dict, copier_files) -> list[tuple[str, float, str]]:
    """(name, strength, source) of every chosen copier, dropdowns and strengths re-checked; a connected copier run's
    final file replaces copier_1."""
    options, out = lora_options(), []
    for i in range(1, COPIERS + 1):
        if i == 1 and copier_files is not None:
            name, source = run_files(copier_files).final, "run"
        else:
            name, source = check_choice(slots[f"copier_{i}"], options, f"copier_{i}"), "dropdown"
        if name == NONE:
            continue
        strength = check_strength(slots[f"copier_strength_{i}"], f"copier_strength_{i} (copier '{name}')")
        out.append((name, strength, source))
    if not out:
        raise ValueError("No copier chosen: copier_1..copier_3 are all (none) and copier_files is not connected. "
                         "Choose the copier LoRA (trained on the stand-in renders or on the model's own images), or "
                         "use Train LoRA for plain training.")
    return out


def copier_record(name: str, strength: float, source: str, metadata: dict) -> dict:
    """What the shipped file records of one copier: name, strength, its file's hashes, its own output name."""
    real = model_file("loras", name)
    tick = comfy.model_management.throw_exception_if_processing_interrupted
    sha256 = file_hashes(real, cache_file=output_subdir("atelier", "cache") / "file_hashes.json", tick=tick)["sha256"]
    return {"name": name, "strength": strength, "sha256": sha256, "autov2": autov2(sha256),
            "addnet_hash": addnet_hash_file(real), "ss_output_name": metadata.get("ss_output_name", ""),
            "source": source}


def merge_copiers(model, clip, copiers: list[tuple[str, float, str]]) -> tuple[object, object, list[dict]]:
    """(model, clip) clones with every copier merged at its strength, and the copiers' records; a copier that does
    not fit this model (another architecture) is an error naming it and its keys, before any training."""
    records = []
    for name, strength, source in copiers:
        tensors, metadata = read_lora(name)  # malformed files refused by name
        fit_lora(tensors, name, model, clip).check(every_key=True)  # every key must land, or it is not the copier
        model, clip = comfy.sd.load_lora_for_models(model, clip, tensors, strength, strength)  # clones: inputs kept
        records.append(copier_record(name, strength, source, metadata))
    return model, clip, records


def training_set(dataset, regularization, prior_loss_weight: float, reg_repeats: int):
    """The target's images plus, when connected, the copier set as regularisation (guide 004: weight 1, repeats 1)."""
    if regularization is None:
        return dataset
    return ds.combine(dataset, ds.as_regularization(regularization, prior_loss_weight, reg_repeats))


def shipped_outputs(model, clip, files) -> tuple[object, object]:
    """The ORIGINAL model and CLIP with the shipped target at strength 1: what users get from the file."""
    tensors, _ = read_lora(files.final)
    loaded = {k: v.float() for k, v in tensors.items()}
    return comfy.sd.load_lora_for_models(model, clip, loaded, 1.0, 1.0)


class AtelierTrainCopyMachine(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierTrainCopyMachine",
            display_name="Train Copy-Machine LoRA (Atelier)",
            category="atelier/training",
            description="Copy-machine method: trains the target LoRA on the model with copier LoRAs merged in (the "
                        "look they copy is not learned again), with the copier set as regularisation, and ships the "
                        "target alone, recording the checkpoint and every copier in the file.",
            inputs=[
                *common_inputs(),
                *copier_inputs(),
                io.Int.Input("rank", default=32, min=1, max=1024, tooltip="Target LoRA rank (dim); guide 004: 32."),
                io.Float.Input("alpha", default=16.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="Target network alpha; effective scale alpha / rank (guide 004: 16)."),
                io.Float.Input("unet_lr", default=1e-4, min=0.0, max=1.0, step=1e-6,
                               tooltip="UNet learning rate (1e-4 in the guides). Must be > 0."),
                *lora_run_inputs(),
                io.Float.Input("prior_loss_weight", default=1.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Loss weight of the regularization images (guide 004: 1)."),
                io.Int.Input("reg_repeats", default=1, min=1, max=10000,
                             tooltip="Times each regularization image is seen per epoch (guide 004: 1)."),
                reuse_input(),
                LORA_FILES.Input("copier_files", optional=True,
                                 tooltip="Optional: the lora_files output of the Train LoRA node that trained the "
                                         "copier; its final file replaces copier_1 (at copier_strength_1), and this "
                                         "node runs after it in the same queued graph."),
                DATASET.Input("regularization", optional=True,
                              tooltip="Optional: the copier's images (e.g. the model's own renders via Images to "
                                      "Dataset), trained as regularization; not connected = no regularization."),
                io.Int.Input("save_every_epochs", default=0, min=0, max=10000, optional=True,
                             tooltip="Also save name-00000N.safetensors every N epochs (1 = every epoch, to compare "
                                     "epochs 8-10 on an XY Grid through lora_files); 0 = only the final file."),
            ],
            outputs=training_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, rank, alpha, unet_lr, epochs, max_steps, batch_size,
                train_text_encoder, te_lr, seed, prior_loss_weight, reg_repeats, reuse=True, copier_files=None,
                regularization=None, save_every_epochs=0, **slots) -> io.NodeOutput:
        node_id = cls.hidden.unique_id if cls.hidden else None
        prompt = cls.hidden.prompt if cls.hidden else None
        copiers = chosen_copiers(slots, copier_files)
        base = base_model(model, prompt, node_id)  # the ORIGINAL checkpoint: what the shipped file is used on
        data = training_set(dataset, regularization, prior_loss_weight, reg_repeats)
        merged_model, merged_clip, records = merge_copiers(model, clip, copiers)
        config = TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, unet_lr=unet_lr, te_lr=te_lr,
                             train_text_encoder=train_text_encoder, seed=seed, save_every_epochs=save_every_epochs)
        _, _, losses, report, files = train_lora(
            merged_model, merged_clip, vae, data, output_name, config, NetworkConfig(rank=rank, alpha=alpha),
            node_id=node_id, prompt=prompt, reuse=reuse is True, base=base,
            extra_metadata=copy_machine_metadata(base.name, records))
        report["copy_machine"] = {"copiers": records, "use_on": f"{base.name} without the copiers",
                                  "regularization": regularization is not None}
        return training_result(*shipped_outputs(model, clip, files), losses, report, files)


NODES = [AtelierTrainCopyMachine]
