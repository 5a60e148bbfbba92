"""Resumable training state on disk: safetensors for tensors, JSON for the rest. Nothing here knows ComfyUI.

A state folder holds lora.safetensors (fp32 LoRA weights), optimizer.safetensors + optimizer.json, ema.safetensors
+ ema.json when EMA is on, and state.json (step, epoch, batch cursor, losses, the full config, the fp16 loss
scaler, and the setup that bit-exactness depends on: torch threads, device, dtypes, torch version). It is written
into a hidden temp folder beside the target and renamed over it, so a crash never leaves a half-written state; the
next save of the same state removes temps whose process died. No pickle.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from ..core.paths import FileTooLarge, PathRefused, Root, current_umask, read_bytes_inside
from ..core.temps import remove_stale_temps, temp_path
from .loop import TrainConfig, TrainState, config_diff, state_json
from .optim import load_optimizer_state, optimizer_state_tensors


class ResumeMismatch(ValueError):
    """A saved state that belongs to a different configuration or network."""


def run_environment(trainer, model_dtype: str | None = None) -> dict:
    """What a bit-identical resume depends on besides the config: torch threads, device, dtypes, torch version."""
    env = {"torch_threads": torch.get_num_threads(), "device": str(trainer.device),
           "lora_dtype": str(trainer.params[0].dtype).replace("torch.", "") if trainer.params else None,
           "torch": torch.__version__}
    if model_dtype is not None:
        env["model_dtype"] = model_dtype.replace("torch.", "")
    return env


ENVIRONMENT_LABELS = {"torch_threads": "torch threads", "device": "device", "lora_dtype": "LoRA weights dtype",
                      "model_dtype": "model weights dtype", "torch": "torch version"}


def resume_warnings(folder: str | Path, environment: dict) -> list[str]:
    """Sentences naming each setting that differs from the one the state was saved with (empty when all match)."""
    saved = read_state_config(folder).get("environment")
    if not saved:
        return []  # saved before the setup was recorded: nothing to compare
    changed = [f"{label} {saved[key]} then, {environment[key]} now" for key, label in ENVIRONMENT_LABELS.items()
               if key in saved and key in environment and saved[key] != environment[key]]
    if not changed:
        return []
    return [f"Resumed on a different setup than the state was saved with ({'; '.join(changed)}): the result will "
            "differ slightly (~1e-5) from an uninterrupted run. Resume with the saved setup (e.g. the same "
            "OMP_NUM_THREADS) for a bit-identical result."]


def save_state(folder: str | Path, trainer, state: TrainState, extra: dict | None = None,
               environment: dict | None = None) -> Path:
    """Writes the trainer's full state for `state` into `folder` (replaced atomically)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder.parent, folder.name)  # temp folders of a save that was killed
    tmp = temp_path(folder)
    tmp.mkdir()  # fails if the name exists: never write into someone else's folder
    os.chmod(tmp, 0o777 & ~current_umask())  # a state folder follows the umask like any other folder
    extra = {**(extra or {}), "environment": environment or run_environment(trainer)}
    if trainer.scaler is not None:
        extra["scaler"] = trainer.scaler.state_dict()  # scale and growth tracker: fp16 resumes exactly
    try:
        save_file(trainer.network.state_tensors(), str(tmp / "lora.safetensors"))
        tensors, meta = optimizer_state_tensors(trainer.optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        if trainer.ema is not None:
            save_file(trainer.ema.state_tensors(), str(tmp / "ema.safetensors"))
            (tmp / "ema.json").write_text(json.dumps(trainer.ema.state_json()))
        (tmp / "state.json").write_text(state_json(state, trainer.cfg, extra))
        old = None
        if folder.exists():
            old = temp_path(folder, "old")
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
        trainer.network.load_state_tensors(lora)
        load_optimizer_state(trainer.optimizer, *optimizer)
    except (ValueError, KeyError) as e:
        raise ResumeMismatch(f"The resume state '{folder.name}' does not fit this network: {e}") from None
    if trainer.ema is not None:
        trainer.ema.load_state(_state_tensors(folder, "ema.safetensors"), _state_json(folder, "ema.json"))
    if trainer.scaler is not None and saved.get("scaler"):
        trainer.scaler.load_state_dict(saved["scaler"])
    return TrainState(saved["step"], saved["epoch"], saved["batch_in_epoch"], list(saved.get("losses", [])),
                      list(saved.get("skipped_steps", [])))


def saved_config(folder: str | Path) -> TrainConfig:
    return TrainConfig.from_dict(read_state_config(folder)["config"])
