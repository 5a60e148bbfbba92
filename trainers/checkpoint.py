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
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from ..core.paths import FileTooLarge, PathRefused, Root, current_umask, read_bytes_inside
from .loop import TrainConfig, TrainState, config_diff, state_json
from .optim import load_optimizer_state, optimizer_state_tensors


class ResumeMismatch(ValueError):
    """A saved state that belongs to a different configuration or network."""


def save_state(folder: str | Path, trainer, state: TrainState, extra: dict | None = None) -> Path:
    """Writes the trainer's full state for `state` into `folder` (replaced atomically)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; a state folder follows the umask like any other
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


STATE_JSON_LIMIT = 64 << 20  # step count, losses and the config: far below this even for long runs


def _state_bytes(folder: Path, name: str, limit: int | None = None) -> bytes:
    """One file of a state folder, read only if it really lies in that folder (no symlink leading elsewhere)."""
    try:
        return read_bytes_inside(folder / name, [Root(f"state '{folder.name}'", folder)], "state file", limit)
    except (PathRefused, FileTooLarge) as e:
        raise ResumeMismatch(f"Resume state '{folder.name}': {e}") from None
    except FileNotFoundError:
        raise ResumeMismatch(f"Resume state '{folder.name}' is incomplete: '{name}' is missing. Pick another state, or "
                             "start a new run.") from None


def _state_json(folder: Path, name: str) -> dict:
    try:
        value = json.loads(_state_bytes(folder, name, STATE_JSON_LIMIT))
    except (UnicodeDecodeError, ValueError) as e:
        raise ResumeMismatch(f"Resume state '{folder.name}': '{name}' is not valid JSON ({e}); the state is damaged. "
                             "Pick another state, or start a new run.") from None
    if not isinstance(value, dict):
        raise ResumeMismatch(f"Resume state '{folder.name}': '{name}' holds {type(value).__name__}, not an object; "
                             "the state is damaged. Pick another state, or start a new run.")
    return value


def _state_tensors(folder: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors_bytes(_state_bytes(folder, name))
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ResumeMismatch(f"Resume state '{folder.name}': '{name}' is not a readable safetensors file ({e}); the "
                             "state is damaged. Pick another state, or start a new run.") from None


def read_state_config(folder: str | Path) -> dict:
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        raise ResumeMismatch(f"'{folder.name}' is not a training state folder (no state.json); point resume at the "
                             "'state' folder saved beside the LoRA.")
    saved = _state_json(folder, "state.json")
    for key, kind in (("config", dict), ("step", int), ("epoch", int), ("batch_in_epoch", int)):
        if not isinstance(saved.get(key), kind):
            raise ResumeMismatch(f"Resume state '{folder.name}': state.json has no valid '{key}'; the state is "
                                 "damaged. Pick another state, or start a new run.")
    return saved


def load_state(folder: str | Path, trainer) -> TrainState:
    """Restores network, optimizer and EMA from `folder` into `trainer`; refuses a state from another config."""
    folder = Path(folder)
    saved = read_state_config(folder)
    diff = config_diff(saved["config"], trainer.cfg.to_dict())
    if diff:
        raise ResumeMismatch("The resume state was saved with different settings; resuming would not continue the "
                             "same run. Differences:\n  " + "\n  ".join(diff)
                             + "\nUse the saved settings, or start a new run.")
    lora = _state_tensors(folder, "lora.safetensors")
    optimizer = _state_tensors(folder, "optimizer.safetensors"), _state_json(folder, "optimizer.json")
    try:
        trainer.network.load_kohya_state_dict(lora)
        load_optimizer_state(trainer.optimizer, *optimizer)
    except (ValueError, KeyError) as e:
        raise ResumeMismatch(f"The resume state '{folder.name}' does not fit this network: {e}") from None
    if trainer.ema is not None:
        trainer.ema.load_state(_state_tensors(folder, "ema.safetensors"), _state_json(folder, "ema.json"))
    return TrainState(saved["step"], saved["epoch"], saved["batch_in_epoch"], list(saved.get("losses", [])))


def saved_config(folder: str | Path) -> TrainConfig:
    return TrainConfig.from_dict(read_state_config(folder)["config"])
