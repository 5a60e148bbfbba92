"""Reuse of a finished training run after a server restart: the run's identity (trainers/reuse.py) from the host's
model, CLIP, VAE and dataset, and the earlier run's files found and checked against it."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management

from ..core.provenance import BaseModel, file_hashes
from ..trainers.network import NetworkConfig
from ..trainers.reuse import RunIdentity, data_digest, differences, recorded, saved_losses
from ..trainers.run import RunLoras, intermediate_kind, run_loras
from .host import model_file, output_subdir
from .lora_files import read_lora, read_lora_metadata
from .provenance import base_identity
from .validate import NONE


def run_identity(config, net_config: NetworkConfig, dataset, base: BaseModel, model, clip, vae,
                 continue_from: str, extra: dict | None = None) -> RunIdentity:
    """This run's identity: settings (with the LoRA it continues from, by content, and an objective's own metadata
    `extra`), data and base model."""
    tick = comfy.model_management.throw_exception_if_processing_interrupted  # hashing a large set honours Cancel
    start = None
    if continue_from != NONE:
        real = model_file("loras", continue_from)
        start = {"name": continue_from, "sha256": file_hashes(
            real, cache_file=output_subdir("atelier", "cache") / "file_hashes.json", tick=tick)["sha256"]}
    settings = {**config.to_dict(), **({"extra": extra} if extra else {})}  # no extra: identities as before
    return RunIdentity.of(settings, dataclasses.asdict(net_config), data_digest(dataset, tick),
                          base_identity(model, clip, vae, base), start)


@dataclass(frozen=True)
class EarlierRun:
    """A finished earlier run of the same identity: its files, the final file's tensors and metadata, its losses."""

    files: RunLoras
    tensors: dict
    metadata: dict
    losses: list


def _same_run_files(final: Path, identity: RunIdentity) -> list[tuple[int, Path]]:
    """(step, path) of the intermediate files beside `final` that the same identity wrote (keep-last may have pruned
    some; a file of another run with the same name is left out)."""
    out = []
    for entry in sorted(os.scandir(final.parent), key=lambda e: e.name):
        if intermediate_kind(entry.name, final) is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            meta = read_lora_metadata(f"{final.parent.name}/{entry.name}")
        except (OSError, ValueError):  # unreadable: not counted as this run's
            continue
        parts, _ = recorded(meta)
        if parts == identity.parts() and str(meta.get("ss_steps", "")).isdigit():
            out.append((int(meta["ss_steps"]), final.parent / entry.name))
    return sorted(out)


def earlier_run(final: Path, identity: RunIdentity, state_dir: Path) -> tuple[EarlierRun | None, str]:
    """(the earlier run, "") when `final` exists from a finished run of this identity; else (None, why it trains)."""
    if not final.is_file():
        return None, "no earlier file of this name"
    name = f"{final.parent.name}/{final.name}"
    try:
        why = differences(identity, read_lora_metadata(name))
        if why:
            return None, f"the existing file was not reused: {'; '.join(why)}"
        tensors, meta = read_lora(name)
    except (OSError, ValueError) as e:  # damaged or refused: train again, and say why
        return None, f"the existing file could not be read ({e})"
    saved = [path for _, path in _same_run_files(final, identity)] + [final]
    return EarlierRun(run_loras(saved, final, final.parent.name), tensors, meta,
                      saved_losses(state_dir, identity)), ""
