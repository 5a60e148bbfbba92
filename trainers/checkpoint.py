"""Resumable training state on disk: safetensors for tensors, JSON for the rest. Nothing here knows ComfyUI.

A state folder holds lora.safetensors (fp32 LoRA weights), optimizer.safetensors + optimizer.json, ema.safetensors
+ ema.json when EMA is on, and state.json (step, epoch, batch cursor, losses, the full config). It is written into
a temp folder beside the target and renamed over it, so a crash never leaves a half-written state. No pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .loop import TrainConfig, TrainState, config_diff, state_json
from .optim import load_optimizer_state, optimizer_state_tensors


class ResumeMismatch(ValueError):
    """A saved state that belongs to a different configuration or network."""


def save_state(folder: str | Path, trainer, state: TrainState, extra: dict | None = None) -> Path:
    """Writes the trainer's full state for `state` into `folder` (replaced atomically)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        save_file(trainer.network.kohya_state_dict(torch.float32), str(tmp / "lora.safetensors"))
        tensors, meta = optimizer_state_tensors(trainer.optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        if trainer.ema is not None:
            save_file(trainer.ema.state_tensors(), str(tmp / "ema.safetensors"))
            (tmp / "ema.json").write_text(json.dumps(trainer.ema.state_json()))
        (tmp / "state.json").write_text(state_json(state, trainer.cfg, extra))
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_state_config(folder: str | Path) -> dict:
    path = Path(folder) / "state.json"
    if not path.is_file():
        raise ResumeMismatch(f"'{folder}' is not a training state folder (no state.json); point resume at the "
                             "'state' folder saved beside the LoRA.")
    return json.loads(path.read_text())


def load_state(folder: str | Path, trainer) -> TrainState:
    """Restores network, optimizer and EMA from `folder` into `trainer`; refuses a state from another config."""
    folder = Path(folder)
    saved = read_state_config(folder)
    diff = config_diff(saved["config"], trainer.cfg.to_dict())
    if diff:
        raise ResumeMismatch("The resume state was saved with different settings; resuming would not continue the "
                             "same run. Differences:\n  " + "\n  ".join(diff)
                             + "\nUse the saved settings, or start a new run.")
    try:
        trainer.network.load_kohya_state_dict(load_file(str(folder / "lora.safetensors")))
        load_optimizer_state(trainer.optimizer, load_file(str(folder / "optimizer.safetensors")),
                             json.loads((folder / "optimizer.json").read_text()))
    except ValueError as e:
        raise ResumeMismatch(f"The resume state in '{folder}' does not fit this network: {e}") from None
    if trainer.ema is not None:
        trainer.ema.load_state(load_file(str(folder / "ema.safetensors")),
                               json.loads((folder / "ema.json").read_text()))
    return TrainState(saved["step"], saved["epoch"], saved["batch_in_epoch"], list(saved.get("losses", [])))


def saved_config(folder: str | Path) -> TrainConfig:
    return TrainConfig.from_dict(read_state_config(folder)["config"])
